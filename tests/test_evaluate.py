import json

import pytest
from helpers import assert_grid_png, invoke, tkd_args


@pytest.fixture(scope="module")
def trained_student(tiny_teacher, tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate") / "student"
    result = invoke(*tkd_args(tiny_teacher, tiny_data_dir, out))
    assert result.exit_code == 0, result.output
    return out


def test_evaluate_with_teacher(trained_student, tiny_teacher, tiny_data_dir, tmp_path):
    result = invoke(
        "evaluate",
        trained_student,
        "--data",
        tiny_data_dir,
        "--split",
        "test",
        "--teacher",
        tiny_teacher,
        "--output-dir",
        tmp_path,
    )
    assert result.exit_code == 0, result.output
    assert "retention" in result.stdout and "speedup" in result.stdout
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["split"] == "test" and report["num_examples"] == 16
    student, teacher = report["models"]["student"], report["models"]["teacher"]
    for m in (student, teacher):
        assert set(m) >= {"metrics", "parameters", "size_mb", "latency_ms_b1", "throughput_b32"}
        assert 0 <= m["metrics"]["accuracy"] <= 1 and m["latency_ms_b1"] > 0
    assert student["parameters"] < teacher["parameters"]
    key = report["primary_metric"]
    s, t = student["metrics"][key], teacher["metrics"][key]
    assert student["retention"] == pytest.approx(s / t)
    assert student["speedup_b1"] == pytest.approx(
        teacher["latency_ms_b1"] / student["latency_ms_b1"]
    )
    assert student["size_ratio"] == pytest.approx(student["size_mb"] / teacher["size_mb"])
    # timed together: 5 interleaved rounds at a fixed thread count, with the spread over them
    assert report["latency"]["interleaved"] and report["latency"]["rounds"] == 5
    assert report["latency"]["threads"] == report["machine"]["torch_threads"] >= 1
    for m in (student, teacher):
        assert len(m["latency_b1_rounds_ms"]) == 5 and m["latency_b1_spread"] >= 0
    assert_grid_png(tmp_path / "evaluation.png")


def test_evaluate_reads_data_settings_from_the_run_and_prints_json(trained_student, tmp_path):
    # No --data: the data section of the run's resolved_recipe.yaml is used.
    result = invoke("evaluate", trained_student, "--output-dir", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["split"] == "test" and "teacher" not in report["models"]
    assert json.loads((tmp_path / "evaluation.json").read_text())["models"] == report["models"]


def test_evaluate_metric_matches_a_manual_count(tiny_teacher, tiny_data_dir, tmp_path):
    import pandas as pd
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    result = invoke(
        "evaluate",
        tiny_teacher,
        "--data",
        tiny_data_dir / "test.csv",
        "--output-dir",
        tmp_path,
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    got = report["models"][report["students"][0]]["metrics"]["accuracy"]

    df = pd.read_csv(tiny_data_dir / "test.csv")
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher).eval()
    with torch.no_grad():
        logits = model(**tok(list(df.text), padding=True, return_tensors="pt")).logits
    names = [model.config.id2label[int(i)] for i in logits.argmax(-1)]
    assert got == pytest.approx(sum(a == b for a, b in zip(names, df.label)) / len(df))


def test_several_students_against_one_teacher(
    trained_student, tiny_teacher, tiny_data_dir, tmp_path
):
    other = tmp_path / "copy-of-teacher"
    import shutil

    shutil.copytree(tiny_teacher, other)
    result = invoke(
        "evaluate",
        trained_student,
        other,
        "--data",
        tiny_data_dir,
        "--teacher",
        tiny_teacher,
        "--output-dir",
        tmp_path / "eval",
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["students"] == ["student", "copy-of-teacher"]
    assert list(report["models"]) == ["teacher", "student", "copy-of-teacher"]
    copy = report["models"]["copy-of-teacher"]
    assert copy["retention"] == pytest.approx(1.0) and copy["parameter_ratio"] == 1.0
    assert "copy-of-teacher" in result.stdout
    # word predictions: the teacher's copy agrees everywhere; the student is measured too
    assert copy["word_agreement"] == {"masked": 1.0, "unmasked": 1.0, "rows": 16}
    student = report["models"]["student"]["word_agreement"]
    assert 0 <= student["masked"] <= 1 and 0 <= student["unmasked"] <= 1
    assert "100.0% / 100.0%" in result.stdout
    assert "top-1 word agreement with the teacher" in result.stderr


def test_evaluate_an_onnx_export_beside_its_source(tiny_teacher, tiny_data_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    exported = tmp_path / "onnx-teacher"
    result = invoke("export", tiny_teacher, "--format", "onnx", "--output-dir", exported)
    assert result.exit_code == 0, result.output
    result = invoke(
        "evaluate",
        exported,
        "--data",
        tiny_data_dir,
        "--teacher",
        tiny_teacher,
        "--output-dir",
        tmp_path / "eval",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    onnx, torch_model = report["models"]["onnx-teacher"], report["models"]["teacher"]
    assert onnx["metrics"] == torch_model["metrics"]  # same predictions through onnxruntime
    # ONNX counts its stored initializers; constant folding can fold a few small tensors away
    assert onnx["parameters"] == pytest.approx(torch_model["parameters"], rel=0.05)
    assert onnx["retention"] == pytest.approx(1.0)
    assert onnx["word_agreement"] is None  # an ONNX graph returns no hidden states


def test_decoder_classifier_saved_without_a_pad_token(tiny_data_dir, tmp_path):
    """A GPT-2 classifier fine-tuned elsewhere, with no pad token: EOS pads its batches."""
    import torch
    from conftest import LABELS, make_bpe_tokenizer
    from transformers import GPT2Config, GPT2ForSequenceClassification

    path = tmp_path / "gpt2-classifier"
    tok = make_bpe_tokenizer(path)
    config = GPT2Config(
        vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, num_labels=2,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
        id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
    )  # fmt: skip
    torch.manual_seed(0)
    GPT2ForSequenceClassification(config).save_pretrained(path)
    result = invoke("evaluate", path, "--data", tiny_data_dir, "--output-dir", tmp_path / "e")
    assert result.exit_code == 0, result.output
    assert json.loads((path / "config.json").read_text()).get("pad_token_id") is None


def test_the_chart_draws_a_median_rounded_a_hair_past_its_quartile(tmp_path):
    """The median comes from the rounds as stored, so a whisker never goes negative."""
    from distill_cli.evaluation import latency
    from distill_cli.evaluation.evaluate import plot

    timed = {"b1_ms": [2.00004, 2.00004, 2.00004, 1.99996, 1.99996], "big_ms": [10.0] * 5}
    figures = latency.figures(timed, 32)
    low, high = latency.quartiles(figures["latency_b1_rounds_ms"])
    assert low <= figures["latency_ms_b1"] <= high
    model = {"metrics": {"accuracy": 0.5}, "size_mb": 1.0, **figures}
    result = {
        "models": {"teacher": model, "student": dict(model)}, "primary_metric": "accuracy",
        "data": "rotten_tomatoes", "split": "test", "num_examples": 4,
    }  # fmt: skip
    plot(result, tmp_path / "evaluation.png")
    assert_grid_png(tmp_path / "evaluation.png")

"""pretrain-distill with recipes/embedding.yaml end to end: a sentence-transformers teacher in,
a sentence-transformers student out; and the one-line errors of embedding runs."""

import json

import pytest
import torch
from conftest import make_tokenizer, tiny_bert_config
from helpers import RECIPES, assert_grid_png, invoke
from transformers import BertModel

from distill_cli.models.embedder import Embedder, add_projection, load_embedder, save_embedder


@pytest.fixture(scope="module")
def st_teacher(tmp_path_factory):
    """A tiny sentence-transformers folder: BERT, mean pooling, Dense 48→24 (tanh), Normalize."""
    path = tmp_path_factory.mktemp("st_teacher")
    tok = make_tokenizer(path)
    torch.manual_seed(0)
    embedder = Embedder(BertModel(tiny_bert_config(len(tok)), add_pooling_layer=False), "mean")
    add_projection(embedder, 24)
    embedder.activation = torch.nn.Tanh()
    embedder.normalize = True
    save_embedder(embedder, tok, path)
    return path


def embed(teacher, corpus, out, *extra):
    return invoke(
        "pretrain-distill", "--recipe", RECIPES / "embedding.yaml", "--teacher", teacher,
        "--data", corpus, "--output-dir", out, "--max-steps", 3,
        "--set", "train.batch_size=8", "--set", "train.logging_steps=1",
        "--set", "student.num_layers=2", *extra,
    )  # fmt: skip


def _losses(out):
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "loss/embedding_cosine" in line]


def test_truncated_student_is_a_sentence_transformers_folder(st_teacher, corpus_file, tmp_path):
    out = tmp_path / "student"
    result = embed(st_teacher, corpus_file, out)
    assert result.exit_code == 0, result.output
    logged = _losses(out)
    assert len(logged) == 3 and all(line["loss/embedding_kl"] >= 0 for line in logged)
    assert (out / "modules.json").is_file() and (out / "1_Pooling" / "config.json").is_file()
    student, tok = load_embedder(str(out), "student")
    teacher, _ = load_embedder(str(st_teacher), "teacher")
    assert student.model.config.num_hidden_layers == 2
    assert student.normalize and student.pooling == "mean" and student.embedding_dim == 24
    # the truncated student starts from the teacher's Dense and trains it
    assert not torch.equal(student.dense.weight, teacher.dense.weight)
    batch = tok(["the movie was good", "a dull film"], padding=True, return_tensors="pt")
    with torch.no_grad():
        vectors = student(batch["input_ids"], batch["attention_mask"])
    assert vectors.shape == (2, 24)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_a_narrower_student_gets_a_projection(st_teacher, corpus_file, tmp_path):
    out = tmp_path / "narrow"
    result = embed(
        st_teacher, corpus_file, out, "--set", "student.init=config",
        "--set", "student.hidden_size=32", "--set", "student.num_attention_heads=2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    student, _ = load_embedder(str(out), "student")
    assert student.hidden_size == 32 and student.embedding_dim == 24
    assert (out / "2_Dense" / "config.json").is_file()


def test_word_kl_combines_with_the_embedding_terms(st_teacher, corpus_file, tmp_path):
    out = tmp_path / "both"
    result = embed(
        st_teacher, corpus_file, out,
        "--set", "phases.0.terms.word_kl={weight: 1.0, temperature: 2.0}",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert all("loss/word_kl" in line for line in _losses(out))


def test_a_plain_teacher_without_pooling_is_one_line(tiny_encoder, corpus_file, tmp_path):
    result = embed(tiny_encoder, corpus_file, tmp_path / "out", "--set", "pooling=null")
    assert result.exit_code == 2
    assert "set pooling: mean" in result.output and "Traceback" not in result.output
    result = embed(tiny_encoder, corpus_file, tmp_path / "mean")  # the recipe's pooling: auto
    assert result.exit_code == 0, result.output
    assert load_embedder(str(tmp_path / "mean"), "student")[0].pooling == "mean"


def test_batch_size_one_with_the_relational_term_is_one_line(st_teacher, corpus_file, tmp_path):
    result = embed(st_teacher, corpus_file, tmp_path / "out", "--set", "train.batch_size=1")
    assert result.exit_code == 2
    assert "batch_size to 2 or more" in result.output and "Traceback" not in result.output


def test_embedding_terms_are_refused_by_finetune_distill(st_teacher, tiny_data_dir, tmp_path):
    result = invoke(
        "finetune-distill", "--recipe", RECIPES / "embedding.yaml", "--teacher", st_teacher,
        "--data", tiny_data_dir, "--output-dir", tmp_path / "out", "--max-steps", 1,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "pretrain-distill" in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def st_student(st_teacher, corpus_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("st_student") / "student"
    result = embed(st_teacher, corpus_file, out)
    assert result.exit_code == 0, result.output
    return out


def test_evaluate_reports_agreement_recall_and_probe(
    st_student, st_teacher, tiny_data_dir, tmp_path
):
    report = tmp_path / "report"
    result = invoke(
        "evaluate", st_student, "--data", tiny_data_dir, "--split", "test",
        "--teacher", st_teacher, "--output-dir", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    evaluation = json.loads((report / "evaluation.json").read_text())
    assert evaluation["model_kind"] == "sentence_embedding"
    assert evaluation["primary_metric"] == "probe_accuracy"
    student, teacher = evaluation["models"]["student"], evaluation["models"]["teacher"]
    m = student["metrics"]
    assert set(m) == {"probe_accuracy", "agreement", "neighbour_recall"}
    assert -1 <= m["agreement"] <= 1 and 0 <= m["neighbour_recall"] <= 1
    assert teacher["metrics"]["agreement"] == 1.0
    assert student["retention"] == pytest.approx(
        m["probe_accuracy"] / teacher["metrics"]["probe_accuracy"]
    )
    assert student["retention_by_metric"]["retention/agreement"] == m["agreement"]
    assert student["parameters"] < teacher["parameters"] and student["latency_ms_b1"] > 0
    assert_grid_png(report / "evaluation.png")
    assert "agreement" in result.output and "neighbour_recall" in result.output


def test_the_teacher_agrees_with_itself(st_teacher, tiny_data_dir):
    result = invoke(
        "evaluate", st_teacher, "--data", tiny_data_dir, "--split", "test",
        "--teacher", st_teacher, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    evaluation = json.loads(result.stdout[result.stdout.index("{") :])
    copy = next(v for k, v in evaluation["models"].items() if k != "teacher")
    assert copy["metrics"]["agreement"] == pytest.approx(1.0, abs=1e-6)
    assert copy["metrics"]["neighbour_recall"] == 1.0
    assert copy["retention"] == 1.0


def _sts(path, scores):
    rows = ["sentence1,sentence2,score"]
    words = ["good movie", "bad film", "the plot was dull", "great acting", "a messy story"]
    for i, score in enumerate(scores):
        rows.append(f"{words[i % 5]},{words[(i + 1) % 5]},{score}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_sts_spearman_on_scored_pairs_and_bad_scores(st_student, tmp_path):
    sts = _sts(tmp_path / "sts.csv", [0.5, 1.0, 4.0, 2.5, 3.0, 1.5])
    sets = ["--set", "data.text_columns=[sentence1,sentence2]", "--set", "data.label_column=score",
            "--set", "data.task_type=regression"]  # fmt: skip
    result = invoke("evaluate", st_student, "--data", sts, "--split", "train", *sets, "--json")
    assert result.exit_code == 0, result.output
    evaluation = json.loads(result.stdout[result.stdout.index("{") :])
    assert evaluation["primary_metric"] == "sts_spearman"
    assert -1 <= evaluation["models"]["student"]["metrics"]["sts_spearman"] <= 1
    bad = _sts(tmp_path / "bad.csv", [0.5, "high", 4.0])
    result = invoke("evaluate", st_student, "--data", bad, "--split", "train", *sets)
    assert result.exit_code == 2
    assert "not a number" in result.output and "Traceback" not in result.output


def test_a_dense_config_that_does_not_match_its_weights_is_one_line(
    st_teacher, corpus_file, tmp_path
):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(st_teacher, broken)
    config = json.loads((broken / "2_Dense" / "config.json").read_text())
    config["out_features"] = 16  # the weights are 24 × 48
    (broken / "2_Dense" / "config.json").write_text(json.dumps(config))
    result = embed(broken, corpus_file, tmp_path / "out")
    assert result.exit_code == 2
    assert "Dense" in result.output and "Traceback" not in result.output
    assert (
        len(result.output.strip().splitlines()[-1]) > 0
        and not (tmp_path / "out" / "modules.json").exists()
    )


def test_sigterm_then_resume_gives_the_same_embedder(st_teacher, corpus_file, tmp_path):
    """The student's Dense projection is trained state too: it resumes exactly."""
    import signal

    from safetensors.torch import load_file
    from test_resume import assert_same_metrics, finish, max_weight_diff, start, wait_for_step

    def args(out, *extra):
        return [
            "pretrain-distill", "--recipe", RECIPES / "embedding.yaml", "--teacher", st_teacher,
            "--data", corpus_file, "--output-dir", out, "--max-steps", 8,
            "--set", "student.init=config", "--set", "student.num_layers=2",
            "--set", "student.hidden_size=32", "--set", "student.num_attention_heads=2",
            "--set", "train.batch_size=8", "--set", "train.logging_steps=1",
            "--set", "train.save_steps=2", *extra,
        ]  # fmt: skip

    whole = finish(args(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "stopped"
    proc = start(args(out))
    wait_for_step(proc, out / "metrics.jsonl", 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    again = finish(args(out, "--resume"))
    assert again.returncode == 0, again.stderr
    assert max_weight_diff(tmp_path / "whole", out) <= 1e-6
    dense = [load_file(p / "2_Dense" / "model.safetensors") for p in (tmp_path / "whole", out)]
    assert all(torch.allclose(dense[0][k], dense[1][k], atol=1e-6) for k in dense[0])
    assert_same_metrics(tmp_path / "whole", out)


def test_evaluate_reads_an_onnx_embedder_export(st_student, st_teacher, tiny_data_dir, tmp_path):
    onnx_dir = tmp_path / "onnx"
    result = invoke("export", st_student, "--format", "onnx", "--output-dir", onnx_dir)
    assert result.exit_code == 0, result.output
    result = invoke(
        "evaluate", st_student, onnx_dir, "--data", tiny_data_dir, "--split", "test",
        "--teacher", st_teacher, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    models = json.loads(result.stdout[result.stdout.index("{") :])["models"]
    torch_m, onnx_m = models["student"]["metrics"], models["onnx"]["metrics"]
    assert onnx_m["agreement"] == pytest.approx(torch_m["agreement"], abs=1e-4)
    assert onnx_m["probe_accuracy"] == pytest.approx(torch_m["probe_accuracy"], abs=0.07)


def test_evaluating_an_embedder_without_data_is_one_line(st_student, st_teacher):
    result = invoke("evaluate", st_student, "--teacher", st_teacher)
    assert result.exit_code == 2
    assert "pass --data" in result.output and "Traceback" not in result.output

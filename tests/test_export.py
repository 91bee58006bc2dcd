"""distill export: HF folders and ONNX models that load with no code of ours, verified."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from tests.helpers import invoke, run_without_distill_cli

TEXTS = ["the movie was good", "a dull and boring film but the cast was lovely", "awful"]


def export(model, out, fmt, *extra):
    result = invoke("export", model, "--format", fmt, "--output-dir", out, "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def torch_outputs(model_dir, texts, auto=AutoModelForSequenceClassification):
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = auto.from_pretrained(model_dir).eval()
    outs = []
    for text in texts:
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            outs.append(model(**enc).logits[0].numpy())
    return tok, outs


def test_hf_export_loads_in_plain_transformers(tiny_teacher, tmp_path):
    out = tmp_path / "hf"
    result = export(tiny_teacher, out, "hf")
    assert result["verified"] and result["max_abs_diff"] <= 1e-4
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md", "export.json"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert card.startswith("---\n")
    header = card.split("---\n")[1]
    assert "library_name: transformers" in header
    assert "pipeline_tag: text-classification" in header
    assert "distill-cli" in header and "## Usage" in card
    assert "# hf\n" in card and "export-" not in card
    assert "No recipe or training record was found" in card and "## Metrics" not in card
    assert not list(tmp_path.glob(".*")), "temporary folders left behind"

    _, expected = torch_outputs(tiny_teacher, TEXTS)
    code = f"""
import json, torch
from transformers import AutoTokenizer, AutoModelForSequenceClassification
tok = AutoTokenizer.from_pretrained({str(out)!r})
model = AutoModelForSequenceClassification.from_pretrained({str(out)!r}).eval()
rows = []
for text in {TEXTS!r}:
    with torch.no_grad():
        rows.append(model(**tok(text, return_tensors="pt")).logits[0].tolist())
print(json.dumps(rows))
print(model.config.id2label[0], model.config.id2label[1])
"""
    proc = run_without_distill_cli(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    got = json.loads(lines[0])
    for g, e in zip(got, expected, strict=True):
        assert abs(torch.tensor(g) - torch.tensor(e)).max() <= 1e-4
    assert lines[1] == "neg pos"


def test_hf_fp16_card_reads_recipe_and_reports(tiny_teacher, tmp_path):
    import shutil

    src = tmp_path / "student"
    shutil.copytree(tiny_teacher, src)
    (src / "resolved_recipe.yaml").write_text(
        "method: tkd\nteacher: org/teacher-model\nphases:\n- name: task\n  terms:\n"
        "    soft_label_kl: {weight: 0.5, temperature: 2.0}\n    ce: {weight: 0.5}\n"
    )
    # reports hold more keys than the card reads, and train_results.json may be partial
    (src / "train_results.json").write_text(json.dumps({"steps": 5, "phases": {"task": 5}}))
    compression = {
        "vocab_before": 400, "vocab_after": 200, "ratio": 0.5, "similarity": "inner",
        "remapped_share": 0.0312, "top_remaps": [], "corpus": "c",
    }  # fmt: skip
    (src / "compression.json").write_text(json.dumps(compression))
    evaluation = {
        "data": "rotten_tomatoes", "split": "test", "num_examples": 12,
        "primary_metric": "accuracy", "machine": {"device": "cpu"},
        "models": {"student": {"metrics": {"accuracy": 0.75, "f1": 0.5}, "size_mb": 1.25,
                               "latency_ms_b1": 1.0}},
    }  # fmt: skip
    (src / "evaluation.json").write_text(json.dumps(evaluation))
    out = tmp_path / "hf16"
    result = export(src, out, "hf", "--dtype", "fp16")
    assert result["dtype"] == "fp16" and result["max_abs_diff"] < 0.05
    assert (out / "resolved_recipe.yaml").is_file()
    card = (out / "README.md").read_text()
    assert "base_model: org/teacher-model" in card and "(fp16 weights)" in card
    assert "- method: `tkd`\n- teacher: `org/teacher-model`" in card
    assert "- stage `task`: soft_label_kl × 0.5000, ce × 0.5000, 5 steps\n" in card
    assert "- training: 5 steps (? stage), final loss ?\n" in card
    assert "from 400 to 200 tokens (ratio 0.5, similarity `inner`); 3.12% of corpus" in card
    assert "On `rotten_tomatoes` (test, 12 examples):" in card
    assert "| student | accuracy (primary) | 0.7500 | 1.2500 |\n| student | f1 | 0.5000 |" in card
    assert card.endswith("```\n") and "\n\n\n" not in card
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.classifier.weight.dtype == torch.float16


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("evaluation.json", "{not json", "evaluation.json is not valid JSON (line 1"),
        ("evaluation.json", '{"data": "d"}', "evaluation.json: key 'split' is missing"),
        ("compression.json", "[1, 2]", "compression.json must hold a JSON object, not list"),
        ("train_results.json", '{"steps": "five"}', "key 'steps' expects int"),
        ("resolved_recipe.yaml", "phases: [", "resolved_recipe.yaml is not valid YAML"),
        ("resolved_recipe.yaml", "methd: tkd", "unknown key 'methd'; did you mean 'method'?"),
    ],
)
def test_hf_card_bad_files_beside_the_model(tiny_teacher, tmp_path, name, text, message):
    import shutil

    src = tmp_path / "student"
    shutil.copytree(tiny_teacher, src)
    (src / name).write_text(text)
    result = invoke("export", src, "--format", "hf", "--output-dir", tmp_path / "o")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".*"))
    assert (src / name).read_text() == text


def test_onnx_dynamic_axes_match_pytorch(tiny_teacher, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    result = export(tiny_teacher, out, "onnx")
    assert result["verified"] and result["max_abs_diff"] <= 1e-4
    assert "token_type_ids" in result["inputs"]
    for name in ("model.onnx", "tokenizer.json", "config.json", "export.json"):
        assert (out / name).is_file(), name
    tok, expected = torch_outputs(tiny_teacher, TEXTS)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    # batch 1 at three sequence lengths
    for text, exp in zip(TEXTS, expected, strict=True):
        enc = tok(text, return_tensors="np")
        got = sess.run(None, {i.name: enc[i.name] for i in sess.get_inputs()})[0]
        assert abs(got[0] - exp).max() <= 1e-4
    # batch 3, padded
    enc = tok(TEXTS, return_tensors="np", padding=True)
    got = sess.run(None, {i.name: enc[i.name] for i in sess.get_inputs()})[0]
    assert got.shape == (3, 2)
    for g, exp in zip(got, expected, strict=True):
        assert abs(g - exp).max() <= 1e-4


def test_onnx_int8_is_smaller(tiny_teacher, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "int8"
    result = export(tiny_teacher, out, "onnx-int8")
    assert result["int8_mb"] < result["fp32_mb"]
    assert 0 <= result["argmax_agreement"] <= 1 and "latency_ms_b1" in result
    tok = AutoTokenizer.from_pretrained(out)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    enc = tok(TEXTS, return_tensors="np", padding=True)
    assert sess.run(None, {i.name: enc[i.name] for i in sess.get_inputs()})[0].shape == (3, 2)
    assert json.loads((out / "export.json").read_text())["format"] == "onnx-int8"


def test_onnx_causal_lm_logits(tiny_gpt2, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "gpt2"
    result = export(tiny_gpt2, out, "onnx")
    assert result["outputs"] == ["logits"] and result["inputs"] == ["input_ids", "attention_mask"]
    tok, expected = torch_outputs(tiny_gpt2, TEXTS, auto=AutoModelForCausalLM)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for text, exp in zip(TEXTS, expected, strict=True):
        enc = tok(text, return_tensors="np")
        got = sess.run(
            None, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        )
        assert got[0][0].shape == exp.shape and abs(got[0][0] - exp).max() <= 1e-4


def test_a_finished_export_is_kept_replaced_only_with_overwrite(tiny_teacher, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("x")  # the user's: never removed
    export(tiny_teacher, out, "hf")
    assert (out / "keep.txt").read_text() == "x" and (out / "model.safetensors").is_file()
    result = invoke("export", tiny_teacher, "--format", "hf", "--output-dir", out)
    assert result.exit_code == 0 and result.stderr.strip() == f"already finished: {out}"
    result = invoke(
        "export", tiny_teacher, "--format", "hf", "--dtype", "fp16", "--output-dir", out
    )
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert "(dtype: 'fp32' then, 'fp16' now)" in result.output
    export(tiny_teacher, out, "hf", "--dtype", "fp16", "--overwrite")
    assert json.loads((out / "export.json").read_text())["dtype"] == "fp16"
    assert (out / "keep.txt").read_text() == "x"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "tflite"], "unknown --format"),
        (["--format", "hf", "--dtype", "int4"], "unknown --dtype"),
        (["--format", "onnx-int8", "--dtype", "bf16"], "does not apply"),
    ],
)
def test_bad_options(tiny_teacher, tmp_path, args, message):
    result = invoke("export", tiny_teacher, "--output-dir", tmp_path / "o", *args)
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "o").exists()


def test_non_model_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    result = invoke("export", tmp_path, "--format", "hf", "--output-dir", tmp_path / "out")
    assert result.exit_code == 2 and "not a Hugging Face model folder" in result.output
    assert not (tmp_path / "out").exists()


def test_onnx_encoder_last_hidden_state(tiny_encoder, tmp_path):
    pytest.importorskip("onnxruntime")
    result = export(tiny_encoder, tmp_path / "enc", "onnx")
    assert result["outputs"] == ["last_hidden_state"] and result["max_abs_diff"] <= 1e-4
    card_free = export(tiny_encoder, tmp_path / "enc-hf", "hf")
    assert card_free["pipeline_tag"] == "feature-extraction"
    assert "pipeline_tag: feature-extraction" in (tmp_path / "enc-hf" / "README.md").read_text()


@pytest.fixture(scope="module")
def tiny_deberta(tmp_path_factory):
    """A DeBERTa-v2 classifier: its forward takes token_type_ids, which its graph never reads."""
    from conftest import LABELS, make_tokenizer
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    path = tmp_path_factory.mktemp("deberta")
    tok = make_tokenizer(path)  # gives token_type_ids
    config = DebertaV2Config(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
        num_labels=2, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
    )  # fmt: skip
    assert config.type_vocab_size == 0
    torch.manual_seed(0)
    DebertaV2ForSequenceClassification(config).save_pretrained(path)
    return path


@pytest.mark.parametrize("fmt", ["onnx", "onnx-int8"])
def test_onnx_uses_the_inputs_the_graph_declares(tiny_deberta, tiny_data_dir, tmp_path, fmt):
    pytest.importorskip("onnxruntime")
    out = tmp_path / fmt
    result = export(tiny_deberta, out, fmt)
    assert result["verified"] and result["inputs"] == ["input_ids", "attention_mask"]
    if fmt == "onnx":
        assert result["max_abs_diff"] <= 1e-4
    report = tmp_path / "eval"
    evaluated = invoke("evaluate", out, "--data", tiny_data_dir, "--output-dir", report)
    assert evaluated.exit_code == 0, evaluated.output
    assert (report / "evaluation.json").is_file()


def test_onnx_model_fills_declared_inputs_the_tokenizer_does_not_give(tiny_teacher, tmp_path):
    from distill_cli.models.onnx_model import OnnxClassifier

    pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    assert "token_type_ids" in export(tiny_teacher, out, "onnx")["inputs"]
    model = OnnxClassifier(out)
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    full = model(**enc).logits
    without = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    assert torch.equal(full, without) and full.shape == (3, 2)


def test_onnx_of_a_model_whose_graph_does_not_generalise_is_one_line(tmp_path):
    """Funnel's pooling traces to shapes fixed at the traced length: verification at the test
    sentences' lengths fails, and that is one line naming the model type and the step."""
    from conftest import LABELS, make_tokenizer
    from transformers import FunnelConfig, FunnelForSequenceClassification

    pytest.importorskip("onnxruntime")
    src = tmp_path / "funnel"
    tok = make_tokenizer(src)
    config = FunnelConfig(vocab_size=len(tok), d_model=32, n_head=2, d_head=16, d_inner=64,
                          block_sizes=[1, 1], num_labels=len(LABELS))  # fmt: skip
    FunnelForSequenceClassification(config).save_pretrained(src)
    result = invoke("export", src, "--format", "onnx", "--output-dir", tmp_path / "o")
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "ONNX export does not support model type 'funnel'" in lines[0]
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()

"""distill export of token-classification and extractive-QA heads: HF folders that transformers'
pipelines load with no code of ours, and ONNX graphs with the model's own outputs, verified."""

import json
import re

import pytest
import torch
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertForQuestionAnswering,
    BertForTokenClassification,
)

from tests.helpers import invoke, run_without_distill_cli

TAGS = ["O", "B-PER", "I-PER"]
CONTEXT = "the movie was good and the acting was great but the plot was dull"
TEXTS = ["the cast was lovely", "a dull and boring film but the acting was great", "awful"]
QUESTIONS = [("who was lovely?", "the cast was lovely"), ("how was the plot?", CONTEXT)]
# task → (fixture, Auto class, outputs, code that prints what plain transformers makes of `folder`)
HEADS = {
    "token-classification": (
        "tiny_tagger", AutoModelForTokenClassification, ["logits"],
        "from transformers import pipeline\n"
        "tagger = pipeline('token-classification', model=folder)\n"
        "print(json.dumps(tagger('the cast was lovely and the acting great', ignore_labels=[]),"
        " default=float))\n",
    ),
    "question-answering": (  # transformers 5.3+ has no question-answering pipeline
        "tiny_reader", AutoModelForQuestionAnswering, ["start_logits", "end_logits"],
        "from transformers import AutoModelForQuestionAnswering, AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(folder)\n"
        "model = AutoModelForQuestionAnswering.from_pretrained(folder).eval()\n"
        f"enc = tok({QUESTIONS[1][0]!r}, {QUESTIONS[1][1]!r}, return_tensors='pt')\n"
        "with torch.no_grad():\n    out = model(**enc)\n"
        "print(json.dumps([out.start_logits[0].tolist(), out.end_logits[0].tolist()]))\n",
    ),
}  # fmt: skip


def _save(path, head_class, labels, seed):
    from conftest import make_tokenizer, tiny_bert_config

    tok = make_tokenizer(path)
    torch.manual_seed(seed)
    head_class(tiny_bert_config(len(tok), layers=2, hidden=32, labels=labels)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_tagger(tmp_path_factory):
    """A 2-layer BERT token classifier with BIO tags O / B-PER / I-PER."""
    return _save(tmp_path_factory.mktemp("tagger"), BertForTokenClassification, TAGS, 0)


@pytest.fixture(scope="module")
def tiny_reader(tmp_path_factory):
    """A 2-layer BERT extractive-QA model (start and end logits)."""
    return _save(
        tmp_path_factory.mktemp("reader"), BertForQuestionAnswering, ["LABEL_0", "LABEL_1"], 0
    )


def export(model, out, fmt):
    result = invoke("export", model, "--format", fmt, "--output-dir", out, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _plain(code, folder, capsys):
    """What ``code`` prints for ``folder``, run here (the model export started from)."""
    capsys.readouterr()
    exec("import json, torch\n" + code, {"folder": str(folder)})
    return capsys.readouterr().out


def _rounded(text):
    return re.sub(r"-?\d+\.\d+(e-?\d+)?", lambda m: f"{float(m.group()):.3f}", text)


def _close(got, expected):
    """JSON values equal but for float noise (1e-4)."""
    if isinstance(expected, dict):
        assert got.keys() == expected.keys()
        for key in expected:
            _close(got[key], expected[key])
    elif isinstance(expected, list):
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            _close(g, e)
    elif isinstance(expected, float):
        assert abs(got - expected) <= 1e-4
    else:
        assert got == expected


@pytest.mark.parametrize("task", list(HEADS))
def test_hf_export_runs_in_plain_transformers(request, task, tmp_path, capsys):
    fixture, auto, _, check = HEADS[task]
    src = request.getfixturevalue(fixture)
    out = tmp_path / "hf"
    result = export(src, out, "hf")
    assert result["verified"] and result["max_abs_diff"] <= 1e-4
    assert result["pipeline_tag"] == task
    card = (out / "README.md").read_text()
    assert f"pipeline_tag: {task}" in card.split("---\n")[1]
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert f"from transformers import AutoTokenizer, {auto.__name__}" in snippet

    # the card's usage snippet and the check, in a Python that never imports distill_cli
    code = f"import json, torch\nfolder = {str(out)!r}\n" + check
    proc = run_without_distill_cli(snippet.replace("path/to/hf", str(out)) + code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    *usage, checked = proc.stdout.strip().splitlines()
    expected_usage = _plain(snippet.replace("path/to/hf", str(src)), src, capsys)
    assert usage and _rounded("\n".join(usage)) == _rounded(expected_usage.strip())
    expected = json.loads(_plain(check, src, capsys))
    assert expected
    _close(json.loads(checked), expected)
    if task == "token-classification":
        config = json.loads((out / "config.json").read_text())
        assert list(config["id2label"].values()) == TAGS


def _reference(src, auto, enc):
    model = auto.from_pretrained(src).eval()
    with torch.no_grad():
        return model(**enc)


@pytest.mark.parametrize("fmt", ["onnx", "onnx-int8"])
@pytest.mark.parametrize("task", list(HEADS))
def test_onnx_export_keeps_the_heads_outputs(request, task, fmt, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from distill_cli.models.onnx_model import OnnxClassifier

    fixture, auto, names, _ = HEADS[task]
    src = request.getfixturevalue(fixture)
    out = tmp_path / fmt
    result = export(src, out, fmt)
    assert result["verified"] and result["outputs"] == names
    assert "token_type_ids" in result["inputs"]
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    tail = [len(TAGS)] if task == "token-classification" else []
    assert [(o.name, o.shape) for o in sess.get_outputs()] == [
        (n, ["batch", "sequence", *tail]) for n in names
    ]
    if task == "question-answering":
        assert set(result["by_output"]) == set(names)
    if fmt == "onnx":
        assert result["max_abs_diff"] <= 1e-4 and "int8_check" not in result
    else:
        check = result["int8_check"]
        assert check["passed"] == (result["argmax_agreement"] >= check["threshold"])

    # OnnxClassifier, as evaluate runs it: every output by name, padded batches of two sizes
    tok = AutoTokenizer.from_pretrained(out)
    model = OnnxClassifier(out)
    tolerance = 1e-4 if fmt == "onnx" else 0.05  # int8 measured 0.0034
    for texts in (TEXTS, TEXTS[:1]) if task != "question-answering" else (QUESTIONS, QUESTIONS[:1]):
        if task == "question-answering":
            enc = tok(
                [q for q, _ in texts], [c for _, c in texts], return_tensors="pt", padding=True
            )
        else:
            enc = tok(texts, return_tensors="pt", padding=True)
        ref, got = _reference(src, auto, enc), model(**enc)
        keep = enc["attention_mask"].bool()
        for name in names:
            expected, actual = getattr(ref, name), getattr(got, name)
            assert actual.shape == expected.shape
            assert (actual - expected).abs()[keep].max() <= tolerance, name


def test_int8_agreement_check_warns_below_its_threshold(capsys):
    from distill_cli.export.int8 import AGREEMENT, agreement_check

    assert agreement_check("feature-extraction", {"argmax_agreement": 0.0}) is None
    threshold, measure, key = AGREEMENT["token-classification"]
    ok = agreement_check("token-classification", {key: threshold})
    assert ok == {"measure": measure, "threshold": threshold, "value": threshold, "passed": True}
    assert capsys.readouterr().err == ""
    low = agreement_check("question-answering", {"argmax_agreement": 0.5})
    assert low["passed"] is False
    err = capsys.readouterr().err
    assert err.startswith("warning: int8 start and end position agreement") and "50.0%" in err


def test_compare_span_outputs_ignores_padding():
    from distill_cli.export.verify import compare

    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    start = torch.tensor([[0.0, 2.0, 1.0, 9.0], [3.0, 1.0, 5.0, 5.0]])
    end = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    ref = {"start_logits": start, "end_logits": end}
    # padded positions differ (and hold the row maxima): no difference, full agreement
    got = {"start_logits": start.clone(), "end_logits": end.clone()}
    got["start_logits"][0, 3], got["start_logits"][1, 2:] = -7.0, 0.0
    stats = compare(ref, got, mask)
    assert stats["max_abs_diff"] == 0.0 and stats["argmax_agreement"] == 1.0
    # one end position moves to another real position: half the end rows disagree
    got["end_logits"][1, 0] = 4.0
    stats = compare(ref, got, mask)
    assert stats["max_abs_diff"] == 4.0 and stats["argmax_agreement"] == 0.75
    assert stats["by_output"]["start_logits"] == {"max_abs_diff": 0.0, "argmax_agreement": 1.0}
    assert stats["by_output"]["end_logits"] == {"max_abs_diff": 4.0, "argmax_agreement": 0.5}

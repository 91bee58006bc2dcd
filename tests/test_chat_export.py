"""A distilled chat student through export and compress-vocab: it chats in plain transformers
through its saved template, its ONNX logits match PyTorch, and a compressed vocabulary keeps the
template and is compared with the teacher token by token."""

from __future__ import annotations

import json
import re

import pytest
import torch
from helpers import invoke, run_without_distill_cli
from test_chat import chat_args, chat_data, chat_llama  # noqa: F401  (fixtures)
from test_chat_data import CHATML
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill_cli.data.batching import PadCollator
from distill_cli.evaluation import chat as chat_eval
from distill_cli.recipe import DataConfig
from distill_cli.tasks import chat as chat_task
from distill_cli.training.stages import compressed_vocab

MESSAGES = [{"role": "user", "content": "hello there, how are you?"}]


@pytest.fixture(scope="module")
def chat_student(chat_llama, chat_data, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("chat-student") / "student"
    result = invoke(*chat_args(chat_llama, chat_data, out))
    assert result.exit_code == 0, result.output
    return out


def _export(model, out, fmt):
    result = invoke("export", model, "--format", fmt, "--output-dir", out, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_hf_export_chats_through_its_template_in_plain_transformers(chat_student, tmp_path):
    out = tmp_path / "hf"
    result = _export(chat_student, out, "hf")
    assert result["verified"] and result["max_abs_diff"] <= 1e-4
    assert result["pipeline_tag"] == "text-generation"
    card = (out / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert 'pipeline("text-generation"' in snippet and "messages" in snippet
    snippet = snippet.replace("max_new_tokens=40", "max_new_tokens=6, do_sample=False")
    # the card's snippet, then the same reply by hand from the template, without distill_cli
    check = f"""
import json
from transformers import AutoModelForCausalLM, AutoTokenizer
folder = {str(out)!r}
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder).eval()
ids = tok.apply_chat_template({MESSAGES!r}, add_generation_prompt=True, return_tensors="pt",
                              return_dict=True)
new = model.generate(**ids, max_new_tokens=6, do_sample=False)[0, ids["input_ids"].shape[1]:]
reply = chat({MESSAGES!r}, max_new_tokens=6, do_sample=False)[0]["generated_text"]
print(json.dumps({{"template": tok.chat_template, "pipeline": reply, "by_hand": tok.decode(new, skip_special_tokens=True)}}))
"""
    proc = run_without_distill_cli(snippet.replace("path/to/hf", str(out)) + check, tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["template"] == CHATML
    assert [m["role"] for m in got["pipeline"]] == ["user", "assistant"]
    assert got["pipeline"][-1]["content"].strip() == got["by_hand"].strip()


@pytest.mark.parametrize("fmt", ["onnx", "onnx-int8"])
def test_onnx_export_of_a_chat_student_gives_its_logits(chat_student, tmp_path, fmt):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / fmt
    result = _export(chat_student, out, fmt)
    assert result["outputs"] == ["logits"] and result["inputs"] == ["input_ids", "attention_mask"]
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == CHATML
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="np",
                                  return_dict=True)  # fmt: skip
    feed = {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]}
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, feed)[0])
    model = AutoModelForCausalLM.from_pretrained(chat_student).eval()
    with torch.no_grad():
        expected = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits
    if fmt == "onnx":
        assert result["max_abs_diff"] <= 1e-4 and (got - expected).abs().max() <= 1e-4
    else:  # int8 weights: the next token mostly agrees, as the export reports
        assert 0 <= result["argmax_agreement"] <= 1 and got.shape == expected.shape


@pytest.fixture(scope="module")
def compressed(chat_student, chat_llama, chat_data, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("compressed") / "compressed"
    result = invoke("compress-vocab", chat_student, "--teacher", chat_llama, "--corpus",
                    chat_data, "--output-dir", out, "--ratio", "0.5", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "conversations rendered with the chat template" in result.stderr
    return out, json.loads(result.stdout)


def test_compress_vocab_keeps_the_template_and_its_tokens(compressed, chat_llama):  # noqa: F811
    out, report = compressed
    assert report["vocab_after"] < report["vocab_before"]
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == CHATML
    kept = json.loads((out / "vocab_map.json").read_text())["kept_ids"]
    teacher_tok = AutoTokenizer.from_pretrained(chat_llama)
    for special in ("<|im_start|>", "<|im_end|>"):  # the template's own tokens survive
        assert teacher_tok.convert_tokens_to_ids(special) in kept
        assert tok.convert_tokens_to_ids(special) not in (None, tok.unk_token_id)


def test_evaluate_compares_chat_students_with_the_teacher(
    chat_student,
    compressed,
    chat_llama,  # noqa: F811
    chat_data,  # noqa: F811
    tmp_path,
):
    """The distilled student and its compressed copy beside the teacher, in one table."""
    report = tmp_path / "report"
    result = invoke(
        "evaluate", chat_student, compressed[0], "--teacher", chat_llama, "--data", chat_data,
        "--split", "validation", "--set", "data.max_length=96", "--output-dir", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "ms/token b1" in result.output and "What is the capital of France?" in result.output
    assert "word agreement" not in result.output  # a chat model's agreement is per next token
    got = json.loads((report / "evaluation.json").read_text())
    assert got["primary_metric"] == "nll" and got["metrics_shown"][:2] == ["nll", "perplexity"]
    teacher = got["models"]["teacher"]
    for name in ("student", "compressed"):
        distilled = got["models"][name]
        m = distilled["metrics"]
        assert m["nll"] > 0 and 0 <= m["agreement"] <= 1 and m["kl"] >= 0, name
        assert distilled["retention"] == pytest.approx(teacher["metrics"]["nll"] / m["nll"])
        assert [r["prompt"] for r in distilled["replies"]] == list(chat_eval.PROMPTS)
        assert distilled["latency_ms_b1"] > 0 and distilled["throughput_b32"] > 0
    assert all(isinstance(r["reply"], str) for r in teacher["replies"])


def test_a_full_vocabulary_map_changes_no_agreement(chat_llama, chat_data):  # noqa: F811
    """against_teacher through an identity vocabulary map equals the plain comparison."""
    model = AutoModelForCausalLM.from_pretrained(chat_llama).eval()
    student = AutoModelForCausalLM.from_pretrained(chat_llama, num_hidden_layers=1).eval()
    tok = AutoTokenizer.from_pretrained(chat_llama)
    d = DataConfig(name=str(chat_data), max_length=96)
    task = chat_task.load(d, ["validation"])
    ds = chat_task.eval_features(task.splits["validation"], task, tok, d, "validation").loader_ds
    plain = chat_eval.against_teacher(student, model, ds, PadCollator(0))
    size = model.get_input_embeddings().weight.shape[0]
    same = torch.arange(size)
    mapped = chat_eval.against_teacher(student, model, ds, PadCollator(0), 4, (same, same))
    assert mapped["agreement"] == plain["agreement"]
    assert mapped["kl"] == pytest.approx(plain["kl"], rel=1e-5)
    assert compressed_vocab(None) is None

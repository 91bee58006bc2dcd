"""Extractive QA through finetune-distill and evaluate, end to end on tiny readers whose
contexts need several windows, and its KD terms against naive start/end formulas."""

import json
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import FILLER, make_tokenizer, tiny_bert_config
from helpers import RECIPES, invoke
from test_token_classification import letters_tokenizer
from transformers import BertForQuestionAnswering

from distill_cli.models.forward import Outputs
from distill_cli.training import losses

NAMES = ["anna", "bob", "carl", "dora", "emil"]
WINDOW = ["--set", "data.max_length=32", "--set", "data.doc_stride=8"]


def squad_file(path, n, seed):
    """SQuAD JSON: each context holds a name among 20-40 filler words (more than one window of
    32 tokens); the question asks for it."""
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(20, 40))]
        at = rng.randint(0, len(words))
        name = rng.choice(NAMES)
        before = " ".join(words[:at])
        context = " ".join([*words[:at], name, *words[at:]])
        start = len(before) + 1 if before else 0
        qa = {"id": f"q{seed}-{i}", "question": "who was in the film",
              "answers": [{"text": name, "answer_start": start}]}  # fmt: skip
        paragraphs.append({"context": context, "qas": [qa]})
    path.write_text(
        json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]})
    )
    return path


@pytest.fixture(scope="module")
def qa_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("qa")
    for split, n, seed in (("train", 32, 0), ("validation", 8, 1), ("test", 8, 2)):
        squad_file(path / f"{split}.json", n, seed)
    return path


def reader(path, tokenizer, layers=4, hidden=48, seed=0):
    torch.manual_seed(seed)
    config = tiny_bert_config(len(tokenizer), layers=layers, hidden=hidden)
    config.num_labels = 2
    BertForQuestionAnswering(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def qa_teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("qa_teacher")
    return reader(path, make_tokenizer(path))


def distil(recipe, teacher, data, out, *extra):
    return invoke(
        "finetune-distill", "--recipe", RECIPES / recipe, "--teacher", teacher, "--data", data,
        "--output-dir", out, "--max-steps", 3, "--set", "train.batch_size=8",
        "--set", "train.learning_rate=1e-3", "--set", "train.logging_steps=1",
        "--set", "student.num_layers=2", *WINDOW, *extra,
    )  # fmt: skip


def test_tkd_reader_end_to_end_and_evaluate(qa_teacher, qa_data, tmp_path):
    out = tmp_path / "student"
    result = distil("tkd-nlp.yaml", qa_teacher, qa_data, out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "train_results.json").read_text())
    assert summary["primary_metric"] == "f1"
    assert set(summary["eval"]) == {"f1", "exact_match"}
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForQuestionAnswering"]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(line.get("loss/soft_label_kl", -1) >= 0 for line in lines)

    report = tmp_path / "report"
    result = invoke(
        "evaluate", out, "--data", qa_data, "--split", "test", "--teacher", qa_teacher,
        "--output-dir", report, *WINDOW,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    evaluation = json.loads((report / "evaluation.json").read_text())
    assert evaluation["primary_metric"] == "f1"
    student = evaluation["models"]["student"]
    assert set(student["metrics"]) == {"f1", "exact_match"}
    # timed at 384 tokens, or the model's longest input (128 here)
    assert student["latency_length"] == 128 and student["latency_ms_b1"] > 0


def test_a_copy_of_the_teacher_scores_what_the_teacher_scores(qa_teacher, qa_data, tmp_path):
    result = invoke(
        "evaluate", qa_teacher, "--data", qa_data, "--split", "test", "--teacher", qa_teacher,
        "--output-dir", tmp_path / "report", *WINDOW,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    models = json.loads((tmp_path / "report" / "evaluation.json").read_text())["models"]
    student = next(v for k, v in models.items() if k != "teacher")
    assert student["metrics"] == models["teacher"]["metrics"]


def test_glmd_task_stage_runs_on_a_reader(qa_teacher, qa_data, tmp_path):
    out = tmp_path / "glmd"
    result = distil(
        "glmd-finetune.yaml", qa_teacher, qa_data, out,
        "--set", "student.init=truncate", "--set", "phases.0.max_steps=1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/word_kl" in line for line in lines)


def test_reader_kd_across_tokenizers_is_one_line(qa_teacher, qa_data, tmp_path):
    student = tmp_path / "letters"
    reader(student, letters_tokenizer(student), layers=2, hidden=32, seed=1)
    result = distil(
        "tkd-nlp.yaml", qa_teacher, qa_data, tmp_path / "out",
        "--student", student, "--set", "student.init=checkpoint",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "share a tokenizer" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_doc_stride_not_below_max_length_is_one_line(qa_teacher, qa_data, tmp_path):
    result = distil(
        "tkd-nlp.yaml", qa_teacher, qa_data, tmp_path / "out", "--set", "data.doc_stride=32"
    )
    assert result.exit_code == 2
    assert "doc_stride" in result.output and "Traceback" not in result.output


def test_a_tagger_on_qa_data_is_refused_by_evaluate(qa_data, tmp_path):
    from test_token_classification import TAGS
    from transformers import BertForTokenClassification

    make_tokenizer(tmp_path / "tagger")
    BertForTokenClassification(tiny_bert_config(60, labels=TAGS)).save_pretrained(
        tmp_path / "tagger"
    )
    result = invoke("evaluate", tmp_path / "tagger", "--data", qa_data, "--split", "test")
    assert result.exit_code == 2
    assert "question answering" in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------- the loss terms


def test_span_terms_against_naive_start_and_end_formulas():
    torch.manual_seed(0)
    s, t = torch.randn(2, 2, 6), torch.randn(2, 2, 6)  # [batch, start/end, positions]
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    labels = torch.tensor([[2, 3], [1, 1]])
    temperature = 3.0
    step = losses.Step(
        student=Outputs(logits=s), teacher=Outputs(logits=t), labels=labels, mask=mask, task="span"
    )
    parts = losses.loss_parts(
        {"soft_label_kl": losses.Tempered(temperature=temperature), "ce": losses.Weighted()}, step
    )
    kl, ce = 0.0, 0.0
    for b in range(2):
        n = int(mask[b].sum())
        for k in range(2):  # start, end
            p_t = F.softmax(t[b, k, :n] / temperature, -1)
            log_p_s = F.log_softmax(s[b, k, :n] / temperature, -1)
            kl += (p_t * (p_t.log() - log_p_s)).sum()
            ce += -F.log_softmax(s[b, k, :n], -1)[labels[b, k]]
    assert parts["soft_label_kl"].item() == pytest.approx(
        (kl / 4 * temperature**2).item(), rel=1e-5
    )
    assert parts["ce"].item() == pytest.approx((ce / 4).item(), rel=1e-5)


def test_onnx_export_of_a_reader_scores_as_pytorch(qa_teacher, qa_data, tmp_path):
    onnx_dir = tmp_path / "onnx"
    result = invoke("export", qa_teacher, "--format", "onnx", "--output-dir", onnx_dir)
    assert result.exit_code == 0, result.output
    result = invoke(
        "evaluate", qa_teacher, onnx_dir, "--data", qa_data, "--split", "test",
        "--output-dir", tmp_path / "report", *WINDOW,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    models = json.loads((tmp_path / "report" / "evaluation.json").read_text())["models"]
    torch_metrics, onnx_metrics = (m["metrics"] for m in models.values())
    assert onnx_metrics == pytest.approx(torch_metrics, abs=1e-6)

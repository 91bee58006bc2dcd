"""Chat distillation through the real CLI: a tiny Llama with a ChatML template teaches its
truncation on conversations, the loss reading the assistant's tokens only."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_bpe_tokenizer, save_tiny_llama
from helpers import RECIPES, invoke
from test_chat_data import CHATML, TALK

from distill_cli.evaluation import chat as chat_eval
from distill_cli.tasks import chat as chat_task

SPECIAL = ["<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def chat_llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat-llama")
    tok = make_bpe_tokenizer(path)
    tok.add_special_tokens({"additional_special_tokens": SPECIAL})
    tok.chat_template = CHATML
    tok.save_pretrained(path)
    save_tiny_llama(path, tok, max_position_embeddings=256)
    return path


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat-data")
    rows = [{"messages": TALK[1:3]}, {"messages": TALK[1:5]}, {"messages": TALK}]
    (path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows * 4))
    (path / "validation.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return path


def chat_args(teacher, data, out, *extra):
    return [
        "finetune-distill", "--recipe", RECIPES / "chat.yaml", "--teacher", teacher,
        "--data", data, "--output-dir", out, "--max-steps", "2",
        "--set", "student.num_layers=2", "--set", "train.batch_size=4",
        "--set", "train.mixed_precision=no", "--set", "data.max_length=96", *extra,
    ]  # fmt: skip


def test_positions_that_predict_an_assistant_token_are_the_loss_mask():
    row = {"input_ids": [5, 6, 7, 8, 9], "attention_mask": [1] * 5,
           "assistant_mask": [0, 0, 1, 1, 0]}  # fmt: skip
    got = chat_task._shifted(row)
    assert got["loss_mask"] == [0, 1, 1, 0, 0]
    assert got["labels"] == [-100, 7, 8, -100, -100]


def test_chat_distillation_runs_and_saves_a_chat_model(chat_llama, chat_data, tmp_path):
    out = tmp_path / "student"
    result = invoke(*chat_args(chat_llama, chat_data, out))
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/word_kl" in r for r in records)
    summary = json.loads((out / "train_results.json").read_text())
    assert summary["primary_metric"] == "nll" and summary["eval"]["nll"] > 0
    assert summary["eval"]["perplexity"] == pytest.approx(
        torch.tensor(summary["eval"]["nll"]).exp().item(), rel=1e-5
    )

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and tok.chat_template == CHATML


def test_the_loss_reads_only_assistant_positions(chat_llama, chat_data, tmp_path, monkeypatch):
    """Changing the teacher's logits where the user speaks leaves the loss unchanged."""
    from distill_cli.training import losses

    seen = []
    original = losses.loss_parts

    def spy(terms, step, extras=None):
        seen.append(step.mask.clone())
        return original(terms, step, extras)

    monkeypatch.setattr(losses, "loss_parts", spy)
    result = invoke(*chat_args(chat_llama, chat_data, tmp_path / "s", "--set", "train.max_steps=1"))
    assert result.exit_code == 0, result.output
    mask = seen[0]
    assert 0 < mask.sum() < mask.numel() / 2  # replies only: far fewer than every token


def test_a_conversation_without_a_reply_is_one_line(chat_llama, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"messages": TALK[:2]}) + "\n")
    result = invoke(*chat_args(chat_llama, data, tmp_path / "s"))
    assert result.exit_code == 2
    assert "train row 0: the conversation has no assistant turn" in result.output
    assert "Traceback" not in result.output


def test_train_on_must_be_assistant_or_all(chat_llama, chat_data, tmp_path):
    result = invoke(*chat_args(chat_llama, chat_data, tmp_path / "s", "--set", "data.train_on=bot"))
    assert result.exit_code == 2 and "data.train_on must be assistant or all" in result.output


def test_the_teacher_agrees_with_itself(chat_llama, chat_data):
    """against_teacher on one model: every top token agrees and the KL is 0."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill_cli.data.batching import PadCollator
    from distill_cli.recipe import DataConfig

    model = AutoModelForCausalLM.from_pretrained(chat_llama).eval()
    tok = AutoTokenizer.from_pretrained(chat_llama)
    d = DataConfig(name=str(chat_data), max_length=96)
    task = chat_task.load(d, ["validation"])
    features = chat_task.eval_features(task.splits["validation"], task, tok, d, "validation")
    found = chat_eval.against_teacher(model, model, features.loader_ds, PadCollator(0))
    assert found["agreement"] == 1.0 and found["kl"] == pytest.approx(0.0, abs=1e-6)

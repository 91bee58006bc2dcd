"""On-policy batches (GKD's λ): a phase's ``on_policy`` share of batches trains on replies the
student samples to the data's prompts, scored by the teacher; through the real CLI on the tiny
chat Llama of test_chat."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import invoke
from test_chat import chat_args, chat_data, chat_llama  # noqa: F401 (fixtures)
from test_chat_data import CHATML, TALK
from transformers import AutoTokenizer

from distill_cli.data import chat
from distill_cli.tasks.base import IGNORE
from distill_cli.training import on_policy, train

ON = ("--set", "phases.0.on_policy=1.0", "--set", "phases.0.sample_max_new_tokens=8")


def _record(monkeypatch):
    """Spy on sampling and on the loss: what was sampled, and the batches trained on."""
    sampled, trained = [], []
    sample, compute_loss = on_policy.sample, train.compute_loss

    def spy_sample(model, rows, *args, **kwargs):
        replies = sample(model, rows, *args, **kwargs)
        sampled.append((rows, replies))
        return replies

    def spy_loss(s, batch, plan):
        trained.append({k: v.clone() for k, v in batch.items()})
        return compute_loss(s, batch, plan)

    monkeypatch.setattr(on_policy, "sample", spy_sample)
    monkeypatch.setattr(train, "compute_loss", spy_loss)
    return sampled, trained


def test_the_sampled_replies_are_the_ones_trained_on(chat_llama, chat_data, tmp_path, monkeypatch):  # noqa: F811
    sampled, trained = _record(monkeypatch)
    out = tmp_path / "s"
    result = invoke(*chat_args(chat_llama, chat_data, out, *ON, "--set", "train.logging_steps=1"))
    assert result.exit_code == 0, result.output
    assert "on-policy: 100% of batches sample replies from the student (T=0.9" in result.output
    assert len(sampled) == len(trained) == 2
    tok = AutoTokenizer.from_pretrained(chat_llama)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for (prompts, replies), batch in zip(sampled, trained, strict=True):
        assert "reply_start" not in batch
        for i, (prompt, reply) in enumerate(zip(prompts, replies, strict=True)):
            assert 1 <= len(reply) <= 8
            assert im_end not in reply[:-1]  # a reply stops at its end-of-turn token
            # the prompt ends with the template's generation prompt
            assert tok.decode(prompt).endswith("<|im_start|>assistant\n")
            n = len(prompt) + len(reply)
            ids = batch["input_ids"][i]
            assert ids[: len(prompt)].tolist() == prompt
            assert ids[len(prompt) : n].tolist() == reply
            assert batch["attention_mask"][i].sum() == n
            predicts = torch.zeros_like(ids)
            predicts[len(prompt) - 1 : n - 1] = 1
            assert batch["loss_mask"][i].tolist() == predicts.tolist()
            labels = batch["labels"][i]
            assert labels[predicts.bool()].tolist() == reply
            assert (labels[~predicts.bool()] == IGNORE).all()
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "phase" in r]
    assert [r["on_policy/batches"] for r in logged] == [1, 1]
    lengths = [sum(map(len, replies)) / len(replies) for _, replies in sampled]
    assert [r["on_policy/reply_tokens"] for r in logged] == pytest.approx(lengths)


def test_off_policy_never_samples(chat_llama, chat_data, tmp_path, monkeypatch):  # noqa: F811
    sampled, trained = _record(monkeypatch)
    result = invoke(*chat_args(chat_llama, chat_data, tmp_path / "s", "--max-steps", "1"))
    assert result.exit_code == 0, result.output
    assert sampled == [] and len(trained) == 1 and "on-policy" not in result.output
    records = (tmp_path / "s" / "metrics.jsonl").read_text()
    assert "on_policy/" not in records


def test_a_share_samples_the_same_batches_in_every_run_with_a_seed():
    picks = [on_policy.chosen(42, b, 0.5) for b in range(1, 401)]
    assert picks == [on_policy.chosen(42, b, 0.5) for b in range(1, 401)]
    assert 0.4 < sum(picks) / len(picks) < 0.6
    assert picks != [on_policy.chosen(7, b, 0.5) for b in range(1, 401)]
    assert not any(on_policy.chosen(42, b, 0.0) for b in range(1, 50))
    assert all(on_policy.chosen(42, b, 1.0) for b in range(1, 50))


def test_a_share_through_the_cli_is_reproducible(chat_llama, chat_data, tmp_path, monkeypatch):  # noqa: F811
    runs = []
    sampled, trained = _record(monkeypatch)
    for name in ("a", "b"):
        args = chat_args(
            chat_llama, chat_data, tmp_path / name, "--max-steps", "4",
            "--set", "phases.0.on_policy=0.5", "--set", "phases.0.sample_max_new_tokens=4",
        )  # fmt: skip
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        runs.append((list(sampled), [b["input_ids"].tolist() for b in trained]))
        sampled.clear(), trained.clear()
    expected = sum(on_policy.chosen(42, b, 0.5) for b in range(1, 5))
    assert len(runs[0][0]) == expected
    assert runs[0] == runs[1]  # the same batches sample, and sample the same replies


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("on_policy", "1.5", "phases.0.on_policy must be in [0, 1]"),
        ("on_policy", "-0.1", "phases.0.on_policy must be in [0, 1]"),
        ("sample_temperature", "0", "phases.0.sample_temperature must be a finite number > 0"),
        ("sample_max_new_tokens", "0", "phases.0.sample_max_new_tokens must be >= 1"),
    ],
)
def test_bad_values_are_one_line(chat_llama, chat_data, tmp_path, key, value, message):  # noqa: F811
    args = chat_args(chat_llama, chat_data, tmp_path / "s", "--set", f"phases.0.{key}={value}")
    result = invoke(*args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_on_policy_needs_a_chat_task(tiny_teacher, tiny_data_dir, tmp_path):
    from helpers import tkd_args

    args = tkd_args(tiny_teacher, tiny_data_dir, tmp_path / "s", "--set", "phases.0.on_policy=0.5")
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "phases.0.on_policy: on-policy batches sample chat replies" in result.output
    assert "Traceback" not in result.output


def test_reply_start_is_the_last_reply_after_its_generation_prompt(chat_llama):  # noqa: F811
    tok = AutoTokenizer.from_pretrained(chat_llama)
    prompt = tok.apply_chat_template(TALK[:-1], chat_template=CHATML, add_generation_prompt=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    for train_on in ("assistant", "all"):
        row, _ = chat.encode(tok, CHATML, TALK, 512, train_on, "talk")
        assert row["input_ids"][: row["reply_start"]] == prompt
    # cut inside the last reply's prompt: the last reply that still starts in range
    row, _ = chat.encode(tok, CHATML, TALK, len(prompt) - 2, "assistant", "talk")
    first = tok.apply_chat_template(TALK[:2], chat_template=CHATML, add_generation_prompt=True)
    first = list(first["input_ids"] if hasattr(first, "keys") else first)
    assert row["reply_start"] == len(first)
    assert on_policy.stop_ids(_Config(), tok, CHATML) == sorted(
        {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
    )


class _Config:
    class generation_config:  # noqa: N801
        eos_token_id = None


def test_prompts_are_left_padded_and_replies_right_padded():
    batch = {
        "input_ids": torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]]),
        "reply_start": torch.tensor([3, 2]),
    }
    rows = on_policy.prompts(batch)
    assert rows == [[1, 2, 3], [6, 7]]
    left = on_policy.left_padded(rows, pad=0)
    assert left["input_ids"].tolist() == [[1, 2, 3], [0, 6, 7]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert on_policy.cut_at_stop([9, 10, 11, 10], stops=[11]) == [9, 10, 11]
    assert on_policy.cut_at_stop([9, 10], stops=[11]) == [9, 10]

    got = on_policy.reply_batch(rows, [[9, 11], [10, 10, 10]], pad=0, max_length=5)
    assert got["input_ids"].tolist() == [[1, 2, 3, 9, 11], [6, 7, 10, 10, 10]]
    assert got["attention_mask"].tolist() == [[1] * 5, [1] * 5]
    assert got["loss_mask"].tolist() == [[0, 0, 1, 1, 0], [0, 1, 1, 1, 0]]
    assert got["labels"].tolist() == [[-100, -100, 9, 11, -100], [-100, 10, 10, 10, -100]]

    cut = on_policy.reply_batch(rows, [[9, 11], [10]], pad=0, max_length=4)  # the first is cut
    assert cut["input_ids"].tolist() == [[1, 2, 3, 9], [6, 7, 10, 0]]
    assert cut["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert cut["loss_mask"].tolist() == [[0, 0, 1, 0], [0, 1, 0, 0]]
    assert cut["labels"].tolist() == [[-100, -100, 9, -100], [-100, 10, -100, -100]]


def test_sampling_leaves_the_global_random_state_alone(chat_llama):  # noqa: F811
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(chat_llama).train()
    sampling = on_policy.Sampling(1.0, 0.9, 6)
    before = torch.get_rng_state()
    a = on_policy.sample(model, [[5, 6, 7], [8, 9]], sampling, [], 0, seed=3)
    assert torch.equal(torch.get_rng_state(), before) and model.training
    assert a == on_policy.sample(model, [[5, 6, 7], [8, 9]], sampling, [], 0, seed=3)
    assert [len(r) for r in a] == [6, 6]


def test_a_resumed_run_samples_what_the_whole_run_did(chat_llama, chat_data, tmp_path, monkeypatch):  # noqa: F811
    import signal

    from test_resume import assert_same_metrics, max_weight_diff

    from distill_cli.training import checkpoints

    assert [on_policy.chosen(42, b, 0.5) for b in (3, 4)] != [False, False]

    def args(out):
        return chat_args(
            chat_llama, chat_data, out, "--max-steps", "4", "--set", "train.logging_steps=1",
            "--set", "train.save_steps=2", "--set", "phases.0.on_policy=0.5",
            "--set", "phases.0.sample_max_new_tokens=4",
        )  # fmt: skip

    assert invoke(*args(tmp_path / "whole")).exit_code == 0
    calls = []
    requested = checkpoints.StopSignals.requested

    def stop_after_step_2(self, accelerator):
        calls.append(1)
        return signal.SIGTERM if len(calls) == 2 else requested(self, accelerator)

    monkeypatch.setattr(checkpoints.StopSignals, "requested", stop_after_step_2)
    out = tmp_path / "stopped"
    assert invoke(*args(out)).exit_code == 143
    monkeypatch.undo()
    result = invoke(*args(out))
    assert result.exit_code == 0 and "resuming from" in result.output, result.output
    assert max_weight_diff(tmp_path / "whole", out) <= 1e-6
    assert_same_metrics(tmp_path / "whole", out)

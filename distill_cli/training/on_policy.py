"""On-policy batches for chat distillation (GKD's λ, TRL's ``lmbda``).

A phase's ``on_policy`` share of batches trains on replies the student samples itself: each
conversation is cut before its last assistant reply (``reply_start``: the prompt with the
template's assistant header), the student samples a reply (``sample_temperature``, at most
``sample_max_new_tokens`` tokens, stopping at end-of-sequence or end-of-turn), and the batch
becomes prompt + sampled reply, the loss reading the positions that predict a sampled token.
The teacher then scores those same tokens in the usual loss.

Which batches sample, and the sampling itself, depend only on (train.seed, the run's batch
counter), never on the global random state, so every process decides alike and a resumed run
samples what the uninterrupted one would.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import numpy as np
import torch

from distill_cli import tasks
from distill_cli.data import chat
from distill_cli.data.batching import left_padded
from distill_cli.errors import DistillError
from distill_cli.tasks.base import IGNORE


@dataclass
class Sampling:
    share: float  # of batches
    temperature: float
    max_new_tokens: int


def of_phase(phase) -> Sampling | None:
    if phase.on_policy <= 0:
        return None
    return Sampling(phase.on_policy, phase.sample_temperature, phase.sample_max_new_tokens)


def check(recipe, built) -> None:
    """Refuse on-policy phases where nothing can be sampled (a task that does not generate) or
    the student's ids are not the teacher's (a compressed vocabulary)."""
    phases = [f"phases.{i}.on_policy" for i, p in enumerate(recipe.phases) if p.on_policy > 0]
    if not phases:
        return
    if built.task is None or not tasks.of(built.task).generates:
        raise DistillError(
            f"{', '.join(phases)}: on-policy batches sample chat replies, and this run does not "
            "train a chat model; set it to 0"
        )
    if built.id_remap is not None:
        raise DistillError(
            f"{', '.join(phases)}: a student with a compressed vocabulary samples ids the teacher "
            "does not read; set it to 0, or use a student with the teacher's vocabulary"
        )


def chosen(seed: int, batch: int, share: float) -> bool:
    """Whether the run's ``batch``-th batch (1-based, counted over the whole run) samples."""
    if share <= 0:
        return False
    return share >= 1 or np.random.default_rng([seed, batch, 0]).random() < share


def sampling_seed(seed: int, batch: int, process: int) -> int:
    return int(np.random.default_rng([seed, batch, 1, process]).integers(2**62))


def stop_ids(model, tokenizer, template: str | None) -> list[int]:
    """End-of-sequence ids (tokenizer and generation config) and the template's end-of-turn."""
    ids = [tokenizer.eos_token_id]
    eos = model.generation_config.eos_token_id
    ids += eos if isinstance(eos, list) else [eos]
    if template:
        ids += chat.end_of_turn_ids(tokenizer, template)
    return sorted({i for i in ids if i is not None})


def prompts(batch: dict) -> list[list[int]]:
    """Each row's tokens before its last reply (the right-padded batch's ``reply_start``)."""
    ids, starts = batch["input_ids"].tolist(), batch["reply_start"].tolist()
    return [row[:start] for row, start in zip(ids, starts, strict=True)]


def cut_at_stop(tokens: list[int], stops: list[int]) -> list[int]:
    """The sampled tokens through the first stop token (inclusive)."""
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[: i + 1]
    return tokens


def sample(
    model, rows: list[list[int]], sampling: Sampling, stops, pad: int, seed: int, autocast=None
) -> list[list[int]]:
    """Each prompt's reply sampled from ``model`` (a PreTrainedModel), through its stop token.
    The global random state is left as it was; ``seed`` alone decides the draw."""
    device = next(model.parameters()).device
    inputs = left_padded(rows, pad, device)
    was_training = model.training
    model.eval()
    cuda = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            torch.default_generator.manual_seed(seed)
            if cuda:
                torch.cuda.manual_seed(seed)
            with autocast() if autocast is not None else contextlib.nullcontext():
                out = model.generate(
                    **inputs,
                    do_sample=True,
                    temperature=sampling.temperature,
                    top_k=0,  # the whole distribution, as GKD samples it
                    top_p=1.0,
                    max_new_tokens=sampling.max_new_tokens,
                    eos_token_id=list(stops) or None,
                    pad_token_id=pad,
                )
    finally:
        model.train(was_training)
    new = out[:, inputs["input_ids"].shape[1] :].tolist()
    return [cut_at_stop(tokens, stops) for tokens in new]


def reply_batch(
    rows: list[list[int]], replies: list[list[int]], pad: int, max_length: int, device=None
) -> dict[str, torch.Tensor]:
    """Prompt + reply per row, right-padded and cut to ``max_length``: ``loss_mask`` marks the
    positions that predict a reply token, ``labels`` holds that token (-100 elsewhere)."""
    seqs, masks, labels = [], [], []
    for prompt, reply in zip(rows, replies, strict=True):
        ids = (prompt + reply)[:max_length]
        n = len(ids)
        predicts = [int(len(prompt) - 1 <= t < len(prompt) + len(reply) - 1) for t in range(n)]
        predicts = [m if t + 1 < n else 0 for t, m in enumerate(predicts)]
        seqs.append(ids)
        masks.append(predicts)
        labels.append([ids[t + 1] if m else IGNORE for t, m in enumerate(predicts)])
    width = max(len(r) for r in seqs)

    def padded(rows_, fill):
        return torch.tensor([r + [fill] * (width - len(r)) for r in rows_], device=device)

    return {
        "input_ids": padded(seqs, pad),
        "attention_mask": padded([[1] * len(r) for r in seqs], 0),
        "loss_mask": padded(masks, 0),
        "labels": padded(labels, IGNORE),
    }


def on_policy_batch(s, batch: dict, sampling: Sampling) -> tuple[dict, list[int]]:
    """The batch with each row's last reply replaced by one the student samples; and the
    sampled replies' lengths."""
    b, accelerator, pos = s.built, s.accelerator, s.pos
    model = accelerator.unwrap_model(s.student).model
    tokenizer = b.tokenizer
    pad = tokenizer.pad_token_id
    pad = pad if pad is not None else (tokenizer.eos_token_id or 0)
    rows = prompts(batch)
    max_length = s.recipe.data.max_length
    # no row keeps more than max_length tokens: sampling past that is wasted
    room = max(1, max_length - min(len(r) for r in rows))
    sampling = replace(sampling, max_new_tokens=min(sampling.max_new_tokens, room))
    seed = sampling_seed(s.recipe.train.seed, pos.batches, accelerator.process_index)
    replies = sample(model, rows, sampling, s.stop_ids, pad, seed, accelerator.autocast)
    device = batch["input_ids"].device
    new = reply_batch(rows, replies, pad, max_length, device)
    return new, [len(r) for r in replies]

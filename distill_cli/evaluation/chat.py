"""What `distill evaluate` adds for chat models: agreement with the teacher on the assistant's
tokens, greedy replies to fixed prompts, and timing by generated token.

- **Agreement and KL:** on the positions that predict an assistant token of the held-out
  conversations, both models read the same tokens. ``agreement`` is how often the student's top
  token is the teacher's. ``kl`` is the mean KL(teacher ‖ student) of their next-token
  distributions.
- **Timing:** one call generates ``NEW_TOKENS`` tokens greedily. Batch-1 latency is reported per
  generated token, and throughput as generated tokens/s at batch ``BIG_BATCH``.
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from distill_cli.data import batching
from distill_cli.evaluation import latency as timing
from distill_cli.tasks.base import IGNORE

PROMPTS = (
    "What is the capital of France?",
    "Give me one tip for sleeping better.",
    "hey, how was your weekend?",
)
REPLY_TOKENS = 40  # the most new tokens of each sample reply
NEW_TOKENS = 16  # tokens generated per timed call
BIG_BATCH = 8


def _prompt_ids(tokenizer, text: str) -> list[int]:
    """One user message rendered with the generation prompt, as ids (apply_chat_template gives
    a list, or a BatchEncoding in newer transformers)."""
    messages = [{"role": "user", "content": text}]
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(enc["input_ids"] if hasattr(enc, "keys") else enc)


def _batch(tokenizer, texts) -> dict[str, torch.Tensor]:
    """Prompts left-padded into one batch, as generation needs."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return batching.left_padded([_prompt_ids(tokenizer, t) for t in texts], pad)


def _generate(model, batch: dict, new_tokens: int, exact: bool = False) -> torch.Tensor:
    pad = model.generation_config.pad_token_id or model.generation_config.eos_token_id
    return model.generate(
        **batch,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens if exact else None,
        do_sample=False,
        pad_token_id=pad if isinstance(pad, int) else (pad or [0])[0],
    )


def replies(model, tokenizer) -> list[dict]:
    """Each fixed prompt and the model's greedy reply."""
    out = []
    with torch.inference_mode():
        for prompt in PROMPTS:
            batch = _batch(tokenizer, [prompt])
            ids = _generate(model, batch, REPLY_TOKENS)[0, batch["input_ids"].shape[1] :]
            out.append({"prompt": prompt, "reply": tokenizer.decode(ids, skip_special_tokens=True)})
    return out


def timing_job(model, tokenizer) -> timing.Job:
    """Batch-1 calls on each prompt and one batch of ``BIG_BATCH``, each generating exactly
    ``NEW_TOKENS`` tokens."""
    singles = [_batch(tokenizer, [p]) for p in PROMPTS]
    big = _batch(tokenizer, [PROMPTS[i % len(PROMPTS)] for i in range(BIG_BATCH)])
    return timing.Job(lambda batch: _generate(model, batch, NEW_TOKENS, exact=True), singles, big)


def per_token(report: dict) -> None:
    """Timing by generated token: ms per token at batch 1 (``latency_ms_b1``) and tokens/s at
    batch ``BIG_BATCH`` (``throughput_b32``: the column every table reads)."""
    rounds = [ms / NEW_TOKENS for ms in report["latency_b1_rounds_ms"]]
    report["latency_b1_rounds_ms"] = rounds
    report["latency_ms_b1"] = statistics.median(rounds)  # read from the rounds, as figures does
    report["throughput_b32"] *= NEW_TOKENS  # timing.figures counted prompts, not tokens


SHOWN = ("nll", "perplexity", "agreement", "kl")  # the table's metric columns
TIMING = {
    "latency_ms_b1": "ms/token b1",  # per generated token, NEW_TOKENS a call
    "throughput_b32": f"tokens/s b{BIG_BATCH}",
}


def against_teacher(student, teacher, features, collate, batch_size=4, compressed=None) -> dict:
    """Top-1 agreement and mean KL(teacher ‖ student) over the positions that predict an
    assistant token. ``compressed``: a compress-vocab student's (vocab_index, id_remap); it reads
    the teacher's tokens remapped, its top token counts as the teacher id it stands for, and the
    KL is taken over the kept vocabulary, with the teacher renormalised there."""
    loader = DataLoader(features, batch_size=batch_size, collate_fn=collate)
    vocab_index, id_remap = compressed if compressed is not None else (None, None)
    agree, kl, count = 0, 0.0, 0
    with torch.inference_mode():
        for batch in loader:
            inputs, _ = batching.split_inputs(batch)
            keep = batch["labels"] != IGNORE
            s_inputs = (
                inputs
                if id_remap is None
                else {**inputs, "input_ids": id_remap[inputs["input_ids"]]}
            )
            s = student(**s_inputs).logits[keep].float()
            t = teacher(**inputs).logits[keep].float()
            top = s.argmax(-1) if vocab_index is None else vocab_index[s.argmax(-1)]
            agree += int((top == t.argmax(-1)).sum())
            log_t = F.log_softmax(t if vocab_index is None else t[:, vocab_index], -1)
            kl += float((log_t.exp() * (log_t - F.log_softmax(s, -1))).sum())
            count += int(keep.sum())
    return {"agreement": agree / count if count else None, "kl": kl / count if count else None}

"""What every export format shares: test sentences, their encoding, and the comparison of an
export's outputs with the PyTorch model's."""

from __future__ import annotations

import inspect

import torch

from distill_cli import tasks
from distill_cli.errors import DistillError
from distill_cli.export.sentence import SENTENCE_EMBEDDING, cosines
from distill_cli.models.forward import is_causal
from distill_cli.tasks.base import SENTENCES
from distill_cli.tasks.question_answering import QUESTION_ANSWERING

FP32_TOLERANCE = 1e-4
MB = 2**20  # as evaluate's size_mb
SPAN_OUTPUTS = QUESTION_ANSWERING.output_names  # a QA head's: one score per position

INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")  # what we can feed


def input_names(model, tokenizer) -> list[str]:
    """The inputs an export is traced with: ids, mask, and token types when model and tokenizer
    use them. The exported graph keeps those it reads (onnx.graph_inputs)."""
    names = ["input_ids", "attention_mask"]
    params = inspect.signature(model.forward).parameters
    if "token_type_ids" in params and "token_type_ids" in tokenizer.model_input_names:
        names.append("token_type_ids")
    return names


def token_inputs(name: str, row: dict) -> list[int]:
    """One row of input ``name`` for a tokenized text ``row``: the mask is all ones, position ids
    count the tokens, and token types are zeros when the tokenizer gives none."""
    n = len(row["input_ids"])
    if name == "attention_mask":
        return [1] * n
    if name == "position_ids":
        return list(range(n))
    return list(row[name]) if name in row else [0] * n


def samples(model) -> tuple:
    """What an export is checked on: its task's samples ((question, context) pairs for a QA
    head), else sentences; a cloze model's own (the sentences in its template)."""
    if getattr(model, "samples", None):
        return model.samples
    task = tasks.with_head(model.config)
    return task.samples if task is not None else SENTENCES


def encode(tokenizer, texts, names) -> dict[str, torch.Tensor]:
    """Tokenize one by one (a tuple is a text pair) and right-pad by hand: works without a pad
    token (GPT-2)."""
    rows = [
        tokenizer(*(t if isinstance(t, tuple) else (t,)), truncation=True, max_length=64)
        for t in texts
    ]
    width = max(len(r["input_ids"]) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = {}
    for name in names:
        fill = pad if name == "input_ids" else 0
        values = [token_inputs(name, r) for r in rows]
        batch[name] = torch.tensor([v + [fill] * (width - len(v)) for v in values])
    return batch


def main_output_name(out) -> str:
    for name in ("logits", "prediction_logits", SENTENCE_EMBEDDING, "last_hidden_state"):
        if getattr(out, name, None) is not None:
            return name
    raise DistillError(
        f"{type(out).__name__} has no logits, sentence embedding or last_hidden_state to export"
    )


def output_names(out) -> list[str]:
    """What an export keeps: a QA head's start and end logits; else classifier / LM logits, a
    sentence embedder's embedding, or an encoder's last hidden state."""
    if all(getattr(out, n, None) is not None for n in SPAN_OUTPUTS):
        return list(SPAN_OUTPUTS)
    return [main_output_name(out)]


def per_position(name: str, tensor) -> bool:
    """One row per token ([batch, tokens, ...]), not one per sequence ([batch, labels])."""
    return tensor.dim() == 3 or name in SPAN_OUTPUTS


def forward_kwargs(model) -> dict:
    """No cache for causal LMs: the export returns the kept outputs only."""
    return {"use_cache": False} if is_causal(model.config) else {}


def torch_outputs(model, batch: dict) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(**batch, **forward_kwargs(model))
    return {name: getattr(out, name) for name in output_names(out)}


def _compare_one(name: str, ref: torch.Tensor, got, mask: torch.Tensor) -> dict:
    ref, got = ref.float(), torch.as_tensor(got).float()
    if ref.shape != got.shape:
        raise DistillError(
            f"export output {name} has shape {tuple(got.shape)}, PyTorch {tuple(ref.shape)}"
        )
    keep = mask.bool()
    if name == SENTENCE_EMBEDDING:  # one vector per text: how far it turned, not an argmax
        cos = cosines(ref, got)
        return {
            "max_abs_diff": float((ref - got).abs().max()),
            "cosine_min": float(cos.min()),
            "cosine_mean": float(cos.mean()),
        }
    if ref.dim() == 3:  # per token: drop padded positions, argmax over labels
        ref, got = ref[keep], got[keep]
    elif name in SPAN_OUTPUTS:  # per position: argmax over the real positions of each row
        diff = (ref - got).abs()[keep].max()
        ref, got = ref.masked_fill(~keep, -torch.inf), got.masked_fill(~keep, -torch.inf)
        agree = (ref.argmax(-1) == got.argmax(-1)).float().mean()
        return {"max_abs_diff": float(diff), "argmax_agreement": float(agree)}
    return {
        "max_abs_diff": float((ref - got).abs().max()),
        "argmax_agreement": float((ref.argmax(-1) == got.argmax(-1)).float().mean()),
    }


def compare(reference: dict[str, torch.Tensor], got: dict, mask: torch.Tensor) -> dict:
    """Max abs diff and argmax agreement over real (unpadded) positions, for every output:
    per token for token logits, per row over positions for start/end logits; for a sentence
    embedding the lowest and mean cosine per text instead of agreement. Several outputs give
    the worst difference, the mean agreement, and each output's figures in by_output."""
    missing = [n for n in reference if n not in got]
    if missing:
        raise DistillError(f"the export has no output {', '.join(missing)}")
    each = {n: _compare_one(n, ref, got[n], mask) for n, ref in reference.items()}
    if len(each) == 1:
        return next(iter(each.values()))
    stats = {
        "max_abs_diff": max(s["max_abs_diff"] for s in each.values()),
        "argmax_agreement": sum(s["argmax_agreement"] for s in each.values()) / len(each),
    }
    return {**stats, "by_output": each} if len(each) > 1 else stats


def worst(stats: dict, other: dict) -> dict:
    """``stats`` with the larger max abs diff (and lower lowest cosine) of the two comparisons,
    per output too."""
    merged = {**stats, "max_abs_diff": max(stats["max_abs_diff"], other["max_abs_diff"])}
    if "cosine_min" in stats:
        merged["cosine_min"] = min(stats["cosine_min"], other["cosine_min"])
    if "by_output" in stats:
        each = stats["by_output"].items()
        merged["by_output"] = {n: worst(s, other["by_output"][n]) for n, s in each}
    return merged


def check_fp32(what: str, stats: dict) -> None:
    """An fp32 export must match PyTorch to FP32_TOLERANCE, or it is not written."""
    if not stats["max_abs_diff"] <= FP32_TOLERANCE:
        raise DistillError(
            f"{what} differs from the PyTorch model by {stats['max_abs_diff']:.3g} "
            f"(> {FP32_TOLERANCE}); the export is not written"
        )

"""What every export format shares: test sentences, their encoding, and the comparison of an
export's outputs with the PyTorch model's."""

from __future__ import annotations

import inspect

import torch

from distill_cli.errors import DistillError
from distill_cli.heads import is_causal

FP32_TOLERANCE = 1e-4
MB = 2**20  # as evaluate's size_mb
SENTENCES = (
    "the movie was good and the acting was great",
    "a dull film",
    "this story is so boring but the cast was quite lovely",
    "awful",
)


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


def encode(tokenizer, texts, names) -> dict[str, torch.Tensor]:
    """Tokenize one by one and right-pad by hand: works without a pad token (GPT-2)."""
    rows = [tokenizer(t, truncation=True, max_length=64) for t in texts]
    width = max(len(r["input_ids"]) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = {}
    for name in names:
        fill = pad if name == "input_ids" else 0
        values = [token_inputs(name, r) for r in rows]
        batch[name] = torch.tensor([v + [fill] * (width - len(v)) for v in values])
    return batch


def main_output_name(out) -> str:
    for name in ("logits", "prediction_logits", "last_hidden_state"):
        if getattr(out, name, None) is not None:
            return name
    raise DistillError(f"{type(out).__name__} has no logits or last_hidden_state to export")


def main_output(out) -> torch.Tensor:
    """Classifier / LM logits, or an encoder's last hidden state."""
    return getattr(out, main_output_name(out))


def forward_kwargs(model) -> dict:
    """No cache for causal LMs: the export returns the main output only."""
    return {"use_cache": False} if is_causal(model.config) else {}


def torch_outputs(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return main_output(model(**batch, **forward_kwargs(model)))


def compare(reference: torch.Tensor, got, mask: torch.Tensor) -> dict:
    """Max abs diff and argmax agreement over real (unpadded) positions."""
    ref, got = reference.float(), torch.as_tensor(got).float()
    if ref.shape != got.shape:
        raise DistillError(f"export output shape {tuple(got.shape)} != PyTorch {tuple(ref.shape)}")
    if ref.dim() == 3:  # per token: drop padded positions
        keep = mask.bool()
        ref, got = ref[keep], got[keep]
    return {
        "max_abs_diff": float((ref - got).abs().max()),
        "argmax_agreement": float((ref.argmax(-1) == got.argmax(-1)).float().mean()),
    }


def check_fp32(what: str, stats: dict) -> None:
    """An fp32 export must match PyTorch to FP32_TOLERANCE, or it is not written."""
    if not stats["max_abs_diff"] <= FP32_TOLERANCE:
        raise DistillError(
            f"{what} differs from the PyTorch model by {stats['max_abs_diff']:.3g} "
            f"(> {FP32_TOLERANCE}); the export is not written"
        )

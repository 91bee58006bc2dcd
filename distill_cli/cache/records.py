"""A teacher's outputs for a batch as one record per example, and records back into a batch.

A record keeps only an example's real tokens: task logits (per example; per token for token
tasks; start/end per position for QA), its sentence embedding, hidden states and attention maps
when asked, the masked input ids of a masked phase, and its word distributions as top-k per
selected token (``word_topk.TopK``). Joining pads them back into the batch's layout.
"""

from __future__ import annotations

import torch

from distill_cli import tasks
from distill_cli.models.forward import Outputs
from distill_cli.training.word_topk import TopK

TAIL = "tail@"  # tails are stored per temperature: "tail@15"


def tail_field(temperature: float) -> str:
    return f"{TAIL}{temperature:g}"


def ids_dtype(vocab_size: int) -> torch.dtype:
    """The smallest integer type that holds every word id."""
    return torch.uint16 if vocab_size <= 2**16 else torch.int32


def split(
    out: Outputs,
    mask: torch.Tensor,
    layout: str | None,
    words: tuple[TopK, torch.Tensor] | None = None,
    inputs: torch.Tensor | None = None,
    word_dtype: torch.dtype = torch.float16,
    vocab_size: int = 2**16,
) -> list[dict[str, torch.Tensor]]:
    """One record per example of a teacher forward's outputs. ``mask`` [B, L] marks the real
    tokens of the teacher's inputs; ``words`` is the top-k of the selected tokens (flattened,
    row-major) with its selection mask [B, L]; ``inputs`` the masked input ids of the batch."""
    cpu = lambda x: None if x is None else x.detach().cpu()  # noqa: E731 (one copy a batch)
    keep = cpu(mask).bool()
    logits, embedding, inputs = cpu(out.logits), cpu(out.embedding), cpu(inputs)
    hidden, attentions = [cpu(h) for h in out.hidden], [cpu(a) for a in out.attentions]
    records = [{} for _ in range(len(keep))]
    dim = tasks.LAYOUTS[layout].position_dim if layout is not None else None
    for i, r in enumerate(records):
        real = keep[i]
        if logits is not None:
            row = logits[i].float()
            r["logits"] = row if dim is None else row.movedim(dim - 1, 0)[real]
        if embedding is not None:
            r["embedding"] = embedding[i].float()
        if hidden:
            r["hidden"] = torch.stack([h[i][real] for h in hidden], dim=1).float()
        if attentions:
            r["attentions"] = torch.stack([a[i][:, real][..., real] for a in attentions])
        if inputs is not None:
            r["inputs"] = inputs[i][real].to(torch.int32)
    if words is not None:
        topk, selected = words
        topk = TopK(cpu(topk.ids), cpu(topk.logp), {t: cpu(x) for t, x in topk.tails.items()})
        counts = selected.bool().sum(1).tolist()
        start = 0
        for r, n in zip(records, counts, strict=True):
            end = start + n
            r["ids"] = topk.ids[start:end].to(ids_dtype(vocab_size))
            r["logp"] = topk.logp[start:end].to(word_dtype)
            for t, tail in topk.tails.items():
                r[tail_field(t)] = tail[start:end].float()
            start = end
    return records


def _padded(rows: list[torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
    """Per-example [n_i, ...] tensors into [B, L, ...], zeros at the unkept positions."""
    b, length = keep.shape
    out = rows[0].new_zeros((b, length, *rows[0].shape[1:]))
    for i, row in enumerate(rows):
        out[i][keep[i]] = row.to(out.dtype)
    return out


def join(
    records: list[dict[str, torch.Tensor]], mask: torch.Tensor, layout: str | None, device
) -> Outputs:
    """The teacher's Outputs for a batch from its examples' records (``mask`` [B, L]: the real
    tokens of its inputs), with ``word_topk`` holding the selected tokens' stored top-k."""
    keep = mask.bool().cpu()
    first, out = records[0], Outputs()
    dim = tasks.LAYOUTS[layout].position_dim if layout is not None else None
    if "logits" in first:
        rows = [r["logits"] for r in records]
        if dim is None:
            out.logits = torch.stack(rows)
        else:
            out.logits = _padded(rows, keep).movedim(1, dim)
    if "embedding" in first:
        out.embedding = torch.stack([r["embedding"] for r in records])
    if "hidden" in first:
        hidden = _padded([r["hidden"] for r in records], keep)  # [B, L, layers, H]
        out.hidden = tuple(hidden.unbind(2))
    if "attentions" in first:
        out.attentions = _attentions([r["attentions"] for r in records], keep)
    if "ids" in first:
        tails = sorted(k for k in first if k.startswith(TAIL))
        out.word_topk = TopK(
            ids=torch.cat([r["ids"] for r in records]).long(),
            logp=torch.cat([r["logp"] for r in records]).float(),
            tails={float(k[len(TAIL) :]): torch.cat([r[k] for r in records]) for k in tails},
        )
    return _to(out, device)


def _attentions(rows: list[torch.Tensor], keep: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-example [layers, heads, n, n] maps into one [B, heads, L, L] per layer."""
    b, length = keep.shape
    layers, heads = rows[0].shape[:2]
    out = rows[0].new_zeros((layers, b, heads, length, length))
    for i, row in enumerate(rows):
        real = keep[i].nonzero().squeeze(1)
        out[:, i, :, real[:, None], real[None, :]] = row
    return tuple(out.unbind(0))


def masked_inputs(records: list[dict[str, torch.Tensor]], input_ids: torch.Tensor, mask):
    """The batch's input ids with each example's stored (static) masked ids at its tokens."""
    ids, keep = input_ids.cpu().clone(), mask.bool().cpu()
    for i, r in enumerate(records):
        ids[i][keep[i]] = r["inputs"].to(ids.dtype)
    return ids.to(input_ids.device)


def _to(out: Outputs, device) -> Outputs:
    move = lambda x: None if x is None else x.to(device, non_blocking=True)  # noqa: E731
    out.logits, out.embedding = move(out.logits), move(out.embedding)
    out.hidden = tuple(move(h) for h in out.hidden)
    out.attentions = tuple(move(a) for a in out.attentions)
    if out.word_topk is not None:
        t = out.word_topk
        out.word_topk = TopK(move(t.ids), move(t.logp), {k: move(v) for k, v in t.tails.items()})
    return out

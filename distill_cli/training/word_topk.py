"""Word KD from a cached top-k teacher distribution: the top-k form with one tail bucket.

A cache cannot hold a teacher's [tokens, V] word logits, so ``teacher_topk`` keeps, per token, the
ids of its k most likely words and their log-probabilities at T = 1, plus for each temperature T
the "tail": the logsumexp of logp/T over the other V − k words. At T the teacher is then a
distribution over k + 1 buckets (the k words, and the rest merged into one bucket):

    log P_T(i) = logp_i/T − N,   log P_T(tail) = tail_T − N,
    N = logaddexp(logsumexp_i(logp_i/T), tail_T)

``word_kl_topk`` takes the student's full tempered softmax, sums its probability the same way
(its k words, and the logsumexp of the rest as the tail, by masking, never as log(1 − Σ)), and
applies word_kd's divergence (``DIVERGENCES``, with beta or alpha) to the two (k + 1)-bucket
distributions, ×T², averaged over the selected tokens. Why this form: at k ≥ V there is no tail and
it equals ``word_kl`` exactly; at k < V it is the divergence between the two distributions with the
tail's words merged, which for forward KL at T = 1 is a lower bound of the exact loss (the
data-processing inequality) that tightens as k grows. Both models' logits are multiplied by
``scale`` or z-scored per token (``standardize``) exactly as ``word_kl`` does. A bucket with no
mass (log 0) counts as log-probability ``NEG``, so nothing is NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distill_cli.errors import DistillError
from distill_cli.training.word_kd import (
    CHUNK_ELEMENTS,
    _check_scale,
    _divergence,
    _teacher_rows,
    divergence_naive,
    standardized,
)

NEG = -1e30  # log 0 in the bucket divergences: exp gives 0 and the products stay finite


@dataclass
class TopK:
    """A teacher's word distribution per selected token, as a cache stores it."""

    ids: torch.Tensor  # [N, k] long: student-vocabulary ids of the k most likely, most likely first
    logp: torch.Tensor  # [N, k] float: their log-probabilities at T=1 (scaled/standardized logits)
    tails: dict[float, torch.Tensor]  # T → [N]: logsumexp of logp_full/T over the rest; -inf if k≥V


def _rows(h, mask):
    flat = h.reshape(-1, h.shape[-1])
    if mask is None:
        return flat
    return flat[mask.reshape(-1).to(device=h.device, dtype=torch.bool)]


def _autocast_inputs(device, *xs):
    """Under autocast the vocabulary matmul's inputs in the autocast dtype, as in word_kl."""
    if not torch.is_autocast_enabled(device):
        return xs
    low = torch.get_autocast_dtype(device)
    return tuple(None if x is None else x.to(low) for x in xs)


def _log_softmax(z, scale, standardize, t=1.0):
    return torch.log_softmax((standardized(z) if standardize else z * scale) / t, -1)


def _chunk(chunk_size, v, who):
    if chunk_size is None:
        return max(1, CHUNK_ELEMENTS // max(v, 1))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise DistillError(f"{who}: chunk_size must be a positive integer, got {chunk_size!r}")
    return chunk_size


def teacher_topk(
    h_t,
    w_t,
    b_t=None,
    mask=None,
    *,
    k=64,
    temperatures=(1.0,),
    vocab_index=None,
    scale=1.0,
    standardize=False,
    chunk_size=None,
) -> TopK:
    """The teacher's top-k words, their log-probabilities at T = 1 and each T's tail, in fp32.

    Rows are h_t's positions where ``mask`` is true, in row-major order; ``vocab_index`` keeps
    those teacher rows (ids are then positions in it: student ids). k is capped at the vocabulary.
    """
    scale = _check_scale(scale)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DistillError(f"teacher_topk: k must be a positive integer, got {k!r}")
    temps = [float(t) for t in temperatures]
    if not temps or not all(math.isfinite(t) and t > 0 for t in temps):
        raise DistillError(f"teacher_topk: temperatures must be positive, got {temperatures!r}")
    w_t, b_t = w_t.detach(), None if b_t is None else b_t.detach()
    if vocab_index is not None:
        index = torch.as_tensor(vocab_index)
        rows = _teacher_rows(index.reshape(-1), w_t, index)  # validates the ids
        w_t, b_t = w_t[rows], None if b_t is None else b_t[rows]
    h = _rows(h_t.detach(), mask)
    n, v, dev = h.shape[0], w_t.shape[0], h.device
    k, c = min(k, v), _chunk(chunk_size, v, "teacher_topk")
    ids = torch.empty(n, k, dtype=torch.long, device=dev)
    logp = torch.empty(n, k, dtype=torch.float32, device=dev)
    tails = {t: torch.empty(n, dtype=torch.float32, device=dev) for t in temps}
    h, w_t, b_t = _autocast_inputs(dev.type, h, w_t, b_t)
    with torch.no_grad(), torch.autocast(dev.type, enabled=False):
        for i in range(0, n, c):
            lp = _log_softmax(F.linear(h[i : i + c], w_t, b_t).float(), scale, standardize)
            top = lp.topk(k, -1)
            ids[i : i + c], logp[i : i + c] = top.indices, top.values
            rest = lp.scatter_(-1, top.indices, -math.inf)
            for t in temps:
                tails[t][i : i + c] = torch.logsumexp(rest / t, -1)
    return TopK(ids, logp, tails)


class _WordKLTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, b, ids, log_q_t, t, scale, standardize, chunk, div, coef):
        n, dev = h.shape[0], h.device
        acc = torch.promote_types(h.dtype, torch.float32)  # fp32, or fp64 for gradcheck
        need = ctx.needs_input_grad[:3]
        tail = ids.shape[1] < w.shape[0]
        log_q_t = log_q_t.to(acc)
        total = torch.zeros((), dtype=acc, device=dev)
        grad_h = torch.zeros(n, h.shape[1], dtype=acc, device=dev) if need[0] else None
        grad_w = torch.zeros(w.shape, dtype=acc, device=dev) if need[1] else None
        grad_b = torch.zeros(w.shape[0], dtype=acc, device=dev) if need[2] else None
        for i in range(0, n, chunk):
            j = min(i + chunk, n)
            with torch.enable_grad():  # autograd on this chunk's [c, V] logits only
                z = F.linear(h[i:j], w, b).to(acc).detach().requires_grad_(any(need))
                log_p = _log_softmax(z, scale, standardize, t)
                log_q_s = log_p.gather(-1, ids[i:j])
                if tail:
                    rest = log_p.scatter(-1, ids[i:j], -math.inf).logsumexp(-1, keepdim=True)
                    log_q_s = torch.cat([log_q_s, rest], -1)
                d = divergence_naive(log_q_t[i:j], log_q_s.clamp_min(NEG), div, coef).sum()
            total += d.detach()
            if not any(need):
                continue
            (g,) = torch.autograd.grad(d, z)  # dD/dz for the chunk
            g_mm = g.to(h.dtype)  # the matmuls run in the inputs' dtype
            if grad_h is not None:
                grad_h[i:j] = g_mm @ w
            if grad_w is not None:
                grad_w += g_mm.t() @ h[i:j]
            if grad_b is not None:
                grad_b += g.sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.factor = t * t / max(n, 1)
        ctx.dtypes = (h.dtype, w.dtype, None if b is None else b.dtype)
        return total * ctx.factor

    @staticmethod
    def backward(ctx, grad_out):
        grads = [
            None if g is None else (g * (grad_out * ctx.factor)).to(dt)
            for g, dt in zip(ctx.saved_tensors, ctx.dtypes, strict=True)
        ]
        return (*grads, *[None] * 8)


def word_kl_topk(
    h_s,
    w_s,
    topk: TopK,
    mask=None,
    temperature=1.0,
    b_s=None,
    *,
    scale=1.0,
    standardize=False,
    divergence="forward_kl",
    beta=None,
    alpha=None,
    chunk_size=None,
) -> torch.Tensor:
    """The divergence between the teacher's cached (k + 1)-bucket distribution and the student's,
    ×T², averaged over the selected tokens (module docstring). Equals ``word_kl`` when k ≥ V.

    ``mask`` must select the rows ``teacher_topk`` was given, in the same order. Gradients reach
    h_s, w_s and b_s; memory is a few [chunk, V] fp32 buffers, never [tokens, V].
    """
    scale = _check_scale(scale)
    divergence, coef = _divergence(divergence, beta, alpha)
    t = float(temperature)
    if t not in topk.tails:
        have = ", ".join(f"{x:g}" for x in sorted(topk.tails)) or "none"
        raise DistillError(
            f"word_kl_topk: the top-k cache has tails for temperatures {have}, not {t:g}: it was "
            f"written for other temperatures; rewrite it with {t:g} among them"
        )
    h = _rows(h_s, mask)
    n, v, dev = h.shape[0], w_s.shape[0], h.device
    ids = topk.ids.to(device=dev, dtype=torch.long)
    if ids.dim() != 2 or ids.shape[0] != n:
        raise DistillError(
            f"word_kl_topk: the top-k cache has {ids.shape[0]} rows but the mask selects {n} "
            "tokens; the cache must hold one row per selected token, in the same order"
        )
    if ids.numel() and (ids.min() < 0 or ids.max() >= v):
        raise DistillError(
            f"word_kl_topk: the top-k cache holds ids outside the student's vocabulary of {v} "
            f"rows (max {int(ids.max())}); it was written for another vocabulary"
        )
    with torch.no_grad():  # the teacher's bucket log-probabilities at T, normalised in fp64:
        a = topk.logp.to(device=dev, dtype=torch.float64) / t  # fp32 would add a per-row bias
        if ids.shape[1] < v:
            a = torch.cat([a, topk.tails[t].to(device=dev, dtype=torch.float64)[:, None]], -1)
        log_q_t = (a - torch.logsumexp(a, -1, keepdim=True)).clamp_min(NEG).float()
    chunk = min(_chunk(chunk_size, v, "word_kl_topk"), max(n, 1))
    args = _autocast_inputs(dev.type, h, w_s, b_s)
    with torch.autocast(dev.type, enabled=False):
        return _WordKLTopK.apply(
            *args, ids, log_q_t, t, scale, bool(standardize), chunk, divergence, coef
        )

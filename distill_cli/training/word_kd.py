"""GLMD's word-level KD loss: T²·KL(softmax(Z_t/T) ‖ softmax(Z_s/T)) on word-prediction logits.

``Z = H·Wᵀ (+ b)`` with H the final hidden states and W the vocabulary matrix. Before T, both
models' logits are multiplied by ``scale`` or, with ``standardize``, z-scored per token over the
vocabulary (logit standardisation, Sun et al., CVPR 2024). ``word_kl_naive`` is the formula as
written; ``word_kl`` gives the same value and gradients without ever holding the [tokens, V]
logits: it walks the non-pad tokens in chunks, and each chunk's logits live only long enough to
add its KL and its student gradients (computed in the forward pass) to fp32 sums.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distill_cli.errors import DistillError

CHUNK_ELEMENTS = 2**22  # default chunk: about this many [chunk, V] fp32 logits (16 MiB)
STD_EPS = 1e-7  # standardisation: z' = (z − mean) / (population std + STD_EPS)


def _check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise DistillError(f"word_kl: scale must be a number, got {scale!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise DistillError(f"word_kl: scale must be a positive finite number, got {scale}")
    return float(scale)


def _teacher_rows(w_s, w_t, vocab_index):
    """The teacher rows that line up with the student's vocabulary, or None when they all do."""
    v_s, v_t = w_s.shape[0], w_t.shape[0]
    fix = "pass vocab_index (the kept teacher ids from vocabulary compression's vocab_map.json)"
    if vocab_index is None:
        if v_s != v_t:
            raise DistillError(
                f"word_kl: student vocabulary has {v_s} rows but teacher has {v_t}; {fix}"
            )
        return None
    vocab_index = torch.as_tensor(vocab_index)
    if vocab_index.dim() != 1 or vocab_index.shape[0] != v_s:
        raise DistillError(
            f"word_kl: vocab_index has shape {tuple(vocab_index.shape)} but the student vocabulary "
            f"has {v_s} rows; it needs one teacher id per student row; {fix}"
        )
    if vocab_index.dtype.is_floating_point or vocab_index.dtype == torch.bool:
        raise DistillError(f"word_kl: vocab_index must hold integer ids, got {vocab_index.dtype}")
    if v_s and (vocab_index.min() < 0 or vocab_index.max() >= v_t):
        raise DistillError(
            f"word_kl: vocab_index holds ids outside the teacher's vocabulary of {v_t} rows "
            f"(min {int(vocab_index.min())}, max {int(vocab_index.max())}); {fix}"
        )
    return vocab_index.to(device=w_t.device, dtype=torch.long)


def _teacher_matrix(w_t, b_t, rows):
    if rows is None:
        return w_t, b_t
    return w_t[rows], (None if b_t is None else b_t[rows])


def standardized(z: torch.Tensor) -> torch.Tensor:
    """Each row z-scored over the vocabulary (population std), as in Sun et al. (CVPR 2024)."""
    return (z - z.mean(-1, keepdim=True)) / (z.std(-1, keepdim=True, correction=0) + STD_EPS)


def word_kl_naive(
    h_s,
    w_s,
    h_t,
    w_t,
    mask=None,
    temperature=1.0,
    b_s=None,
    b_t=None,
    vocab_index=None,
    *,
    scale=1.0,
    standardize=False,
) -> torch.Tensor:
    """The reference: full logits, fp32 log-softmax, autograd. Mean over selected positions, ×T².

    The logits are multiplied by ``scale``, or z-scored per token when ``standardize`` (which
    ignores ``scale``), then divided by T.
    """
    rows = _teacher_rows(w_s, w_t, vocab_index)
    scale = _check_scale(scale)
    t = temperature
    with torch.no_grad():
        w_t, b_t = _teacher_matrix(w_t, b_t, rows)
        z_t = F.linear(h_t, w_t, b_t).float()
    z_s = F.linear(h_s, w_s, b_s).float()
    if standardize:
        z_t, z_s = standardized(z_t), standardized(z_s)
    else:
        z_t, z_s = z_t * scale, z_s * scale
    log_p_t = F.log_softmax(z_t / t, dim=-1)
    log_p_s = F.log_softmax(z_s / t, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(-1)
    if mask is not None:
        kl = kl[mask.bool()]
    return kl.sum() / max(kl.numel(), 1) * t * t


def _logits(x, w, b, out):
    """out = x·wᵀ + b in out's dtype (fp32); the matmul runs in x's dtype."""
    if x.dtype != out.dtype:
        return out.copy_(F.linear(x, w, b))
    if b is None:
        return torch.mm(x, w.t(), out=out)
    return torch.addmm(b, x, w.t(), out=out)


def _scaled(x, scale):
    return x if x is None or scale == 1.0 else x * scale


def _standardize_(z, t):
    """z ← (z − mean) / (T·(std + STD_EPS)) per row, in place; returns the population std."""
    std, mean = torch.std_mean(z, -1, correction=0, keepdim=True)
    z.sub_(mean).mul_((std + STD_EPS).mul_(t).reciprocal_())
    return std


def _standardize_backward_(g, y, std, t):
    """g = dL/dz' → dL/dz in place, for z' = (z − mean) / (σ + ε) per row and y = z'/T:
    dL/dz = g/(σ+ε) − z'·mean(g⊙z')/σ, centred (a row's z' ignores shifts of z)."""
    tiny = torch.finfo(std.dtype).tiny  # a constant row has z' = 0 and gets g/ε: no 0/0
    coef = torch.einsum("ij,ij->i", g, y).unsqueeze(-1)  # Σ g⊙y, without a [chunk, V] product
    coef.mul_(t * t / g.shape[-1]).div_(std.clamp_min(tiny))
    g.mul_((std + STD_EPS).reciprocal_()).addcmul_(y, coef, value=-1)
    return g.sub_(g.mean(-1, keepdim=True))


class _WordKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_s, w_s, b_s, h_t, w_t, b_t, temperature, scale, standardize, chunk_size):
        n, v, dev = h_s.shape[0], w_s.shape[0], h_s.device
        acc = torch.promote_types(h_s.dtype, torch.float32)  # fp32, or fp64 for gradcheck
        need = ctx.needs_input_grad[:3]
        t = float(temperature)
        # logits·scale/T = (h·scale/T)·wᵀ + b·scale/T: scale the small factors, not the [chunk, V]
        # logits. Standardisation divides by T itself, and z-scoring would undo any scale.
        k = 1.0 if standardize else scale / t
        hs_k, bs_k, ht_k, bt_k = (_scaled(x, k) for x in (h_s, b_s, h_t, b_t))
        kl = torch.zeros((), dtype=acc, device=dev)
        grad_h = torch.empty(n, h_s.shape[1], dtype=acc, device=dev) if need[0] else None
        grad_w = torch.zeros(w_s.shape, dtype=acc, device=dev) if need[1] else None
        grad_b = torch.zeros(v, dtype=acc, device=dev) if need[2] else None
        c = max(1, min(chunk_size, n))
        # standardising keeps the student's z'/T for its gradient: one more buffer
        bufs = [torch.empty(c, v, dtype=acc, device=dev) for _ in range(4 if standardize else 3)]
        for i in range(0, n, c):
            j = min(i + c, n)
            a, b, log_p_t, *d = (x[: j - i] for x in bufs)
            _logits(ht_k[i:j], w_t, bt_k, a)
            if standardize:
                _standardize_(a, t)
            torch.log_softmax(a, -1, out=log_p_t)
            _logits(hs_k[i:j], w_s, bs_k, b)
            std = _standardize_(b, t) if standardize else None
            log_p_s = torch.log_softmax(b, -1, out=a)
            diff = torch.sub(log_p_t, log_p_s, out=d[0] if d else b)
            p_t = log_p_t.exp_()
            kl += torch.dot(p_t.view(-1), diff.view(-1))  # Σ p_t·(log p_t − log p_s)
            if not any(need):
                continue
            g = log_p_s.exp_().sub_(p_t)  # p_s − p_t; dL/dz_s is this times T·scale/N
            if standardize:  # ... or, through the z-score, this times T/N
                g = _standardize_backward_(g, b, std, t)
            g_mm = g.to(h_s.dtype)  # the matmuls run in the inputs' dtype (no copy in fp32)
            if grad_h is not None:
                grad_h[i:j] = g_mm @ w_s
            if grad_w is not None and g_mm.dtype == acc:
                grad_w.addmm_(g.t(), h_s[i:j])
            elif grad_w is not None:
                grad_w += g_mm.t() @ h_s[i:j]
            if grad_b is not None:
                grad_b += g.sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.scale = t * (1.0 if standardize else scale) / max(n, 1)
        ctx.dtypes = (h_s.dtype, w_s.dtype, None if b_s is None else b_s.dtype)
        return kl * (t * t / max(n, 1))

    @staticmethod
    def backward(ctx, grad_out):
        grads = [
            None if g is None else (g * (grad_out * ctx.scale)).to(dt)
            for g, dt in zip(ctx.saved_tensors, ctx.dtypes, strict=True)
        ]
        return (*grads, None, None, None, None, None, None, None)


def word_kl(
    h_s,
    w_s,
    h_t,
    w_t,
    mask=None,
    temperature=1.0,
    b_s=None,
    b_t=None,
    vocab_index=None,
    chunk_size=None,
    *,
    scale=1.0,
    standardize=False,
) -> torch.Tensor:
    """``word_kl_naive``'s value and gradients in chunks of ``chunk_size`` non-pad tokens.

    ``scale`` multiplies both models' logits before T (the loss keeps its T² factor). With
    ``standardize`` each token's logits are z-scored over the vocabulary before T instead, and
    ``scale`` has no effect (z-scoring removes it).

    Memory is three [chunk, V] fp32 buffers (four with ``standardize``) plus fp32 gradients the
    size of the student's inputs; padded positions are dropped before any matmul and get zero
    gradient. The teacher gets none.
    """
    rows = _teacher_rows(w_s, w_t, vocab_index)
    scale = _check_scale(scale)
    lead = h_s.shape[:-1]
    if h_t.shape[:-1] != lead:
        raise DistillError(
            f"word_kl: student features {tuple(h_s.shape)} and teacher features "
            f"{tuple(h_t.shape)} differ in their leading (batch, length) dims"
        )
    with torch.no_grad():
        w_t, b_t = _teacher_matrix(w_t.detach(), None if b_t is None else b_t.detach(), rows)
    flat_s = h_s.reshape(-1, h_s.shape[-1])
    flat_t = h_t.detach().reshape(-1, h_t.shape[-1])
    if mask is not None:
        keep = mask.reshape(-1).to(device=h_s.device, dtype=torch.bool)
        flat_s, flat_t = flat_s[keep], flat_t[keep]
    if chunk_size is None:
        chunk_size = max(1, CHUNK_ELEMENTS // max(w_s.shape[0], 1))
    args = [flat_s, w_s, b_s, flat_t, w_t, b_t]
    device = h_s.device.type
    if torch.is_autocast_enabled(device):
        # Under mixed precision the vocabulary matmuls run in the autocast dtype (the casts are
        # differentiable); softmax and sums stay fp32 inside, with autocast off.
        low = torch.get_autocast_dtype(device)
        args = [None if a is None else a.to(low) for a in args]
    with torch.autocast(device, enabled=False):
        return _WordKL.apply(*args, temperature, scale, bool(standardize), int(chunk_size))

"""GLMD's word-level KD loss: T²·KL(softmax(Z_t/T) ‖ softmax(Z_s/T)) on word-prediction logits.

``Z = H·Wᵀ (+ b)`` with H the final hidden states and W the vocabulary matrix. Before T, both
models' logits are multiplied by ``scale`` or, with ``standardize``, z-scored per token over the
vocabulary (logit standardisation, Sun et al., CVPR 2024). ``word_kl_naive`` is the formula as
written; ``word_kl`` gives the same value and gradients without ever holding the [tokens, V]
logits: it walks the non-pad tokens in chunks, and each chunk's logits live only long enough to
add its KL and its student gradients (computed in the forward pass) to fp32 sums.

The divergence between p_t = softmax(Z_t/T) and p_s = softmax(Z_s/T) is one of ``DIVERGENCES``
(default ``forward_kl``, the KL above); each is ×T² and averaged over the kept tokens:

- ``forward_kl``: KL(p_t ‖ p_s);
- ``reverse_kl``: KL(p_s ‖ p_t);
- ``jsd``: generalised Jensen-Shannon as in GKD (Agarwal et al., 2024), β weighting the teacher:
  m = β·p_t + (1 − β)·p_s, JSD_β = β·KL(p_t ‖ m) + (1 − β)·KL(p_s ‖ m), β in (0, 1), default
  0.5. Small β tends to β·KL(p_t ‖ p_s), β near 1 to (1 − β)·KL(p_s ‖ p_t);
- ``tvd``: total variation, ½·Σ|p_t − p_s|;
- ``skew_kl``: DistiLLM's skew KL, KL(p_t ‖ α·p_t + (1 − α)·p_s), α in [0, 1], default 0.1
  (α = 0 is forward_kl, α = 1 gives 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distill_cli.errors import DistillError

CHUNK_ELEMENTS = 2**22  # default chunk: about this many [chunk, V] fp32 logits (16 MiB)
STD_EPS = 1e-7  # standardisation: z' = (z − mean) / (population std + STD_EPS)

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_kl")
# the parameter a divergence takes: (name, default, lowest, highest, ends included)
DIVERGENCE_PARAMS = {
    "jsd": ("beta", 0.5, 0.0, 1.0, False),
    "skew_kl": ("alpha", 0.1, 0.0, 1.0, True),
}


def divergence_problems(divergence, beta=None, alpha=None) -> list[str]:
    """What is wrong with a divergence and its parameters, each as 'name must ...'."""
    if divergence not in DIVERGENCES:
        return [f"divergence must be one of {', '.join(DIVERGENCES)}, got {divergence!r}"]
    takes = DIVERGENCE_PARAMS.get(divergence)
    problems = []
    for name, value in (("beta", beta), ("alpha", alpha)):
        if value is None:
            continue
        if takes is None or takes[0] != name:
            owner = next(d for d, p in DIVERGENCE_PARAMS.items() if p[0] == name)
            problems.append(f"{name} must be left out: only {owner} takes it, not {divergence}")
            continue
        _, _, low, high, closed = takes
        number = not isinstance(value, bool) and isinstance(value, (int, float))
        inside = number and (low <= value <= high if closed else low < value < high)
        if not inside:
            ends = f"[{low:g}, {high:g}]" if closed else f"({low:g}, {high:g})"
            problems.append(f"{name} must be in {ends} for divergence {divergence}, got {value!r}")
    return problems


def _divergence(divergence, beta, alpha) -> tuple[str, float | None]:
    """The divergence and its parameter's value (its default when None); raises when invalid."""
    problems = divergence_problems(divergence, beta, alpha)
    if problems:
        raise DistillError(f"word_kl: {'; '.join(problems)}")
    takes = DIVERGENCE_PARAMS.get(divergence)
    if takes is None:
        return divergence, None
    value = beta if takes[0] == "beta" else alpha
    return divergence, float(takes[1] if value is None else value)


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


def _log(x: float) -> float:
    return -math.inf if x == 0 else math.log(x)


def divergence_naive(log_p_t, log_p_s, divergence="forward_kl", coef=None) -> torch.Tensor:
    """Each row's divergence between p_t and p_s, from their logs, as written (autograd).
    ``coef`` is jsd's β or skew_kl's α."""
    p_t, p_s = log_p_t.exp(), log_p_s.exp()
    if divergence in ("jsd", "skew_kl"):  # log m, m = coef·p_t + (1 − coef)·p_s, in log space
        log_m = torch.logaddexp(log_p_t + _log(coef), log_p_s + _log(1 - coef))
    if divergence == "forward_kl":
        return F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(-1)
    if divergence == "reverse_kl":
        return (p_s * (log_p_s - log_p_t)).sum(-1)
    if divergence == "jsd":
        kl_t = (p_t * (log_p_t - log_m)).sum(-1)
        return coef * kl_t + (1 - coef) * (p_s * (log_p_s - log_m)).sum(-1)
    if divergence == "tvd":
        return 0.5 * (p_t - p_s).abs().sum(-1)
    if divergence == "skew_kl":
        return (p_t * (log_p_t - log_m)).sum(-1)
    raise DistillError(f"word_kl: divergence must be one of {', '.join(DIVERGENCES)}")


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
    divergence="forward_kl",
    beta=None,
    alpha=None,
) -> torch.Tensor:
    """The reference: full logits, fp32 log-softmax, autograd. Mean over selected positions, ×T².

    The logits are multiplied by ``scale``, or z-scored per token when ``standardize`` (which
    ignores ``scale``), then divided by T. ``divergence`` (with ``beta`` or ``alpha``): see the
    module's docstring.
    """
    rows = _teacher_rows(w_s, w_t, vocab_index)
    scale = _check_scale(scale)
    divergence, coef = _divergence(divergence, beta, alpha)
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
    kl = divergence_naive(log_p_t, log_p_s, divergence, coef)
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


# Each chunk's divergence from log p_t and log p_s (rows of tempered log-softmax): the sum over
# its rows, and with ``grad`` dD/dy_s (y_s = the student's logits/T) in one of the buffers. The
# inputs and ``spare`` are overwritten. dD/dy = p_s ⊙ (∂D/∂p_s − ⟨p_s, ∂D/∂p_s⟩) per row.


def _row_dot(x, y):
    return torch.einsum("ij,ij->i", x, y).unsqueeze(-1)  # without a [chunk, V] product


def _forward_kl(log_p_t, log_p_s, spare, coef, grad):
    diff = torch.sub(log_p_t, log_p_s, out=spare[0])
    p_t = log_p_t.exp_()
    total = torch.dot(p_t.view(-1), diff.view(-1))  # Σ p_t·(log p_t − log p_s)
    return total, (log_p_s.exp_().sub_(p_t) if grad else None)  # p_s − p_t


def _reverse_kl(log_p_t, log_p_s, spare, coef, grad):
    diff = torch.sub(log_p_s, log_p_t, out=spare[0])
    p_s = log_p_s.exp_()
    row = _row_dot(p_s, diff)  # each row's KL(p_s ‖ p_t)
    return row.sum(), (diff.sub_(row).mul_(p_s) if grad else None)


def _log_mix(log_p_t, log_p_s, coef, out, tmp):
    """log(coef·p_t + (1 − coef)·p_s) into out, without underflow."""
    torch.add(log_p_t, _log(coef), out=out)
    torch.add(log_p_s, _log(1 - coef), out=tmp)
    return torch.logaddexp(out, tmp, out=out)


def _jsd(log_p_t, log_p_s, spare, beta, grad):
    x, log_m = spare[:2]
    _log_mix(log_p_t, log_p_s, beta, log_m, x)
    x = torch.sub(log_p_t, log_m, out=x)
    total = beta * torch.dot(log_p_t.exp_().view(-1), x.view(-1))  # β·KL(p_t ‖ m)
    x = torch.sub(log_p_s, log_m, out=x)
    p_s = log_p_s.exp_()
    row = _row_dot(p_s, x)  # each row's KL(p_s ‖ m); ∂D/∂p_s = (1 − β)·log(p_s/m)
    total = total + (1 - beta) * row.sum()
    return total, (x.sub_(row).mul_(p_s).mul_(1 - beta) if grad else None)


def _tvd(log_p_t, log_p_s, spare, coef, grad):
    p_t, p_s = log_p_t.exp_(), log_p_s.exp_()
    x = torch.sub(p_s, p_t, out=spare[0])
    total = 0.5 * torch.linalg.vector_norm(x, 1)
    if not grad:
        return total, None
    x.sign_().mul_(0.5)  # ∂D/∂p_s (0 where they agree)
    return total, x.sub_(_row_dot(p_s, x)).mul_(p_s)


def _skew_kl(log_p_t, log_p_s, spare, alpha, grad):
    x, log_m = spare[:2]
    _log_mix(log_p_t, log_p_s, alpha, log_m, x)
    x = torch.sub(log_p_t, log_m, out=x)
    total = torch.dot(log_p_t.exp_().view(-1), x.view(-1))  # Σ p_t·log(p_t/m)
    if not grad:
        return total, None
    # ∂D/∂p_s = −(1 − α)·p_t/m, so dD/dy = (1 − α)·(p_s·Σq − q) with q = p_s·p_t/m
    q = x.add_(log_p_s).exp_()
    g = log_p_s.exp_().mul_(q.sum(-1, keepdim=True)).sub_(q).mul_(1 - alpha)
    return total, g


# divergence → (its chunk function, how many spare [chunk, V] buffers it needs)
_CHUNK = {
    "forward_kl": (_forward_kl, 1),
    "reverse_kl": (_reverse_kl, 1),
    "jsd": (_jsd, 2),
    "tvd": (_tvd, 1),
    "skew_kl": (_skew_kl, 2),
}


class _WordKL(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, h_s, w_s, b_s, h_t, w_t, b_t, temperature, scale, standardize, chunk_size, div, coef
    ):
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
        fn, spares = _CHUNK[div]
        # standardising keeps the student's z'/T for its gradient: one more buffer
        count = 2 + spares + (1 if standardize else 0)
        bufs = [torch.empty(c, v, dtype=acc, device=dev) for _ in range(count)]
        for i in range(0, n, c):
            j = min(i + c, n)
            a, b, log_p_t, *rest = (x[: j - i] for x in bufs)
            _logits(ht_k[i:j], w_t, bt_k, a)
            if standardize:
                _standardize_(a, t)
            torch.log_softmax(a, -1, out=log_p_t)
            _logits(hs_k[i:j], w_s, bs_k, b)
            std = _standardize_(b, t) if standardize else None
            log_p_s = torch.log_softmax(b, -1, out=a)
            spare = rest if standardize else [b, *rest]
            total, g = fn(log_p_t, log_p_s, spare, coef, any(need))
            kl += total
            if g is None:
                continue
            # g = dD/dy_s (p_s − p_t for forward KL); dL/dz_s is this times T·scale/N
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
        return (*grads, None, None, None, None, None, None, None, None, None)


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
    divergence="forward_kl",
    beta=None,
    alpha=None,
) -> torch.Tensor:
    """``word_kl_naive``'s value and gradients in chunks of ``chunk_size`` non-pad tokens.

    ``scale`` multiplies both models' logits before T (the loss keeps its T² factor). With
    ``standardize`` each token's logits are z-scored over the vocabulary before T instead, and
    ``scale`` has no effect (z-scoring removes it). ``divergence`` is one of ``DIVERGENCES``;
    ``beta`` (jsd) and ``alpha`` (skew_kl) default per divergence when None (module docstring).

    Memory is three [chunk, V] fp32 buffers (four for jsd and skew_kl; one more with
    ``standardize``) plus fp32 gradients the size of the student's inputs; padded positions are
    dropped before any matmul and get zero gradient. The teacher gets none.
    """
    rows = _teacher_rows(w_s, w_t, vocab_index)
    scale = _check_scale(scale)
    divergence, coef = _divergence(divergence, beta, alpha)
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
        return _WordKL.apply(
            *args, temperature, scale, bool(standardize), int(chunk_size), divergence, coef
        )

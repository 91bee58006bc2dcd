import math

import pytest
import torch

from distill_cli.errors import DistillError
from distill_cli.training.word_kd import DIVERGENCES, word_kl, word_kl_naive

B, L, D_S, D_T, V_T, V_S = 2, 5, 6, 8, 40, 30
TOL = dict(rtol=1e-5, atol=1e-5)


def make(seed=0, bias=True, index=True, dtype=torch.float32):
    """Student/teacher features and vocabularies of different widths; the student's vocabulary is
    a shuffled subset of the teacher's when ``index``. A [B, L] mask with padding."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    v_s = V_S if index else V_T
    s = dict(h_s=randn(B, L, D_S), w_s=randn(v_s, D_S), b_s=randn(v_s) if bias else None)
    t = dict(h_t=randn(B, L, D_T), w_t=randn(V_T, D_T), b_t=randn(V_T) if bias else None)
    for x in s.values():
        if x is not None:
            x.requires_grad_(True)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 3:] = False
    mask[1, 4:] = False
    vocab_index = torch.randperm(V_T, generator=g)[:V_S] if index else None
    return s, t, dict(mask=mask, vocab_index=vocab_index)


def loss_and_grads(fn, s, t, **kw):
    loss = fn(s["h_s"], s["w_s"], t["h_t"], t["w_t"], b_s=s["b_s"], b_t=t["b_t"], **kw)
    inputs = [x for x in s.values() if x is not None]
    return loss, torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("temperature", [1.0, 15.0])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("index", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, None])
def test_matches_naive(temperature, bias, index, chunk_size):
    s, t, kw = make(bias=bias, index=index)
    ref, ref_grads = loss_and_grads(word_kl_naive, s, t, temperature=temperature, **kw)
    out, grads = loss_and_grads(word_kl, s, t, temperature=temperature, chunk_size=chunk_size, **kw)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, **TOL)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, **TOL)


def test_no_mask_and_integer_mask():
    s, t, kw = make()
    for mask in (None, kw["mask"].long()):
        ref, ref_grads = loss_and_grads(
            word_kl_naive, s, t, mask=mask, vocab_index=kw["vocab_index"]
        )
        out, grads = loss_and_grads(word_kl, s, t, mask=mask, vocab_index=kw["vocab_index"])
        torch.testing.assert_close(out, ref, **TOL)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, **TOL)


@pytest.mark.parametrize("fn", [word_kl, word_kl_naive])
@pytest.mark.parametrize("logit_kw", [{}, dict(scale=10.0), dict(standardize=True)])
def test_identical_inputs_give_zero(fn, logit_kw):
    s, _, kw = make(index=False)
    same = dict(h_t=s["h_s"].detach(), w_t=s["w_s"].detach(), b_t=s["b_s"].detach())
    for temperature in (1.0, 15.0):
        loss, grads = loss_and_grads(
            fn, s, same, mask=kw["mask"], temperature=temperature, **logit_kw
        )
        assert loss.abs().item() < 1e-5
        assert all(g.abs().max() < 1e-5 for g in grads)


def token_distributions(s, t, kw, temperature):
    """(p_t, p_s) of each kept token, in plain float64 Python, vocab_index applied."""
    mask, index = kw["mask"], kw["vocab_index"]
    for b in range(B):
        for i in range(L):
            if not mask[b, i]:
                continue
            z_s = s["w_s"].detach().double() @ s["h_s"][b, i].detach().double() + s["b_s"].detach()
            z_t = (t["w_t"].double() @ t["h_t"][b, i].double() + t["b_t"])[index]
            p_s = [math.exp(z / temperature) for z in z_s.tolist()]
            p_t = [math.exp(z / temperature) for z in z_t.tolist()]
            yield [p / sum(p_t) for p in p_t], [p / sum(p_s) for p in p_s]


@pytest.mark.parametrize("temperature", [1.0, 2.0, 15.0])
def test_temperature_squared_against_a_loop(temperature):
    s, t, kw = make()
    pairs = list(token_distributions(s, t, kw, temperature))
    total = sum(sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s)) for p_t, p_s in pairs)
    expected = temperature**2 * total / len(pairs)
    loss = word_kl(**s, **t, temperature=temperature, **kw)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_padding_is_ignored():
    s, t, kw = make()
    mask = kw["mask"]
    loss, (g_h, g_w, g_b) = loss_and_grads(word_kl, s, t, chunk_size=3, **kw)
    assert (g_h[~mask] == 0).all() and (g_h[mask] != 0).any()
    # new values at padded positions, student and teacher: same loss, same grads
    s2 = {k: v.detach().clone() for k, v in s.items()}
    t2 = {k: v.clone() for k, v in t.items()}
    s2["h_s"][~mask] = 1e3
    t2["h_t"][~mask] = float("nan")
    for x in s2.values():
        x.requires_grad_(True)
    loss2, (g_h2, g_w2, g_b2) = loss_and_grads(word_kl, s2, t2, chunk_size=3, **kw)
    assert torch.equal(loss, loss2)
    assert torch.equal(g_h, g_h2) and torch.equal(g_w, g_w2) and torch.equal(g_b, g_b2)


@pytest.mark.parametrize("fn", [word_kl, word_kl_naive])
@pytest.mark.parametrize("standardize", [False, True])
def test_empty_mask_gives_zero_without_nan(fn, standardize):
    s, t, kw = make()
    kw["mask"] = torch.zeros(B, L, dtype=torch.bool)
    loss, grads = loss_and_grads(fn, s, t, standardize=standardize, **kw)
    assert loss.item() == 0.0
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_teacher_gets_no_grad():
    s, t, kw = make()
    for x in t.values():
        x.requires_grad_(True)
    word_kl(**s, **t, **kw).backward()
    assert all(x.grad is None for x in t.values())
    assert all(x.grad is not None for x in s.values())


@pytest.mark.parametrize(
    ("logit_kw", "fast"),
    [({}, False), (dict(standardize=True), False), (dict(scale=10.0), True)],
)
def test_gradcheck_float64(logit_kw, fast):
    """Full gradcheck through the standardisation; scale is a constant factor: fast mode."""
    s, t, kw = make(dtype=torch.float64)
    t = {k: v.detach() for k, v in t.items()}

    def fn(h_s, w_s, b_s):
        return word_kl(h_s, w_s, temperature=2.0, b_s=b_s, chunk_size=2, **t, **kw, **logit_kw)

    assert torch.autograd.gradcheck(fn, (s["h_s"], s["w_s"], s["b_s"]), fast_mode=fast)


def one_line_error(**kw):
    s, t, _ = make(index=False)
    with pytest.raises(DistillError) as err:
        word_kl(s["h_s"], s["w_s"][:-3], t["h_t"], t["w_t"], **kw)
    message = str(err.value)
    assert "\n" not in message and "vocab_map.json" in message
    return message


def test_vocab_errors():
    message = one_line_error()
    assert str(V_T - 3) in message and str(V_T) in message
    assert "vocab_index" in one_line_error(vocab_index=torch.arange(V_T - 4))
    assert "outside" in one_line_error(vocab_index=torch.arange(V_T - 3) + 4)
    assert "outside" in one_line_error(vocab_index=torch.arange(V_T - 3) - 1)
    s, t, _ = make(index=False)
    with pytest.raises(DistillError):
        word_kl_naive(s["h_s"], s["w_s"][:-3], t["h_t"], t["w_t"])


def test_bf16_gives_fp32_loss_close_to_fp32():
    s, t, kw = make()
    ref, ref_grads = loss_and_grads(word_kl, s, t, temperature=2.0, **kw)
    s16 = {k: v.detach().bfloat16().requires_grad_(True) for k, v in s.items()}
    t16 = {k: v.bfloat16() for k, v in t.items()}
    out, grads = loss_and_grads(word_kl, s16, t16, temperature=2.0, chunk_size=3, **kw)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=5e-2, atol=5e-2)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), r, rtol=0.1, atol=2e-2)


def test_no_grad_and_flat_inputs():
    s, t, kw = make()
    with torch.no_grad():
        ref = word_kl_naive(**s, **t, **kw)
        out = word_kl(**s, **t, chunk_size=4, **kw)
    torch.testing.assert_close(out, ref, **TOL)
    flat = {k: v.flatten(0, 1) if k.startswith("h") else v for k, v in {**s, **t}.items()}
    out = word_kl(**flat, mask=kw["mask"].flatten(), vocab_index=kw["vocab_index"].tolist())
    torch.testing.assert_close(out, ref, **TOL)


@pytest.mark.parametrize("logit_kw", [{}, dict(scale=3.0), dict(standardize=True)])
def test_autocast_runs_matmuls_in_low_precision_and_sums_in_fp32(logit_kw):
    torch.manual_seed(11)
    h_s = torch.randn(2, 5, 8, requires_grad=True)
    w_s = torch.randn(30, 8, requires_grad=True)
    h_t, w_t = torch.randn(2, 5, 12), torch.randn(30, 12)
    mask = torch.ones(2, 5, dtype=torch.bool)
    ref = word_kl(h_s, w_s, h_t, w_t, mask=mask, temperature=2.0, **logit_kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = word_kl(h_s, w_s, h_t, w_t, mask=mask, temperature=2.0, **logit_kw)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(ref.item(), rel=5e-2, abs=5e-2)
    low.backward()
    assert w_s.grad.dtype == torch.float32 and torch.isfinite(w_s.grad).all()


# scale and standardize: both models' logits are multiplied by scale, or z-scored per token, before T

LOGITS = [(scale, False) for scale in (1.0, 0.5, 10.0)] + [(scale, True) for scale in (1.0, 10.0)]


@pytest.mark.parametrize(("scale", "standardize"), LOGITS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("index", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 3, None])
def test_scale_and_standardize_match_naive(scale, standardize, bias, index, chunk_size):
    s, t, kw = make(bias=bias, index=index)
    kw.update(temperature=2.0, scale=scale, standardize=standardize)
    ref, ref_grads = loss_and_grads(word_kl_naive, s, t, **kw)
    out, grads = loss_and_grads(word_kl, s, t, chunk_size=chunk_size, **kw)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, **TOL)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5 * max(1.0, scale))


def hand_loss(s, t, mask, index, temperature, scale, standardize):
    """The loss written out token by token in float64, independent of word_kl_naive's code:
    logits × scale, then (z − μ)/(σ + 1e-7) with σ² = Σ(z − μ)²/V when standardize, softmax(·/T)."""
    total, count = 0.0, 0
    for b in range(B):
        for i in range(L):
            if not mask[b, i]:
                continue
            rows = []
            for h, w, bias, keep in (
                (s["h_s"], s["w_s"], s["b_s"], slice(None)),
                (t["h_t"], t["w_t"], t["b_t"], index),
            ):
                z = w.detach().double() @ h[b, i].detach().double() + bias.detach().double()
                z = z[keep] * scale
                if standardize:
                    mu = z.sum() / len(z)
                    sigma = math.sqrt(((z - mu) ** 2).sum().item() / len(z))
                    z = (z - mu) / (sigma + 1e-7)
                rows.append(torch.softmax(z / temperature, 0))
            p_s, p_t = rows
            total += (p_t * (p_t.log() - p_s.log())).sum().item()
            count += 1
    return temperature**2 * total / count


@pytest.mark.parametrize(("scale", "standardize"), [(0.5, False), (10.0, False), (3.0, True)])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_scale_and_standardize_against_a_loop(scale, standardize, temperature):
    """Also checks that scale has no effect when standardising: the loop applies it first."""
    s, t, kw = make()
    expected = hand_loss(s, t, kw["mask"], kw["vocab_index"], temperature, scale, standardize)
    kw.update(temperature=temperature, scale=scale, standardize=standardize)
    for fn in (word_kl_naive, word_kl):
        assert fn(**s, **t, **kw).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("scale", [0.5, 10.0])
@pytest.mark.parametrize("temperature", [1.0, 15.0])
def test_scale_is_temperature_over_scale_times_scale_squared(scale, temperature):
    s, t, kw = make()
    out, grads = loss_and_grads(word_kl, s, t, temperature=temperature, scale=scale, **kw)
    ref, ref_grads = loss_and_grads(word_kl, s, t, temperature=temperature / scale, **kw)
    torch.testing.assert_close(out, ref * scale**2, **TOL)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r * scale**2, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("fn", [word_kl, word_kl_naive])
def test_standardized_loss_ignores_affine_changes_of_the_teacher_logits(fn):
    s, t, kw = make()
    loss = fn(**s, **t, **kw, standardize=True)
    # every teacher row z → 3z + 5
    affine = dict(t, w_t=t["w_t"] * 3, b_t=t["b_t"] * 3 + 5)
    torch.testing.assert_close(fn(**s, **affine, **kw, standardize=True), loss, **TOL)
    assert not torch.allclose(fn(**s, **affine, **kw), fn(**s, **t, **kw), rtol=1e-2)
    # without bias, a different positive factor for each token's row
    s0, t0 = dict(s, b_s=None), dict(t, b_t=None)
    loss0 = fn(**s0, **t0, **kw, standardize=True)
    factor = torch.rand(B, L, 1, generator=torch.Generator().manual_seed(5)) * 10 + 0.1
    rowwise = dict(t0, h_t=t0["h_t"] * factor)
    torch.testing.assert_close(fn(**s0, **rowwise, **kw, standardize=True), loss0, **TOL)


def test_standardize_makes_scale_irrelevant():
    s, t, kw = make()
    ref, ref_grads = loss_and_grads(word_kl, s, t, standardize=True, **kw)
    out, grads = loss_and_grads(word_kl, s, t, standardize=True, scale=7.0, **kw)
    assert torch.equal(out, ref)
    assert all(torch.equal(g, r) for g, r in zip(grads, ref_grads))


@pytest.mark.parametrize("scale", [0, -1.0, float("nan"), float("inf"), "auto", True])
@pytest.mark.parametrize("fn", [word_kl, word_kl_naive])
def test_bad_scale_is_a_one_line_error(fn, scale):
    s, t, kw = make()
    with pytest.raises(DistillError, match="scale") as err:
        fn(**s, **t, **kw, scale=scale)
    assert "\n" not in str(err.value)


def test_standardized_bf16_inputs_give_fp32_loss_close_to_fp32():
    s, t, kw = make()
    kw.update(temperature=2.0, standardize=True)
    ref, ref_grads = loss_and_grads(word_kl, s, t, **kw)
    s16 = {k: v.detach().bfloat16().requires_grad_(True) for k, v in s.items()}
    t16 = {k: v.bfloat16() for k, v in t.items()}
    out, grads = loss_and_grads(word_kl, s16, t16, chunk_size=3, **kw)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=5e-2, atol=5e-2)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), r, rtol=0.1, atol=2e-2)


# the divergence menu: forward_kl (the default), reverse_kl, jsd (beta), tvd, skew_kl (alpha)

DIVS = [
    dict(divergence="forward_kl"),
    dict(divergence="reverse_kl"),
    dict(divergence="jsd"),
    dict(divergence="jsd", beta=0.9),
    dict(divergence="tvd"),
    dict(divergence="skew_kl"),
    dict(divergence="skew_kl", alpha=0.0),
    dict(divergence="skew_kl", alpha=1.0),
]
DIV_IDS = ["-".join(str(v) for v in d.values()) for d in DIVS]


@pytest.mark.parametrize("div", DIVS, ids=DIV_IDS)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("index", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, None])
def test_divergences_match_naive(div, temperature, bias, index, chunk_size):
    s, t, kw = make(bias=bias, index=index)
    kw.update(temperature=temperature, **div)
    ref, ref_grads = loss_and_grads(word_kl_naive, s, t, **kw)
    out, grads = loss_and_grads(word_kl, s, t, chunk_size=chunk_size, **kw)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, **TOL)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, **TOL)


@pytest.mark.parametrize("div", DIVS, ids=DIV_IDS)
@pytest.mark.parametrize("logit_kw", [dict(scale=10.0), dict(standardize=True)])
@pytest.mark.parametrize("chunk_size", [2, None])
def test_divergences_with_scale_and_standardize_match_naive(div, logit_kw, chunk_size):
    s, t, kw = make()
    kw.update(temperature=2.0, **div, **logit_kw)
    ref, ref_grads = loss_and_grads(word_kl_naive, s, t, **kw)
    out, grads = loss_and_grads(word_kl, s, t, chunk_size=chunk_size, **kw)
    torch.testing.assert_close(out, ref, **TOL)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-4)


def hand_divergence(p_t, p_s, divergence, beta=0.5, alpha=0.1):
    """One token's divergence in plain float64 Python, from the textbook formulas."""
    kl = lambda p, q: sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)  # noqa: E731
    if divergence == "forward_kl":
        return kl(p_t, p_s)
    if divergence == "reverse_kl":
        return kl(p_s, p_t)
    if divergence == "jsd":
        m = [beta * a + (1 - beta) * b for a, b in zip(p_t, p_s)]
        return beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)
    if divergence == "tvd":
        return 0.5 * sum(abs(a - b) for a, b in zip(p_t, p_s))
    m = [alpha * a + (1 - alpha) * b for a, b in zip(p_t, p_s)]
    return kl(p_t, m)


@pytest.mark.parametrize("div", DIVS, ids=DIV_IDS)
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_divergences_against_a_loop(div, temperature):
    """Padding ignored, T applied, ×T², defaults beta 0.5 and alpha 0.1, vocab_index applied."""
    s, t, kw = make()
    pairs = list(token_distributions(s, t, kw, temperature))
    total = sum(hand_divergence(p_t, p_s, **div) for p_t, p_s in pairs)
    expected = temperature**2 * total / len(pairs)
    for fn in (word_kl, word_kl_naive):
        loss = fn(**s, **t, temperature=temperature, **kw, **div)
        assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("div", DIVS, ids=DIV_IDS)
@pytest.mark.parametrize("fn", [word_kl, word_kl_naive])
@pytest.mark.parametrize("logit_kw", [{}, dict(scale=10.0), dict(standardize=True)])
def test_identical_inputs_give_zero_for_every_divergence(div, fn, logit_kw):
    s, _, kw = make(index=False)
    same = dict(h_t=s["h_s"].detach(), w_t=s["w_s"].detach(), b_t=s["b_s"].detach())
    for temperature in (1.0, 15.0):
        loss, grads = loss_and_grads(
            fn, s, same, mask=kw["mask"], temperature=temperature, **logit_kw, **div
        )
        assert loss.abs().item() < 1e-5
        assert all(g.abs().max() < 1e-5 for g in grads)


def test_every_divergence_is_in_the_tests():
    assert {d["divergence"] for d in DIVS} == set(DIVERGENCES)


@pytest.mark.parametrize("div", DIVS[1:], ids=DIV_IDS[1:])
def test_divergences_ignore_padding_and_empty_masks(div):
    s, t, kw = make()
    mask = kw["mask"]
    loss, (g_h, g_w, g_b) = loss_and_grads(word_kl, s, t, chunk_size=3, **kw, **div)
    assert (g_h[~mask] == 0).all()
    assert (g_h[mask] != 0).any() or div.get("alpha") == 1.0  # skew_kl with alpha 1 is 0
    s2 = {k: v.detach().clone() for k, v in s.items()}
    t2 = {k: v.clone() for k, v in t.items()}
    s2["h_s"][~mask] = 1e3
    t2["h_t"][~mask] = float("nan")
    for x in s2.values():
        x.requires_grad_(True)
    loss2, grads2 = loss_and_grads(word_kl, s2, t2, chunk_size=3, **kw, **div)
    assert torch.equal(loss, loss2)
    assert all(torch.equal(a, b) for a, b in zip((g_h, g_w, g_b), grads2))
    kw["mask"] = torch.zeros(B, L, dtype=torch.bool)
    for fn in (word_kl, word_kl_naive):
        loss, grads = loss_and_grads(fn, s, t, **kw, **div)
        assert loss.item() == 0.0 and all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_divergence_defaults_and_limits():
    s, t, kw = make()
    ref, ref_grads = loss_and_grads(word_kl, s, t, temperature=2.0, **kw)
    out, grads = loss_and_grads(word_kl, s, t, temperature=2.0, divergence="forward_kl", **kw)
    assert torch.equal(out, ref) and all(torch.equal(g, r) for g, r in zip(grads, ref_grads))
    for div, explicit in (("jsd", dict(beta=0.5)), ("skew_kl", dict(alpha=0.1))):
        a = word_kl(**s, **t, **kw, divergence=div)
        assert torch.equal(a, word_kl(**s, **t, **kw, divergence=div, **explicit))
    # skew_kl with alpha 0 is forward KL; jsd is symmetric at beta 0.5 and swaps sides at 1 − beta
    skew0 = word_kl(**s, **t, **kw, temperature=2.0, divergence="skew_kl", alpha=0.0)
    torch.testing.assert_close(skew0, ref, **TOL)
    s0, t0 = dict(s, b_s=None), dict(t, b_t=None)
    swapped = dict(h_s=t0["h_t"], w_s=t0["w_t"], h_t=s0["h_s"], w_t=s0["w_s"], b_s=None, b_t=None)
    mask = kw["mask"]
    s0["w_s"], t0["w_t"] = s0["w_s"], t0["w_t"][kw["vocab_index"]]
    swapped["w_s"], swapped["h_t"] = t0["w_t"], s0["h_s"]
    for beta in (0.5, 0.3):
        fwd = word_kl_naive(**s0, **t0, mask=mask, divergence="jsd", beta=beta)
        back = word_kl_naive(**swapped, mask=mask, divergence="jsd", beta=1 - beta)
        torch.testing.assert_close(fwd, back, **TOL)
    # reverse KL is forward KL with the models swapped
    fwd = word_kl_naive(**s0, **t0, mask=mask, divergence="reverse_kl")
    torch.testing.assert_close(fwd, word_kl_naive(**swapped, mask=mask), **TOL)


@pytest.mark.parametrize("div", DIVS[1:], ids=DIV_IDS[1:])
def test_gradcheck_float64_divergences(div):
    s, t, kw = make(dtype=torch.float64)
    t = {k: v.detach() for k, v in t.items()}

    def fn(h_s, w_s, b_s):
        return word_kl(h_s, w_s, temperature=2.0, b_s=b_s, chunk_size=3, **t, **kw, **div)

    assert torch.autograd.gradcheck(fn, (s["h_s"], s["w_s"], s["b_s"]), fast_mode=True)


@pytest.mark.parametrize(
    ("div", "words"),
    [
        (dict(divergence="bogus"), ["divergence", "forward_kl, reverse_kl, jsd, tvd, skew_kl"]),
        (dict(divergence="reverse_kl", beta=0.5), ["beta", "only jsd"]),
        (dict(divergence="jsd", alpha=0.5), ["alpha", "only skew_kl"]),
        (dict(divergence="jsd", beta=1.0), ["beta", "(0, 1)"]),
        (dict(divergence="jsd", beta=0.0), ["beta", "(0, 1)"]),
        (dict(divergence="skew_kl", alpha=-0.1), ["alpha", "[0, 1]"]),
        (dict(divergence="skew_kl", alpha=float("nan")), ["alpha", "[0, 1]"]),
        (dict(divergence="skew_kl", alpha=True), ["alpha", "[0, 1]"]),
    ],
)
@pytest.mark.parametrize("fn", [word_kl, word_kl_naive])
def test_bad_divergence_is_a_one_line_error(fn, div, words):
    s, t, kw = make()
    with pytest.raises(DistillError) as err:
        fn(**s, **t, **kw, **div)
    message = str(err.value)
    assert "\n" not in message and message.startswith("word_kl: ")
    assert all(w in message for w in words), message


@pytest.mark.parametrize("div", DIVS[1:], ids=DIV_IDS[1:])
def test_divergences_bf16_and_autocast_stay_fp32_and_close(div):
    s, t, kw = make()
    kw.update(temperature=2.0, **div)
    ref, ref_grads = loss_and_grads(word_kl, s, t, **kw)
    s16 = {k: v.detach().bfloat16().requires_grad_(True) for k, v in s.items()}
    t16 = {k: v.bfloat16() for k, v in t.items()}
    out, grads = loss_and_grads(word_kl, s16, t16, chunk_size=3, **kw)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=5e-2, atol=5e-2)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), r, rtol=0.1, atol=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = word_kl(**s, **t, **kw)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(ref.item(), rel=5e-2, abs=5e-2)

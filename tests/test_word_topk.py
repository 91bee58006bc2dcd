import math

import pytest
import torch
import torch.nn.functional as F

from distill_cli.errors import DistillError
from distill_cli.training.word_kd import DIVERGENCES, word_kl
from distill_cli.training.word_topk import TopK, teacher_topk, word_kl_topk
from tests.test_word_kd import DIV_IDS, DIVS, V_S, V_T, make

TOL = dict(rtol=1e-5, atol=1e-5)
LOGITS = [{}, dict(scale=10.0), dict(standardize=True)]
LOGIT_IDS = ["plain", "scale10", "standardize"]


def cached(t, kw, k, temperatures=(1.0,), **logit_kw):
    return teacher_topk(
        t["h_t"], t["w_t"], t["b_t"], kw["mask"], k=k, temperatures=temperatures,
        vocab_index=kw["vocab_index"], **logit_kw,
    )  # fmt: skip


def topk_loss_and_grads(s, topk, kw, **extra):
    loss = word_kl_topk(s["h_s"], s["w_s"], topk, kw["mask"], b_s=s["b_s"], **extra)
    inputs = [x for x in s.values() if x is not None]
    return loss, torch.autograd.grad(loss, inputs) if loss.requires_grad else None


def exact_loss_and_grads(s, t, kw, **extra):
    loss = word_kl(**s, **t, **kw, **extra)
    return loss, torch.autograd.grad(loss, [x for x in s.values() if x is not None])


# k ≥ V: no tail bucket, the same loss and gradients as word_kl


@pytest.mark.parametrize("div", DIVS, ids=DIV_IDS)
@pytest.mark.parametrize("logit_kw", LOGITS, ids=LOGIT_IDS)
@pytest.mark.parametrize("temperature", [1.0, 15.0])
@pytest.mark.parametrize(("bias", "index"), [(True, True), (False, False)])
@pytest.mark.parametrize("chunk_size", [1, 3, None])
def test_full_k_equals_word_kl(div, logit_kw, temperature, bias, index, chunk_size):
    s, t, kw = make(bias=bias, index=index)
    topk = cached(t, kw, 1000, (1.0, 15.0), **logit_kw, chunk_size=chunk_size)
    assert topk.ids.shape[1] == (V_S if index else V_T)
    extra = dict(temperature=temperature, **div, **logit_kw)
    out, grads = topk_loss_and_grads(s, topk, kw, chunk_size=chunk_size, **extra)
    ref, ref_grads = exact_loss_and_grads(s, t, kw, **extra)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, **TOL)
    atol = 1e-5 * logit_kw.get("scale", 1.0)  # fp32 rounding grows with the logits, as in word_kl
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=atol)


# k < V: against the bucket distributions built from full logits, with autograd


def full_logits(s, t, kw, scale=1.0, standardize=False):
    keep = kw["mask"].reshape(-1)
    z_s = F.linear(s["h_s"], s["w_s"], s["b_s"]).reshape(-1, s["w_s"].shape[0])[keep]
    z_t = F.linear(t["h_t"], t["w_t"], t["b_t"])[..., kw["vocab_index"]]
    z_t = z_t.reshape(-1, z_t.shape[-1])[keep].double()
    if not standardize:
        return z_s * scale, z_t * scale
    z = lambda x: (x - x.mean(-1, keepdim=True)) / (x.std(-1, correction=0, keepdim=True) + 1e-7)  # noqa: E731
    return z(z_s), z(z_t)


def buckets(z, ids, temperature):
    """log-probabilities of the k ids and of the rest, from the full tempered log-softmax."""
    lp = torch.log_softmax(z / temperature, -1)
    rest = torch.ones_like(lp, dtype=torch.bool).scatter_(-1, ids, False)
    tail = lp.masked_fill(~rest, -math.inf).logsumexp(-1, keepdim=True)
    return torch.cat([lp.gather(-1, ids), tail], -1)


def bucket_divergence(q_t, q_s, divergence, beta=0.5, alpha=0.1):
    kl = lambda p, q: (p * (p.log() - q.log())).sum(-1)  # noqa: E731
    if divergence == "forward_kl":
        return kl(q_t, q_s)
    if divergence == "reverse_kl":
        return kl(q_s, q_t)
    if divergence == "jsd":
        m = beta * q_t + (1 - beta) * q_s
        return beta * kl(q_t, m) + (1 - beta) * kl(q_s, m)
    if divergence == "tvd":
        return 0.5 * (q_t - q_s).abs().sum(-1)
    return kl(q_t, alpha * q_t + (1 - alpha) * q_s)


def naive_topk(s, t, kw, k, temperature, div, scale=1.0, standardize=False):
    z_s, z_t = full_logits(s, t, kw, scale, standardize)
    ids = torch.log_softmax(z_t, -1).topk(k, -1).indices
    q_t = buckets(z_t, ids, temperature).exp()
    q_s = buckets(z_s.double(), ids, temperature).exp()
    return temperature**2 * bucket_divergence(q_t, q_s, **div).mean()


@pytest.mark.parametrize("div", DIVS, ids=DIV_IDS)
@pytest.mark.parametrize("logit_kw", LOGITS, ids=LOGIT_IDS)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize(("k", "chunk_size"), [(1, None), (5, 3), (20, 1)])
def test_top_k_matches_naive(div, logit_kw, temperature, k, chunk_size):
    s, t, kw = make()
    topk = cached(t, kw, k, (1.0, 4.0), **logit_kw)
    extra = dict(temperature=temperature, **div, **logit_kw)
    out, grads = topk_loss_and_grads(s, topk, kw, chunk_size=chunk_size, **extra)
    ref = naive_topk(s, t, kw, k, temperature, div, **logit_kw)
    inputs = [x for x in s.values() if x is not None]
    ref_grads = torch.autograd.grad(ref, inputs)
    torch.testing.assert_close(out, ref.float(), **TOL)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5 * logit_kw.get("scale", 1.0))


@pytest.mark.parametrize("div", DIVS, ids=DIV_IDS)
def test_gradcheck_float64(div):
    s, t, kw = make(dtype=torch.float64)
    topk = cached(t, kw, 4, (2.0,))

    def fn(h_s, w_s, b_s):
        return word_kl_topk(h_s, w_s, topk, kw["mask"], 2.0, b_s, chunk_size=3, **div)

    assert torch.autograd.gradcheck(fn, (s["h_s"], s["w_s"], s["b_s"]), fast_mode=True)


@pytest.mark.parametrize("logit_kw", LOGITS[1:], ids=LOGIT_IDS[1:])
def test_gradcheck_float64_scale_and_standardize(logit_kw):
    s, t, kw = make(dtype=torch.float64)
    topk = cached(t, kw, 4, (2.0,), **logit_kw)

    def fn(h_s, w_s, b_s):
        return word_kl_topk(h_s, w_s, topk, kw["mask"], 2.0, b_s, chunk_size=3, **logit_kw)

    assert torch.autograd.gradcheck(fn, (s["h_s"], s["w_s"], s["b_s"]))


# teacher_topk


@pytest.mark.parametrize("logit_kw", LOGITS, ids=LOGIT_IDS)
@pytest.mark.parametrize("chunk_size", [1, 3, None])
def test_teacher_topk_matches_full_log_softmax(logit_kw, chunk_size):
    s, t, kw = make()
    topk = cached(t, kw, 7, (1.0, 2.0, 15.0), **logit_kw, chunk_size=chunk_size)
    _, z_t = full_logits(s, t, kw, **logit_kw)
    lp = torch.log_softmax(z_t, -1)
    ref = lp.topk(7, -1)
    assert topk.ids.dtype == torch.long and topk.logp.dtype == torch.float32
    assert torch.equal(topk.ids, ref.indices)
    torch.testing.assert_close(topk.logp, ref.values.float(), **TOL)
    rest = torch.ones_like(lp, dtype=torch.bool).scatter_(-1, ref.indices, False)
    assert set(topk.tails) == {1.0, 2.0, 15.0}
    for temperature, tail in topk.tails.items():
        expected = (lp / temperature).masked_fill(~rest, -math.inf).logsumexp(-1)
        assert tail.shape == (int(kw["mask"].sum()),) and tail.dtype == torch.float32
        torch.testing.assert_close(tail, expected.float(), **TOL)


def test_teacher_topk_caps_k_and_uses_student_ids():
    _, t, kw = make()
    topk = cached(t, kw, 1000, (1.0, 3.0))
    assert topk.ids.shape == (int(kw["mask"].sum()), V_S)
    assert all(torch.isneginf(tail).all() for tail in topk.tails.values())
    assert torch.equal(topk.ids.sort(-1).values, torch.arange(V_S).expand_as(topk.ids))
    restricted = dict(t, w_t=t["w_t"][kw["vocab_index"]], b_t=t["b_t"][kw["vocab_index"]])
    for k in (3, 1000):
        a, b = cached(t, kw, k), cached(restricted, dict(kw, vocab_index=None), k)
        assert torch.equal(a.ids, b.ids) and torch.equal(a.logp, b.logp)


def test_teacher_topk_mask_selects_rows_in_order():
    _, t, kw = make()
    mask = kw["mask"]
    a = cached(t, kw, 5, (1.0, 2.0))
    flat = dict(h_t=t["h_t"][mask], w_t=t["w_t"], b_t=t["b_t"])
    b = cached(flat, dict(kw, mask=None), 5, (1.0, 2.0))
    assert torch.equal(a.ids, b.ids)
    torch.testing.assert_close(a.logp, b.logp, **TOL)
    for temperature in (1.0, 2.0):
        torch.testing.assert_close(a.tails[temperature], b.tails[temperature], **TOL)
    empty = cached(t, dict(kw, mask=torch.zeros_like(mask)), 5)
    assert empty.ids.shape == (0, 5) and empty.tails[1.0].shape == (0,)


# the tail bucket merges words: for forward KL at T = 1 a lower bound that tightens with k


def test_gap_shrinks_as_k_grows():
    s, t, kw = make(index=False, seed=3)
    exact = word_kl(**s, **t, mask=kw["mask"]).item()
    losses = [word_kl_topk(s["h_s"], s["w_s"], cached(t, kw, k), kw["mask"], b_s=s["b_s"]).item()
              for k in (1, 2, 4, 8, 16, 32, V_T)]  # fmt: skip
    assert losses[-1] == pytest.approx(exact, rel=1e-5)
    assert all(a <= b + 1e-6 for a, b in zip(losses, losses[1:]))
    assert all(x <= exact + 1e-6 for x in losses) and losses[0] < exact


# -inf, empty masks, errors


@pytest.mark.parametrize("div", DIVS, ids=DIV_IDS)
def test_no_mass_buckets_give_no_nan(div):
    s, t, kw = make()
    topk = cached(t, kw, 5)
    no_tail = TopK(topk.ids, topk.logp, {1.0: torch.full_like(topk.tails[1.0], -math.inf)})
    b_t = t["b_t"].clone()
    b_t[kw["vocab_index"][:10]] = -math.inf  # ten words the teacher never predicts
    dead = cached(dict(t, b_t=b_t), kw, 25)
    assert torch.isneginf(dead.logp[:, -5:]).all()
    for topk in (no_tail, dead):
        loss, grads = topk_loss_and_grads(s, topk, kw, **div)
        assert not loss.isnan() and all(not g.isnan().any() for g in grads)
        if div["divergence"] != "reverse_kl":  # reverse KL is +∞ there, kept finite but huge
            assert loss.isfinite() and all(g.isfinite().all() for g in grads)


@pytest.mark.parametrize("div", DIVS, ids=DIV_IDS)
def test_empty_mask_gives_zero(div):
    s, t, kw = make()
    kw["mask"] = torch.zeros_like(kw["mask"])
    for k in (5, 1000):
        loss, grads = topk_loss_and_grads(s, cached(t, kw, k), kw, **div)
        assert loss.item() == 0.0
        assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_padding_and_teacher_get_no_grad():
    s, t, kw = make()
    topk = cached(t, kw, 5)
    topk.logp.requires_grad_(True)
    loss, (g_h, _, _) = topk_loss_and_grads(s, topk, kw)
    assert (g_h[~kw["mask"]] == 0).all() and (g_h[kw["mask"]] != 0).any()
    assert topk.logp.grad is None


def test_missing_temperature_is_a_one_line_error():
    s, t, kw = make()
    topk = cached(t, kw, 5, (1.0, 2.0))
    with pytest.raises(DistillError) as err:
        word_kl_topk(s["h_s"], s["w_s"], topk, kw["mask"], temperature=15.0)
    message = str(err.value)
    assert "\n" not in message and "15" in message and "1, 2" in message
    assert "other temperatures" in message


def test_row_count_mismatch_is_a_one_line_error():
    s, t, kw = make()
    topk = cached(t, kw, 5)
    with pytest.raises(DistillError) as err:
        word_kl_topk(s["h_s"], s["w_s"], topk, None)
    message = str(err.value)
    assert "\n" not in message and f"{int(kw['mask'].sum())} rows" in message
    assert f"selects {kw['mask'].numel()}" in message
    with pytest.raises(DistillError, match="vocabulary"):
        word_kl_topk(s["h_s"], s["w_s"][:3], topk, kw["mask"])


def test_every_divergence_is_in_the_tests():
    assert {d["divergence"] for d in DIVS} == set(DIVERGENCES)


# low precision: matmuls in bf16, fp32 loss close to the fp32 run


@pytest.mark.parametrize("div", DIVS[:5], ids=DIV_IDS[:5])
@pytest.mark.parametrize("logit_kw", LOGITS, ids=LOGIT_IDS)
def test_bf16_and_autocast_give_fp32_loss_close_to_fp32(div, logit_kw):
    s, t, kw = make()
    extra = dict(temperature=2.0, **div, **logit_kw)
    topk = cached(t, kw, 6, (2.0,), **logit_kw)
    ref, ref_grads = topk_loss_and_grads(s, topk, kw, **extra)
    s16 = {k: v.detach().bfloat16().requires_grad_(True) for k, v in s.items()}
    t16 = {k: v.bfloat16() for k, v in t.items()}
    topk16 = cached(t16, kw, 6, (2.0,), **logit_kw)
    assert topk16.logp.dtype == torch.float32
    out, grads = topk_loss_and_grads(s16, topk16, kw, chunk_size=3, **extra)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=5e-2, atol=5e-2)
    for g, r in zip(grads, ref_grads, strict=True):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), r, rtol=0.1, atol=5e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_topk = cached(t, kw, 6, (2.0,), **logit_kw)
        low, grads = topk_loss_and_grads(s, low_topk, kw, **extra)
    assert low.dtype == torch.float32 and low_topk.logp.dtype == torch.float32
    assert low.item() == pytest.approx(ref.item(), rel=5e-2, abs=5e-2)
    assert all(g.dtype == torch.float32 and g.isfinite().all() for g in grads)

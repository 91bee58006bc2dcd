import math

import pytest
import torch

from distill_cli.losses import (
    KD_LOSSES,
    StepOutputs,
    hard_label_loss,
    loss_parts,
    soft_label_kl,
    weighted_sum,
)
from distill_cli.recipe import Term


def naive_kl(zs, zt, t):
    """T²·Σ_c p_t,c·(log p_t,c − log p_s,c), averaged over rows, written from the formula."""
    total = 0.0
    for s_row, t_row in zip(zs.tolist(), zt.tolist()):
        ps = [math.exp(v / t) for v in s_row]
        pt = [math.exp(v / t) for v in t_row]
        ps = [p / sum(ps) for p in ps]
        pt = [p / sum(pt) for p in pt]
        total += sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt))
    return t * t * total / len(zs)


def naive_ce(zs, labels):
    total = 0.0
    for row, y in zip(zs.tolist(), labels.tolist()):
        total += math.log(sum(math.exp(v) for v in row)) - row[y]
    return total / len(zs)


@pytest.mark.parametrize("t", [1.0, 2.0, 15.0])
def test_soft_label_kl_matches_formula(t):
    torch.manual_seed(0)
    zs, zt = torch.randn(6, 5), torch.randn(6, 5) * 3
    assert soft_label_kl(zs, zt, t).item() == pytest.approx(naive_kl(zs, zt, t), rel=1e-5)


def test_identical_logits_give_zero():
    z = torch.randn(4, 3)
    assert soft_label_kl(z, z.clone(), 1.0).item() == pytest.approx(0.0, abs=1e-7)
    assert soft_label_kl(z, z.clone(), 15.0).item() == pytest.approx(0.0, abs=1e-6)


def test_temperature_squared_scaling():
    # With z_s, z_t scaled by T, the KL inside is the same as at T=1, so the loss grows by T².
    torch.manual_seed(1)
    zs, zt = torch.randn(5, 4), torch.randn(5, 4)
    base = soft_label_kl(zs, zt, 1.0)
    assert soft_label_kl(zs * 3, zt * 3, 3.0).item() == pytest.approx(9 * base.item(), rel=1e-5)


def test_fp16_inputs_are_computed_in_fp32():
    zs, zt = torch.randn(3, 4), torch.randn(3, 4)
    low = soft_label_kl(zs.half(), zt.half(), 2.0)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(
        soft_label_kl(zs.half().float(), zt.half().float(), 2.0).item()
    )


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_tkd_combination_alpha(alpha):
    torch.manual_seed(2)
    zs, zt, y = torch.randn(8, 3), torch.randn(8, 3), torch.randint(0, 3, (8,))
    terms = {"soft_label_kl": Term(weight=alpha, temperature=1.0), "ce": Term(weight=1 - alpha)}
    parts = loss_parts(terms, StepOutputs(student_logits=zs, labels=y, teacher_logits=zt))
    expected = alpha * naive_kl(zs, zt, 1.0) + (1 - alpha) * naive_ce(zs, y)
    assert weighted_sum(terms, parts).item() == pytest.approx(expected, rel=1e-5)
    if alpha == 1.0:
        assert weighted_sum(terms, parts).item() == pytest.approx(naive_kl(zs, zt, 1.0), rel=1e-5)
    if alpha == 0.0:
        assert weighted_sum(terms, parts).item() == pytest.approx(naive_ce(zs, y), rel=1e-5)


def test_regression_hard_label_is_mse():
    z, y = torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0])
    assert hard_label_loss(z, y).item() == pytest.approx((1 + 4) / 2)


def test_gradient_flows_only_to_student():
    zs = torch.randn(4, 3, requires_grad=True)
    zt = torch.randn(4, 3)
    soft_label_kl(zs, zt, 2.0).backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0


def test_registry_names_and_teacher_needs():
    assert {"soft_label_kl", "ce", "logit_mse"} <= set(KD_LOSSES)
    assert KD_LOSSES["soft_label_kl"].needs_teacher and not KD_LOSSES["ce"].needs_teacher

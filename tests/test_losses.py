import math

import pytest
import torch
from transformers import BertConfig

from distill_cli.errors import DistillError
from distill_cli.models.forward import Outputs
from distill_cli.tasks.sequence import hard_label_loss
from distill_cli.training.losses import (
    KD_LOSSES,
    Step,
    attention_kl,
    check_models,
    hidden_mse,
    layer_pairs,
    loss_parts,
    make_extras,
    needs_of,
    param_problems,
    soft_label_kl,
    weighted_sum,
)
from distill_cli.training.word_kd import word_kl_naive


def params(name, **values):
    """A term's parameters as a recipe gives them."""
    return KD_LOSSES[name].params(**values)


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
    terms = {
        "soft_label_kl": params("soft_label_kl", weight=alpha, temperature=1.0),
        "ce": params("ce", weight=1 - alpha),
    }
    step = Step(student=Outputs(logits=zs), teacher=Outputs(logits=zt), labels=y)
    parts = loss_parts(terms, step)
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


def test_registry_covers_glmd_and_ablation_terms():
    assert {"word_kl", "hidden_mse", "attention_kl"} <= set(KD_LOSSES)
    needs = needs_of({"soft_label_kl": params("soft_label_kl"), "word_kl": params("word_kl")})
    assert needs.logits and needs.word and not needs.hidden


def test_uniform_layer_pairs_follow_tinybert():
    assert layer_pairs(3, 6, None) == [(1, 2), (2, 4), (3, 6)]
    assert layer_pairs(2, 2, None) == [(1, 1), (2, 2)]
    assert layer_pairs(2, 6, [3, 6]) == [(1, 3), (2, 6)]


def test_hidden_mse_ignores_padding_and_projects():
    torch.manual_seed(4)
    mask = torch.tensor([[1, 1, 0]])
    hs = (torch.zeros(1, 3, 4), torch.randn(1, 3, 4))
    ht = (torch.zeros(1, 3, 4), hs[1].clone())
    ht[1][0, 2] += 100.0  # a padded position: must not count
    assert hidden_mse(hs, ht, mask, [(1, 1)]).item() == pytest.approx(0.0, abs=1e-7)
    proj = torch.nn.ModuleList([torch.nn.Linear(4, 6)])
    wide = (torch.zeros(1, 3, 6), proj[0](hs[1]).detach())
    assert hidden_mse(hs, wide, mask, [(1, 1)], proj).item() == pytest.approx(0.0, abs=1e-7)


def test_attention_kl_matches_formula():
    torch.manual_seed(5)
    a_s = (torch.randn(1, 2, 3, 3).softmax(-1),)
    a_t = (torch.randn(1, 4, 3, 3).softmax(-1),)  # different head counts: heads are averaged
    mask = torch.tensor([[1, 1, 0]])
    got = attention_kl(a_s, a_t, mask, [(1, 1)]).item()
    ps, pt = a_s[0].mean(1)[0, :2], a_t[0].mean(1)[0, :2]
    expected = (pt * (pt.log() - ps.log())).sum(-1).mean().item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert attention_kl(a_t, a_t, mask, [(1, 1)]).item() == pytest.approx(0.0, abs=1e-6)


def config(layers, hidden):
    return BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=2)


def test_a_layer_map_is_checked_against_both_models_before_training():
    teacher, student = config(4, 48), config(2, 32)
    fits = {"hidden_mse": params("hidden_mse", layer_map=[2, 4]), "ce": params("ce")}
    check_models([fits], teacher, student)
    too_deep = {"attention_kl": params("attention_kl", layer_map=[2, 9])}
    with pytest.raises(DistillError) as e:
        check_models([fits, too_deep], teacher, student)
    msg = str(e.value)
    assert msg.startswith("phases.1.terms.attention_kl: layer_map [2, 9]") and "(1..4)" in msg
    with pytest.raises(DistillError, match="uniform"):  # the uniform map cannot fit either
        check_models([{"hidden_mse": params("hidden_mse")}], config(2, 32), config(4, 32))


def test_extras_are_projections_only_when_widths_differ():
    extras = make_extras(["hidden_mse", "ce"], config(4, 48), config(2, 32))
    assert list(extras) == ["hidden_mse"] and len(extras["hidden_mse"]) == 2
    assert extras["hidden_mse"][0].weight.shape == (48, 32)
    assert not make_extras(["hidden_mse"], config(4, 32), config(2, 32))


def test_every_term_declares_what_a_recipe_needs():
    for name, entry in KD_LOSSES.items():
        assert entry.params().weight == 1.0, name
        assert entry.needs_teacher or name == "ce", name
        if entry.eager_attention:
            assert entry.needs.attentions, name
        if entry.token_level:
            assert not entry.task_only, name


def word_step(scale=1.0):
    g = torch.Generator().manual_seed(3)
    student = Outputs(
        word_features=torch.randn(2, 4, 6, generator=g, requires_grad=True),
        word_weight=torch.randn(20, 6, generator=g, requires_grad=True),
    )
    teacher = Outputs(
        word_features=torch.randn(2, 4, 8, generator=g), word_weight=torch.randn(20, 8, generator=g)
    )
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    return Step(student=student, teacher=teacher, mask=mask, word_scale=scale)


@pytest.mark.parametrize(
    "values",
    [{}, dict(divergence="reverse_kl"), dict(divergence="jsd", beta=0.3),
     dict(divergence="tvd"), dict(divergence="skew_kl", alpha=0.2)],
)  # fmt: skip
def test_word_kl_term_passes_its_divergence_on(values):
    step = word_step(scale=2.0)
    p = params("word_kl", temperature=3.0, **values)
    assert param_problems(p) == []
    got = loss_parts({"word_kl": p}, step)["word_kl"]
    s, t = step.student, step.teacher
    want = word_kl_naive(s.word_features, s.word_weight, t.word_features, t.word_weight,
                         mask=step.mask, temperature=3.0, scale=2.0, **values)  # fmt: skip
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_word_kl_divergence_defaults_to_forward_kl_with_no_beta_or_alpha():
    p = params("word_kl")
    assert (p.divergence, p.beta, p.alpha) == ("forward_kl", None, None)
    for key in ("divergence", "beta", "alpha"):
        assert KD_LOSSES["word_kl"].params.__dataclass_fields__[key].metadata["help"]


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (dict(divergence="kl"), "divergence must be one of forward_kl, reverse_kl, jsd, tvd, "
                                "skew_kl, got 'kl'"),
        (dict(divergence="reverse_kl", beta=0.5), "beta must be left out: only jsd takes it"),
        (dict(beta=0.5), "beta must be left out: only jsd takes it, not forward_kl"),
        (dict(divergence="jsd", alpha=0.5), "alpha must be left out: only skew_kl takes it"),
        (dict(divergence="tvd", alpha=0.5), "alpha must be left out: only skew_kl takes it"),
        (dict(divergence="jsd", beta=1.0), "beta must be in (0, 1) for divergence jsd, got 1.0"),
        (dict(divergence="skew_kl", alpha=1.5), "alpha must be in [0, 1] for divergence skew_kl"),
    ],
)  # fmt: skip
def test_word_kl_divergence_problems(values, problem):
    problems = param_problems(params("word_kl", **values))
    assert len(problems) == 1 and problems[0].startswith(problem), problems

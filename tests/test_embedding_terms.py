"""The sentence-embedding loss terms against naive formulas, and the recipe rules they bring."""

import math

import pytest
import torch

from distill_cli.errors import DistillError
from distill_cli.models.forward import Outputs
from distill_cli.recipe import Recipe, from_dict, validate
from distill_cli.training import losses


def _parts(terms, s, t):
    step = losses.Step(student=Outputs(embedding=s), teacher=Outputs(embedding=t))
    return losses.loss_parts(terms, step)


def test_mse_and_cosine_against_naive_formulas():
    torch.manual_seed(0)
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    parts = _parts(
        {"embedding_mse": losses.Weighted(), "embedding_cosine": losses.Weighted()}, s, t
    )
    mse = sum((s[i, j] - t[i, j]) ** 2 for i in range(3) for j in range(5)) / 15
    cos = [float(s[i] @ t[i]) / (float(s[i].norm()) * float(t[i].norm())) for i in range(3)]
    assert parts["embedding_mse"].item() == pytest.approx(mse.item(), rel=1e-5)
    assert parts["embedding_cosine"].item() == pytest.approx(sum(1 - c for c in cos) / 3, rel=1e-5)


def test_relational_kl_against_a_per_text_loop():
    torch.manual_seed(0)
    s, t = torch.randn(4, 6), torch.randn(4, 3)  # widths may differ: only similarities compare
    temperature = 0.2
    got = _parts({"embedding_kl": losses.Relational(temperature=temperature)}, s, t)

    def cos(a, b):
        return float(a @ b) / (float(a.norm()) * float(b.norm()))

    total = 0.0
    for i in range(4):
        others = [j for j in range(4) if j != i]
        z_s = [cos(s[i], s[j]) / temperature for j in others]
        z_t = [cos(t[i], t[j]) / temperature for j in others]
        p_s = [math.exp(z) / sum(math.exp(w) for w in z_s) for z in z_s]
        p_t = [math.exp(z) / sum(math.exp(w) for w in z_t) for z in z_t]
        total += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
    assert got["embedding_kl"].item() == pytest.approx(total / 4, rel=1e-4)


def test_relational_kl_is_zero_for_the_same_geometry_and_for_one_text():
    torch.manual_seed(0)
    s = torch.randn(5, 4)
    rotation, _ = torch.linalg.qr(torch.randn(4, 4))
    same = _parts({"embedding_kl": losses.Relational()}, s, 3 * s @ rotation)
    assert same["embedding_kl"].item() == pytest.approx(0.0, abs=1e-5)
    one = _parts({"embedding_kl": losses.Relational()}, s[:1], s[:1])
    assert one["embedding_kl"].item() == 0.0


def test_gradients_reach_the_student_only():
    s = torch.randn(4, 6, requires_grad=True)
    t = torch.randn(4, 6)
    parts = _parts({"embedding_mse": losses.Weighted(), "embedding_kl": losses.Relational()}, s, t)
    sum(parts.values()).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def _recipe(**raw):
    base = {
        "teacher": "t",
        "phases": [{"terms": {"embedding_mse": {}, "embedding_kl": {}}}],
        "data": {"name": "d", "packing": "bucket"},
        "student": {"init": "truncate", "num_layers": 1},
    }
    base.update(raw)
    return from_dict(Recipe, base, "recipe", "test")


def test_packing_and_batch_size_one_are_refused_in_one_line():
    validate(_recipe())
    with pytest.raises(DistillError, match="data.packing: bucket"):
        validate(_recipe(data={"name": "d", "packing": "pack"}))
    with pytest.raises(DistillError, match="batch_size to 2 or more"):
        validate(_recipe(train={"batch_size": 1}))
    with pytest.raises(DistillError, match="pooling must be one of"):
        validate(_recipe(pooling="median"))

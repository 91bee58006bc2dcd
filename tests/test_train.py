"""The training loop's parts: phase planning, passes over the data, non-finite losses."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest
from helpers import RECIPES, invoke, tkd_args

from distill_cli.recipe import load_recipe
from distill_cli.training import losses, train
from distill_cli.training.train import plan_phases, steps_per_epoch


def test_phases_are_planned_in_optimizer_steps():
    phases = "phases=[{name: a, epochs: 0.5}, {name: b}, {name: c, max_steps: 7, epochs: 9}]"
    r = load_recipe(None, sets=[phases, "train.epochs=2"])
    plans = plan_phases(r, steps_per_epoch=5)
    # a fraction of an epoch rounds up; no epochs of its own: train.epochs; max_steps wins
    assert [(p.name, p.steps) for p in plans] == [("a", 3), ("b", 10), ("c", 7)]
    r.train.max_steps = 12  # caps the total: b is cut short and c never runs
    assert [(p.name, p.steps) for p in plan_phases(r, 5)] == [("a", 3), ("b", 9)]


def test_a_phase_plan_knows_what_its_terms_read():
    terms = "phases=[{name: a, terms: {ce: {}}}, {name: b, terms: {soft_label_kl: {}}}]"
    a, b = plan_phases(load_recipe(None, sets=[terms]), steps_per_epoch=1)
    assert a.needs.logits and not a.needs.teacher
    assert b.needs.logits and b.needs.teacher


@pytest.mark.parametrize(
    "batches,ga,steps", [(5, 1, 5), (5, 2, 3), (6, 2, 3), (5, 3, 2), (5, 4, 2), (2, 4, 1)]
)
def test_a_last_partial_accumulation_window_is_a_step(batches, ga, steps):
    cfg = load_recipe(None, sets=[f"train.gradient_accumulation_steps={ga}"]).train
    assert steps_per_epoch(batches, cfg) == steps


def finetune_recipe(teacher, data, *sets):
    """Plain fine-tuning of the tiny teacher: no teacher model, one ce term, every step logged."""
    options = {"data.name": str(data), "student.path": str(teacher)}
    base = ["train.mixed_precision=no", "train.logging_steps=1", "train.save_steps=null"]
    return load_recipe(RECIPES / "finetune.yaml", options, [*base, *sets])


@pytest.mark.parametrize("ga", [1, 2, 3, 4])
def test_n_epochs_train_on_every_batch_n_times(
    ga, tiny_teacher, tiny_data_dir, tmp_path, monkeypatch
):
    seen, real = [], train.train_step

    def spy(state, batch, plan):
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
            seen.append(tuple(ids[mask.bool()].tolist()))
        return real(state, batch, plan)

    monkeypatch.setattr(train, "train_step", spy)
    sets = ["train.epochs=2", "train.batch_size=10", f"train.gradient_accumulation_steps={ga}"]
    state = train.setup(finetune_recipe(tiny_teacher, tiny_data_dir, *sets), tmp_path / "out")
    train.fit(state)

    rows = [tuple(ids) for ids in state.built.train_ds["input_ids"]]
    assert len(state.train_loader) == 5  # 48 rows in batches of 10
    assert Counter(seen) == Counter(rows * 2)
    per_epoch = -(-5 // ga)
    assert state.pos.step == 2 * per_epoch
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    epoch = {r["step"]: r["epoch"] for r in map(json.loads, lines)}
    assert epoch[per_epoch] == 1.0 and epoch[2 * per_epoch] == 2.0
    assert sorted(epoch) == list(range(1, 2 * per_epoch + 1))


def _infinite_on_first_call(monkeypatch, name: str) -> None:
    """Make the registry's ``name`` term infinite the first time it runs."""
    entry, calls = losses.KD_LOSSES[name], [0]

    def fn(step, params, extra):
        calls[0] += 1
        value = entry.fn(step, params, extra)
        return value * float("inf") if calls[0] == 1 else value

    monkeypatch.setitem(losses.KD_LOSSES, name, dataclasses.replace(entry, fn=fn))


@pytest.mark.parametrize("ga", [1, 2])
def test_a_non_finite_loss_names_the_term_and_its_value(
    ga, tiny_teacher, tiny_data_dir, tmp_path, monkeypatch
):
    # with ga=2 the bad batch is the first of the step's two: its values are the ones reported
    _infinite_on_first_call(monkeypatch, "ce")
    args = tkd_args(tiny_teacher, tiny_data_dir, tmp_path / "out")
    result = invoke(*args, "--set", f"train.gradient_accumulation_steps={ga}")
    assert result.exit_code == 3, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: step 1: the loss is not finite: ce=inf (loss=inf; "), line
    assert "soft_label_kl=" in line and "no checkpoint was written" in line


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch, tmp_path, capsys):
    from distill_cli.recipe import TrainConfig
    from distill_cli.training import train

    made = []  # a real Accelerator would fix the process-wide state for later tests
    monkeypatch.setattr(train, "Accelerator", lambda **kwargs: made.append(kwargs))
    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: False)
    train.make_accelerator(TrainConfig(mixed_precision="bf16"), tmp_path)
    assert "set train.mixed_precision=no" in capsys.readouterr().err
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: True)
    train.make_accelerator(TrainConfig(mixed_precision="bf16"), tmp_path)
    assert "native bf16" not in capsys.readouterr().err
    assert [m["mixed_precision"] for m in made] == ["bf16", "bf16"]  # a warning, not a change

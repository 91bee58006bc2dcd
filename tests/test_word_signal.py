"""How much signal the word-prediction KL carries: entropy, top-1, the fitted scale, the warning."""

import json
import math
import signal
from types import SimpleNamespace

import pytest
import torch
import yaml
from helpers import RECIPES, invoke
from test_resume import finish, start, wait_for_step

from distill_cli.training import word_signal as ws


def out_of(z: torch.Tensor):
    """Model outputs whose word logits are exactly ``z`` [n, V] (identity vocabulary)."""
    v = z.shape[1]
    return SimpleNamespace(word_features=z, word_weight=torch.eye(v), word_bias=None)


def entropy(z: list[float]) -> float:
    p = [math.exp(x) for x in z]
    total = sum(p)
    return -sum(q / total * math.log(q / total) for q in p)


def test_entropy_and_top1_against_hand_computed_values():
    z = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 4.0, 1.0]])
    pos = ws.Positions(
        targets=torch.tensor([1, 0, 3]),
        scored=torch.tensor([True, True, True]),
        masked=torch.tensor([False, True, False]),
    )
    tally = ws.Tally()
    top1 = ws.tally_batch(tally, out_of(z), pos, ws.Calibration(temperature=2.0))
    rows = [[x / 2 for x in row] for row in z.tolist()]
    expected = sum(entropy(r) for r in rows) / 3 / math.log(4)
    result = tally.result()
    assert result["entropy_share"] == pytest.approx(expected, abs=1e-4)
    assert top1.tolist() == [0, 0, 2]  # ties go to the first id
    assert result["top1_masked"] == 1.0  # row 2: predicts 0, which it should
    assert result["top1_unmasked"] == 0.0  # rows 1 and 3 miss
    assert "agreement_masked" not in result

    student = ws.Tally()
    ws.tally_batch(student, out_of(z.flip(1)), pos, ws.Calibration(), teacher_top1=top1)
    # the student's top-1 ids are 0 (a tie), 3 and 1; the teacher's 0, 0 and 2
    assert student.result()["agreement_unmasked"] == 0.5
    assert student.result()["agreement_masked"] == 0.0


def test_scale_and_standardisation_shape_the_distribution():
    z = torch.tensor([[1.0, 0.0, -1.0, 0.5]])
    pos = ws.Positions(torch.tensor([0]), torch.tensor([True]), torch.tensor([False]))
    shares = {}
    for name, cal in {
        "flat": ws.Calibration(temperature=100.0),
        "scaled": ws.Calibration(scale=10.0),
        "z-scored": ws.Calibration(standardize=True, scale=10.0),  # the scale is ignored
    }.items():
        tally = ws.Tally()
        ws.tally_batch(tally, out_of(z), pos, cal)
        shares[name] = tally.result()["entropy_share"]
    zs = ((z - z.mean()) / z.std(correction=0))[0].tolist()
    assert shares["flat"] > 0.999
    assert shares["scaled"] == pytest.approx(
        entropy([10 * x for x in z[0]]) / math.log(4), abs=1e-4
    )
    assert shares["z-scored"] == pytest.approx(entropy(zs) / math.log(4), abs=1e-4)


def test_positions_of_encoders_and_causal_lms():
    ids = torch.tensor([[2, 7, 8, 9, 3, 0]])  # [CLS] a b c [SEP] [PAD]
    keep = torch.tensor([[1, 1, 1, 1, 1, 0]])
    chosen = torch.tensor([[False, False, True, False, False, False]])
    special = torch.tensor([0, 2, 3])
    enc = ws.positions(ids, keep, chosen, special, causal=False)
    assert enc.targets.tolist() == [2, 7, 8, 9, 3]
    assert enc.scored.tolist() == [False, True, True, True, False]
    assert enc.masked.tolist() == [False, False, True, False, False]
    dec = ws.positions(ids, keep, chosen * 0, special, causal=True)
    assert dec.targets.tolist() == [7, 8, 9, 3, 0]  # the next token
    assert dec.scored.tolist() == [True, True, True, False, False]


def test_fit_scale_finds_the_known_optimum():
    # Two words, logits (1, -1): p(word 0) = sigmoid(2s). With word 0 the target in 80% of rows
    # the likelihood peaks where sigmoid(2s) = 0.8, at s = ln(4) / 2.
    n = 50
    features = torch.tensor([[1.0, -1.0]]).repeat(n, 1)
    targets = torch.tensor([0] * 40 + [1] * 10)
    s, nll, nll_at_1 = ws.fit_scale(features, torch.eye(2), None, targets)
    assert s == pytest.approx(math.log(4) / 2, rel=1e-4)
    assert nll == pytest.approx(-(0.8 * math.log(0.8) + 0.2 * math.log(0.2)), rel=1e-5)
    assert nll_at_1 > nll
    # a target that is always the top word: the optimum is beyond the bracket's end
    s, _, _ = ws.fit_scale(features, torch.eye(2), None, torch.zeros(n, dtype=torch.long))
    assert s == pytest.approx(ws.SCALE_BOUNDS[1], rel=1e-3)


def test_fit_scale_matches_a_grid_search_on_random_logits():
    g = torch.Generator().manual_seed(0)
    features, weight = torch.randn(64, 8, generator=g), torch.randn(30, 8, generator=g)
    targets = (features @ weight.t()).argmax(-1)
    targets[::3] = torch.randint(30, (22,), generator=g)  # a third of the rows: a random word
    s, nll, _ = ws.fit_scale(features, weight, None, targets)

    def mean_nll(scale):
        log_p = torch.log_softmax(scale * features @ weight.t(), -1)
        return -log_p.gather(1, targets[:, None]).mean().item()

    grid = torch.linspace(0.05, 5, 500).tolist()
    best = min(grid, key=mean_nll)
    assert s == pytest.approx(best, abs=0.011)
    assert nll == pytest.approx(mean_nll(s), rel=1e-5)
    assert nll <= min(mean_nll(x) for x in grid) + 1e-6


# ---------------------------------------------------------------- through the CLI


def pretrain(teacher, corpus, out, *extra):
    return [
        "pretrain-distill", "--recipe", RECIPES / "glmd-pretrain.yaml", "--teacher", teacher,
        "--data", corpus, "--output-dir", out, "--max-steps", 2,
        "--set", "student.num_layers=2", "--set", "train.batch_size=4",
        "--set", "data.max_length=32", "--set", "train.logging_steps=1", *extra,
    ]  # fmt: skip


def test_flat_teacher_warns_and_error_mode_exits_2(tiny_encoder, corpus_file, tmp_path):
    # A random tiny encoder's word logits are nearly flat; at scale 1 and T = 15, uniform.
    flat = ("--set", "word_logit_scale=1")
    result = invoke(*pretrain(tiny_encoder, corpus_file, tmp_path / "warned", *flat))
    assert result.exit_code == 0, result.output
    warnings = [x for x in result.stderr.splitlines() if "carry no signal" in x]
    assert len(warnings) == 1 and warnings[0].startswith("warning: phase 'pretrain'")
    assert "T=15" in warnings[0] and "set word_logit_scale: auto" in warnings[0]

    out = tmp_path / "refused"
    result = invoke(*pretrain(tiny_encoder, corpus_file, out, *flat, "--set", "word_signal=error"))
    assert result.exit_code == 2
    problems = [x for x in result.stderr.splitlines() if "carry no signal" in x]
    assert len(problems) == 1 and "Traceback" not in result.stderr
    assert problems[0] == result.stderr.splitlines()[-1]  # the last line: the error
    assert "at T=15" in problems[0] and problems[0].endswith("(word_signal: error)")
    assert not (out / "model.safetensors").exists()


def test_auto_scale_is_fitted_logged_recorded_and_used(tiny_encoder, corpus_file, tmp_path):
    out = tmp_path / "student"
    extra = ("--set", "phases.0.terms.word_kl.temperature=1")
    result = invoke(*pretrain(tiny_encoder, corpus_file, out, *extra))
    assert result.exit_code == 0, result.output
    assert "word_logit_scale: auto = " in result.stderr
    resolved = yaml.safe_load((out / "resolved_recipe.yaml").read_text())
    scale = resolved["word_logit_scale"]
    assert isinstance(scale, float) and scale > 1  # random logits are flat: it sharpens them

    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    first = records[0]
    assert first["step"] == 0 and first["word_logit_scale"] == scale
    assert 0 < first["signal/pretrain/word_kl/entropy_share"] <= 1
    assert first["signal/pretrain/word_kl/top1_masked"] is not None
    final = records[-1]
    assert final["step"] == 2 and 0 <= final["eval/word_agreement_unmasked"] <= 1

    summary = json.loads((out / "train_results.json").read_text())["word_signal"]
    assert summary["word_logit_scale"] == scale
    teacher = summary["teacher"]["pretrain"]["word_kl"]
    assert teacher["entropy_share"] == first["signal/pretrain/word_kl/entropy_share"]
    student = summary["student"]
    assert student["phase"] == "pretrain" and student["term"] == "word_kl"
    for key in ("entropy_share", "top1_masked", "top1_unmasked", "agreement_masked"):
        assert 0 <= student[key] <= 1, key
    assert "student word predictions at T=1" in result.stderr


def test_z_scoring_skips_the_scale_fit(tiny_encoder, corpus_file, tmp_path):
    out = tmp_path / "standardized"
    z = ("--set", "phases.0.terms.word_kl.standardize=true")
    result = invoke(*pretrain(tiny_encoder, corpus_file, out, *z))
    assert result.exit_code == 0, result.output
    assert "word_logit_scale: auto" not in result.stderr
    assert "(z-scored)" in result.stderr
    resolved = yaml.safe_load((out / "resolved_recipe.yaml").read_text())
    assert resolved["word_logit_scale"] == 1.0
    assert resolved["phases"][0]["terms"]["word_kl"]["standardize"] is True


def test_the_scale_survives_a_resume(tiny_encoder, corpus_file, tmp_path):
    out = tmp_path / "run"
    args = pretrain(
        tiny_encoder, corpus_file, out, "--max-steps", 12, "--set", "train.save_steps=2"
    )
    proc = start(args)
    wait_for_step(proc, out / "metrics.jsonl", 3)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=300)
    assert proc.returncode == 143
    # the resumed run must read the scale the run started with, not fit it again
    path = out / "resolved_recipe.yaml"
    resolved = yaml.safe_load(path.read_text())
    assert isinstance(resolved["word_logit_scale"], float)
    resolved["word_logit_scale"] = 7.25
    path.write_text(yaml.safe_dump(resolved, sort_keys=False))
    again = finish(args)
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stderr and "word_logit_scale: auto =" not in again.stderr
    summary = json.loads((out / "train_results.json").read_text())
    assert summary["word_signal"]["word_logit_scale"] == 7.25
    assert "(scale 7.25)" in again.stderr

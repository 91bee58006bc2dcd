"""Runs survive kills: atomic checkpoints, exact resume, signals, the NaN guard, write failures.

Kills are real: the CLI runs in a subprocess that gets SIGKILL / SIGTERM / SIGINT mid-run.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import OFFLINE_ENV, RECIPES, invoke
from safetensors.torch import load_file

from distill_cli.training import checkpoints, train

STEPS = 24


def tkd(teacher, data, out, *extra) -> list:
    """A tiny TKD run: 6 batches an epoch, so it crosses epochs; a checkpoint every 3 steps."""
    return [
        "finetune-distill", "--recipe", RECIPES / "tkd-nlp.yaml", "--teacher", teacher,
        "--data", data, "--output-dir", out, "--max-steps", STEPS,
        "--set", "student.num_layers=2", "--set", "train.batch_size=8",
        "--set", "train.learning_rate=1e-3", "--set", "train.logging_steps=1",
        "--set", "train.save_steps=3", "--set", "train.save_total_limit=2",
        "--set", "train.warmup_ratio=0.1", *extra,
    ]  # fmt: skip


def glmd(teacher, corpus, out, *extra) -> list:
    """Pre-training with 15% masking, so the masking RNG must resume too; checkpoints fall
    between log lines, so the unlogged losses must resume too."""
    return [
        "pretrain-distill", "--recipe", RECIPES / "glmd-pretrain.yaml", "--teacher", teacher,
        "--data", corpus, "--output-dir", out, "--max-steps", 16,
        "--set", "student.num_layers=2", "--set", "train.batch_size=8",
        "--set", "data.max_length=32", "--set", "train.logging_steps=3",
        "--set", "train.save_steps=2", *extra,
    ]  # fmt: skip


def start(args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "distill_cli", *map(str, args)]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=OFFLINE_ENV
    )


def finish(args) -> subprocess.CompletedProcess:
    proc = start(args)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def wait_for_step(proc: subprocess.Popen, metrics: Path, step: int) -> None:
    """Block until metrics.jsonl shows ``step`` (the run is then in its next step)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        if metrics.is_file() and any(
            json.loads(line).get("step", 0) >= step
            for line in metrics.read_text().splitlines()
            if line.endswith("}")
        ):
            return
        time.sleep(0.01)
    pytest.fail(f"the run never reached step {step}")


def training_steps(out: Path) -> list[int]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in lines if "phase" in r]


def assert_same_metrics(a: Path, b: Path) -> None:
    """The same lines with the same values (timings aside)."""
    lines_a = (a / "metrics.jsonl").read_text().splitlines()
    lines_b = (b / "metrics.jsonl").read_text().splitlines()
    for line_a, line_b in zip(lines_a, lines_b, strict=True):
        ra, rb = json.loads(line_a), json.loads(line_b)
        ra.pop("tokens_per_s", None), rb.pop("tokens_per_s", None)
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=1e-6), (k, ra, rb)


def max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def test_sigkill_at_a_random_step_then_rerun_resumes_exactly(tiny_teacher, tiny_data_dir, tmp_path):
    whole = finish(tkd(tiny_teacher, tiny_data_dir, tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    names = [p.name for p in checkpoints.complete(tmp_path / "whole")]
    assert names == [f"checkpoint-{STEPS - 3}", f"checkpoint-{STEPS}"]  # the last 2 kept
    last = tmp_path / "whole" / "checkpoints" / names[-1]
    for f in ("model.safetensors", "optimizer.bin", "random_states_0.pkl", "trainer_state_0.json"):
        assert (last / f).is_file(), f

    kill_at = random.randint(4, STEPS - 4)
    out = tmp_path / "killed"
    proc = start(tkd(tiny_teacher, tiny_data_dir, out))
    wait_for_step(proc, out / "metrics.jsonl", kill_at)
    proc.kill()
    proc.wait()
    assert not (out / "model.safetensors").exists(), "a killed run looks finished"
    resumed_from = checkpoints.latest(out)
    assert resumed_from is not None, f"no checkpoint after a kill at step {kill_at}"

    # a different recipe does not continue this run
    changed = finish(tkd(tiny_teacher, tiny_data_dir, out, "--set", "train.learning_rate=2e-3"))
    assert changed.returncode == 2
    assert "different recipe (train.learning_rate: 0.001 then, 0.002 now)" in changed.stderr

    again = finish(tkd(tiny_teacher, tiny_data_dir, out))  # the same command again
    assert again.returncode == 0, again.stderr
    assert f"resuming from {resumed_from}" in again.stderr
    diff = max_weight_diff(tmp_path / "whole", out)
    assert diff <= 1e-6, f"killed at step {kill_at}, resumed: max weight diff {diff}"
    assert training_steps(out) == list(range(1, STEPS + 1)), f"killed at step {kill_at}"
    assert_same_metrics(tmp_path / "whole", out)
    assert json.loads((out / "train_results.json").read_text())["resumed_from"]


def test_sigterm_saves_exits_143_and_resume_is_exact(tiny_encoder, corpus_file, tmp_path):
    whole = finish(glmd(tiny_encoder, corpus_file, tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr

    out = tmp_path / "stopped"
    proc = start(glmd(tiny_encoder, corpus_file, out))
    wait_for_step(proc, out / "metrics.jsonl", 6)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("stopped: SIGTERM at step "), line
    assert "run the same command again to resume" in line
    stopped_at = checkpoints.step_of(checkpoints.latest(out))
    assert f"at step {stopped_at}:" in line
    assert not (out / "model.safetensors").exists()

    again = finish(glmd(tiny_encoder, corpus_file, out, "--resume"))
    assert again.returncode == 0, again.stderr
    assert max_weight_diff(tmp_path / "whole", out) <= 1e-6
    assert training_steps(out) == [3, 6, 9, 12, 15, 16]
    assert_same_metrics(tmp_path / "whole", out)


def test_sigint_saves_and_exits_130(tiny_teacher, tiny_data_dir, tmp_path):
    out = tmp_path / "out"
    proc = start(tkd(tiny_teacher, tiny_data_dir, out, "--set", "train.save_steps=100"))
    wait_for_step(proc, out / "metrics.jsonl", 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("stopped: SIGINT at step ")
    assert checkpoints.latest(out) is not None  # saved off-schedule, on the signal


def _nan_at(monkeypatch, bad_calls: set[int]):
    """Make compute_loss return NaN on the given (1-based) calls."""
    real, calls = train.compute_loss, [0]

    def compute_loss(*args, **kwargs):
        calls[0] += 1
        loss, parts = real(*args, **kwargs)
        if calls[0] in bad_calls:
            loss = loss * float("nan")
        return loss, parts

    monkeypatch.setattr(train, "compute_loss", compute_loss)


def test_non_finite_loss_stops_with_exit_3_and_keeps_the_last_good_checkpoint(
    tiny_teacher, tiny_data_dir, tmp_path, monkeypatch
):
    _nan_at(monkeypatch, {8})
    out = tmp_path / "out"
    result = invoke(*tkd(tiny_teacher, tiny_data_dir, out))
    assert result.exit_code == 3, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: step 8: the loss is not finite (loss=nan; "), line
    assert "soft_label_kl=" in line and "ce=" in line
    assert "the last good checkpoint is" in line and "checkpoint-6" in line
    assert "train.max_bad_steps" in line
    assert [p.name for p in checkpoints.complete(out)] == ["checkpoint-3", "checkpoint-6"]
    assert not (out / "model.safetensors").exists()


def test_bad_steps_can_be_skipped(tiny_teacher, tiny_data_dir, tmp_path, monkeypatch):
    _nan_at(monkeypatch, {5, 9})
    out = tmp_path / "out"
    result = invoke(*tkd(tiny_teacher, tiny_data_dir, out, "--set", "train.max_bad_steps=2"))
    assert result.exit_code == 0, result.output
    assert "warning: step 5: the loss is not finite" in result.stderr
    assert "step skipped (2 of 2 allowed)" in result.stderr
    weights = load_file(out / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


class _Touch:
    """A pickle payload: unpickling it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_resume_refuses_a_random_states_file_that_would_run_code(
    tiny_teacher, tiny_data_dir, tmp_path, monkeypatch
):
    _nan_at(monkeypatch, {5})
    out = tmp_path / "out"
    assert invoke(*tkd(tiny_teacher, tiny_data_dir, out)).exit_code == 3
    states = checkpoints.latest(out) / "random_states_0.pkl"
    marker = tmp_path / "payload-ran"
    saved = torch.load(states, weights_only=False)
    torch.save({**saved, "random_state": _Touch(marker)}, states)

    proc = finish(tkd(tiny_teacher, tiny_data_dir, out, "--resume"))
    assert proc.returncode == 2, proc.stderr
    assert not marker.exists(), "the checkpoint's pickle ran code"
    assert "Traceback" not in proc.stderr
    assert sum(x.startswith("error") for x in proc.stderr.splitlines()) == 1, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: refused {states}: "), proc.stderr
    assert "delete " in line and "--overwrite" in line
    torch.load(states, weights_only=False)  # the payload is real: a plain load runs it
    assert marker.exists()


def test_a_write_failure_mid_run_is_one_line_and_keeps_the_last_checkpoint(
    tiny_teacher, tiny_data_dir, tmp_path, monkeypatch
):
    real, saves = checkpoints.save, [0]

    def save(accelerator, out, step, state, keep):
        saves[0] += 1
        if saves[0] == 3:
            monkeypatch.setattr(accelerator, "save_state", _no_space)
        return real(accelerator, out, step, state, keep)

    monkeypatch.setattr(checkpoints, "save", save)
    out = tmp_path / "out"
    result = invoke(*tkd(tiny_teacher, tiny_data_dir, out))
    assert result.exit_code == 4, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: could not write checkpoint "), line
    assert "No space left on device" in line and "checkpoint-6" in line
    assert [p.name for p in checkpoints.complete(out)] == ["checkpoint-3", "checkpoint-6"]
    assert not (out / "model.safetensors").exists()


def _no_space(*args, **kwargs):
    raise OSError(28, "No space left on device")


def test_too_little_disk_space_is_refused_before_loading(
    tiny_teacher, tiny_data_dir, tmp_path, monkeypatch
):
    import shutil

    from distill_cli import outputs

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    monkeypatch.setattr(train.stages, "build_task", lambda *a: pytest.fail("models loaded"))
    result = invoke(*tkd(tiny_teacher, tiny_data_dir, tmp_path / "out"))
    assert result.exit_code == 2
    assert "MB free" in result.stderr and "save_total_limit" in result.stderr


def test_an_unwritable_output_folder_is_refused(tiny_teacher, tiny_data_dir, tmp_path, monkeypatch):
    from distill_cli import outputs

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(outputs.tempfile, "NamedTemporaryFile", read_only)
    result = invoke(*tkd(tiny_teacher, tiny_data_dir, tmp_path / "out"))
    assert result.exit_code == 2
    assert "is not writable (Permission denied)" in result.stderr


def test_a_half_written_checkpoint_is_never_resumed(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "checkpoint-4").mkdir(parents=True)
    (root / ".tmp-checkpoint-6").mkdir()  # a save killed before its rename
    (root / ".tmp-delete-checkpoint-2").mkdir()  # a prune killed mid-delete
    assert checkpoints.latest(tmp_path) == root / "checkpoint-4"
    checkpoints.clean_partial(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-4"]


# Runs the CLI in a subprocess whose train.<name> SIGKILLs the process: a kill at that instant.
KILL_AT = """
import os, signal, sys
from distill_cli.training import train
setattr(train, {name!r}, lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL))
from distill_cli.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("name", ["save_model_atomic", "mark_finished"])
def test_a_kill_after_the_final_evaluation_then_rerun_logs_every_line_once(
    name, tiny_teacher, tiny_data_dir, tmp_path
):
    """SIGKILL between the final evaluation and the model save, or between the save and
    run.json saying finished: the rerun resumes from the last checkpoint, evaluates again, and
    metrics.jsonl holds every line once."""
    out = tmp_path / "out"
    args = tkd(tiny_teacher, tiny_data_dir, out, "--max-steps", 6)
    cmd = [sys.executable, "-c", KILL_AT.format(name=name), *map(str, args)]
    killed = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=OFFLINE_ENV)
    _, err = killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL, err[-2000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert "eval/accuracy" in lines[-1]  # killed after the final evaluation was logged
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    assert (out / "run.lock").read_text().strip() == str(killed.pid)  # left by the dead run

    again = finish(args)
    assert again.returncode == 0, again.stderr
    assert "taking over the lock of process" in again.stderr
    assert "checkpoint-6 (step 6 of 6)" in again.stderr  # resumed, nothing trained again
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "phase" in r] == list(range(1, 7))
    evals = [r for r in records if "phase" not in r]
    assert len(evals) == 1 and records[-1] == evals[0] and evals[0]["step"] == 6
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    assert (out / "model.safetensors").is_file() and not (out / "run.lock").exists()
    rerun = invoke(*args)
    assert rerun.exit_code == 0 and rerun.stderr.strip() == f"already finished: {out}"


def test_overwrite_removes_only_what_the_previous_run_wrote(tiny_teacher, tiny_data_dir, tmp_path):
    out = tmp_path / "out"
    assert invoke(*tkd(tiny_teacher, tiny_data_dir, out, "--max-steps", 3)).exit_code == 0
    (out / "notes.txt").write_text("mine")
    (out / "README.md").write_text("# my notes")
    (out / "plots").mkdir()
    (out / "plots" / "a.png").write_bytes(b"png")
    changed = tkd(tiny_teacher, tiny_data_dir, out, "--max-steps", 2, "--overwrite")
    result = invoke(*changed)
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "README.md").read_text() == "# my notes"
    assert (out / "plots" / "a.png").read_bytes() == b"png"
    assert [p.name for p in checkpoints.complete(out)] == ["checkpoint-2"]
    assert training_steps(out) == [1, 2]
    wrote = json.loads((out / "run.json").read_text())["wrote"]
    assert "model.safetensors" in wrote and "checkpoints" in wrote
    assert not {"notes.txt", "README.md", "plots"} & set(wrote)

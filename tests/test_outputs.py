"""Output folders: reruns, --overwrite, locks and the input check, through the real CLI.

Every command runs on its own copy of its inputs, checksummed before and after.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import OFFLINE_ENV, RECIPES
from test_errors import run_cli, snapshot

from distill_cli import outputs
from distill_cli.errors import DistillError
from distill_cli.outputs import lock


def state(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` (hidden ones too) with its mtime, and files' checksums."""
    found = {".": (None, folder.stat().st_mtime_ns)}
    for p in sorted(folder.rglob("*")):
        digest = snapshot([p])[str(p)] if p.is_file() else None
        found[str(p.relative_to(folder))] = (digest, p.stat().st_mtime_ns)
    return found


def only_line(result) -> str:
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def inputs(tmp_path, tiny_teacher, tiny_encoder, tiny_data_dir, corpus_file) -> Path:
    """Copies of the fixtures that the commands read: a real input folder per test."""
    root = tmp_path / "inputs"
    shutil.copytree(tiny_teacher, root / "teacher")
    shutil.copytree(tiny_encoder, root / "encoder")
    shutil.copytree(tiny_data_dir, root / "data")
    shutil.copy2(corpus_file, root / "corpus.txt")
    shutil.copy2(RECIPES / "tkd-nlp.yaml", root / "tkd-nlp.yaml")
    return root


def command(name: str, inputs: Path, out: Path) -> tuple[list, list]:
    """The command's arguments, and options that make a different run of it."""
    cheap = ["--max-steps", "2", "--set", "train.batch_size=4", "--set", "data.max_length=32"]
    return {
        "finetune-distill": (
            ["finetune-distill", "--recipe", inputs / "tkd-nlp.yaml", "--teacher",
             inputs / "teacher", "--data", inputs / "data", "--set", "student.num_layers=2",
             "--output-dir", out, *cheap],
            ["--seed", "7"],
        ),
        "pretrain-distill": (
            ["pretrain-distill", "--recipe", RECIPES / "glmd-pretrain.yaml", "--teacher",
             inputs / "encoder", "--data", inputs / "corpus.txt", "--set",
             "student.num_layers=2", "--output-dir", out, *cheap],
            ["--seed", "7"],
        ),
        "compress-vocab": (
            ["compress-vocab", inputs / "encoder", "--teacher", inputs / "encoder",
             "--corpus", inputs / "corpus.txt", "--output-dir", out],
            ["--ratio", "0.6"],
        ),
        "export": (["export", inputs / "teacher", "--format", "hf", "--output-dir", out],
                   ["--dtype", "fp16"]),
    }[name]  # fmt: skip


@pytest.mark.parametrize(
    "name", ["finetune-distill", "pretrain-distill", "compress-vocab", "export"]
)
def test_reruns_overwrite_and_inputs(name, inputs, tmp_path):
    out = tmp_path / "out"
    args, different = command(name, inputs, out)
    before = snapshot([inputs])
    first = run_cli(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    finished = state(out)

    # the same command again: nothing to do, nothing changed
    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert only_line(again) == f"already finished: {out}"
    assert state(out) == finished

    # other options: refused, nothing changed
    refused = run_cli([*args, *different], cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    line = only_line(refused)
    assert "already holds a finished model made with" in line and "--overwrite" in line
    assert state(out) == finished

    # --overwrite replaces what distill wrote, and only that
    (out / "notes.txt").write_text("mine")
    (out / "mine").mkdir()
    (out / "mine" / "data.bin").write_bytes(b"\0" * 10)
    replaced = run_cli([*args, *different, "--overwrite"], cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "mine" / "data.bin").read_bytes() == b"\0" * 10
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished" and not {"notes.txt", "mine"} & set(record["wrote"])
    assert not (out / "run.lock").exists() and not list(out.glob(".distill-tmp-*"))
    assert only_line(run_cli([*args, *different], cwd=tmp_path)).startswith("already finished")
    assert snapshot([inputs]) == before, "an input changed"


def test_a_changed_input_is_another_run(inputs, tmp_path):
    out = tmp_path / "out"
    args, _ = command("export", inputs, out)
    assert run_cli(args, cwd=tmp_path).returncode == 0
    config = inputs / "teacher" / "config.json"
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))
    refused = run_cli(args, cwd=tmp_path)
    assert refused.returncode == 2
    assert f"other inputs (the model {inputs / 'teacher'} changed since)" in refused.stderr
    # an evaluation.json beside the model goes into the export: it is an input too
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns - 10**9))
    assert only_line(run_cli(args, cwd=tmp_path)) == f"already finished: {out}"
    (inputs / "teacher" / "evaluation.json").write_text("{}")
    refused = run_cli(args, cwd=tmp_path)
    assert refused.returncode == 2 and "(the evaluation " in refused.stderr


def test_evaluate_never_writes_into_a_model_it_reads(inputs, tmp_path):
    out = tmp_path / "export"
    args, _ = command("export", inputs, out)
    assert run_cli(args, cwd=tmp_path).returncode == 0
    before = snapshot([out])
    evaluate = ["evaluate", out, "--data", inputs / "data"]
    refused = run_cli([*evaluate, "--output-dir", out], cwd=tmp_path)
    assert refused.returncode == 2 and "a command never writes where it reads" in refused.stderr
    printed = run_cli(evaluate, cwd=tmp_path)  # no --output-dir: a table, and nothing written
    assert printed.returncode == 0, printed.stderr
    assert "nothing written" in printed.stdout
    assert snapshot([out]) == before
    # an evaluation written elsewhere goes into the card with export --evaluation
    assert run_cli([*evaluate, "--output-dir", tmp_path / "eval"], cwd=tmp_path).returncode == 0
    hf = ["export", inputs / "teacher", "--format", "hf", "--output-dir", tmp_path / "hf"]
    result = run_cli([*hf, "--evaluation", tmp_path / "eval" / "evaluation.json"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "hf" / "evaluation.json").is_file()
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "On `" in card and "(test, " in card


def test_input_paths_are_compared_resolved(inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(inputs))
    (tmp_path / "link").symlink_to(inputs / "teacher")
    cases = {
        "~/teacher": "is the model folder",
        "inputs/data/../teacher": "is the model folder",
        "link/sub": "lies inside the model folder",
        "inputs": "holds the model folder",
    }
    for given, words in cases.items():
        result = run_cli(["export", "inputs/teacher", "--format", "hf", "--output-dir", given],
                         cwd=tmp_path)  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert f"--output-dir {Path(given).expanduser()}" in only_line(result)
        assert words in only_line(result)
    assert not (inputs / "teacher" / "sub").exists()
    # a Hub name is no input on disk, even when a folder of that name is the output
    assert outputs.check_not_input(tmp_path / "org" / "m", [("teacher", "org/m")])


def test_a_failed_run_leaves_no_folder(inputs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(inputs / "teacher", broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out = tmp_path / "out"
    result = run_cli(["export", broken, "--format", "hf", "--output-dir", out], cwd=tmp_path)
    assert result.returncode == 2 and "truncated" in result.stderr
    assert not out.exists()
    # one that existed keeps the user's files and nothing of the failed run
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = run_cli(["export", broken, "--format", "hf", "--output-dir", out], cwd=tmp_path)
    assert result.returncode == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_run_holds_its_folder_and_a_dead_ones_lock_is_taken_over(inputs, tmp_path):
    out = tmp_path / "out"
    args, _ = command("finetune-distill", inputs, out)
    slow = [*args, "--max-steps", "5000", "--set", "train.save_steps=10000"]
    cmd = [sys.executable, "-m", "distill_cli", *map(str, slow)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=OFFLINE_ENV)
    try:
        deadline = time.monotonic() + 300
        while not (out / "metrics.jsonl").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.05)
        refused = run_cli(slow, cwd=tmp_path)
        assert refused.returncode == 2
        assert f"output folder {out} is in use by process {proc.pid}" in only_line(refused)
        overwrite = run_cli([*args, "--overwrite"], cwd=tmp_path)
        assert f"in use by process {proc.pid}" in only_line(overwrite)
    finally:
        proc.kill()
        proc.wait()
    assert (out / "run.lock").read_text().strip() == str(proc.pid)
    result = run_cli(args, cwd=tmp_path)  # another recipe, no checkpoint: starts again
    assert result.returncode == 0, result.stderr
    assert f"taking over the lock of process {proc.pid}, which is no longer running" in (
        result.stderr
    )
    assert not (out / "run.lock").exists()


def test_a_stale_lock_in_an_export_folder_is_taken_over(inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    pid = _dead_pid()
    (out / "run.lock").write_text(f"{pid}\n")
    args, _ = command("export", inputs, out)
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"taking over the lock of process {pid}" in result.stderr
    assert not (out / "run.lock").exists()


def test_without_flock_the_pid_in_the_lock_decides(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock.fcntl, "flock", no_flock)
    out = tmp_path / "out"
    out.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / "run.lock").write_text(f"{live.pid}\n")
        with pytest.raises(DistillError, match=f"in use by process {live.pid}"):
            outputs.claim(out, "test", {}, [])
    finally:
        live.kill()
        live.wait()
    (out / "run.lock").write_text(f"{_dead_pid()}\n")
    assert outputs.claim(out, "test", {}, []) == (out, False)
    outputs.release(out)
    assert sorted(p.name for p in out.iterdir()) == []


def test_publish_never_replaces_a_file_distill_did_not_write(tmp_path):
    out, _ = outputs.claim(tmp_path / "out", "test", {}, [], writes=["a.json"])
    try:
        staged = outputs.staging(out)
        (staged / "tokenizer.json").write_text("new")
        (staged / "model.safetensors").write_text("weights")
        (out / "tokenizer.json").write_text("the user's")  # appeared during the run
        with pytest.raises(DistillError, match="holds tokenizer.json, which distill did not"):
            outputs.publish(staged, out)
        assert (out / "tokenizer.json").read_text() == "the user's"
        assert not (out / "model.safetensors").exists()
    finally:
        outputs.release(out)
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json"]

"""Helpers for driving the real CLI in tests."""

import os
import struct
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from distill_cli.cli import app

ROOT = Path(__file__).parents[1]
RECIPES = ROOT / "recipes"
OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def invoke(*args):
    """Run a subcommand in-process through Typer, as the console script does."""
    return CliRunner().invoke(app, [str(a) for a in args])


def run_module(*args, timeout=300):
    """Run ``python -m distill_cli ...`` in a subprocess."""
    cmd = [sys.executable, "-m", "distill_cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=OFFLINE_ENV, timeout=timeout)


def tkd_args(teacher, data, out, *extra):
    return [
        "finetune-distill",
        "--recipe",
        RECIPES / "tkd-nlp.yaml",
        "--teacher",
        teacher,
        "--data",
        data,
        "--output-dir",
        out,
        "--max-steps",
        2,
        "--set",
        "student.num_layers=2",
        "--set",
        "train.batch_size=8",
        "--set",
        "train.learning_rate=1e-3",
        "--set",
        "train.logging_steps=1",
        *extra,
    ]


def run_without_distill_cli(code: str, cwd) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python that must never import distill_cli (plain transformers)."""
    check = "\nimport sys\nassert not any(k.startswith('distill_cli') for k in sys.modules)\n"
    return subprocess.run(
        [sys.executable, "-c", code + check],
        capture_output=True, text=True, env=OFFLINE_ENV, cwd=cwd, timeout=120,
    )  # fmt: skip


def assert_grid_png(path):
    """evaluation.png: a PNG of panels in a grid, not a one-row strip; pixels are not checked."""
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])  # the IHDR chunk
    assert 1000 <= width <= 1800 and width / height < 2.5

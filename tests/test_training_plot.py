"""training.png: drawn from metrics.jsonl at the end of every run; drawing never fails a run."""

from __future__ import annotations

import json

from helpers import invoke, tkd_args
from PIL import Image

from distill_cli.training import plot as training_plot

PNG = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> None:
    assert path.read_bytes().startswith(PNG)
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size[0] > 300 and image.size[1] > 200


def test_a_training_run_writes_training_png(tiny_teacher, tiny_data_dir, tmp_path):
    out = tmp_path / "out"
    sets = ["--set", "phases.0.terms.logit_mse.weight=0.1"]
    result = invoke(*tkd_args(tiny_teacher, tiny_data_dir, out, *sets))
    assert result.exit_code == 0, result.output
    assert "adding loss term 'logit_mse' to phase 0" in result.stderr
    assert "loss/logit_mse" in (out / "metrics.jsonl").read_text()
    assert_png(out / "training.png")
    assert not list(out.glob(".*.tmp.png"))


def write_metrics(path, phases) -> None:
    lines, step = [], 0
    for phase, n in phases:
        for _ in range(n):
            step += 1
            record = {"step": step, "phase": phase, "loss": 2.0 / step, "lr": 1e-4 / step}
            record["loss/word_kl"] = 1.0 / step
            lines.append(json.dumps(record))
    lines.append(json.dumps({"step": step, "eval/accuracy": 0.5}))
    lines.append('{"step": 99, "pha')  # a line cut short by a kill
    path.write_text("\n".join(lines) + "\n")


def test_phases_are_drawn_from_metrics(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl", [("word-prediction", 4), ("task", 3)])
    records = training_plot.read_steps(tmp_path / "metrics.jsonl")
    assert [r["phase"] for r in records] == ["word-prediction"] * 4 + ["task"] * 3
    training_plot.write(tmp_path / "metrics.jsonl", tmp_path / "training.png")
    assert_png(tmp_path / "training.png")


def test_a_failure_to_draw_is_one_warning(tmp_path, capsys, monkeypatch):
    training_plot.write(tmp_path / "missing.jsonl", tmp_path / "training.png")
    write_metrics(tmp_path / "metrics.jsonl", [("task", 2)])

    def broken(records, path):
        raise RuntimeError("no backend")

    monkeypatch.setattr(training_plot, "draw", broken)
    training_plot.write(tmp_path / "metrics.jsonl", tmp_path / "training.png")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith("warning: could not draw") for line in lines)
    assert "no backend" in lines[1]
    assert not (tmp_path / "training.png").exists()

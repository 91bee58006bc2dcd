"""training.png: loss per term and learning rate per step, phases marked, from metrics.jsonl.

Drawn at the end of every training run, so a user with no tracker set up still sees the curves.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from distill_cli.reporting import log


def read_steps(metrics: Path) -> list[dict]:
    """The training lines of metrics.jsonl (evaluation lines have no phase), in step order."""
    records = []
    for line in metrics.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if isinstance(record, dict) and "phase" in record:
            records.append(record)
    return sorted(records, key=lambda r: r["step"])


def draw(records: list[dict], path: Path) -> None:
    """Two panels over optimizer steps: the loss and each term, then the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    curves = {"loss": [r["loss"] for r in records]}
    for key in sorted({k for r in records for k in r if k.startswith("loss/")}):
        curves[key.removeprefix("loss/")] = [r.get(key, float("nan")) for r in records]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 6), height_ratios=(2, 1))
    for name, values in curves.items():
        style = {"color": "black", "linewidth": 2, "zorder": 3} if name == "loss" else {}
        top.plot(steps, values, label=name if name == "loss" else f"{name} (unweighted)", **style)
    if all(v > 0 for values in curves.values() for v in values if not math.isnan(v)):
        top.set_yscale("log")
    top.set_ylabel("loss")
    top.legend(fontsize="small")
    bottom.plot(steps, [r["lr"] for r in records], color="C3")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("optimizer step")
    _mark_phases(records, (top, bottom))
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def _mark_phases(records: list[dict], axes) -> None:
    """A dashed line at the last step of each phase but the last; each phase named at its start."""
    phases = [r["phase"] for r in records]
    starts = [0] + [i for i in range(1, len(phases)) if phases[i] != phases[i - 1]]
    if len(starts) < 2:
        axes[0].set_title(f"phase {records[0]['phase']}")
        return
    for i in starts[1:]:
        for ax in axes:
            ax.axvline(records[i - 1]["step"], color="gray", linestyle="--", linewidth=1)
    for i in starts:
        axes[0].annotate(
            records[i]["phase"], (records[i]["step"], 1.0), xycoords=("data", "axes fraction"),
            xytext=(3, -12), textcoords="offset points", fontsize="small", color="gray",
        )  # fmt: skip


def write(metrics: Path, path: Path) -> None:
    """Draw ``path`` from ``metrics``; a failure only warns, never fails the run."""
    try:
        records = read_steps(metrics)
        if not records:
            log(f"warning: no training steps in {metrics}; {path.name} not drawn")
            return
        draw(records, path)
    except Exception as e:  # noqa: BLE001 - a chart must never fail a finished training run
        log(f"warning: could not draw {path} ({type(e).__name__}: {e})")

"""Progress and metrics: a rich bar on a TTY, plain log lines otherwise, metrics.jsonl always."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

err_console = Console(stderr=True)


def out_console() -> Console:
    """stdout for tables: the terminal's width, or wide enough for logs when piped."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def log(message: str) -> None:
    """One plain line on stderr."""
    print(message, file=sys.stderr, flush=True)


def _eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class TrainProgress:
    """Shows step, loss, tokens/s and ETA; only the main process should create one."""

    def __init__(self, total_steps: int, enabled: bool = True):
        self.total = total_steps
        self.start = time.perf_counter()
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[tps]} tok/s"),
                TimeRemainingColumn(),
                console=err_console,
            )
            self.task = self.bar.add_task("train", total=total_steps, loss="-", tps="-")
            self.bar.start()

    def update(self, step: int, record: dict | None = None) -> None:
        if self.bar is not None:
            fields = {}
            if record:
                fields = {"loss": f"{record['loss']:.4f}", "tps": f"{record['tokens_per_s']:.0f}"}
                fields["description"] = record["phase"]
            self.bar.update(self.task, completed=step, **fields)
        elif record:
            elapsed = time.perf_counter() - self.start
            eta = elapsed / max(step, 1) * (self.total - step)
            log(
                f"step {step}/{self.total} | phase {record['phase']} | loss {record['loss']:.4f} "
                f"| {record['tokens_per_s']:.0f} tok/s | eta {_eta(eta)}"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class MetricsWriter:
    """Appends one JSON object a line to metrics.jsonl, flushed at every write."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

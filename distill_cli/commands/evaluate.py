"""distill evaluate: task metrics, retention against the teacher, size and latency."""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from distill_cli import evaluate
from distill_cli.commands import options as o
from distill_cli.errors import DistillError


def command(
    model_dir: Annotated[str, typer.Argument(help="Model folder to evaluate (the student).")],
    data: o.Data = None,
    split: Annotated[str, typer.Option("--split", help="Split to evaluate on.")] = "test",
    teacher: Annotated[
        str | None, typer.Option("--teacher", help="Teacher folder: adds retention and speedup.")
    ] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option("--output-dir", help="Where evaluation.json/.png go (default: MODEL_DIR)."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override data settings: --set data.text_columns=[a,b]."),
    ] = None,
    json_: o.Json = False,
) -> None:
    """Evaluate a model on a split; with --teacher, compare the two side by side."""
    if not Path(model_dir).expanduser().is_dir():
        raise DistillError(f"model folder not found: {model_dir}; pass a folder written by distill")
    result = evaluate.run(model_dir, data, split, teacher, output_dir, set_ or [])
    if json_:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


def print_table(result: dict) -> None:
    key = result["primary_metric"]
    models = result["models"]
    table = Table(title=f"{result['data']} · {result['split']} · {result['num_examples']} examples")
    for col in ("model", key, "params (M)", "size (MB)", "latency b1 (ms)", "samples/s b32"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name in sorted(models, key=lambda n: n != "teacher"):
        m = models[name]
        table.add_row(
            name,
            f"{m['metrics'][key]:.4f}",
            f"{m['parameters'] / 1e6:.2f}",
            f"{m['size_mb']:.1f}",
            f"{m['latency_ms_b1']:.2f}",
            f"{m['throughput_b32']:.1f}",
        )
    console = Console()
    console.print(table)
    if "retention" in result:
        console.print(
            f"retention {100 * result['retention']:.1f}% of the teacher's {key} · "
            f"speedup {result['speedup_b1']:.2f}x at batch 1 · "
            f"{result['throughput_ratio_b32']:.2f}x throughput at batch 32 · "
            f"size {100 * result['size_ratio']:.0f}% of the teacher"
        )
    console.print(f"wrote {result['output_dir']}/evaluation.json and evaluation.png")

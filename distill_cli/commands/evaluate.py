"""distill evaluate: task metrics, retention against the teacher, size and latency."""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from distill_cli.commands import options as o
from distill_cli.errors import DistillError
from distill_cli.evaluation import evaluate
from distill_cli.reporting import out_console


def command(
    model_dirs: Annotated[
        list[str], typer.Argument(help="Model folder(s) to evaluate: the student(s).")
    ],
    data: o.Data = None,
    split: Annotated[str, typer.Option("--split", help="Split to evaluate on.")] = "test",
    teacher: Annotated[
        str | None, typer.Option("--teacher", help="Teacher folder: adds retention and speedup.")
    ] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            "--output-dir",
            help="Write evaluation.json and evaluation.png here (no input folder; default: "
            "print only).",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override data settings: --set data.text_columns=[a,b]."),
    ] = None,
    json_: o.Json = False,
) -> None:
    """Evaluate models on a split; with --teacher, compare each with it side by side."""
    for model_dir in model_dirs:
        path = Path(model_dir).expanduser()
        if not (path.is_dir() or path.is_file() and path.suffix == ".gguf"):
            raise DistillError(
                f"model folder not found: {model_dir}; pass a folder written by distill"
            )
    result = evaluate.run(model_dirs, data, split, teacher, output_dir, set_ or [])
    if json_:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _agreement(a: dict | None) -> str:
    """Masked / unmasked (a causal LM is never masked: n/a)."""
    return "n/a" if a is None else f"{_share(a['masked'])} / {_share(a['unmasked'])}"


def _blank(b: dict | None) -> str:
    """A cloze model at its blank: verbalizer mass / entropy share / agreement with the teacher."""
    if b is None:
        return "n/a"
    shares = [b["verbalizer_mass"], b["entropy_share"]] + (
        [b["agreement"]] if "agreement" in b else []
    )
    return " / ".join(_share(v) for v in shares)


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# the table shows a latency's spread over the timing rounds only when it is wider than this
WIDE_SPREAD = 0.10


def _latency(m: dict) -> str:
    spread = m.get("latency_b1_spread")
    wide = f" ±{100 * spread:.0f}%" if spread is not None and spread > WIDE_SPREAD else ""
    return f"{m['latency_ms_b1']:.2f}{wide}"


def _long_lengths(models: dict) -> list[str]:
    """The shortest and longest input lengths the models were measured at (long data)."""
    found = sorted({int(n) for m in models.values() for n in m.get("long_inputs", {})})
    return [str(n) for n in (found[:1] + found[-1:] if len(found) > 1 else found)]


def _at_length(m: dict, length: str) -> str:
    f = m.get("long_inputs", {}).get(length)
    if f is None:
        return "n/a"
    memory = "n/a" if f["peak_memory_mb"] is None else f"{f['peak_memory_mb']:.0f}"
    return f"{f['latency_ms']:.0f} / {memory}"


def _print_replies(console, models: dict) -> None:
    """Chat models: each fixed prompt with every model's greedy reply."""
    answered = {name: m["replies"] for name, m in models.items() if m.get("replies")}
    if not answered:
        return
    for i, first in enumerate(next(iter(answered.values()))):
        console.print(f"\n[bold]{first['prompt']}[/bold]")
        for name, replies in answered.items():
            console.print(f"  {name}: {replies[i]['reply'].strip()}", markup=False)


def print_table(result: dict) -> None:
    keys = result.get("metrics_shown", [result["primary_metric"]])
    models = result["models"]
    has_teacher = "teacher" in models
    words = has_teacher and any("word_agreement" in m for m in models.values())
    table = Table(title=f"{result['data']} · {result['split']} · {result['num_examples']} examples")
    units = result.get("timing_units", {})
    timing = [
        units.get("latency_ms_b1", "latency b1 (ms)"),
        units.get("throughput_b32", "samples/s b32"),
    ]
    cols = ["model", *keys, "params (M)", "size (MB)", *timing]
    if has_teacher:
        cols += ["retention", "speedup b1", "size vs teacher"]
    if words:
        cols += ["word agreement (masked / unmasked)"]
    blanks = any("blank" in m for m in models.values())
    if blanks:
        cols += ["at the blank: verbalizers / entropy / agreement"]
    lengths = _long_lengths(models)
    cols += [f"{n} tokens: ms / MB" for n in lengths]
    for col in cols:
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, m in models.items():
        row = [
            name,
            *(_number(m["metrics"].get(k)) for k in keys),
            f"{m['parameters'] / 1e6:.2f}",
            f"{m['size_mb']:.1f}",
            _latency(m),
            f"{m['throughput_b32']:.1f}",
        ]
        if has_teacher and name == "teacher":
            row += ["100%", "1.00x", "100%"]
        elif has_teacher:
            retention = m["retention"]
            row += [
                "n/a" if retention is None else f"{100 * retention:.1f}%",
                f"{m['speedup_b1']:.2f}x",
                "n/a" if m["size_ratio"] is None else f"{100 * m['size_ratio']:.0f}%",
            ]
        if words:
            row += ["" if name == "teacher" else _agreement(m.get("word_agreement"))]
        if blanks:
            row += [_blank(m.get("blank"))]
        row += [_at_length(m, n) for n in lengths]
        table.add_row(*row)
    console = out_console()
    console.print(table)
    _print_replies(console, models)
    if "output_dir" in result:
        console.print(f"wrote {result['output_dir']}/evaluation.json and evaluation.png")
    else:
        console.print("nothing written: pass --output-dir to save evaluation.json and .png")

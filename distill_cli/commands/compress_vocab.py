"""distill compress-vocab: GLMD vocabulary compression by token frequency."""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from distill_cli.commands import options as o
from distill_cli.reporting import out_console
from distill_cli.vocabulary import compress


def command(
    model_dir: Annotated[str, typer.Argument(help="Model folder whose vocabulary is compressed.")],
    teacher: Annotated[
        str, typer.Option("--teacher", help="Teacher whose vocabulary vectors pick substitutes.")
    ],
    corpus: Annotated[
        str, typer.Option("--corpus", help="Text to count token frequencies in (as --data).")
    ],
    output_dir: Annotated[Path, typer.Option("--output-dir", help="Folder for the result.")],
    ratio: Annotated[
        float, typer.Option("--ratio", help="Share of the vocabulary kept, in (0, 1].")
    ] = 0.5,
    similarity: Annotated[
        str,
        typer.Option(
            "--similarity", help="Substitute by: inner (paper) | cosine | euclidean | unk."
        ),
    ] = "inner",
    overwrite: o.Overwrite = False,
    trust_remote_code: o.TrustRemoteCode = False,
    json_: o.Json = False,
) -> None:
    """Keep the most frequent tokens; map each dropped token to its nearest kept one."""
    result = compress.run(
        model_dir, teacher, corpus, ratio, output_dir, similarity, overwrite, trust_remote_code
    )
    if json_:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"vocabulary compression · ratio {ratio} · {similarity}")
    for col in ("", "before", "after"):
        table.add_column(col, justify="left" if not col else "right")
    table.add_row("vocabulary", f"{result['vocab_before']:,}", f"{result['vocab_after']:,}")
    table.add_row("parameters", f"{result['params_before']:,}", f"{result['params_after']:,}")
    table.add_row("MB (fp32)", f"{result['mb_before']:.1f}", f"{result['mb_after']:.1f}")
    console = out_console()
    console.print(table)
    console.print(result["kept_note"], markup=False)
    console.print(f"corpus tokens remapped: {100 * result['remapped_share']:.2f}%")
    for src, dst, count in result["top_remaps"]:
        console.print(f"  {src} → {dst}  ({count:,})")
    console.print(f"wrote {result['output_dir']} (vocab_map.json, compression.json)")

"""distill export: an HF folder, ONNX, or int8 ONNX, verified against the PyTorch model."""

import json
from pathlib import Path
from typing import Annotated

import typer

from distill_cli import export
from distill_cli.commands import options as o
from distill_cli.export.int8 import summary
from distill_cli.reporting import out_console


def command(
    model_dir: Annotated[str, typer.Argument(help="Model folder to export.")],
    format_: Annotated[
        str, typer.Option("--format", help="hf | onnx | onnx-int8 (dynamic int8 quantization).")
    ],
    output_dir: Annotated[Path, typer.Option("--output-dir", help="Folder for the export.")],
    dtype: Annotated[
        str, typer.Option("--dtype", help="Weights for --format hf: fp32 | fp16 | bf16.")
    ] = "fp32",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier export in --output-dir.")
    ] = False,
    trust_remote_code: o.TrustRemoteCode = False,
    evaluation: Annotated[
        Path | None,
        typer.Option(
            "--evaluation",
            help="evaluation.json from 'distill evaluate --output-dir': shipped with the export "
            "and shown in the hf model card (default: the one beside the model, if any).",
        ),
    ] = None,
    json_: o.Json = False,
) -> None:
    """Export a model, load the export back and check it matches the PyTorch model."""
    result = export.run(
        model_dir, format_, output_dir, dtype, overwrite, trust_remote_code, evaluation
    )
    if json_:
        print(json.dumps(result, indent=2))
        return
    console = out_console()
    console.print(f"exported {model_dir} as {result['format']} ({result['dtype']})")
    for name, mb in result["sizes_mb"].items():
        console.print(f"  {name:<34} {mb:>10.3f} MB")
    if "int8_mb" in result:
        console.print(
            f"int8: {result['fp32_mb']:.2f} MB → {result['int8_mb']:.2f} MB "
            f"({100 * result['size_ratio']:.0f}%), latency b1 {result['latency_ms_b1_fp32']:.2f} → "
            f"{result['latency_ms_b1']:.2f} ms"
        )
        console.print(f"vs PyTorch: {summary(result)}")
    else:
        console.print(f"verified: max abs diff {result['max_abs_diff']:.3g} vs PyTorch")
    console.print(f"wrote {result['output_dir']} (export.json)")

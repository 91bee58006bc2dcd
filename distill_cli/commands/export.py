"""distill export: export to HF, ONNX and int8 (not available yet)."""

from typing import Annotated

import typer

from distill_cli.errors import NotAvailableError


def command(
    args: Annotated[list[str] | None, typer.Argument(help="Arguments, once available.")] = None,
) -> None:
    """export to HF, ONNX and int8: not available yet in this version."""
    raise NotAvailableError("distill export is not available yet in this version")

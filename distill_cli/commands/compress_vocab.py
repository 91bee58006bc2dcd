"""distill compress-vocab: GLMD vocabulary compression (not available yet)."""

from typing import Annotated

import typer

from distill_cli.errors import NotAvailableError


def command(
    args: Annotated[list[str] | None, typer.Argument(help="Arguments, once available.")] = None,
) -> None:
    """GLMD vocabulary compression: not available yet in this version."""
    raise NotAvailableError("distill compress-vocab is not available yet in this version")

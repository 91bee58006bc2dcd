"""The ``distill`` command: five subcommands, one-line errors, meaningful exit codes.

Exit codes are listed in distill_cli/errors.py and docs/reliability.md.
"""

from __future__ import annotations

import errno
import functools
import sys
import traceback

import click
import torch
import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

try:  # recent typer vendors its own click; its exceptions are not click's
    from typer._click import exceptions as _typer_click
except ImportError:  # pragma: no cover - older typer uses click itself
    _typer_click = click.exceptions

from distill_cli.commands import (
    compress_vocab,
    evaluate,
    export,
    finetune_distill,
    pretrain_distill,
)
from distill_cli.errors import DistillError, WriteFailed
from distill_cli.outputs import release_all

# OSErrors that are the machine's state or a bad path, not a bug: one line, not a traceback
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EIO}
_ACCESS_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS}
_PATH_ERRORS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG}
# exceptions that end a command on purpose; everything else that escapes it is a bug
_EXITS = (typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException, click.Abort)

COMMANDS = {
    "pretrain-distill": pretrain_distill.command,
    "finetune-distill": finetune_distill.command,
    "compress-vocab": compress_vocab.command,
    "evaluate": evaluate.command,
    "export": export.command,
}


class _Flag(TyperOption):
    """A flag takes no value: no type beside it in the help (typer's rich help shows <bool>)."""

    def display_type_rich(self, ctx) -> str | None:
        return None


def _untyped_flags(params: list) -> list:
    for param in params:
        if type(param) is TyperOption and param.is_flag:
            param.__class__ = _Flag
    return params


class _Command(TyperCommand):
    def get_params(self, ctx):
        return _untyped_flags(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx):
        return _untyped_flags(super().get_params(ctx))


app = typer.Typer(
    name="distill",
    cls=_Group,
    help="Distil Hugging Face checkpoints: task KD, GLMD, vocabulary compression, eval, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _one_line_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _quiet_libraries()
        try:
            return fn(*args, **kwargs)
        except DistillError as e:
            if str(e):  # AlreadyFinished is silent on all but the main process
                print(f"{e.prefix}: {e}", file=sys.stderr, flush=True)
            raise typer.Exit(e.exit_code) from None
        except OSError as e:
            if e.errno in _PATH_ERRORS and e.filename:  # a path that vanished or is the wrong kind
                fix = "check the path and run the command again"
            elif e.errno in _DISK_ERRORS or e.errno in _ACCESS_ERRORS:
                fix = "fix the disk or permissions and run the command again"
            else:
                _report_bug()
                raise typer.Exit(1) from None
            where = f" ({e.filename})" if e.filename else ""
            print(f"error: {e.strerror or e}{where}; {fix}", file=sys.stderr)
            raise typer.Exit(WriteFailed.exit_code if e.errno in _DISK_ERRORS else 2) from None
        except (MemoryError, torch.cuda.OutOfMemoryError):
            print(
                "error: out of memory; lower train.batch_size (raise "
                "train.gradient_accumulation_steps to keep the effective batch) or data.max_length",
                file=sys.stderr,
            )
            raise typer.Exit(2) from None
        except _EXITS:
            raise
        except Exception:
            _report_bug()
            raise typer.Exit(1) from None
        finally:
            release_all()  # unlock output folders, as the end of the process would

    return wrapper


def _report_bug() -> None:
    """Exit 1 is only for bugs: the traceback, then one line saying so."""
    traceback.print_exc()
    print(
        "internal error: this is a bug in distill-cli; please report it with the traceback above",
        file=sys.stderr,
    )


for _name, _fn in COMMANDS.items():
    app.command(name=_name, cls=_Command)(_one_line_errors(_fn))


def _quiet_libraries() -> None:
    """Our own progress replaces the libraries' tqdm bars and load reports."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: flag errors become one line too."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="distill", standalone_mode=False)
    except (click.exceptions.NoArgsIsHelpError, _typer_click.NoArgsIsHelpError) as e:
        print(e.format_message())
        code = 0
    except (click.UsageError, _typer_click.UsageError) as e:
        where = e.ctx.command_path if e.ctx else "distill"
        print(f"error: {e.format_message()} (see '{where} --help')", file=sys.stderr)
        code = 2
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)

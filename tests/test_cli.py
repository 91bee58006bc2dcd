import contextlib
import errno
import io
import re

import pytest
import torch
from helpers import ROOT, invoke, run_module

from distill_cli.cli import COMMANDS, main
from distill_cli.evaluation import evaluate


def test_registered_commands_match_readme():
    readme = (ROOT / "README.md").read_text()
    table = re.findall(r"^\| `distill ([a-z-]+)` \|", readme, flags=re.M)
    assert sorted(table) == sorted(COMMANDS)
    assert len(COMMANDS) == 5


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help(name):
    result = invoke(name, "--help")
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_top_level_help_lists_all_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("name", [None, *COMMANDS])
def test_help_shows_no_type_for_flags(name):
    result = invoke(*([name] if name else []), "--help")
    assert result.exit_code == 0
    assert "<bool>" not in result.output
    help_line = next(line for line in result.output.splitlines() if "--help" in line)
    assert "<" not in help_line
    if name:  # an option that takes a value keeps its type
        line = next(
            line
            for line in result.output.splitlines()
            if "--data " in line or "--output-dir " in line
        )
        assert re.search(r"--(data|output-dir) +<(str|path)>", line), line


def test_flag_errors_are_one_line():
    proc = run_module("evaluate", "--no-such-flag")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--no-such-flag" in lines[0]


def _main(*args) -> tuple[int, str]:
    """The console entry point in-process: (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


@pytest.mark.parametrize(
    "raised, code, line",
    [
        (KeyError("oops"), 1, "internal error: this is a bug in distill-cli"),
        (OSError(errno.EBADF, "Bad file descriptor"), 1, "internal error"),
        (torch.cuda.OutOfMemoryError("CUDA out of memory"), 2, "error: out of memory; lower"),
        (FileNotFoundError(errno.ENOENT, "No such file", "gone.csv"), 2, "(gone.csv); check"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "d"), 2, "error: Is a directory (d)"),
    ],
)
def test_only_bugs_exit_1(monkeypatch, tiny_teacher, tiny_data_dir, raised, code, line):
    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(evaluate, "run", fail)
    exit_code, stderr = _main("evaluate", tiny_teacher, "--data", tiny_data_dir)
    assert exit_code == code, stderr
    last = stderr.strip().splitlines()[-1]
    assert line in last, stderr
    # a bug shows where it happened; a user error is one line
    assert ("Traceback" in stderr) == (code == 1), stderr

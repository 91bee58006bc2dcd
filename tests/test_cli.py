import re

import pytest
from helpers import ROOT, invoke, run_module

from distill_cli.cli import COMMANDS


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


def test_flag_errors_are_one_line():
    proc = run_module("evaluate", "--no-such-flag")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--no-such-flag" in lines[0]

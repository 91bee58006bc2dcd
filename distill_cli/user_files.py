"""Reading the files a user hands us, with one error boundary.

A file that is missing, unreadable, not UTF-8, not valid JSON / YAML / CSV, or that parses but
has the wrong shape is bad input, not a bug: it ends the command with one line naming the file,
what is wrong and the fix (DistillError, exit 2). Every caller says what the file is (``what``,
e.g. "vocabulary map") and how to fix it (``fix``, e.g. "run compress-vocab again").
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from distill_cli.errors import DistillError

# What a library raises when a file it parses is bad (pandas, pyarrow, tokenizers, safetensors
# and torch.load raise ValueError or RuntimeError subclasses; json and yaml their own).
PARSE_ERRORS = (ValueError, RuntimeError, yaml.YAMLError, OSError)

Shape = dict[str, type | tuple[type, ...]]
LONG = 200  # characters: a longer library message is cut to its first sentence


class _Loader(yaml.SafeLoader):
    """safe_load with YAML 1.2 booleans: only true/false, so `mixed_precision: no` stays 'no'."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "tTfF":
    _Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), [_first]
    )


def safe_load(text: str):
    """YAML without tags that build Python objects, and with YAML 1.2 booleans."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def first_line(err: BaseException) -> str:
    """An exception as a short phrase for one error line."""
    text = str(err).strip()
    if isinstance(err, KeyError):
        return f"no key {text}"
    if not text:
        return type(err).__name__
    line = text.splitlines()[0]
    if len(line) > LONG and ". " in line:  # a library's paragraph: its first sentence
        line = line[: line.index(". ")]
    return line.rstrip(".")


@contextlib.contextmanager
def reading(path: str | Path, what: str, fix: str, errors=PARSE_ERRORS) -> Iterator[None]:
    """Turn a library's error while it reads a user's file into one DistillError line."""
    try:
        yield
    except DistillError:
        raise
    except errors as e:
        if isinstance(e, OSError) and e.strerror:
            reason = e.strerror.lower()
            if e.filename and str(e.filename) != str(path):
                reason += f": {e.filename}"
        elif isinstance(e, UnicodeDecodeError):
            reason = f"it is not UTF-8 text (byte {e.start})"
        else:
            reason = first_line(e)
        raise DistillError(f"could not read {what} {path}: {reason}; {fix}") from None


def read_text(path: str | Path, what: str, fix: str) -> str:
    """The file's text (UTF-8)."""
    with reading(path, what, fix, (OSError, UnicodeDecodeError)):
        return Path(path).read_text(encoding="utf-8")


def read_json(
    path: str | Path,
    what: str,
    fix: str,
    required: Shape | None = None,
    optional: Shape | None = None,
) -> dict:
    """A JSON object; ``required`` and ``optional`` give the type of top-level keys."""
    return _read_mapping(path, what, fix, _parse_json, "a JSON object", required, optional)


def read_yaml(
    path: str | Path,
    what: str,
    fix: str,
    required: Shape | None = None,
    optional: Shape | None = None,
) -> dict:
    """A YAML mapping (an empty file is an empty mapping); keys typed as in read_json."""
    return _read_mapping(path, what, fix, _parse_yaml, "a YAML mapping of keys", required, optional)


def _read_mapping(path, what, fix, parse, kind, required, optional) -> dict:
    """Read, parse (a syntax error is one line naming where) and check the top-level shape."""
    data = parse(read_text(path, what, fix), f"{what} {path}", fix)
    return check_shape(data, path, what, fix, required, optional, kind)


def _parse_json(text: str, named: str, fix: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DistillError(
            f"{named} is not valid JSON (line {e.lineno} column {e.colno}: {e.msg}); {fix}"
        ) from None


def _parse_yaml(text: str, named: str, fix: str):
    try:
        data = safe_load(text)
    except yaml.YAMLError as e:
        raise DistillError(f"{named} is not valid YAML{_where(e)}; {fix}") from None
    return {} if data is None else data


def _where(e: yaml.YAMLError) -> str:
    """at line 3: expected ',' or ']' (while parsing a flow sequence from line 2)"""
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    if mark is None:
        return ""
    text = f" at line {mark.line + 1}" + (f": {problem}" if problem else "")
    context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context and start is not None and start.line != mark.line:
        text += f" ({context} from line {start.line + 1})"
    return text


_NAMES = {
    dict: "a mapping",
    list: "a list",
    str: "a string",
    int: "an integer",
    float: "a number",
    type(None): "null",
}


def _type_name(expected) -> str:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(_NAMES.get(k, k.__name__) for k in kinds)


def _is(value, expected) -> bool:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):  # JSON true is not a number
        return bool in kinds
    if isinstance(value, int) and float in kinds:
        return True
    return isinstance(value, kinds)


def check_shape(
    data: Any,
    path: str | Path,
    what: str,
    fix: str,
    required: Shape | None = None,
    optional: Shape | None = None,
    mapping: str = "a mapping",
) -> dict:
    """``data`` must be a mapping whose keys have the given types; else one DistillError line."""
    if not isinstance(data, dict):
        found = type(data).__name__ if data is not None else "null"
        raise DistillError(f"{what} {path} must hold {mapping}, not {found}; {fix}")
    for key in required or {}:
        if key not in data:
            raise DistillError(f"{what} {path} has no '{key}'; {fix}")
    for key, expected in {**(optional or {}), **(required or {})}.items():
        if key in data and not _is(data[key], expected):
            found = type(data[key]).__name__ if data[key] is not None else "null"
            raise DistillError(
                f"{what} {path}: '{key}' must be {_type_name(expected)}, not {found}; {fix}"
            )
    return data

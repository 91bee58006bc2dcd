"""run.json: what a run is (command, options, inputs), its status and every name it wrote."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from pathlib import Path

from distill_cli import __version__
from distill_cli.errors import DistillError
from distill_cli.outputs.files import write_json_atomic
from distill_cli.outputs.inputs import Inputs, stamp

RECORD = "run.json"
TOOL = "distill-cli"
STATUSES = ("clearing", "running", "finished")  # clearing: an earlier run is being removed


def job(command: str, args: dict, inputs: Inputs) -> dict:
    """What makes a run this run: the command, its options and its inputs' stamps."""
    made = {
        "command": command,
        "args": json.loads(json.dumps(args, default=str)),
        "inputs": {role: stamp(given) for role, given in inputs if given},
    }
    made["fingerprint"] = hashlib.sha256(json.dumps(made, sort_keys=True).encode()).hexdigest()
    return made


def new(made: dict, wrote: Iterable[str], started: str | None = None) -> dict:
    return {
        "tool": TOOL,
        "version": __version__,
        "status": "running",
        **made,
        "wrote": sorted(set(wrote)),
        "started": started or now(),
    }


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def read(out: Path) -> dict | None:
    """The folder's run.json, or None; one that distill did not write is an error (exit 2)."""
    path = out / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = None
    names = record.get("wrote") if isinstance(record, dict) else None
    if not (
        isinstance(record, dict)
        and record.get("tool") == TOOL
        and record.get("status") in STATUSES
        and isinstance(names, list)
        and all(isinstance(n, str) and n not in ("", ".", "..") and "/" not in n for n in names)
        and all(k in record for k in ("command", "args", "inputs", "fingerprint"))
    ):
        raise DistillError(
            f"{path} is not a run record written by distill; move it away or choose another "
            "--output-dir"
        )
    return record


def write(out: Path, record: dict) -> None:
    write_json_atomic(out / RECORD, record)


def add_written(out: Path, names: Iterable[str]) -> None:
    """Add names to what run.json says the tool wrote (before writing them); a folder without
    a run.json of distill's is left as it is."""
    try:
        record = read(out)
    except DistillError:
        return
    if record is not None:
        record["wrote"] = sorted(set(record["wrote"]) | set(names))
        write(out, record)


def difference(record: dict, made: dict, what: str) -> str:
    """What makes ``made`` another run than the one ``record`` describes, in a few words."""
    if record["command"] != made["command"]:
        return f"another command ({record['command']})"
    different = f"different {what}" if what.endswith("s") else f"a different {what}"
    found = _first_difference(record["args"], made["args"])
    if found:
        return f"{different} ({found})"
    for role in sorted(record["inputs"].keys() | made["inputs"].keys()):
        old, new_ = record["inputs"].get(role, {}), made["inputs"].get(role, {})
        if old == new_:
            continue
        if old.get("given") == new_.get("given"):
            return f"other inputs (the {role} {new_['given']} changed since)"
        return f"other inputs ({role}: {old.get('given')!r} then, {new_.get('given')!r} now)"
    return different


def _first_difference(old, new_, prefix: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new_, dict):
        for key in sorted(old.keys() | new_.keys()):
            found = _first_difference(old.get(key), new_.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if old == new_ else f"{prefix.rstrip('.')}: {old!r} then, {new_!r} now"

"""What a command reads: the check that an output folder is none of it, and a cheap stamp of it."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from distill_cli.errors import DistillError
from distill_cli.outputs.files import is_staging

Inputs = Iterable[tuple[str, "str | Path | None"]]  # (role, path or Hub name)
# what distill itself keeps beside a model (its run record, evaluate's report): not the input
NOT_INPUT = {"run.json", "run.lock", "evaluation.json", "evaluation.png"}


def check_not_input(output_dir: str | Path, inputs: Inputs, option: str = "--output-dir") -> Path:
    """Refuse (exit 2) an output folder that is an input, lies inside one or holds one.

    Paths are compared resolved (~, relative parts, symlinks); a name that is no local path (a
    Hub model, a dataset preset) is no input on disk. Returns the output folder, ~ expanded.
    """
    out = Path(output_dir).expanduser()
    target = out.resolve()
    for role, given in inputs:
        path = Path(given).expanduser() if given else None
        if path is None or not path.exists():
            continue
        source = path.resolve()
        if target == source:
            relation = "is"
        elif source in target.parents:
            relation = "lies inside"
        elif target in source.parents:
            relation = "holds"
        else:
            continue
        shown = f"{out} ({target})" if target != Path.cwd() / out else str(out)
        kind = "folder" if source.is_dir() else "file"
        raise DistillError(
            f"{option} {shown} {relation} the {role} {kind} {given}; a command never "
            f"writes where it reads: choose another {option}"
        )
    return out


def stamp(given: str | Path) -> dict:
    """A local input's resolved path and the names, sizes and mtimes of its files, hashed (no
    file is read); a Hub name or preset is known by its name only."""
    path = Path(given).expanduser()
    if not path.exists():
        return {"given": str(given)}
    path = path.resolve()
    digest = hashlib.sha256(str(path).encode())
    for f in _files(path):
        try:
            st = f.stat()
        except OSError:
            continue
        digest.update(f"\0{f.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return {"given": str(given), "stamp": digest.hexdigest()[:16]}


def _files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not is_staging(d))
        top = Path(root) == path
        found += [Path(root) / f for f in sorted(files) if not (top and f in NOT_INPUT)]
    return found

"""Output folders: never clobber a finished model; write atomically, model weights last."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from distill_cli.errors import DistillError

# A folder holding this file is a finished model: it is always the last file written.
FINISHED_MARKER = "model.safetensors"
MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json")


def holds_model(path: Path) -> bool:
    return any((path / name).exists() for name in MODEL_FILES)


def prepare_output_dir(path: str | Path, overwrite: bool, main: bool = True) -> Path:
    """Create the folder, check it is writable, and clear a previous model when overwriting.

    Every process checks; only the main process changes anything.
    """
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise DistillError(f"output path {out} is a file; pass a folder path to --output-dir")
    if out.is_dir() and holds_model(out) and not overwrite:
        raise DistillError(
            f"output folder {out} already holds a model; pass --overwrite or choose another folder"
        )
    if not main:
        return out
    for name in MODEL_FILES + ("metrics.jsonl", "train_results.json"):
        (out / name).unlink(missing_ok=True)
    check_writable(out)
    return out


def check_writable(out: Path) -> None:
    """Create the folder and write a temp file in it, or fail with one line."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out):
            pass
    except OSError as e:
        raise DistillError(
            f"output folder {out} is not writable ({e.strerror}); choose another"
        ) from None


def check_free_space(out: Path, need: int, what: str = "model and checkpoints") -> None:
    """Refuse to start when the output folder's disk cannot hold what the command writes."""
    where = Path(out)
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < need:
        hint = ", lower train.save_total_limit" if "checkpoints" in what else ""
        raise DistillError(
            f"only {free / 1e6:,.0f} MB free in {where} but this needs about {need / 1e6:,.0f} MB "
            f"({what}); free space{hint}, or choose another --output-dir"
        )


def weights_bytes(name: str | Path | None) -> int:
    """Size of a local model folder's weight files; 0 for a Hub name (unknown until fetched)."""
    folder = Path(name or "").expanduser()
    if not name or not folder.is_dir():
        return 0
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix in (".safetensors", ".bin"))


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, _umask_mode())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def save_model_atomic(model, tokenizer, out: Path) -> None:
    """save_pretrained into a temp folder, then move files in, the weights last."""
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".saving-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        files = sorted(tmp.iterdir(), key=lambda p: ".safetensors" in p.name)
        for f in files:
            os.chmod(f, _umask_mode())
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

"""Files in an output folder: atomic writes, removal, names, room and permissions."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from distill_cli.errors import DistillError

STAGING = ".distill-tmp-"  # temp folders inside the output; a killed run's are removed
MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx")


def holds_model(path: Path) -> bool:
    return any((path / name).exists() for name in MODEL_FILES)


def is_model_file(name: str) -> bool:
    return name in MODEL_FILES or name.endswith(WEIGHT_SUFFIXES)


def is_weights(name: str) -> bool:
    return ".safetensors" in name or name.endswith(WEIGHT_SUFFIXES)


def is_staging(name: str) -> bool:
    return name.lstrip(".").startswith(STAGING.lstrip("."))


def remove(path: Path) -> None:
    """Rename a folder first, so a kill mid-delete leaves a staging name, never a half folder."""
    if path.is_dir() and not path.is_symlink():
        doomed = path
        if not is_staging(path.name):
            doomed = path.with_name(f"{STAGING}delete-{path.name}")
            os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o666 & ~umask())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


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


def check_free_space(
    out: Path, need: int, what: str = "model and checkpoints", fix: str | None = None
) -> None:
    """Refuse to start when the folder's disk cannot hold what the command writes there;
    ``fix`` replaces the advice, which by default is about the output folder."""
    where = Path(out)
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < need:
        if fix is None:
            hint = ", lower train.save_total_limit" if "checkpoints" in what else ""
            fix = f"free space{hint}, or choose another --output-dir"
        raise DistillError(
            f"only {free / 1e6:,.0f} MB free in {where} but this needs about {need / 1e6:,.0f} MB "
            f"({what}); {fix}"
        )


def weight_files(name: str | Path | None) -> list[Path]:
    """A local model's weight files: a .gguf file, or a folder's weight files by name; none for
    a Hub name."""
    folder = Path(name or "").expanduser()
    if name and folder.is_file() and folder.suffix == ".gguf":
        return [folder]
    if not name or not folder.is_dir():
        return []
    suffixes = (".safetensors", ".bin", ".gguf")
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix in suffixes)


def weights_bytes(name: str | Path | None) -> int:
    """Size of a local model's weight files; 0 for a Hub name (unknown until fetched). A
    GGUF's dequantised fp32 weights are larger than its file."""
    return sum(f.stat().st_size for f in weight_files(name))

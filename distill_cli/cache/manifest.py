"""What a teacher cache was made from, and the one-line refusal of a cache made from other things.

``manifest.json`` names the format version, the stage, the teacher (its weight files' sha256),
its tokenizer, the data settings that shape the inputs, the training rows (their token ids
hashed), how word logits were read and stored (mode, scale, k, dtype), and per phase what is
stored: the outputs its terms read, the temperatures of its word tails, its static masks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from distill_cli.errors import DistillError
from distill_cli.outputs import write_json_atomic
from distill_cli.outputs.files import weight_files
from distill_cli.user_files import read_json

VERSION = 1
NAME = "manifest.json"
# data settings that only evaluation reads: a cache serves any of them
EVAL_ONLY = ("eval_split", "max_eval_samples", "metric", "max_answer_length")
# what a phase's record holds, by the Needs flag that makes it
STORED = ("logits", "embedding", "hidden", "attentions", "word")
# the manifest's word settings, as a recipe names them
WORD_KEYS = {
    "mode": "word_logits",
    "scale": "word_logit_scale",
    "top_k": "teacher_cache.top_k",
    "word_dtype": "teacher_cache.word_dtype",
}
FIX = "write a new cache for this run (teacher_cache.mode=write), or run the one it was made for"


def teacher_files(name: str) -> list[Path]:
    """The files a teacher's weights are read from: local ones, or the Hub cache's copy of a
    Hub model (none when it has none)."""
    if Path(name).expanduser().exists():
        return weight_files(name)
    try:
        from huggingface_hub import snapshot_download

        return weight_files(snapshot_download(name, local_files_only=True))
    except Exception:  # not fetched, or not a Hub name: identified by its name alone
        return []


def teacher_identity(name: str) -> dict:
    """The teacher by its weight files' contents (where it is: a moved copy is the same
    teacher), or by its name when no file is at hand."""
    files = teacher_files(name)
    if not files:
        return {"name": str(name), "sha256": None}
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}\0".encode())
        with f.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return {"name": str(name), "sha256": digest.hexdigest()}


def _same(stored, current) -> bool:
    """Identities agree by content hash, or by name where either has none."""
    if not isinstance(stored, dict):
        return False
    if stored.get("sha256") and current.get("sha256"):
        return stored["sha256"] == current["sha256"]
    return stored.get("name") == current.get("name")


def tokenizer_identity(tokenizer) -> dict:
    """A tokenizer by its whole definition (a fast one's JSON: vocabulary, merges, normalizer,
    added and special tokens), else its vocabulary and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        vocab = sorted(tokenizer.get_vocab().items())
        text = json.dumps([type(tokenizer).__name__, vocab, tokenizer.all_special_tokens])
    return {
        "name": getattr(tokenizer, "name_or_path", ""),
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
    }


def data_identity(ds, name: str | None, split: str, skip: str) -> dict:
    """The training rows, by the token ids and masks the teacher reads, hashed in order (column
    ``skip``, the rows' own index, left out)."""
    digest = hashlib.sha256()
    columns = sorted(c for c in ds.column_names if c != skip)
    for column in columns:
        digest.update(f"\0{column}\0".encode())
        for values in ds.with_format("numpy")[column]:
            values = np.asarray(values)
            if values.dtype.kind in "iufb":  # token ids, masks, labels (raw text is not read)
                digest.update(values.tobytes() + b"\1")
    return {"name": name, "split": split, "rows": len(ds), "sha256": digest.hexdigest()}


def data_settings(d) -> dict:
    return {k: v for k, v in dataclasses.asdict(d).items() if k not in EVAL_ONLY and k != "name"}


def part_name(index: int) -> str:
    return f"phase-{index}"


def part_entry(phase, needs, stored_hidden: bool, word_params) -> dict:
    """What phase ``phase``'s records hold (``needs``: what its teacher terms read)."""
    large = ("hidden", "attentions")
    stores = [k for k in STORED if getattr(needs, k) and (k not in large or stored_hidden)]
    entry = {"name": phase.name, "stores": stores, "mlm_probability": phase.mlm_probability}
    if word_params is not None:
        entry["temperature"] = word_params.temperature
        entry["standardize"] = bool(getattr(word_params, "standardize", False))
    return entry


def write(folder: Path, manifest: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / NAME, manifest)


def read(folder: Path) -> dict | None:
    path = folder / NAME
    if not path.is_file():
        return None
    shape = {"version": int, "teacher": dict, "parts": dict}
    return read_json(path, "teacher cache manifest", FIX, required=shape)


def _differs(path, what: str, stored, current) -> DistillError:
    return DistillError(
        f"teacher cache {path} was made with {what} {_show(stored)}, this run has "
        f"{_show(current)}; {FIX}"
    )


def _show(value) -> str:
    if isinstance(value, dict) and "sha256" in value:
        digest = f" (sha256 {value['sha256'][:12]})" if value["sha256"] else ""
        return f"{value.get('name') or '?'}{digest}"
    return json.dumps(value) if not isinstance(value, str) else value


def check(stored: dict, current: dict, path: Path) -> None:
    """Refuse, in one line naming the first field that differs, a cache made from other inputs
    (parts are checked per phase by :func:`check_part`)."""
    if stored.get("version") != VERSION:
        raise _differs(path, "format version", stored.get("version"), VERSION)
    if stored.get("stage") != current["stage"]:
        raise _differs(path, "the stage", stored.get("stage"), current["stage"])
    for key in ("teacher", "tokenizer"):
        if not _same(stored.get(key), current[key]):
            raise _differs(path, f"the {key}", stored.get(key), current[key])
    settings = stored.get("data_settings") or {}
    for key, value in current["data_settings"].items():
        if settings.get(key) != value:
            raise _differs(path, f"data.{key}", settings.get(key), value)
    data = stored.get("data") or {}
    for key in ("rows", "sha256"):  # the rows themselves, wherever the data now lies
        if data.get(key) != current["data"][key]:
            what = "training rows (their token ids)" if key == "sha256" else "training rows"
            raise _differs(path, what, data.get(key), current["data"][key])
    if not any("word" in part["stores"] for part in current["parts"].values()):
        return  # how words are stored matters to word terms only
    word = stored.get("word") or {}
    for key, value in current["word"].items():
        if word.get(key) != value:
            raise _differs(path, WORD_KEYS.get(key, key), word.get(key), value)


def check_part(stored: dict, name: str, current: dict, path: Path) -> None:
    """A phase's stored part holds what the phase reads, as it reads it."""
    part = stored.get("parts", {}).get(name)
    if part is None:
        raise DistillError(
            f"teacher cache {path} holds no outputs for phase '{current['name']}' ({name}); {FIX}"
        )
    missing = [k for k in current["stores"] if k not in part.get("stores", [])]
    if missing:
        what = f"phase '{current['name']}' storing"
        raise _differs(path, what, part.get("stores"), current["stores"])
    for key in ("mlm_probability", "temperature", "standardize"):
        if key in current and part.get(key) != current[key]:
            raise _differs(path, f"phase '{current['name']}' {key}", part.get(key), current[key])

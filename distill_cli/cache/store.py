"""The teacher cache on disk: per-row records of named tensors in safetensors shards.

A part (``folder/part``) holds shards ``rank{rank:03d}-{seq:06d}.safetensors``, each written
atomically by one process. A shard holds, per field, one flat 1-D tensor of its rows' values
(``{field}.data``), int64 ``{field}.offsets`` [n+1] and ``{field}.shapes`` [n, ndim], plus int64
``rows`` [n]; its metadata ``fields`` is the field spec as JSON. ``complete.json``, written once
every row is there, lists the shards; only a complete part is read. Reads are memory-mapped and
touch only the rows asked for.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from distill_cli.errors import DistillError, WriteFailed
from distill_cli.outputs.files import (
    STAGING,
    check_free_space,
    is_staging,
    remove,
    write_json_atomic,
)
from distill_cli.user_files import PARSE_ERRORS, read_json, reading

COMPLETE = "complete.json"
SHARD = re.compile(r"rank(\d{3,})-(\d{6,})\.safetensors")
FIX = "write the cache again (teacher_cache.mode=write)"
ERRORS = (*PARSE_ERRORS, SafetensorError)
ITEM = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}  # raw bytes of each dtype's size

Record = dict[str, torch.Tensor]
Spec = dict[str, dict]  # field -> {"dtype": "float32", "ndim": 2}


def shard_name(rank: int, seq: int) -> str:
    return f"rank{rank:03d}-{seq:06d}.safetensors"


def shards(folder: Path, part: str) -> list[Path]:
    """Whole shards of a part, by name; a killed writer's temp files are not among them."""
    where = Path(folder) / part
    if not where.is_dir():
        return []
    return sorted(p for p in where.iterdir() if SHARD.fullmatch(p.name))


def record_bytes(record: Record) -> int:
    return sum(t.numel() * t.element_size() for t in record.values())


def spec_of(record: Record) -> Spec:
    return {
        k: {"dtype": str(t.dtype).removeprefix("torch."), "ndim": t.dim()}
        for k, t in record.items()
    }


def check_room(folder: Path, need: int, what: str) -> None:
    check_free_space(
        folder,
        need,
        f"teacher cache: {what}",
        "free space, or put the teacher cache on another disk",
    )


def total_bytes(folder: Path, part: str) -> int:
    return sum(p.stat().st_size for p in shards(folder, part))


def is_complete(folder: Path, part: str) -> bool:
    return (Path(folder) / part / COMPLETE).is_file()


def clean(folder: Path, part: str, prefix: str = "") -> None:
    """Remove temp files a killed writer left (``prefix``: only those of one rank)."""
    where = Path(folder) / part
    for p in where.iterdir() if where.is_dir() else ():
        if is_staging(p.name) and (not prefix or p.name.startswith(STAGING + prefix)):
            remove(p)


class _Shard:
    """One shard opened for reading: its index tensors in memory, its data memory-mapped."""

    def __init__(self, path: Path):
        self.path = path
        if not path.is_file():
            raise DistillError(f"teacher cache shard {path} is missing; {FIX}")
        with reading(path, "teacher cache shard", FIX, ERRORS), safe_open(path, "pt") as f:
            self.spec = json.loads((f.metadata() or {}).get("fields", "null"))
            if not isinstance(self.spec, dict):
                raise ValueError("no field spec in its metadata")
            self.rows = f.get_tensor("rows").numpy()
            self.offsets = {k: f.get_tensor(f"{k}.offsets").numpy() for k in self.spec}
            self.shapes = {k: f.get_tensor(f"{k}.shapes").numpy() for k in self.spec}
            for k in self.spec:  # each row's values lie inside the field's data
                off, n = self.offsets[k], f.get_slice(f"{k}.data").get_shape()[0]
                if (
                    len(off) != len(self.rows) + 1
                    or off[0] != 0
                    or off[-1] != n
                    or (np.diff(off) != self.shapes[k].prod(axis=1)).any()
                ):
                    raise ValueError(f"its offsets of '{k}' do not match its data")
        self._data: dict[str, np.ndarray] | None = None

    def data(self) -> dict[str, np.ndarray]:
        """Each field's values as raw items of its size, a view of the mapped file."""
        if self._data is None:
            with reading(self.path, "teacher cache shard", FIX, ERRORS):
                with open(self.path, "rb") as f:
                    size = int.from_bytes(f.read(8), "little")
                    header = json.loads(f.read(size))
                nbytes = self.path.stat().st_size
                store = torch.UntypedStorage.from_file(str(self.path), shared=False, nbytes=nbytes)
                raw = torch.empty(0, dtype=torch.uint8).set_(store, 0, (nbytes,)).numpy()
                self._data = {}
                for k, v in self.spec.items():
                    a, b = header[f"{k}.data"]["data_offsets"]
                    item = ITEM[getattr(torch, v["dtype"]).itemsize]
                    self._data[k] = raw[8 + size + a : 8 + size + b].view(item)
        return self._data


def _index(parts: list[np.ndarray], n_rows: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Which entries of the shards' concatenated rows to read, in row order, and their rows: a
    row in several shards reads from the last. Also how many rows are missing and outside."""
    rows = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    inside = np.flatnonzero((rows >= 0) & (rows < n_rows))
    pick = inside[len(inside) - 1 - np.unique(rows[inside][::-1], return_index=True)[1]]
    return pick, rows[pick], n_rows - len(pick), len(rows) - len(inside)


def _open_all(folder: Path, part: str, names: list[str]) -> list[_Shard]:
    opened = [_Shard(Path(folder) / part / n) for n in names]
    for s in opened[1:]:
        if s.spec != opened[0].spec:
            raise DistillError(
                f"teacher cache shards {opened[0].path} and {s.path} hold different fields "
                f"({_describe(opened[0].spec)} / {_describe(s.spec)}); {FIX}"
            )
    return opened


def _describe(spec: Spec) -> str:
    return ", ".join(f"{k}: {v['dtype']} {v['ndim']}-d" for k, v in spec.items()) or "none"


def written_rows(folder: Path, part: str) -> set[int]:
    """Rows in whole shards of a part (any rank): a rerun skips them."""
    rows: set[int] = set()
    for path in shards(folder, part):
        with reading(path, "teacher cache shard", FIX, ERRORS), safe_open(path, "pt") as f:
            rows.update(f.get_tensor("rows").tolist())
    return rows


def mark_complete(folder: Path, part: str, n_rows: int) -> None:
    """After every writer flushed: check rows 0..n_rows-1 are all there, then write
    complete.json. Shards are listed oldest first; a row written twice reads from the newest."""
    where = Path(folder) / part
    clean(folder, part)
    found = sorted(shards(folder, part), key=lambda p: (p.stat().st_mtime_ns, p.name))
    opened = _open_all(folder, part, [p.name for p in found])
    _, _, missing, outside = _index([s.rows for s in opened], n_rows)
    if missing or outside:
        what = f"{missing:,} of {n_rows:,} rows are missing" if missing else ""
        if outside:
            what += (" and " if what else "") + f"{outside:,} rows lie outside 0..{n_rows - 1}"
        raise DistillError(f"teacher cache {where}: {what}; {FIX}")
    spec = opened[0].spec if opened else {}
    write_json_atomic(
        where / COMPLETE,
        {
            "n_rows": n_rows,
            "shards": [p.name for p in found],
            "bytes": sum(p.stat().st_size for p in found),
            "fields": spec,
        },
    )


class ShardWriter:
    """Buffers records of one process and writes them as shards of about ``shard_bytes``."""

    def __init__(self, folder: Path, part: str, rank: int = 0, shard_bytes: int = 64 * 2**20):
        self.dir = Path(folder) / part
        self.rank, self.shard_bytes = rank, shard_bytes
        self.dir.mkdir(parents=True, exist_ok=True)
        clean(folder, part, f"rank{rank:03d}-")
        names = [SHARD.fullmatch(p.name) for p in shards(folder, part)]
        self.seq = max((int(m[2]) + 1 for m in names if int(m[1]) == rank), default=0)
        self.spec: Spec | None = None
        self.rows: list[int] = []
        self.records: list[Record] = []
        self.bytes = 0

    def add(self, row: int, record: Record) -> None:
        record = {k: _own(t) for k, t in record.items()}
        spec = spec_of(record)
        if self.spec is None:
            self.spec = self._existing_spec() or spec
        if spec != self.spec:
            raise DistillError(
                f"teacher cache {self.dir}: row {row} has fields {_describe(spec)} but the part "
                f"holds {_describe(self.spec)}; every row must have the same fields, dtypes and "
                "ndim"
            )
        self.rows.append(int(row))
        self.records.append(record)
        self.bytes += record_bytes(record)
        if self.bytes >= self.shard_bytes:
            self.flush()

    def _existing_spec(self) -> Spec | None:
        found = shards(self.dir.parent, self.dir.name)
        return _Shard(found[0]).spec if found else None

    def flush(self) -> None:
        """Write the buffered rows as one shard (atomically), if any."""
        if not self.rows:
            return
        n = len(self.rows)
        tensors = {"rows": torch.tensor(self.rows, dtype=torch.int64)}
        for k, v in self.spec.items():
            values = [r[k] for r in self.records]
            sizes = torch.tensor([t.numel() for t in values], dtype=torch.int64)
            tensors[f"{k}.data"] = torch.cat([t.reshape(-1) for t in values])
            tensors[f"{k}.offsets"] = torch.cat(
                [torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)]
            )
            shapes = [list(t.shape) for t in values]
            tensors[f"{k}.shapes"] = torch.tensor(shapes, dtype=torch.int64).reshape(n, v["ndim"])
        path = self.dir / shard_name(self.rank, self.seq)
        tmp = self.dir / f"{STAGING}{path.name}"
        try:
            save_file(tensors, tmp, metadata={"fields": json.dumps(self.spec)})
            (self.dir / COMPLETE).unlink(missing_ok=True)  # written to again: not complete
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise WriteFailed(
                f"could not write teacher cache shard {path}: {e.strerror or e}; free space or "
                "check the folder's permissions, then run again (written shards are kept)"
            ) from None
        self.seq += 1
        self.rows, self.records, self.bytes = [], [], 0


def _own(t: torch.Tensor) -> torch.Tensor:
    """A detached, contiguous CPU copy that does not keep a larger tensor alive."""
    t = t.detach().to("cpu").contiguous()
    if t.element_size() not in ITEM:
        raise DistillError(f"the teacher cache cannot store {t.dtype} tensors")
    return t.clone() if t.untyped_storage().nbytes() != t.nbytes else t


class Reader:
    """A complete part, read by row: ``get(rows)`` returns records in the order asked."""

    def __init__(self, folder: Path, part: str):
        self.dir = Path(folder) / part
        done = self.dir / COMPLETE
        if not done.is_file():
            raise DistillError(
                f"teacher cache {self.dir} is not complete (no {COMPLETE}: its writing did not "
                f"finish); {FIX}"
            )
        info = read_json(
            done, "teacher cache index", FIX, {"n_rows": int, "shards": list, "fields": dict}
        )
        self.fields: Spec = info["fields"]
        self.n_rows: int = max(info["n_rows"], 0)
        self._shards = _open_all(folder, part, [str(n) for n in info["shards"]])
        for s in self._shards:
            if s.spec != self.fields:
                raise DistillError(f"teacher cache shard {s.path} does not match {done}; {FIX}")
        pick, _, missing, _ = _index([s.rows for s in self._shards], self.n_rows)
        if missing:
            raise DistillError(f"teacher cache {self.dir} lacks {missing:,} rows; {FIX}")
        # per row (``pick`` is in row order): its shard, and per field where its values start,
        # how many, and its shape
        lengths = [len(s.rows) for s in self._shards]
        self._shard = np.repeat(np.arange(len(lengths)), lengths)[pick]
        self._start, self._size, self._shape = {}, {}, {}
        for k in self.fields if self._shards else ():
            off = [s.offsets[k] for s in self._shards]
            for table, parts in (
                (self._start, [o[:-1] for o in off]),
                (self._size, [np.diff(o) for o in off]),
                (self._shape, [s.shapes[k] for s in self._shards]),
            ):
                table[k] = np.concatenate(parts)[pick]

    def __len__(self) -> int:
        return self.n_rows

    def get(self, rows: Sequence[int]) -> list[Record]:
        asked = np.asarray(rows, dtype=np.int64).reshape(-1)
        bad = (asked < 0) | (asked >= self.n_rows)
        if bad.any():
            raise DistillError(
                f"row {asked[bad][0]} is not in the teacher cache {self.dir} (rows 0.."
                f"{self.n_rows - 1}): the training set changed since it was written; {FIX}"
            )
        out: list[Record] = [{} for _ in range(len(asked))]
        if not len(asked):
            return out
        order = np.argsort(self._shard[asked], kind="stable")  # each shard's rows together
        asked = asked[order]
        shard = self._shard[asked]
        firsts = np.r_[0, np.flatnonzero(np.diff(shard)) + 1]
        ends = np.r_[firsts[1:], len(asked)]
        blocks = list(zip(shard[firsts].tolist(), firsts.tolist(), ends.tolist(), strict=True))
        targets = order.tolist()
        for k, v in self.fields.items():
            pieces = self._read(k, v, asked, blocks)
            for j, piece in zip(targets, pieces, strict=True):
                out[j][k] = piece
        return out

    def _read(self, k: str, v: dict, asked: np.ndarray, blocks: list) -> Sequence[torch.Tensor]:
        """One field of rows grouped by shard: one gather per shard into one buffer, split."""
        sizes, starts, shapes = self._size[k][asked], self._start[k][asked], self._shape[k][asked]
        ends = np.cumsum(sizes)
        firsts = ends - sizes
        source = np.arange(ends[-1]) + np.repeat(starts - firsts, sizes)
        buf = np.empty(ends[-1], ITEM[getattr(torch, v["dtype"]).itemsize])
        for s, a, b in blocks:
            lo, hi = firsts[a], ends[b - 1]
            np.take(self._shards[s].data()[k], source[lo:hi], out=buf[lo:hi])
        flat = torch.from_numpy(buf).view(getattr(torch, v["dtype"]))
        if v["ndim"] == 0:
            return flat.unbind(0)
        trail = shapes[0, 1:]
        if (shapes[:, 1:] == trail).all() and trail.prod() > 0:  # [n, ...]: split along n
            return flat.view(-1, *trail.tolist()).split(shapes[:, 0].tolist())
        return [p.view(q) for p, q in zip(flat.split(sizes.tolist()), shapes.tolist(), strict=True)]

    def close(self) -> None:
        self._shards = []

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

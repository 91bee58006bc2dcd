"""Output folders: what a command may write, replace or delete there, and when it is done.

Every command that writes a folder (training, compress-vocab, export) claims it first:

- the input check: the folder is not an input, does not lie inside one and holds none;
- ``run.json`` records the command, its options, a cheap stamp of its inputs (path, size and
  mtime of their files), the run's status (clearing → running → finished) and every name the
  tool wrote there. ``--overwrite`` removes only those names: files the tool did not write stay;
- a finished folder is not run again: the same command, options and inputs end at once
  (``already finished``); different ones are refused unless ``--overwrite``;
- ``run.lock`` keeps a second run out while one is live; one left by a dead process is taken over.

Files are published from a staging folder inside the output, model weights last, and run.json
says ``finished`` only after them: a failed or killed run never looks finished.
"""

from __future__ import annotations

import atexit
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from distill_cli import __version__
from distill_cli.errors import AlreadyFinished, DistillError
from distill_cli.reporting import log

RECORD = "run.json"
LOCK = "run.lock"
STAGING = ".distill-tmp-"  # temp folders inside the output; a killed run's are removed
TOOL = "distill-cli"
# reports that evaluate adds beside a model: they do not make it a different input
NOT_INPUT = {RECORD, LOCK, "evaluation.json", "evaluation.png"}
MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx")

Inputs = Iterable[tuple[str, "str | Path | None"]]  # (role, path or Hub name)


def holds_model(path: Path) -> bool:
    return any((path / name).exists() for name in MODEL_FILES)


def _is_model_file(name: str) -> bool:
    return name in MODEL_FILES or name.endswith(WEIGHT_SUFFIXES)


def _is_weights(name: str) -> bool:
    return ".safetensors" in name or name.endswith(WEIGHT_SUFFIXES)


def _is_staging(name: str) -> bool:
    return name.lstrip(".").startswith(STAGING.lstrip("."))


# --- the input check -------------------------------------------------------------------------


def check_not_input(output_dir: str | Path, inputs: Inputs) -> Path:
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
            f"--output-dir {shown} {relation} the {role} {kind} {given}; a command never "
            "writes where it reads: choose another --output-dir"
        )
    return out


# --- what a run is: command, options and a stamp of its inputs -------------------------------


def _stamp(given: str | Path) -> dict:
    """A local input's resolved path and the names, sizes and mtimes of its files, hashed."""
    path = Path(given).expanduser()
    if not path.exists():
        return {"given": str(given)}  # a Hub name or preset: its name is all we know
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
        dirs[:] = sorted(d for d in dirs if not _is_staging(d))
        top = Path(root) == path
        found += [Path(root) / f for f in sorted(files) if not (top and f in NOT_INPUT)]
    return found


def _job(command: str, args: dict, inputs: Inputs) -> dict:
    job = {
        "command": command,
        "args": json.loads(json.dumps(args, default=str)),
        "inputs": {role: _stamp(given) for role, given in inputs if given},
    }
    job["fingerprint"] = hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()
    return job


def _first_difference(old, new, prefix: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys()):
            found = _first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if old == new else f"{prefix.rstrip('.')}: {old!r} then, {new!r} now"


def _difference(record: dict, job: dict, what: str) -> str:
    """What makes ``job`` another run than the one ``record`` describes, in a few words."""
    if record["command"] != job["command"]:
        return f"another command ({record['command']})"
    different = f"different {what}" if what.endswith("s") else f"a different {what}"
    found = _first_difference(record["args"], job["args"])
    if found:
        return f"{different} ({found})"
    for role in sorted(record["inputs"].keys() | job["inputs"].keys()):
        old, new = record["inputs"].get(role, {}), job["inputs"].get(role, {})
        if old == new:
            continue
        if old.get("given") == new.get("given"):
            return f"other inputs (the {role} {new['given']} changed since)"
        return f"other inputs ({role}: {old.get('given')!r} then, {new.get('given')!r} now)"
    return different


# --- run.json ----------------------------------------------------------------------------------


def read_record(out: Path) -> dict | None:
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
        and isinstance(names, list)
        and all(isinstance(n, str) and n not in ("", ".", "..") and "/" not in n for n in names)
        and all(k in record for k in ("status", "command", "args", "inputs", "fingerprint"))
    ):
        raise DistillError(
            f"{path} is not a run record written by distill; move it away or choose another "
            "--output-dir"
        )
    return record


def _write_record(out: Path, record: dict) -> None:
    write_json_atomic(out / RECORD, record)


def record_written(out: Path, names: Iterable[str]) -> None:
    """Add names to what run.json says the tool wrote (before writing them); a folder without
    a run.json of distill's is left as it is."""
    try:
        record = read_record(out)
    except DistillError:
        return
    if record is not None:
        record["wrote"] = sorted(set(record["wrote"]) | set(names))
        _write_record(out, record)


# --- claiming a folder -------------------------------------------------------------------------


def claim(
    output_dir: str | Path,
    command: str,
    args: dict,
    inputs: Inputs,
    *,
    overwrite: bool = False,
    main: bool = True,
    writes: Iterable[str] = (),
    resumable: Callable[[Path], bool] | None = None,
    what: str = "options",
) -> tuple[Path, bool]:
    """Check, lock and record the output folder of a run, before anything is loaded.

    ``args`` are the options that make the result (the resolved recipe), ``inputs`` the
    (role, path) pairs the command reads, ``writes`` the names it writes besides the model
    files, ``resumable`` tells whether an unfinished run left something to continue from.
    Returns the folder and whether it continues an unfinished run of the same command, options
    and inputs (nothing is cleared then). A finished one raises AlreadyFinished. Every process
    checks; only the main one locks and changes anything.
    """
    inputs = list(inputs)
    out = check_not_input(output_dir, inputs)
    if out.exists() and not out.is_dir():
        raise DistillError(f"output path {out} is a file; pass a folder path to --output-dir")
    job = _job(command, args, inputs)
    record, continues = _decide(out, job, overwrite, resumable, what, main)
    if not main:
        return out, continues
    created = not out.exists()
    check_writable(out)
    _lock(out, created)
    try:  # again, now that no other run can change the folder
        record, continues = _decide(out, job, overwrite, resumable, what, main)
        _check_foreign(out, record, writes)
    except BaseException:
        release(out)
        raise
    old = record["wrote"] if record else []
    new = {
        "tool": TOOL,
        "version": __version__,
        "status": "running",
        **job,
        "wrote": sorted({*old, *writes}),
        "started": record.get("started") if continues else _now(),
    }
    if not continues:
        _write_record(out, {**new, "status": "clearing"})
        for name in old:
            _remove(out / name)
    for p in out.iterdir():
        if _is_staging(p.name):
            _remove(p)
    _write_record(out, new)
    _held[out.resolve()].owns_record = True
    return out, continues


def _decide(out, job, overwrite, resumable, what, main) -> tuple[dict | None, bool]:
    """The folder's record, and whether the run continues it; raises when it must not run.

    Every process decides the same from the same record; run.json says "clearing" while the
    main process removes an earlier run, so no process resumes from what is being removed.
    """
    record = read_record(out) if out.is_dir() else None
    if record is None or overwrite:
        return record, False
    same = record["fingerprint"] == job["fingerprint"]
    if record["status"] == "finished":
        if same:
            raise AlreadyFinished(str(out) if main else "")
        raise DistillError(
            f"output folder {out} already holds a finished model made with "
            f"{_difference(record, job, what)}; pass --overwrite to replace it, or choose "
            "another --output-dir"
        )
    if record["status"] == "running" and resumable is not None and resumable(out):
        if same:
            return record, True
        raise DistillError(
            f"{out} holds an unfinished run started with {_difference(record, job, what)}; "
            f"rerun with the same {what} to resume, or pass --overwrite to start again"
        )
    return record, False


def _check_foreign(out: Path, record: dict | None, writes: Iterable[str]) -> None:
    """Never replace what the tool did not write: a model, or a name this run writes."""
    ours = set(record["wrote"]) if record else set()
    foreign = {
        p.name
        for p in out.iterdir()
        if p.name not in ours and p.name not in (RECORD, LOCK) and not _is_staging(p.name)
    }
    models = sorted(n for n in foreign if _is_model_file(n))
    if models:
        raise DistillError(
            f"output folder {out} already holds a model that distill did not write "
            f"({', '.join(models)}); choose another --output-dir (--overwrite only replaces "
            "what distill wrote)"
        )
    clash = sorted(foreign & set(writes))
    if clash:
        raise DistillError(
            f"output folder {out} holds {clash[0]}, which distill did not write and would "
            "replace; move it away or choose another --output-dir"
        )


def mark_finished(out: Path) -> None:
    """The run is complete: run.json says so (the marker), and the folder is unlocked."""
    record = read_record(out)
    if record is None:  # not claimed (a caller of save_model_atomic alone)
        return
    record["wrote"] = [n for n in record["wrote"] if (out / n).exists()]
    record.update(status="finished", finished=_now())
    _write_record(out, record)
    release(out)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# --- the lock ---------------------------------------------------------------------------------


@dataclasses.dataclass
class _Held:
    fd: int
    created: bool  # this run made the folder
    owns_record: bool = False  # this run wrote the folder's run.json


_held: dict[Path, _Held] = {}


def _lock(out: Path, created: bool) -> None:
    """Hold ``out/run.lock`` (flock, released by the OS when the process ends) or exit 2."""
    earlier = _held.pop(out.resolve(), None)
    if earlier is not None:  # an earlier command in this same process (in-process callers)
        os.close(earlier.fd)
    path = out / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd, wait=True)
            no_flock = e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN)
            if not no_flock or (holder and _alive(holder)):  # no flock here: trust the pid
                os.close(fd)
                raise DistillError(
                    f"output folder {out} is in use by process {holder or '(unknown)'} "
                    f"(see {path}); wait for it to end, or choose another --output-dir"
                ) from None
        try:  # the holder may have removed the file while we opened it: lock the new one
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    previous = _holder(fd)
    if previous and previous != str(os.getpid()):
        log(f"{path}: taking over the lock of process {previous}, which is no longer running")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[out.resolve()] = _Held(fd, created)


def _holder(fd: int, wait: bool = False) -> str:
    for _ in range(20 if wait else 1):  # a new holder writes its pid just after locking
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if pid:
            return pid
        time.sleep(0.05)
    return ""


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def release(out: Path) -> None:
    """Unlock the folder; a run that wrote nothing leaves no run.json (nor a folder it made)."""
    held = _held.pop(out.resolve(), None)
    if held is None:
        return
    try:
        record = read_record(out) if held.owns_record else None
        if record and record["status"] != "finished":
            for p in out.iterdir():
                if _is_staging(p.name):
                    _remove(p)
            if not any((out / n).exists() for n in record["wrote"]):
                (out / RECORD).unlink(missing_ok=True)
        (out / LOCK).unlink(missing_ok=True)
    except (OSError, DistillError):
        pass
    finally:
        os.close(held.fd)
    if held.created:
        try:
            out.rmdir()  # only when empty
        except OSError:
            pass


def release_all() -> None:
    for key in list(_held):
        release(key)


atexit.register(release_all)


# --- writing: staging, publishing, atomic files --------------------------------------------


def staging(out: Path) -> Path:
    """A temp folder inside ``out``, for files that publish() moves in."""
    return Path(tempfile.mkdtemp(dir=out, prefix=STAGING))


def publish(staged: Path, out: Path) -> None:
    """Move everything in ``staged`` into ``out``, model weights last, recording each name in
    run.json first; never over a file the tool did not write."""
    entries = sorted(staged.iterdir(), key=lambda p: (_is_weights(p.name), p.name))
    record = read_record(out)
    if record is not None:
        clash = [p.name for p in entries if (out / p.name).exists()]
        clash = [n for n in clash if n not in record["wrote"]]
        if clash:
            raise DistillError(
                f"output folder {out} holds {clash[0]}, which distill did not write and would "
                "replace; move it away, then run the same command again"
            )
        record_written(out, [p.name for p in entries])
    mask = _umask()
    for p in entries:
        dest = out / p.name
        if p.is_dir():
            os.chmod(p, 0o777 & ~mask)
            if dest.exists():
                _remove(dest)
        else:
            os.chmod(p, 0o666 & ~mask)
        os.replace(p, dest)


def save_model_atomic(model, tokenizer, out: Path) -> None:
    """save_pretrained into a staging folder, then publish: the weights are the last file in."""
    tmp = staging(out)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove(path: Path) -> None:
    """Rename first, so a kill mid-delete leaves a staging name, never a half folder."""
    if path.is_dir() and not path.is_symlink():
        doomed = path
        if not _is_staging(path.name):
            doomed = path.with_name(f"{STAGING}delete-{path.name}")
            os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


# --- room and permissions ---------------------------------------------------------------------


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

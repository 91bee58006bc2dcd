"""Output folders: what a command may write, replace or delete there, and when it is done.

Every command that writes a folder (training, compress-vocab, export) claims it first:

- the input check (inputs.py): the folder is not an input, does not lie inside one, holds none;
- ``run.json`` (record.py) records the command, its options, a cheap stamp of its inputs (path,
  size and mtime of their files), the run's status (clearing → running → finished) and every
  name the tool wrote there. ``--overwrite`` removes only those names: other files stay;
- a finished folder is not run again: the same command, options and inputs end at once
  (``already finished``); different ones are refused unless ``--overwrite``;
- ``run.lock`` (lock.py) keeps a second run out while one is live.

Files are published from a staging folder inside the output, model weights last, and run.json
says ``finished`` only after them: a failed or killed run never looks finished.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from distill_cli.errors import AlreadyFinished, DistillError
from distill_cli.outputs import lock, record
from distill_cli.outputs.files import (
    STAGING,
    check_free_space,
    check_writable,
    holds_model,
    is_model_file,
    is_staging,
    is_weights,
    remove,
    umask,
    weights_bytes,
    write_json_atomic,
    write_text_atomic,
)
from distill_cli.outputs.inputs import Inputs, check_not_input
from distill_cli.outputs.lock import LOCK
from distill_cli.outputs.record import RECORD

__all__ = [
    "check_free_space",
    "check_not_input",
    "check_writable",
    "claim",
    "holds_model",
    "mark_finished",
    "publish",
    "record_written",
    "release",
    "release_all",
    "save_model_atomic",
    "staging",
    "weights_bytes",
    "write_json_atomic",
    "write_text_atomic",
]

record_written = record.add_written


@dataclasses.dataclass
class _Held:
    fd: int  # of run.lock
    created: bool  # this run made the folder
    owns_record: bool = False  # this run wrote the folder's run.json


_held: dict[Path, _Held] = {}  # folders this process holds, by resolved path


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
    made = record.job(command, args, inputs)
    found, continues = _decide(out, made, overwrite, resumable, what, main)
    if not main:
        return out, continues
    created = not out.exists()
    check_writable(out)
    earlier = _held.pop(out.resolve(), None)
    if earlier is not None:  # an earlier command of this same process (in-process callers)
        os.close(earlier.fd)
    _held[out.resolve()] = _Held(lock.acquire(out), created)
    try:  # again, now that no other run can change the folder
        found, continues = _decide(out, made, overwrite, resumable, what, main)
        _check_foreign(out, found, writes)
    except BaseException:
        release(out)
        raise
    old = found["wrote"] if found else []
    started = found.get("started") if continues else None
    now = record.new(made, [*old, *writes], started)
    if not continues:
        record.write(out, {**now, "status": "clearing"})
        for name in old:
            remove(out / name)
    for p in out.iterdir():
        if is_staging(p.name):
            remove(p)
    record.write(out, now)
    _held[out.resolve()].owns_record = True
    return out, continues


def _decide(out, made, overwrite, resumable, what, main) -> tuple[dict | None, bool]:
    """The folder's record, and whether the run continues it; raises when it must not run.

    Every process decides the same from the same record; run.json says "clearing" while the
    main process removes an earlier run, so no process resumes from what is being removed.
    """
    found = record.read(out) if out.is_dir() else None
    if found is None or overwrite:
        return found, False
    same = found["fingerprint"] == made["fingerprint"]
    if found["status"] == "finished":
        if same:
            raise AlreadyFinished(str(out) if main else "")
        raise DistillError(
            f"output folder {out} already holds a finished model made with "
            f"{record.difference(found, made, what)}; pass --overwrite to replace it, or "
            "choose another --output-dir"
        )
    if found["status"] == "running" and resumable is not None and resumable(out):
        if same:
            return found, True
        raise DistillError(
            f"{out} holds an unfinished run started with {record.difference(found, made, what)}"
            f"; rerun with the same {what} to resume, or pass --overwrite to start again"
        )
    return found, False


def _check_foreign(out: Path, found: dict | None, writes: Iterable[str]) -> None:
    """Never replace what the tool did not write: a model, or a name this run writes."""
    ours = {*(found["wrote"] if found else []), RECORD, LOCK}
    foreign = {p.name for p in out.iterdir() if p.name not in ours and not is_staging(p.name)}
    models = sorted(n for n in foreign if is_model_file(n))
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
    found = record.read(out)
    if found is None:  # not claimed (a caller of save_model_atomic alone)
        return
    found["wrote"] = [n for n in found["wrote"] if (out / n).exists()]
    found.update(status="finished", finished=record.now())
    record.write(out, found)
    release(out)


def release(out: Path) -> None:
    """Unlock the folder; a run that wrote nothing leaves no run.json (nor a folder it made)."""
    held = _held.pop(Path(out).resolve(), None)
    if held is None:
        return
    try:
        found = record.read(out) if held.owns_record else None
        if found and found["status"] != "finished":
            for p in out.iterdir():
                if is_staging(p.name):
                    remove(p)
            if not any((out / n).exists() for n in found["wrote"]):
                (out / RECORD).unlink(missing_ok=True)
    except (OSError, DistillError):
        pass
    lock.drop(out, held.fd)
    if held.created:
        try:
            out.rmdir()  # only when empty
        except OSError:
            pass


def release_all() -> None:
    """Release every folder this process holds, as its end would (the CLI calls it per command)."""
    for key in list(_held):
        release(key)


atexit.register(release_all)


def staging(out: Path) -> Path:
    """A temp folder inside ``out``, for files that publish() moves in."""
    return Path(tempfile.mkdtemp(dir=out, prefix=STAGING))


def publish(staged: Path, out: Path) -> None:
    """Move everything in ``staged`` into ``out``, model weights last, recording each name in
    run.json first; never over a file the tool did not write."""
    entries = sorted(staged.iterdir(), key=lambda p: (is_weights(p.name), p.name))
    found = record.read(out)
    if found is not None:
        clash = [p.name for p in entries if (out / p.name).exists()]
        clash = [n for n in clash if n not in found["wrote"]]
        if clash:
            raise DistillError(
                f"output folder {out} holds {clash[0]}, which distill did not write and would "
                "replace; move it away, then run the same command again"
            )
        record.add_written(out, [p.name for p in entries])
    mask = umask()
    for p in entries:
        dest = out / p.name
        if p.is_dir():
            os.chmod(p, 0o777 & ~mask)
            if dest.exists():
                remove(dest)
        else:
            os.chmod(p, 0o666 & ~mask)
        os.replace(p, dest)


def save_model_atomic(model, tokenizer, out: Path, write=None, files=None) -> None:
    """save_pretrained into a staging folder, then publish: the weights are the last file in.
    ``write(folder)``, when given, writes the folder instead (a sentence-transformers layout);
    ``files`` ({name: JSON object}) are published with the model (a cloze's cloze.json)."""
    tmp = staging(out)
    try:
        if write is not None:
            write(tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        for name, data in (files or {}).items():
            (tmp / name).write_text(json.dumps(data, indent=2) + "\n")
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

"""Checkpoints that survive a kill at any instant, and exact resume from them.

A checkpoint is accelerate's ``save_state`` (model, optimizer, RNG states; safetensors for the
weights) plus one ``trainer_state_<rank>.json`` per process (step, data position, scheduler,
masking RNG, the unlogged loss window). It is written into ``checkpoints/.tmp-checkpoint-N`` and
renamed to ``checkpoints/checkpoint-N`` when complete, so a folder with that name is always whole.
Resume never unpickles code: the RNG states are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import re
import shutil
import signal
from pathlib import Path

from safetensors import SafetensorError

from distill_cli import outputs
from distill_cli.errors import DistillError, WriteFailed
from distill_cli.models.load import read_config
from distill_cli.outputs import weights_bytes, write_json_atomic, write_text_atomic
from distill_cli.reporting import log
from distill_cli.training import teacher_cache
from distill_cli.user_files import PARSE_ERRORS, read_json, read_text, reading

FOLDER = "checkpoints"
NAME = re.compile(r"^checkpoint-(\d+)$")
TMP = ".tmp-"
# what a training run writes beside the model and checkpoints (run.json records them)
RUN_FILES = (
    "metrics.jsonl",
    "train_results.json",
    "resolved_recipe.yaml",
    "vocab_map.json",
    "compression.json",
    "training.png",
)


def complete(out: Path) -> list[Path]:
    """Complete checkpoints in ``out``, oldest first."""
    root = out / FOLDER
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir() if p.is_dir() and (m := NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest(out: Path) -> Path | None:
    found = complete(out)
    return found[-1] if found else None


def step_of(path: Path) -> int:
    return int(NAME.match(path.name)[1])


def clean_partial(out: Path) -> None:
    """Remove temp folders a killed save or prune left behind (main process only)."""
    root = out / FOLDER
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP):
                shutil.rmtree(p, ignore_errors=True)


def save(accelerator, out: Path, step: int, state: dict, keep: int) -> Path:
    """Save every process's state as ``checkpoint-<step>``; keep the newest ``keep``."""
    root, main = out / FOLDER, accelerator.is_main_process
    tmp, final = root / f"{TMP}checkpoint-{step}", root / f"checkpoint-{step}"
    try:
        if main:
            root.mkdir(exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        write_json_atomic(tmp / f"trainer_state_{accelerator.process_index}.json", state)
        accelerator.wait_for_everyone()
        if main:
            if final.exists():  # left by an earlier run that was killed after this step
                _remove(final)
            os.replace(tmp, final)
            for old in complete(out)[:-keep]:
                _remove(old)
    except OSError as e:
        previous = latest(out)
        kept = f"the last complete checkpoint is {previous}" if previous else "no checkpoint yet"
        raise WriteFailed(
            f"could not write checkpoint {final} ({e.strerror or e}); {kept}; "
            "free space or fix permissions, then run the same command again to resume"
        ) from None
    accelerator.wait_for_everyone()
    return final


def _remove(path: Path) -> None:
    """Rename first, so a kill mid-delete never leaves a half checkpoint under a real name."""
    doomed = path.with_name(f"{TMP}delete-{path.name}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def load(accelerator, path: Path) -> dict:
    """Restore model, optimizer and RNG states; returns this process's trainer state."""
    saved = len(list(path.glob("trainer_state_*.json")))
    if saved != accelerator.num_processes:
        raise DistillError(
            f"checkpoint {path} was written by {saved} process(es) but this run has "
            f"{accelerator.num_processes}; resume with the same number of processes"
        )
    fix = f"delete {path} to resume from the checkpoint before it, or start again with --overwrite"
    state = read_json(
        path / f"trainer_state_{accelerator.process_index}.json",
        "checkpoint state",
        fix,
        required={"position": dict, "scheduler": dict, "masker_rng": list, "window": dict},
    )
    rng = _rng_states(path / f"random_states_{accelerator.process_index}.pkl", fix)
    with reading(path, "checkpoint", fix, (*PARSE_ERRORS, SafetensorError)):
        accelerator.load_state(str(path), load_kwargs={"weights_only": True})
    _set_rng_states(rng)  # accelerate skips RNG states it cannot read without a word
    return state


_RNG_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")


def _rng_states(file: Path, fix: str) -> dict:
    """accelerate's RNG states file, read as data only: a file that holds anything else (a
    pickle that would run code when loaded) is refused."""
    import numpy as np
    import torch

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    allowed = [_reconstruct, np.ndarray, np.dtype]
    if hasattr(np, "dtypes"):  # numpy >= 1.25 pickles the dtype's class
        allowed.append(np.dtypes.UInt32DType)
    try:
        with (
            reading(file, "checkpoint RNG states", fix, (*PARSE_ERRORS, EOFError)),
            torch.serialization.safe_globals(allowed),
        ):
            states = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DistillError(
            f"refused {file}: it is not plain random number generator states (loading it could "
            f"run code); {fix}"
        ) from None
    if not isinstance(states, dict) or any(k not in states for k in _RNG_KEYS):
        raise DistillError(f"{file} holds no random number generator states; {fix}")
    return states


def _set_rng_states(states: dict) -> None:
    import numpy as np
    import torch

    random.setstate(states["random_state"])
    np.random.set_state(states["numpy_random_seed"])
    torch.set_rng_state(states["torch_manual_seed"])
    if "torch_cuda_manual_seed" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch_cuda_manual_seed"])


def trim_metrics(metrics: Path, step: int) -> None:
    """Drop lines a killed run wrote after the checkpoint it resumes from, so no step repeats."""
    if not metrics.is_file():
        return
    kept = []
    fix = "delete it, or start again with --overwrite"
    for line in read_text(metrics, "metrics log", fix).splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue  # not a line this tool wrote
        # training lines of the checkpoint's own step were written before it was saved
        if record["step"] < step or (record["step"] == step and "phase" in record):
            kept.append(line)
    write_text_atomic(metrics, "".join(f"{line}\n" for line in kept))


class StopSignals:
    """Turns the first SIGINT/SIGTERM into a request to checkpoint and stop; a second one aborts."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        try:
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread: leave signals alone
            self._old = {}
        return self

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log(f"received {signal.Signals(signum).name}: saving a checkpoint after this step")

    def requested(self, accelerator) -> int | None:
        """The signal any process received (every process must agree before saving)."""
        if accelerator.num_processes == 1:
            return self.signum
        import torch

        local = torch.tensor(self.signum or 0, device=accelerator.device)
        return int(accelerator.reduce(local, reduction="max").item()) or None


COMMANDS = {"task": "finetune-distill", "pretrain": "pretrain-distill"}


def prepare_run_dir(
    recipe, output_dir, stage: str, overwrite: bool, resume: bool, main: bool
) -> tuple[Path, Path | None]:
    """Claim the output folder of a training run (outputs.claim); returns it and the checkpoint
    the run resumes from (or None).

    An unfinished run of the same recipe and inputs resumes from its newest checkpoint; a
    finished one ends at once (AlreadyFinished); --overwrite starts again. Only the main process
    changes anything.
    """
    if resume and overwrite:
        raise DistillError(
            "--resume and --overwrite conflict: --resume continues the run in the folder, "
            "--overwrite starts it again; pass one of them"
        )
    if resume and latest(Path(output_dir).expanduser()) is None:
        _no_checkpoint(output_dir)
    cache = recipe.teacher_cache
    inputs = [
        ("teacher", recipe.teacher),
        ("student", recipe.student.path),
        ("data", recipe.data.name),
        ("teacher cache", cache.path if cache.mode == "read" else None),
    ]
    writes = [*RUN_FILES, FOLDER, *teacher_cache.writes(recipe)]
    if recipe.train.report_to:  # accelerate's trackers log into <output>/<its name>
        writes.append(Path(output_dir).expanduser().name)
    out, continues = outputs.claim(
        output_dir,
        COMMANDS[stage],
        dataclasses.asdict(recipe),
        inputs,
        overwrite=overwrite,
        main=main,
        writes=writes,
        # a checkpoint, or a teacher cache partly written
        resumable=lambda folder: latest(folder) is not None or teacher_cache.partial(folder),
        what="recipe",
    )
    checkpoint = latest(out) if continues else None
    if resume and checkpoint is None:
        _no_checkpoint(out)
    if main:
        if checkpoint is None:
            outputs.check_free_space(out, disk_need(recipe))
        else:
            clean_partial(out)
    return out, checkpoint


def _no_checkpoint(out) -> None:
    folder = Path(out).expanduser() / FOLDER
    raise DistillError(f"--resume: no checkpoint in {folder}; drop --resume to start a new run")


def disk_need(recipe) -> int:
    """Bytes a run may write: the model, a temp copy, and K+1 checkpoints (weights + AdamW)."""
    s = recipe.student
    size = weights_bytes(s.path if s.init == "checkpoint" else recipe.teacher)
    if s.init == "truncate" and s.num_layers and recipe.teacher:
        config = Path(recipe.teacher).expanduser() / "config.json"
        if config.is_file():
            c = read_config(config.parent, "teacher")
            layers = c.get("num_hidden_layers") or c.get("n_layer")
            if layers:
                size = size * min(s.num_layers, layers) // layers
    return size * (2 + 3 * (recipe.train.save_total_limit + 1))

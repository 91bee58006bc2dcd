"""The teacher-signal cache in a training run: decide which phases read it, write it in a first
pass over the training rows (every process its share, resumable), and read it at each step.

A phase reads the cache when the recipe says (``teacher_cache.mode``): ``write`` stores every
phase that runs the teacher, ``auto`` those that read each row more than once, ``read`` trains
on a cache written before. A phase that samples replies (on-policy) always runs its teacher.
When no phase runs the teacher any more, it is freed before step 1.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from distill_cli import tasks
from distill_cli.cache import manifest, records, store
from distill_cli.data import batching
from distill_cli.data.text import TokenMasker
from distill_cli.errors import DistillError
from distill_cli.outputs import check_not_input
from distill_cli.reporting import log
from distill_cli.training import losses
from distill_cli.training.word_topk import teacher_topk

FOLDER = "teacher_cache"  # its default place in the output folder
ROW = "cache_row"  # the batch column naming each example's row


def folder(recipe, out: Path) -> Path:
    c = recipe.teacher_cache
    return Path(c.path).expanduser() if c.path else Path(out) / FOLDER


def writes(recipe) -> list[str]:
    """What the cache adds to the output folder's written names."""
    c = recipe.teacher_cache
    return [FOLDER] if c.mode in ("auto", "write") and not c.path else []


def partial(out: Path) -> bool:
    """Whether an unfinished run left a cache to continue writing."""
    return (Path(out) / FOLDER / manifest.NAME).is_file()


def fill_teacher(recipe) -> None:
    """Reading a cache without --teacher: the teacher it was written from (its name as given)."""
    c = recipe.teacher_cache
    if c.mode == "read" and c.path and not recipe.teacher:
        stored = manifest.read(Path(c.path).expanduser())
        if stored is not None:
            recipe.teacher = stored["teacher"].get("name")


def add_rows(b) -> None:
    """Give each training row its index, which names its record in the cache."""
    if ROW not in b.train_ds.column_names:
        b.train_ds = b.train_ds.add_column(ROW, list(range(len(b.train_ds))))


@dataclass
class PhaseCache:
    """A phase's stored records and how to read them into a step."""

    reader: store.Reader
    layout: str | None
    masks: bool  # its masked inputs are stored (static masks)

    def fetch(self, batch: dict) -> list[dict]:
        return self.reader.get(batch[ROW].tolist())

    def outputs(self, stored: list[dict], t_inputs: dict):
        mask = t_inputs["attention_mask"]
        return records.join(stored, mask, self.layout, mask.device)


def _word_params(terms: dict):
    word = losses.word_terms(terms)
    return next(iter(word.values())) if word else None


def _layout(b) -> str | None:
    """The layout of the task's logits (None: raw text)."""
    return tasks.of(b.task).layout.name if b.task is not None else None


def _mask_share(b, plan) -> float:
    """The share of tokens the phase masks: its inputs differ at every pass unless stored."""
    return 0.0 if b.causal else plan.mlm_probability


def _teacher_needs(terms: dict):
    return losses.needs_of({n: p for n, p in terms.items() if losses.KD_LOSSES[n].needs_teacher})


def _chosen(s, mode: str, batches_per_pass: int) -> list:
    """The plans whose teacher outputs come from the cache."""
    chosen = []
    for plan in s.plans:
        if not plan.needs.teacher:
            continue
        if plan.sampling is not None:
            if mode == "read":
                raise DistillError(
                    f"phase '{plan.name}' samples replies on-policy, which its teacher must "
                    "score as they are drawn; use teacher_cache.mode=auto (that phase then runs "
                    "its teacher) or set its on_policy to 0"
                )
            continue
        passes = plan.steps * s.recipe.train.gradient_accumulation_steps / batches_per_pass
        if mode in ("write", "read") or passes > 1:
            chosen.append(plan)
    return chosen


def _check_large(s, plans) -> None:
    if s.recipe.teacher_cache.hidden_states:
        return
    for plan in plans:
        needs = _teacher_needs(plan.terms)
        if needs.hidden or needs.attentions:
            names = [n for n in plan.terms if losses.KD_LOSSES[n].needs.hidden]
            raise DistillError(
                f"phase '{plan.name}': {', '.join(names)} read the teacher's hidden states, "
                "which take (layers + 1) × hidden size × 4 bytes per token in a cache; set "
                "teacher_cache.hidden_states: true to store them, or teacher_cache.mode: off"
            )


def current_manifest(s, plans) -> dict:
    b, c = s.built, s.recipe.teacher_cache
    parts = {}
    for plan in plans:
        needs = _teacher_needs(plan.terms)
        phase = s.recipe.phases[plan.index]
        parts[manifest.part_name(plan.index)] = manifest.part_entry(
            phase, needs, c.hidden_states, _word_params(plan.terms)
        )
    d = s.recipe.data
    word = {
        "mode": b.teacher_mode,
        "scale": s.word_scale,
        "top_k": c.top_k,
        "word_dtype": c.word_dtype,
    }
    return {
        "version": manifest.VERSION,
        "stage": s.stage,
        "teacher": manifest.teacher_identity(s.recipe.teacher),
        "tokenizer": manifest.tokenizer_identity(b.input_tokenizer or b.tokenizer),
        "data_settings": manifest.data_settings(d),
        "data": manifest.data_identity(b.train_ds, d.name, d.train_split, ROW),
        "word": word,
        "parts": parts,
    }


def prepare(s, teacher_forward: Callable) -> None:
    """Before step 1: the cache for each phase that reads one, written first where it is not
    yet complete; then the teacher is freed when no phase runs it."""
    c = s.recipe.teacher_cache
    if c.mode == "off":
        return
    acc = s.accelerator
    plans = _chosen(s, c.mode, len(s.train_loader))
    if not plans:
        if s.main:
            log(
                "teacher_cache: auto: no phase reads its rows more than once; the teacher runs "
                "at every step"
            )
        return
    _check_large(s, plans)
    where = folder(s.recipe, s.out)
    current = current_manifest(s, plans)
    stored = manifest.read(where)
    if c.mode == "read" and stored is None:
        raise DistillError(
            f"--teacher-cache {where} holds no teacher cache ({manifest.NAME} is missing); "
            "write one with --set teacher_cache.mode=write"
        )
    if stored is not None:
        manifest.check(stored, current, where)
        for name, part in current["parts"].items():
            if c.mode == "read" or name in stored["parts"]:
                manifest.check_part(stored, name, part, where)
    if c.mode != "read":
        if c.path:  # a cache written elsewhere is an output too: never into an input
            r = s.recipe
            inputs = [("teacher", r.teacher), ("student", r.student.path), ("data", r.data.name)]
            check_not_input(where, inputs, "teacher_cache.path")
        if s.main:
            merged = {**current, "parts": {**(stored or {}).get("parts", {}), **current["parts"]}}
            manifest.write(where, merged)
        acc.wait_for_everyone()
        for plan in plans:
            _write_part(s, plan, where, teacher_forward)
    for plan in plans:
        plan.cache = _open(s, plan, where)
    if s.main:
        total = sum(store.total_bytes(where, manifest.part_name(p.index)) for p in plans)
        log(
            f"teacher_cache: {', '.join(p.name for p in plans)} read the teacher's outputs "
            f"from {where} ({total / 1e6:,.1f} MB)"
        )
    if all(p.cache is not None or not p.needs.teacher for p in s.plans):
        _free_teacher(s)
        s.tallies.pop("teacher", None)  # its windows were read in the write pass only


def _open(s, plan, where: Path) -> PhaseCache:
    reader = store.Reader(where, manifest.part_name(plan.index))
    return PhaseCache(reader, _layout(s.built), _mask_share(s.built, plan) > 0)


def _free_teacher(s) -> None:
    s.teacher = None
    s.built.teacher = None
    s.built.teacher_embedder = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if s.main:
        log("teacher_cache: every phase reads the cache; the teacher is freed before step 1")


def _write_part(s, plan, where: Path, teacher_forward: Callable) -> None:
    """Run the teacher over every training row once (each process its share, rows already
    stored skipped) and store its records; the main process then marks the part complete."""
    acc, b, c = s.accelerator, s.built, s.recipe.teacher_cache
    part = manifest.part_name(plan.index)
    if store.is_complete(where, part):
        if s.main:
            log(f"teacher_cache: phase '{plan.name}': complete in {where}, reused")
        return
    if s.main:
        store.clean(where, part)
    acc.wait_for_everyone()
    n = len(b.train_ds)
    done = store.written_rows(where, part)
    mine = [r for r in range(acc.process_index, n, acc.num_processes) if r not in done]
    if done and s.main:
        log(f"teacher_cache: phase '{plan.name}': {len(done):,} rows already stored, resuming")
    needs = _teacher_needs(plan.terms)
    word = _word_params(plan.terms)
    layout, mask_p, masker = _layout(b), _mask_share(b, plan), None
    if mask_p > 0:  # static masks: drawn once here, stored, read at every pass
        seed = s.recipe.train.seed + 1000 * (plan.index + 1) + acc.process_index
        masker = TokenMasker(b.input_tokenizer or b.tokenizer, seed=seed)
    writer = store.ShardWriter(where, part, acc.process_index)
    batch_size = s.recipe.train.batch_size
    started, stored_bytes, tokens = time.perf_counter(), 0, 0
    with torch.no_grad():
        for start in range(0, len(mine), batch_size):
            rows = mine[start : start + batch_size]
            batch = b.collate([b.train_ds[r] for r in rows])
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            if masker is not None:
                batch["input_ids"], _ = masker(batch["input_ids"], batch["attention_mask"], mask_p)
            _, t_inputs = batching.split_inputs(batch)
            out = teacher_forward(s, batch, needs)
            words, vocab = None, 0
            if needs.word:
                selected = batching.selected_positions(batch)
                topk = teacher_topk(
                    out.word_features, out.word_weight, out.word_bias, mask=selected,
                    k=c.top_k, temperatures=(word.temperature,), vocab_index=s.vocab_index,
                    scale=s.word_scale, standardize=bool(getattr(word, "standardize", False)),
                )  # fmt: skip
                words = (topk, selected)
                tokens += int(selected.sum())
                vocab = len(s.vocab_index) if s.vocab_index is not None else len(out.word_weight)
            if not c.hidden_states:
                out.hidden, out.attentions = (), ()
            kept = records.split(
                out,
                t_inputs["attention_mask"],
                layout,
                words,
                batch["input_ids"] if masker is not None else None,
                getattr(torch, c.word_dtype),
                vocab,
            )
            for row, record in zip(rows, kept, strict=True):
                writer.add(row, record)
                stored_bytes += store.record_bytes(record)
            if start == 0:
                _check_size(s, plan, where, stored_bytes / len(rows), len(mine), n)
            done_here = start + len(rows)
            late = time.perf_counter() - started > 30
            if s.main and late and done_here % (10 * batch_size) == 0:
                log(f"teacher_cache: phase '{plan.name}': {done_here:,}/{len(mine):,} rows stored")
    writer.flush()
    acc.wait_for_everyone()
    if s.main:
        store.mark_complete(where, part, n)
        per_token = f", {stored_bytes / tokens:,.0f} B per word-KD token" if tokens else ""
        log(
            f"teacher_cache: phase '{plan.name}': {n:,} rows stored in "
            f"{time.perf_counter() - started:.1f} s ({stored_bytes / max(len(mine), 1):,.0f} B "
            f"per row{per_token})"
        )
    acc.wait_for_everyone()


def _check_size(s, plan, where: Path, per_row: float, left: int, n: int) -> None:
    """Log the size the phase's records will take, and refuse when the disk lacks room."""
    need = int(per_row * left * 1.05) + 2**20
    if s.main:
        total = per_row * n
        large = " (hidden states: large)" if s.recipe.teacher_cache.hidden_states else ""
        log(
            f"teacher_cache: phase '{plan.name}': about {per_row:,.0f} B per row × {n:,} rows = "
            f"{total / 1e6:,.1f} MB{large} in {where}"
        )
    store.check_room(where, need, f"the teacher cache of phase '{plan.name}'")

"""The one training loop every training command runs: setup → fit → finish over one State.

``setup`` prepares the output folder and builds models, data, optimizer and phase plans (resuming
from a checkpoint when there is one); ``fit`` trains every phase; ``finish`` evaluates and saves.
It reads like accelerate's nlp_example.py: Accelerate handles devices, mixed precision,
gradient accumulation and processes started by ``accelerate launch``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch.utils.data import DataLoader
from transformers import get_scheduler

from distill_cli import tasks
from distill_cli.cache import records
from distill_cli.data import batching, windows
from distill_cli.data import chat as chat_data
from distill_cli.data.batching import EpochBatchSampler
from distill_cli.data.text import TokenMasker
from distill_cli.errors import Interrupted, NonFiniteLoss, WriteFailed
from distill_cli.evaluation import scoring
from distill_cli.evaluation.metrics import PRIMARY
from distill_cli.models import forward as heads
from distill_cli.models.embedder import save_embedder, with_model
from distill_cli.models.forward import StudentModule
from distill_cli.outputs import (
    mark_finished,
    save_model_atomic,
    write_json_atomic,
    write_text_atomic,
)
from distill_cli.recipe import Recipe, TrainConfig, to_yaml, validate
from distill_cli.reporting import MetricsWriter, TrainProgress, log
from distill_cli.training import (
    checkpoints,
    losses,
    on_policy,
    stages,
    teacher_cache,
    word_checks,
)
from distill_cli.training import plot as training_plot
from distill_cli.training.allocator import keep_freed_memory

TEACHER_RECORDS = "teacher_records"  # a batch's stored teacher records (a cached phase)


@dataclass
class PhasePlan:
    name: str
    terms: dict  # term name → its parameters
    steps: int
    mlm_probability: float = 0.0
    needs: heads.Needs = field(default_factory=heads.Needs)  # what its loss terms read
    sampling: on_policy.Sampling | None = None  # its on-policy batches (chat)
    index: int = 0  # its place in recipe.phases
    cache: teacher_cache.PhaseCache | None = None  # its teacher's stored outputs


def make_accelerator(cfg: TrainConfig, out: Path) -> Accelerator:
    precision = cfg.mixed_precision
    if precision == "fp16" and not torch.cuda.is_available():
        if _is_main_rank():
            log("warning: fp16 needs CUDA; training in fp32 on this machine")
        precision = "no"
    if precision == "bf16" and not torch.cuda.is_available() and not cpu_has_bf16():
        if _is_main_rank():
            log(
                "warning: this CPU has no native bf16 (avx512_bf16 / amx_bf16), so bf16 autocast "
                "runs several times slower than fp32; set train.mixed_precision=no"
            )
    # Several processes and no CUDA (torchrun, or `accelerate launch --multi_gpu` on a CPU
    # machine): accelerate only picks its multi-CPU (gloo) backend when told to use the CPU.
    distributed_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    # Some parameters get no gradient in some phases (a classifier head during word-prediction
    # phases, BERT's pooler in pre-training), which DDP must be told about.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(
        kwargs_handlers=[ddp],
        cpu=distributed_cpu,
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=cfg.report_to or None,
        project_dir=str(out),
    )


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bf16 natively (Linux's CPU flags; True where they cannot be read,
    so that no warning is given on a guess)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


def plan_phases(recipe: Recipe, steps_per_epoch: int) -> list[PhasePlan]:
    """Each phase's length in optimizer steps; train.max_steps caps the total."""
    plans, left = [], recipe.train.max_steps
    only_cache = left == 0  # teacher_cache.mode=write with --max-steps 0: phases of no steps
    for index, phase in enumerate(recipe.phases):
        epochs = phase.epochs if phase.epochs is not None else recipe.train.epochs
        steps = phase.max_steps or max(1, math.ceil(epochs * steps_per_epoch))
        if left is not None:
            steps = min(steps, left)
            left -= steps
        if steps > 0 or only_cache:
            needs = losses.needs_of(phase.terms)
            plans.append(
                PhasePlan(
                    phase.name,
                    phase.terms,
                    steps,
                    phase.mlm_probability,
                    needs,
                    on_policy.of_phase(phase),
                    index,
                )
            )
    return plans


def make_train_loader(b, cfg: TrainConfig) -> tuple[DataLoader, EpochBatchSampler]:
    """Batches whose order depends only on (seed, epoch): length buckets when the stage made
    them, else shuffled indices. Returns the loader and its sampler (set its epoch per pass)."""
    sampler = EpochBatchSampler(len(b.train_ds), cfg.batch_size, cfg.seed, b.batch_sampler)
    # its own generator, so making an iterator never draws from the global (dropout) RNG
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        b.train_ds, batch_sampler=sampler, collate_fn=b.collate, generator=generator
    )
    return loader, sampler


def optimizer_groups(model, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation weights."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def evaluate_split(
    model, loader, accelerator, scorer: tasks.Scoring, window=None
) -> dict[str, float]:
    """Task metrics of a model over a prepared loader, gathered across processes.

    The loader holds the split tokenized by the student's own tokenizer, as a user runs it.
    """
    model.eval()
    gather = lambda records: accelerator.gather_for_metrics(records, use_gather_object=True)  # noqa: E731
    metrics = scoring.score(model, loader, scorer, gather, window)
    model.train()
    return metrics


@dataclass
class Position:
    """Where a run is: what a checkpoint needs to continue exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # passes over the data started (a new phase starts a new pass)
    batch: int = 0  # batches of the current pass already trained on
    batches: int = 0  # batches trained on in all passes (the logged epoch is batches / pass)
    samples: int = 0
    runtime_s: float = 0.0
    bad_steps: int = 0
    bad_step: bool = False  # the step in progress saw a non-finite loss


@dataclass
class State:
    """What setup builds, fit advances and finish saves."""

    recipe: Recipe
    out: Path
    stage: str
    accelerator: Accelerator
    built: stages.Built
    student: torch.nn.Module  # the prepared StudentModule: the student and its terms' extras
    teacher: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: DataLoader
    sampler: EpochBatchSampler
    eval_loader: DataLoader | None
    plans: list[PhasePlan]
    masker: TokenMasker
    window: _Window
    vocab_index: torch.Tensor | None = None
    pos: Position = field(default_factory=Position)
    resume_from: Path | None = None
    writer: MetricsWriter | None = None
    progress: TrainProgress | None = None
    started: float = 0.0  # perf_counter() at step 0, as if the run had never stopped
    bad: dict[str, float] = field(default_factory=dict)  # values of this step's non-finite loss
    word_scale: float = 1.0  # multiplies both models' word logits (recipe.word_logit_scale)
    word_figures: dict = field(default_factory=dict)  # the teacher's, by phase and word term
    teacher_top1: dict = field(default_factory=dict)  # its top-1 ids on the probe, by phase
    stop_ids: list[int] = field(default_factory=list)  # end sampled replies (on-policy batches)
    # what reading long inputs through windows cost, per model that does (issue 22)
    tallies: dict[str, windows.Tally] = field(default_factory=dict)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.plans)


def run(
    recipe: Recipe,
    output_dir: str | Path,
    stage: str = "task",
    overwrite: bool = False,
    trust_remote_code: bool = False,
    resume: bool = False,
) -> dict:
    """Train a student as the recipe says; returns the run summary written to train_results.json.

    ``stage`` is ``task`` (finetune-distill) or ``pretrain`` (pretrain-distill). A folder with
    checkpoints and no finished model resumes from its newest checkpoint.
    """
    state = setup(recipe, output_dir, stage, overwrite, trust_remote_code, resume)
    fit(state)
    return finish(state)


def setup(
    recipe: Recipe,
    output_dir: str | Path,
    stage: str = "task",
    overwrite: bool = False,
    trust_remote_code: bool = False,
    resume: bool = False,
) -> State:
    """Everything before step 1: the output folder, models, data, optimizer, schedule, phases,
    and the checkpoint a run resumes from."""
    teacher_cache.fill_teacher(recipe)
    validate(recipe)
    keep_freed_memory()
    out, resume_from = checkpoints.prepare_run_dir(
        recipe, output_dir, stage, overwrite, resume, _is_main_rank()
    )
    cfg = recipe.train

    accelerator = make_accelerator(cfg, out)
    main = accelerator.is_main_process
    set_seed(cfg.seed)
    b, extras = build(recipe, stage, main, trust_remote_code)
    on_policy.check(recipe, b)
    if recipe.teacher_cache.mode != "off":
        teacher_cache.add_rows(b)
    student = StudentModule(b.student, extras)
    train_loader, sampler = make_train_loader(b, cfg)
    eval_loader = None
    if b.eval_ds is not None:
        eval_loader = DataLoader(
            b.eval_ds.loader_ds, batch_size=cfg.eval_batch_size, collate_fn=b.collate
        )

    # fused AdamW: one kernel over all parameters (CPU and CUDA have it)
    groups = optimizer_groups(student, cfg.weight_decay)
    fused = accelerator.device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=fused)
    student, optimizer, train_loader = accelerator.prepare(student, optimizer, train_loader)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
    if b.teacher is not None:
        b.teacher.to(accelerator.device).eval()
        b.teacher.requires_grad_(False)
    if b.teacher_embedder is not None:
        b.teacher_embedder.to(accelerator.device).eval().requires_grad_(False)
    if b.id_remap is not None:
        b.id_remap = b.id_remap.to(accelerator.device)

    plans = plan_phases(recipe, steps_per_epoch(len(train_loader), cfg))
    total_steps = sum(p.steps for p in plans)
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)
    # Stepped once per optimizer step by hand, so its length is exact in every process.
    scheduler = get_scheduler(
        cfg.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps
    )
    seed = cfg.seed + accelerator.process_index
    state = State(
        recipe=recipe,
        out=out,
        stage=stage,
        accelerator=accelerator,
        built=b,
        student=student,
        teacher=b.teacher,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=train_loader,
        sampler=sampler,
        eval_loader=eval_loader,
        plans=plans,
        masker=TokenMasker(b.input_tokenizer or b.tokenizer, seed=seed),
        window=_Window(accelerator.device),
        vocab_index=b.vocab_index.to(accelerator.device) if b.vocab_index is not None else None,
        resume_from=resume_from,
        writer=MetricsWriter(out / "metrics.jsonl") if main else None,
    )
    for role in ("teacher", "student"):
        if getattr(b, f"{role}_window") is not None:
            state.tallies[role] = windows.Tally()
    if any(p.sampling for p in plans):
        template = chat_data.chat_template(b.tokenizer, recipe.data.chat_template)
        state.stop_ids = on_policy.stop_ids(b.student, b.tokenizer, template)
    word_checks.check_teacher(state)  # fits word_logit_scale: the resolved recipe holds it
    teacher_cache.prepare(state, teacher_forward)  # may write it, and free the teacher
    if main and resume_from is None:
        write_text_atomic(out / "resolved_recipe.yaml", to_yaml(recipe))
    if resume_from is not None:
        _load_checkpoint(state, resume_from)
    if cfg.report_to:
        accelerator.init_trackers(out.name, config=_flat(dataclasses.asdict(recipe)))
    return state


def build(
    recipe: Recipe, stage: str, main: bool, trust_remote_code: bool
) -> tuple[stages.Built, torch.nn.ModuleDict]:
    """The stage's models and data, checked against the loss terms; and the terms' extras."""
    make = stages.build_task if stage == "task" else stages.build_pretrain
    b = make(recipe, main, trust_remote_code)
    names = stages.term_names(recipe)
    teacher_config = b.teacher.config if b.teacher is not None else None
    losses.check_models([p.terms for p in recipe.phases], teacher_config, b.student.config)
    if any(losses.KD_LOSSES[n].eager_attention for n in names):
        # fused attention kernels return no attention maps
        for model in (b.student, b.teacher):
            if model is not None:
                model.set_attn_implementation("eager")
    extras = losses.make_extras(names, teacher_config, b.student.config)
    if b.student_head is not None:  # trained (its Dense) and saved with the student
        extras["embedding"] = b.student_head
    return b, extras


def steps_per_epoch(batches: int, cfg: TrainConfig) -> int:
    """Optimizer steps in one pass over ``batches`` batches. Accelerate syncs gradients at the end
    of the data too, so a last partial accumulation window is a step of its own."""
    return max(1, math.ceil(batches / cfg.gradient_accumulation_steps))


def fit(s: State) -> None:
    """Train every phase from the state's position, with checkpoints as train.save_steps says,
    at each phase end and when a signal asks to stop."""
    pos, cfg = s.pos, s.recipe.train
    _log_start(s)
    s.progress = TrainProgress(s.total_steps, enabled=s.main)
    s.started = time.perf_counter() - pos.runtime_s
    s.student.train()
    phase_end = 0
    with checkpoints.StopSignals() as signals:
        for plan in s.plans:
            phase_end += plan.steps
            while pos.step < phase_end:
                for batch in _rest_of_pass(s):
                    pos.batch += 1
                    pos.batches += 1
                    sampling = plan.sampling
                    if sampling and on_policy.chosen(cfg.seed, pos.batches, sampling.share):
                        batch, lengths = on_policy.on_policy_batch(s, batch, sampling)
                        s.window.sampled(lengths)
                    loss, parts, finite = train_step(s, batch, plan)
                    if finite:
                        s.window.add(loss, parts, batch["attention_mask"])
                    pos.samples += len(batch["input_ids"])
                    if s.accelerator.sync_gradients:
                        _after_step(s, plan, phase_end, signals)
                        if pos.step >= phase_end:
                            break
                else:
                    pos.epoch, pos.batch = pos.epoch + 1, 0
    s.progress.close()


def _rest_of_pass(s: State):
    """The batches of the current pass not trained on yet (all of them unless resumed)."""
    s.sampler.set_epoch(s.pos.epoch)
    s.train_loader.set_epoch(s.pos.epoch)
    if s.pos.batch:  # resumed mid-pass: the batches already trained on are skipped
        return s.accelerator.skip_first_batches(s.train_loader, s.pos.batch)
    return s.train_loader


def _after_step(s: State, plan: PhasePlan, phase_end: int, signals) -> None:
    """Schedule, count, log and checkpoint after an optimizer step; stop on a signal."""
    cfg, pos = s.recipe.train, s.pos
    s.scheduler.step()
    pos.step += 1
    if pos.bad_step:
        _skip_bad_step(s)
    if pos.step % cfg.logging_steps == 0 or pos.step == phase_end:
        lr = s.scheduler.get_last_lr()[0]
        record = s.window.flush(s.accelerator, pos.step, plan.name, lr, plan.sampling is not None)
        record["epoch"] = round(pos.batches / len(s.train_loader), 4)
        record.update(_window_figures(s))
        if s.main:
            s.writer.write(record)
            s.progress.update(pos.step, record)
        if cfg.report_to:
            s.accelerator.log(record, step=pos.step)
    else:
        s.progress.update(pos.step)
    if pos.step >= phase_end:  # the next phase starts a new pass over the data
        pos.epoch, pos.batch = pos.epoch + 1, 0
    signum = signals.requested(s.accelerator)
    save_due = cfg.save_steps and pos.step % cfg.save_steps == 0
    if pos.step >= phase_end or save_due or signum:
        pos.runtime_s = time.perf_counter() - s.started
        path = _save_checkpoint(s)
        if signum:
            s.progress.close()
            raise Interrupted(
                signum,
                f"{signal.Signals(signum).name} at step {pos.step}: checkpoint "
                f"saved in {path}; run the same command again to resume",
            )


def finish(s: State) -> dict:
    """Evaluate (task stage), draw training.png and save the model; returns the run summary."""
    accelerator, pos, recipe, out, main = s.accelerator, s.pos, s.recipe, s.out, s.main
    student, b = s.student, s.built
    runtime = time.perf_counter() - s.started
    log(
        f"process {accelerator.process_index}/{accelerator.num_processes}: "
        f"{pos.step} optimizer steps on {pos.samples} samples"
    )
    summary = {
        "output_dir": str(out),
        "stage": s.stage,
        "steps": pos.step,
        "phases": {p.name: p.steps for p in s.plans},
        "num_processes": accelerator.num_processes,
        "runtime_s": round(runtime, 2),
        "train_samples_per_s": round(pos.samples * accelerator.num_processes / runtime, 2),
        "final_loss": s.window.last_loss,
    }
    if s.resume_from is not None:
        summary["resumed_from"] = str(s.resume_from)
    if s.tallies:
        summary["windows"] = _window_figures(s)
        for role, tally in s.tallies.items():
            share = summary["windows"][f"windows/{role}_time_share"]
            log(
                f"{role} read {tally.describe()}; its windowed forward took {share:.0%} of the time"
            )
    trained = s.total_steps > 0  # 0: a run that only wrote the teacher cache
    if s.word_figures and trained:
        summary["word_signal"] = word_checks.check_student(s)
    if s.eval_loader is not None and trained:
        summary.update(_evaluate(s))
    if main and trained:
        training_plot.write(out / "metrics.jsonl", out / "training.png")
    if not trained:
        return _cache_only(s, summary)

    # save
    accelerator.wait_for_everyone()
    if main:
        try:
            write_json_atomic(out / "train_results.json", summary)
            # a compressed student keeps its vocabulary map (and report) through further training
            for name in ("vocab_map.json", "compression.json"):
                source = Path(recipe.student.path or "") / name
                if recipe.student.path and source.is_file():
                    write_text_atomic(out / name, source.read_text())
            model = accelerator.unwrap_model(student).model
            write = None
            if b.student_head is not None:  # a sentence-transformers folder
                whole = with_model(b.student_head, model)
                write = lambda folder: save_embedder(whole, b.tokenizer, folder)  # noqa: E731
            kind = tasks.of(b.task) if b.task is not None else None
            files = None
            if kind is not None and kind.saved_files is not None:  # cloze.json
                files = kind.saved_files(b.task, b.tokenizer, b.student_mode, s.word_scale)
            save_model_atomic(model, b.tokenizer, out, write, files)
        except OSError as e:
            raise WriteFailed(
                f"could not write the model to {out} ({e.strerror or e}); the last checkpoint "
                f"is {checkpoints.latest(out)}; free space, then run the same command to resume"
            ) from None
        mark_finished(out)
    accelerator.end_training()
    summary["is_main_process"] = main
    return summary


def _cache_only(s: State, summary: dict) -> dict:
    """The end of a run that stored the teacher's outputs and trained nothing: no model."""
    where = teacher_cache.folder(s.recipe, s.out)
    summary["teacher_cache"] = str(where)
    s.accelerator.wait_for_everyone()
    if s.main:
        write_json_atomic(s.out / "train_results.json", summary)
        mark_finished(s.out)
        log(f"teacher cache written to {where}; no student trained (train.max_steps=0)")
    s.accelerator.end_training()
    summary["is_main_process"] = s.main
    return summary


def _evaluate(s: State) -> dict:
    """Task metrics on the evaluation split, logged; the summary's eval fields."""
    task, step = s.built.task, s.pos.step
    model = s.accelerator.unwrap_model(s.student).model
    d = s.recipe.data
    scorer = scoring.scorer(task, task.splits[d.eval_split], s.built.eval_ds, d)
    scorer.word = (s.built.student_mode, s.word_scale)
    metrics = evaluate_split(model, s.eval_loader, s.accelerator, scorer, s.built.student_window)
    if s.main:
        s.writer.write({"step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
    if s.recipe.train.report_to:
        s.accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
    return {
        "eval_split": s.recipe.data.eval_split,
        "eval": metrics,
        "primary_metric": PRIMARY[task.metric],
    }


def _window_figures(s: State) -> dict:
    """Per windowed model, since the run (re)started: windows per input, tokens read over the
    inputs' tokens, and its windowed forward's share of the training time (CPU clock: on a GPU
    an approximate share, as kernels run asynchronously)."""
    elapsed = max(time.perf_counter() - s.started, 1e-9)
    record = {}
    for role, tally in s.tallies.items():
        for key, value in tally.figures().items():
            record[f"windows/{role}_{key}"] = round(value, 4)
        record[f"windows/{role}_time_share"] = round(min(tally.seconds / elapsed, 1.0), 4)
    return record


def _log_start(s: State) -> None:
    if s.main:
        n_params = sum(p.numel() for p in s.built.student.parameters())
        log(
            f"training {n_params:,}-parameter student for {s.total_steps} steps "
            f"({', '.join(f'{p.name}: {p.steps}' for p in s.plans)}) "
            f"on {s.accelerator.num_processes} process(es), device {s.accelerator.device}"
        )
        for p in s.plans:
            if p.sampling:
                sp = p.sampling
                log(
                    f"{p.name}: on-policy: {sp.share:.0%} of batches sample replies from the "
                    f"student (T={sp.temperature:g}, at most {sp.max_new_tokens} new tokens)"
                )


def _save_checkpoint(s: State) -> Path:
    state = {
        "position": dataclasses.asdict(s.pos),
        "scheduler": s.scheduler.state_dict(),
        "masker_rng": s.masker.generator.get_state().tolist(),
        "window": s.window.state(),
    }
    return checkpoints.save(
        s.accelerator, s.out, s.pos.step, state, s.recipe.train.save_total_limit
    )


def _load_checkpoint(s: State, path: Path) -> None:
    saved = checkpoints.load(s.accelerator, path)
    s.pos = Position(**saved["position"])
    s.scheduler.load_state_dict(saved["scheduler"])
    s.masker.generator.set_state(torch.tensor(saved["masker_rng"], dtype=torch.uint8))
    s.window.load(saved["window"])
    if s.main:
        checkpoints.trim_metrics(s.out / "metrics.jsonl", s.pos.step)
        log(f"resuming from {path} (step {s.pos.step} of {s.total_steps})")


def _skip_bad_step(s: State) -> None:
    """Count a step whose loss was not finite; stop the run (exit 3) past the allowance."""
    pos, allowed = s.pos, s.recipe.train.max_bad_steps
    pos.bad_step = False
    pos.bad_steps += 1
    what = f"step {pos.step}: the loss is not finite{_describe(s.bad)}"
    s.bad = {}
    if pos.bad_steps <= allowed:
        if s.main:
            log(f"warning: {what}; step skipped ({pos.bad_steps} of {allowed} allowed)")
        return
    last = checkpoints.latest(s.out)
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
    raise NonFiniteLoss(
        f"{what}; stopped, {kept}; lower train.learning_rate, use fp32 or bf16, or allow "
        "skipping with --set train.max_bad_steps=N"
    )


def _describe(values: dict[str, float]) -> str:
    """The terms that were not finite, then the loss and the other terms:
    ': word_kl=nan (loss=nan; ce=0.6931)', or ' (loss=nan; ce=0.6931)' when every term was."""
    if not values:
        return " in another process"
    loss = values.pop("loss")
    bad = [f"{k}={v:.4g}" for k, v in values.items() if not math.isfinite(v)]
    good = [f"{k}={v:.4g}" for k, v in values.items() if math.isfinite(v)]
    named = f": {', '.join(bad)}" if bad else ""
    return f"{named} (loss={loss:.4g}" + (f"; {', '.join(good)})" if good else ")")


def train_step(s: State, batch: dict, plan: PhasePlan) -> tuple[torch.Tensor, dict, bool]:
    """Mask (encoders, when the phase says so), forward, backward, clip, optimizer step.

    A non-finite loss marks the optimizer step bad: it still runs backward (so processes stay
    in step), but the update is dropped. Returns (loss, parts, finite).
    """
    accelerator = s.accelerator
    mask_p = 0.0 if s.built.causal else plan.mlm_probability
    if plan.cache is not None:  # the teacher's stored outputs (and static masks) for the rows
        batch[TEACHER_RECORDS] = plan.cache.fetch(batch)
        if plan.cache.masks:
            stored = batch[TEACHER_RECORDS]
            batch["input_ids"] = records.masked_inputs(
                stored, batch["input_ids"], batch["attention_mask"]
            )
    elif mask_p > 0:
        batch["input_ids"], _ = s.masker(batch["input_ids"], batch["attention_mask"], mask_p)
    with accelerator.accumulate(s.student):
        loss, parts = compute_loss(s, batch, plan)
        finite = _all_finite(loss, accelerator)
        if not finite and not s.bad and not math.isfinite(loss.item()):  # this process's values
            s.bad = {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}}
        s.pos.bad_step |= not finite
        accelerator.backward(loss)
        if accelerator.sync_gradients and not s.pos.bad_step:
            max_grad_norm = s.recipe.train.max_grad_norm
            if max_grad_norm > 0:
                accelerator.clip_grad_norm_(s.student.parameters(), max_grad_norm)
            s.optimizer.step()
        s.optimizer.zero_grad()
    return loss, parts, finite


def _all_finite(loss, accelerator) -> bool:
    bad = (~torch.isfinite(loss.detach())).float()
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="max")
    return not bool(bad.item())


def compute_loss(s: State, batch: dict, plan: PhasePlan) -> tuple[torch.Tensor, dict]:
    """One forward pass of student and teacher, and the phase's weighted loss and its parts."""
    b, accelerator, needs = s.built, s.accelerator, plan.needs
    s_inputs, t_inputs = batching.split_inputs(batch)
    if b.id_remap is not None:  # a compressed student reads the teacher's tokens, remapped
        s_inputs = {**s_inputs, "input_ids": b.id_remap[s_inputs["input_ids"]]}
    # a cloze's blank: both models' class logits are their word logits there
    s_blank = heads.blank_of(batch, s.word_scale, id_remap=b.id_remap)
    step = losses.Step(
        student=s.student(s_inputs, needs, b.student_mode, s_blank, _reader(s, "student")),
        labels=batch.get("labels"),
        mask=batching.selected_positions(batch),
        vocab_index=s.vocab_index,
        word_scale=s.word_scale,
        task=tasks.of(b.task).layout.name if b.task is not None else losses.Step.task,
    )
    if "teacher_word_starts" in batch:  # a tagger teacher that tokenizes differently
        step.word_starts = (batch["word_starts"], batch["teacher_word_starts"])
    if needs.teacher and TEACHER_RECORDS in batch:
        step.teacher = plan.cache.outputs(batch[TEACHER_RECORDS], t_inputs)
    elif needs.teacher:
        step.teacher = teacher_forward(s, batch, needs)
    with accelerator.autocast():  # the vocabulary matmuls run in bf16/fp16 on GPUs too
        parts = losses.loss_parts(plan.terms, step, accelerator.unwrap_model(s.student).extras)
    return losses.weighted_sum(plan.terms, parts), parts


def teacher_forward(s: State, batch: dict, needs: heads.Needs) -> heads.Outputs:
    """The teacher's outputs for a batch (through its windows when it reads them)."""
    b = s.built
    _, t_inputs = batching.split_inputs(batch)
    blank = heads.blank_of(batch, s.word_scale, batching.TEACHER_PREFIX)
    pool = b.teacher_embedder.pool if b.teacher_embedder is not None else None
    with torch.no_grad(), s.accelerator.autocast():
        return windows.forward(
            s.teacher,
            t_inputs,
            needs,
            b.teacher_mode,
            pool,
            blank,
            spec=b.teacher_window,  # None: the whole input
            tally=s.tallies.get("teacher"),
        )


def _reader(s: State, role: str):
    """The forward that reads ``role``'s model through its windows, or None (a whole input)."""
    spec = getattr(s.built, f"{role}_window")
    if spec is None:
        return None
    return functools.partial(windows.forward, spec=spec, tally=s.tallies.get(role))


class _Window:
    """Losses and token counts since the last log line (kept in checkpoints, so a resumed run
    logs the same averages)."""

    def __init__(self, device):
        self.device = device
        self.last_loss = None
        self.reset()

    def reset(self):
        zero = torch.zeros((), device=self.device)
        self.loss, self.parts, self.n, self.tokens = zero, {}, 0, zero.long()
        self.on_policy, self.replies, self.reply_tokens = 0, 0, 0  # batches, replies, tokens
        self.t0 = time.perf_counter()

    def add(self, loss, parts, attention_mask):
        self.loss = self.loss + loss.detach().float()
        for k, v in parts.items():
            self.parts[k] = self.parts.get(k, 0.0) + v.detach().float()
        self.n += 1
        self.tokens = self.tokens + attention_mask.sum()  # a tensor: no device sync per step

    def sampled(self, lengths: list[int]) -> None:
        """An on-policy batch and its sampled replies' lengths."""
        self.on_policy += 1
        self.replies += len(lengths)
        self.reply_tokens += sum(lengths)

    def state(self) -> dict:
        return {
            "loss": self.loss.item(),
            "parts": {k: v.item() for k, v in self.parts.items()},
            "n": self.n,
            "tokens": int(self.tokens.item()),
            "last_loss": self.last_loss,
            "on_policy": [self.on_policy, self.replies, self.reply_tokens],
        }

    def load(self, state: dict) -> None:
        def as_tensor(value, dtype=torch.float32):
            return torch.tensor(value, dtype=dtype, device=self.device)

        self.loss = as_tensor(state["loss"])
        self.parts = {k: as_tensor(v) for k, v in state["parts"].items()}
        self.n, self.tokens = state["n"], as_tensor(state["tokens"], torch.long)
        self.last_loss = state["last_loss"]
        self.on_policy, self.replies, self.reply_tokens = state.get("on_policy", [0, 0, 0])

    def flush(self, accelerator, step: int, phase: str, lr: float, sampling: bool = False) -> dict:
        names = sorted(self.parts)
        local = torch.stack([self.loss, *[self.parts[k] for k in names]]) / max(self.n, 1)
        mean = accelerator.reduce(local.to(accelerator.device), reduction="mean").tolist()
        tokens = accelerator.reduce(self.tokens.to(accelerator.device), reduction="sum").item()
        record = {"step": step, "phase": phase, "loss": mean[0]}
        record.update({f"loss/{k}": v for k, v in zip(names, mean[1:], strict=True)})
        record["lr"] = lr
        record["tokens_per_s"] = tokens / max(time.perf_counter() - self.t0, 1e-9)
        if sampling:  # every process decides alike: the count is each one's
            counts = torch.tensor([self.replies, self.reply_tokens], device=accelerator.device)
            replies, reply_tokens = accelerator.reduce(counts, reduction="sum").tolist()
            record["on_policy/batches"] = self.on_policy
            record["on_policy/reply_tokens"] = reply_tokens / max(replies, 1)
        self.last_loss = mean[0]
        self.reset()
        return record


def _flat(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flat(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            flat[key] = v
        else:
            flat[key] = str(v)
    return flat


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"

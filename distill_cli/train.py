"""The one training loop every training command runs: setup → build → fit → evaluate → save.

It reads like accelerate's nlp_example.py: Accelerate handles devices, mixed precision,
gradient accumulation and processes started by ``accelerate launch``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch.utils.data import DataLoader
from transformers import get_scheduler

from distill_cli import batching, checkpoints, heads, losses, stages
from distill_cli.allocator import keep_freed_memory
from distill_cli.batching import EpochBatchSampler
from distill_cli.data import TaskData
from distill_cli.errors import DistillError, Interrupted, NonFiniteLoss, WriteFailed
from distill_cli.heads import StudentModule
from distill_cli.metrics import PRIMARY, compute_metrics, predictions_from_logits
from distill_cli.outputs import (
    check_free_space,
    save_model_atomic,
    write_json_atomic,
    write_text_atomic,
)
from distill_cli.recipe import Recipe, TrainConfig, to_yaml, validate
from distill_cli.reporting import MetricsWriter, TrainProgress, log
from distill_cli.text_data import TokenMasker
from distill_cli.user_files import read_yaml


@dataclass
class PhasePlan:
    name: str
    terms: dict
    steps: int
    mlm_probability: float = 0.0
    needs: heads.Needs = field(default_factory=heads.Needs)  # what its loss terms read


def make_accelerator(cfg: TrainConfig, out: Path) -> Accelerator:
    precision = cfg.mixed_precision
    if precision == "fp16" and not torch.cuda.is_available():
        if _is_main_rank():
            log("warning: fp16 needs CUDA; training in fp32 on this machine")
        precision = "no"
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


def plan_phases(recipe: Recipe, steps_per_epoch: int) -> list[PhasePlan]:
    """Each phase's length in optimizer steps; train.max_steps caps the total."""
    plans, left = [], recipe.train.max_steps
    for phase in recipe.phases:
        epochs = phase.epochs if phase.epochs is not None else recipe.train.epochs
        steps = phase.max_steps or max(1, math.ceil(epochs * steps_per_epoch))
        if left is not None:
            steps = min(steps, left)
            left -= steps
        if steps > 0:
            needs = losses.needs_of(phase.terms)
            plans.append(PhasePlan(phase.name, phase.terms, steps, phase.mlm_probability, needs))
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


def evaluate_split(model, loader, accelerator, task: TaskData) -> dict[str, float]:
    """Task metrics of a model over a prepared loader, gathered across processes.

    The loader holds the split tokenized by the student's own tokenizer, as a user runs it.
    """
    model.eval()
    all_logits, all_labels = [], []
    with torch.no_grad():
        for batch in loader:
            inputs, _ = batching.split_inputs(batch)
            logits = model(**inputs).logits.float()
            logits, labels = accelerator.gather_for_metrics((logits, batch["labels"]))
            all_logits.append(logits.cpu())
            all_labels.append(labels.cpu())
    model.train()
    logits = torch.cat(all_logits).numpy()
    preds = predictions_from_logits(logits, task.task_type)
    return compute_metrics(task.metric, preds, torch.cat(all_labels).numpy())


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
    validate(recipe, losses.TERMS_NEED_TEACHER)
    keep_freed_memory()
    out, resume_from = checkpoints.prepare_run_dir(output_dir, overwrite, resume, _is_main_rank())
    if resume_from is not None:
        _check_same_recipe(out, recipe)
    elif _is_main_rank():
        check_free_space(out, checkpoints.disk_need(recipe))
    cfg = recipe.train

    # setup
    accelerator = make_accelerator(cfg, out)
    main = accelerator.is_main_process
    set_seed(cfg.seed)
    if main and resume_from is None:
        write_text_atomic(out / "resolved_recipe.yaml", to_yaml(recipe))

    # build
    build = stages.build_task if stage == "task" else stages.build_pretrain
    b = build(recipe, main, trust_remote_code)
    if "attention_kl" in stages.term_names(recipe):
        # fused attention kernels return no attention maps
        for model in (b.student, b.teacher):
            model.set_attn_implementation("eager")
    projections = _projections(recipe, b)
    student = StudentModule(b.student, projections)
    train_loader, sampler = make_train_loader(b, cfg)
    eval_loader = None
    if b.eval_ds is not None:
        eval_loader = DataLoader(b.eval_ds, batch_size=cfg.eval_batch_size, collate_fn=b.collate)

    # fused AdamW: one kernel over all parameters (CPU and CUDA have it)
    groups = optimizer_groups(student, cfg.weight_decay)
    fused = accelerator.device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=fused)
    student, optimizer, train_loader = accelerator.prepare(student, optimizer, train_loader)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
    teacher = b.teacher
    if teacher is not None:
        teacher.to(accelerator.device).eval()
        teacher.requires_grad_(False)
    vocab_index = b.vocab_index.to(accelerator.device) if b.vocab_index is not None else None
    if b.id_remap is not None:
        b.id_remap = b.id_remap.to(accelerator.device)

    steps_per_epoch = max(1, len(train_loader) // cfg.gradient_accumulation_steps)
    plans = plan_phases(recipe, steps_per_epoch)
    total_steps = sum(p.steps for p in plans)
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)
    # Stepped once per optimizer step by hand, so its length is exact in every process.
    scheduler = get_scheduler(
        cfg.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps
    )
    masker = TokenMasker(
        b.input_tokenizer or b.tokenizer, seed=cfg.seed + accelerator.process_index
    )
    window = _Window(accelerator.device)
    pos = Position()
    if resume_from is not None:
        saved = checkpoints.load(accelerator, resume_from)
        pos = Position(**saved["position"])
        scheduler.load_state_dict(saved["scheduler"])
        masker.generator.set_state(torch.tensor(saved["masker_rng"], dtype=torch.uint8))
        window.load(saved["window"])
        if main:
            checkpoints.trim_metrics(out / "metrics.jsonl", pos.step)
            log(f"resuming from {resume_from} (step {pos.step} of {total_steps})")

    if cfg.report_to:
        accelerator.init_trackers(out.name, config=_flat(dataclasses.asdict(recipe)))
    writer = MetricsWriter(out / "metrics.jsonl") if main else None
    progress = TrainProgress(total_steps, enabled=main)
    if main:
        n_params = sum(p.numel() for p in b.student.parameters())
        log(
            f"training {n_params:,}-parameter student for {total_steps} steps "
            f"({', '.join(f'{p.name}: {p.steps}' for p in plans)}) "
            f"on {accelerator.num_processes} process(es), device {accelerator.device}"
        )

    def save_checkpoint() -> Path:
        state = {
            "position": dataclasses.asdict(pos),
            "scheduler": scheduler.state_dict(),
            "masker_rng": masker.generator.get_state().tolist(),
            "window": window.state(),
        }
        return checkpoints.save(accelerator, out, pos.step, state, cfg.save_total_limit)

    # fit
    started = time.perf_counter() - pos.runtime_s
    student.train()
    phase_end = 0
    with checkpoints.StopSignals() as signals:
        for plan in plans:
            phase_end += plan.steps
            while pos.step < phase_end:
                sampler.set_epoch(pos.epoch)
                train_loader.set_epoch(pos.epoch)
                loader = train_loader
                if pos.batch:  # resumed mid-epoch: the batches already trained on are skipped
                    loader = accelerator.skip_first_batches(train_loader, pos.batch)
                for batch in loader:
                    pos.batch += 1
                    loss, parts, finite = train_step(
                        student, teacher, batch, plan, b, vocab_index, masker, optimizer,
                        accelerator, cfg.max_grad_norm, pos,
                    )  # fmt: skip
                    if finite:
                        window.add(loss, parts, batch["attention_mask"])
                    pos.samples += len(batch["input_ids"])
                    if not accelerator.sync_gradients:
                        continue
                    scheduler.step()
                    pos.step += 1
                    if pos.bad_step:
                        _skip_bad_step(pos, loss, parts, cfg.max_bad_steps, out, main)
                    if pos.step % cfg.logging_steps == 0 or pos.step == phase_end:
                        lr = scheduler.get_last_lr()[0]
                        record = window.flush(accelerator, pos.step, plan.name, lr)
                        record["epoch"] = round(pos.step / steps_per_epoch, 4)
                        if main:
                            writer.write(record)
                            progress.update(pos.step, record)
                        if cfg.report_to:
                            accelerator.log(record, step=pos.step)
                    else:
                        progress.update(pos.step)
                    if pos.step >= phase_end:  # the next phase starts a new pass over the data
                        pos.epoch, pos.batch = pos.epoch + 1, 0
                    signum = signals.requested(accelerator)
                    save_due = cfg.save_steps and pos.step % cfg.save_steps == 0
                    if pos.step >= phase_end or save_due or signum:
                        pos.runtime_s = time.perf_counter() - started
                        path = save_checkpoint()
                        if signum:
                            progress.close()
                            raise Interrupted(
                                signum,
                                f"{signal.Signals(signum).name} at step {pos.step}: checkpoint "
                                f"saved in {path}; run the same command again to resume",
                            )
                    if pos.step >= phase_end:
                        break
                else:
                    pos.epoch, pos.batch = pos.epoch + 1, 0
    progress.close()
    runtime = time.perf_counter() - started
    log(
        f"process {accelerator.process_index}/{accelerator.num_processes}: "
        f"{pos.step} optimizer steps on {pos.samples} samples"
    )

    # evaluate
    summary = {
        "output_dir": str(out),
        "stage": stage,
        "steps": pos.step,
        "phases": {p.name: p.steps for p in plans},
        "num_processes": accelerator.num_processes,
        "runtime_s": round(runtime, 2),
        "train_samples_per_s": round(pos.samples * accelerator.num_processes / runtime, 2),
        "final_loss": window.last_loss,
    }
    if resume_from is not None:
        summary["resumed_from"] = str(resume_from)
    if eval_loader is not None:
        model = accelerator.unwrap_model(student).model
        metrics = evaluate_split(model, eval_loader, accelerator, b.task)
        summary["eval_split"] = recipe.data.eval_split
        summary["eval"] = metrics
        summary["primary_metric"] = PRIMARY[b.task.metric]
        if main:
            writer.write({"step": pos.step, **{f"eval/{k}": v for k, v in metrics.items()}})
        if cfg.report_to:
            accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=pos.step)

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
            save_model_atomic(accelerator.unwrap_model(student).model, b.tokenizer, out)
        except OSError as e:
            raise WriteFailed(
                f"could not write the model to {out} ({e.strerror or e}); the last checkpoint "
                f"is {checkpoints.latest(out)}; free space, then run the same command to resume"
            ) from None
    accelerator.end_training()
    summary["is_main_process"] = main
    return summary


@dataclass
class Position:
    """Where a run is: what a checkpoint needs to continue exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # passes over the data started (a new phase starts a new pass)
    batch: int = 0  # batches of the current pass already trained on
    samples: int = 0
    runtime_s: float = 0.0
    bad_steps: int = 0
    bad_step: bool = False  # the step in progress saw a non-finite loss


def _skip_bad_step(pos: Position, loss, parts, allowed: int, out: Path, main: bool) -> None:
    """Count a step whose loss was not finite; stop the run (exit 3) past the allowance."""
    pos.bad_step = False
    pos.bad_steps += 1
    values = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
    what = f"step {pos.step}: the loss is not finite (loss={loss.item():.4g}; {values})"
    if pos.bad_steps <= allowed:
        if main:
            log(f"warning: {what}; step skipped ({pos.bad_steps} of {allowed} allowed)")
        return
    last = checkpoints.latest(out)
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
    raise NonFiniteLoss(
        f"{what}; stopped, {kept}; lower train.learning_rate, use fp32 or bf16, or allow "
        "skipping with --set train.max_bad_steps=N"
    )


def _check_same_recipe(out: Path, recipe: Recipe) -> None:
    """Resuming continues the same run: the recipe must be the one the folder was started with."""
    saved_file = out / "resolved_recipe.yaml"
    if not saved_file.is_file():
        return
    import yaml

    saved = _flat(read_yaml(saved_file, "the run's recipe", "pass --overwrite to start again"))
    now = _flat(yaml.safe_load(to_yaml(recipe)))
    diff = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    if diff:
        k = diff[0]
        raise DistillError(
            f"{out} holds a run started with a different recipe ({k}: {saved.get(k)!r} then, "
            f"{now.get(k)!r} now); rerun with the same options to resume, or pass --overwrite "
            "to start again"
        )


def train_step(
    student, teacher, batch, plan, b, vocab_index, masker, optimizer, accelerator, max_grad_norm,
    pos,
):  # fmt: skip
    """Mask (encoders, when the phase says so), forward, backward, clip, optimizer step.

    A non-finite loss marks the optimizer step bad: it still runs backward (so processes stay
    in step), but the update is dropped. Returns (loss, parts, finite).
    """
    mask_p = 0.0 if b.causal else plan.mlm_probability
    if mask_p > 0:
        batch["input_ids"], _ = masker(batch["input_ids"], batch["attention_mask"], mask_p)
    with accelerator.accumulate(student):
        loss, parts = compute_loss(
            student, teacher, batch, plan.terms, plan.needs, b, vocab_index, accelerator
        )
        finite = _all_finite(loss, accelerator)
        pos.bad_step |= not finite
        accelerator.backward(loss)
        if accelerator.sync_gradients and not pos.bad_step:
            if max_grad_norm > 0:
                accelerator.clip_grad_norm_(student.parameters(), max_grad_norm)
            optimizer.step()
        optimizer.zero_grad()
    return loss, parts, finite


def _all_finite(loss, accelerator) -> bool:
    bad = (~torch.isfinite(loss.detach())).float()
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="max")
    return not bool(bad.item())


def compute_loss(student, teacher, batch, terms, needs, b, vocab_index, accelerator):
    """One forward pass of student and teacher, and the phase's weighted loss and its parts."""
    s_inputs, t_inputs = batching.split_inputs(batch)
    if b.id_remap is not None:  # a compressed student reads the teacher's tokens, remapped
        s_inputs = {**s_inputs, "input_ids": b.id_remap[s_inputs["input_ids"]]}
    step = losses.Step(
        student=student(s_inputs, needs, b.student_mode),
        labels=batch.get("labels"),
        mask=s_inputs["attention_mask"],
        vocab_index=vocab_index,
        projections=accelerator.unwrap_model(student).projections,
    )
    if needs.teacher:
        with torch.no_grad(), accelerator.autocast():
            step.teacher = heads.forward(teacher, t_inputs, needs, b.teacher_mode)
    with accelerator.autocast():  # the vocabulary matmuls run in bf16/fp16 on GPUs too
        parts = losses.loss_parts(terms, step)
    return losses.weighted_sum(terms, parts), parts


def _projections(recipe: Recipe, b) -> torch.nn.ModuleList:
    """Learned maps from student to teacher width for hidden_mse, when the widths differ."""
    if "hidden_mse" not in stages.term_names(recipe) or b.teacher is None:
        return torch.nn.ModuleList()
    d_s, d_t = b.student.config.hidden_size, b.teacher.config.hidden_size
    if d_s == d_t:
        return torch.nn.ModuleList()
    n = b.student.config.num_hidden_layers
    return torch.nn.ModuleList(torch.nn.Linear(d_s, d_t) for _ in range(n))


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
        self.t0 = time.perf_counter()

    def add(self, loss, parts, attention_mask):
        self.loss = self.loss + loss.detach().float()
        for k, v in parts.items():
            self.parts[k] = self.parts.get(k, 0.0) + v.detach().float()
        self.n += 1
        self.tokens = self.tokens + attention_mask.sum()  # a tensor: no device sync per step

    def state(self) -> dict:
        return {
            "loss": self.loss.item(),
            "parts": {k: v.item() for k, v in self.parts.items()},
            "n": self.n,
            "tokens": int(self.tokens.item()),
            "last_loss": self.last_loss,
        }

    def load(self, state: dict) -> None:
        def as_tensor(value, dtype=torch.float32):
            return torch.tensor(value, dtype=dtype, device=self.device)

        self.loss = as_tensor(state["loss"])
        self.parts = {k: as_tensor(v) for k, v in state["parts"].items()}
        self.n, self.tokens = state["n"], as_tensor(state["tokens"], torch.long)
        self.last_loss = state["last_loss"]

    def flush(self, accelerator, step: int, phase: str, lr: float) -> dict:
        names = sorted(self.parts)
        local = torch.stack([self.loss, *[self.parts[k] for k in names]]) / max(self.n, 1)
        mean = accelerator.reduce(local.to(accelerator.device), reduction="mean").tolist()
        tokens = accelerator.reduce(self.tokens.to(accelerator.device), reduction="sum").item()
        record = {"step": step, "phase": phase, "loss": mean[0]}
        record.update({f"loss/{k}": v for k, v in zip(names, mean[1:], strict=True)})
        record["lr"] = lr
        record["tokens_per_s"] = tokens / max(time.perf_counter() - self.t0, 1e-9)
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

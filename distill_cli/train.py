"""The one training loop every training command runs: setup → build → fit → evaluate → save.

It reads like accelerate's nlp_example.py: Accelerate handles devices, mixed precision,
gradient accumulation and processes started by ``accelerate launch``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import get_scheduler

from distill_cli import batching, losses
from distill_cli.data import TaskData, load_task_data
from distill_cli.errors import DistillError
from distill_cli.metrics import PRIMARY, compute_metrics, predictions_from_logits
from distill_cli.models import build_student, load_teacher, same_vocab
from distill_cli.outputs import prepare_output_dir, save_model_atomic, write_json_atomic
from distill_cli.recipe import Recipe, TrainConfig, to_yaml, validate
from distill_cli.reporting import MetricsWriter, TrainProgress, log


@dataclass
class PhasePlan:
    name: str
    terms: dict
    steps: int


def make_accelerator(cfg: TrainConfig, out: Path) -> Accelerator:
    precision = cfg.mixed_precision
    if precision == "fp16" and not torch.cuda.is_available():
        if _is_main_rank():
            log("warning: fp16 needs CUDA; training in fp32 on this machine")
        precision = "no"
    # Several processes and no CUDA (torchrun, or `accelerate launch --multi_gpu` on a CPU
    # machine): accelerate only picks its multi-CPU (gloo) backend when told to use the CPU.
    distributed_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(
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
            plans.append(PhasePlan(phase.name, phase.terms, steps))
    return plans


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
    """Task metrics of a model over a prepared loader, gathered across processes."""
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


def _prepare_split(ds, task, student_tok, teacher_tok, max_length, name):
    ds, truncated = batching.tokenize(ds, student_tok, task.text_columns, max_length)
    if teacher_tok is not None:
        ds, _ = batching.tokenize(
            ds, teacher_tok, task.text_columns, max_length, batching.TEACHER_PREFIX
        )
    if truncated:
        log(f"{name}: {truncated} texts longer than data.max_length={max_length} were truncated")
    return ds.select_columns(batching.model_columns(ds))


def run(
    recipe: Recipe,
    output_dir: str | Path,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> dict:
    """Train a student as the recipe says; returns the run summary written to train_results.json."""
    validate(recipe, losses.TERMS_NEED_TEACHER)
    out = prepare_output_dir(output_dir, overwrite, main=_is_main_rank())
    cfg = recipe.train

    # setup
    accelerator = make_accelerator(cfg, out)
    main = accelerator.is_main_process
    set_seed(cfg.seed)
    if main:
        (out / "resolved_recipe.yaml").write_text(to_yaml(recipe))
    train_split, eval_split = recipe.data.train_split, recipe.data.eval_split
    task = load_task_data(recipe.data, splits=[train_split], optional=(eval_split,))
    has_eval = eval_split != train_split and eval_split in task.splits
    if main and not has_eval:
        log(f"no '{eval_split}' split in the data: skipping evaluation after training")
    term_names = {n for p in recipe.phases for n in p.terms}
    if task.task_type == "regression" and "soft_label_kl" in term_names:
        raise DistillError("soft_label_kl needs class logits; use logit_mse for regression tasks")

    # build
    needs_teacher = recipe.student.init != "checkpoint" or any(
        losses.KD_LOSSES[n].needs_teacher for n in term_names
    )
    teacher = teacher_tok = None
    if needs_teacher:
        teacher, teacher_tok = load_teacher(
            recipe.teacher, task.labels, task.task_type, trust_remote_code
        )
    student, student_tok = build_student(
        recipe.student, teacher, teacher_tok, task.labels, task.task_type, trust_remote_code, log
    )
    separate_teacher_tok = (
        teacher_tok if teacher_tok and not same_vocab(student_tok, teacher_tok) else None
    )
    train_ds = _prepare_split(
        task.splits[train_split],
        task,
        student_tok,
        separate_teacher_tok,
        recipe.data.max_length,
        "train",
    )
    collate = batching.PadCollator(
        student_tok.pad_token_id or 0,
        separate_teacher_tok.pad_token_id if separate_teacher_tok else None,
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(
        train_ds, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate, generator=generator
    )
    eval_loader = None
    if has_eval:
        eval_ds = _prepare_split(
            task.splits[eval_split],
            task,
            student_tok,
            None,
            recipe.data.max_length,
            recipe.data.eval_split,
        )
        eval_loader = DataLoader(eval_ds, batch_size=cfg.eval_batch_size, collate_fn=collate)

    # fused AdamW: one kernel over all parameters, on CPU and CUDA alike
    groups = optimizer_groups(student, cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=True)
    student, optimizer, train_loader = accelerator.prepare(student, optimizer, train_loader)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
    if teacher is not None:
        teacher.to(accelerator.device)
        teacher.requires_grad_(False)

    steps_per_epoch = max(1, len(train_loader) // cfg.gradient_accumulation_steps)
    plans = plan_phases(recipe, steps_per_epoch)
    total_steps = sum(p.steps for p in plans)
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)
    # Stepped once per optimizer step by hand, so its length is exact in every process.
    scheduler = get_scheduler(
        cfg.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps
    )

    if cfg.report_to:
        accelerator.init_trackers(out.name, config=_flat(dataclasses.asdict(recipe)))
    writer = MetricsWriter(out / "metrics.jsonl") if main else None
    progress = TrainProgress(total_steps, enabled=main)
    if main:
        log(
            f"training {sum(p.numel() for p in student.parameters()):,}-parameter student for "
            f"{total_steps} steps ({', '.join(f'{p.name}: {p.steps}' for p in plans)}) "
            f"on {accelerator.num_processes} process(es), device {accelerator.device}"
        )

    # fit
    step, samples, started = 0, 0, time.perf_counter()
    window = _Window()
    student.train()
    for plan in plans:
        phase_end = step + plan.steps
        while step < phase_end:
            for batch in train_loader:
                s_inputs, t_inputs = batching.split_inputs(batch)
                with accelerator.accumulate(student):
                    outputs = losses.StepOutputs(
                        student_logits=student(**s_inputs).logits, labels=batch.get("labels")
                    )
                    if teacher is not None:
                        with torch.no_grad(), accelerator.autocast():
                            outputs.teacher_logits = teacher(**t_inputs).logits
                    parts = losses.loss_parts(plan.terms, outputs)
                    loss = losses.weighted_sum(plan.terms, parts)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(student.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad()
                window.add(loss, parts, s_inputs["attention_mask"])
                samples += len(batch["input_ids"])
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                step += 1
                if step % cfg.logging_steps == 0 or step == phase_end:
                    record = window.flush(accelerator, step, plan.name, scheduler.get_last_lr()[0])
                    record["epoch"] = round(step / steps_per_epoch, 4)
                    if main:
                        writer.write(record)
                        progress.update(step, record)
                    if cfg.report_to:
                        accelerator.log(record, step=step)
                else:
                    progress.update(step)
                if step >= phase_end:
                    break
    progress.close()
    runtime = time.perf_counter() - started
    log(
        f"process {accelerator.process_index}/{accelerator.num_processes}: "
        f"{step} optimizer steps on {samples} samples"
    )

    # evaluate
    summary = {
        "output_dir": str(out),
        "steps": step,
        "phases": {p.name: p.steps for p in plans},
        "num_processes": accelerator.num_processes,
        "runtime_s": round(runtime, 2),
        "train_samples_per_s": round(samples * accelerator.num_processes / runtime, 2),
        "final_loss": window.last_loss,
    }
    if eval_loader is not None:
        metrics = evaluate_split(student, eval_loader, accelerator, task)
        summary["eval_split"] = eval_split
        summary["eval"] = metrics
        summary["primary_metric"] = PRIMARY[task.metric]
        if main:
            writer.write({"step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
        if cfg.report_to:
            accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)

    # save
    accelerator.wait_for_everyone()
    if main:
        write_json_atomic(out / "train_results.json", summary)
        save_model_atomic(accelerator.unwrap_model(student), student_tok, out)
    accelerator.end_training()
    summary["is_main_process"] = main
    return summary


class _Window:
    """Losses and token counts since the last log line."""

    def __init__(self):
        self.reset()
        self.last_loss = None

    def reset(self):
        self.loss, self.parts, self.n, self.tokens = 0.0, {}, 0, 0
        self.t0 = time.perf_counter()

    def add(self, loss, parts, attention_mask):
        self.loss += loss.detach().float()
        for k, v in parts.items():
            self.parts[k] = self.parts.get(k, 0.0) + v.detach().float()
        self.n += 1
        self.tokens += int(attention_mask.sum())

    def flush(self, accelerator, step: int, phase: str, lr: float) -> dict:
        names = sorted(self.parts)
        local = torch.stack([self.loss, *[self.parts[k] for k in names]]) / max(self.n, 1)
        mean = accelerator.reduce(local.to(accelerator.device), reduction="mean").tolist()
        tokens = accelerator.reduce(
            torch.tensor(self.tokens, device=accelerator.device), reduction="sum"
        ).item()
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

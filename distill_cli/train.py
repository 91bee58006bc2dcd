"""The one training loop every training command runs: setup → build → fit → evaluate → save.

It reads like accelerate's nlp_example.py: Accelerate handles devices, mixed precision,
gradient accumulation and processes started by ``accelerate launch``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch.utils.data import DataLoader
from transformers import get_scheduler

from distill_cli import batching, heads, losses, stages
from distill_cli.data import TaskData
from distill_cli.heads import StudentModule
from distill_cli.metrics import PRIMARY, compute_metrics, predictions_from_logits
from distill_cli.outputs import (
    prepare_output_dir,
    save_model_atomic,
    write_json_atomic,
    write_text_atomic,
)
from distill_cli.recipe import Recipe, TrainConfig, to_yaml, validate
from distill_cli.reporting import MetricsWriter, TrainProgress, log
from distill_cli.text_data import TokenMasker


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


def make_train_loader(b, cfg: TrainConfig) -> DataLoader:
    """Length-bucketed batches when the stage made them, else seeded shuffling."""
    if b.batch_sampler is not None:
        return DataLoader(b.train_ds, batch_sampler=b.batch_sampler, collate_fn=b.collate)
    generator = torch.Generator().manual_seed(cfg.seed)
    return DataLoader(
        b.train_ds, batch_size=cfg.batch_size, shuffle=True, collate_fn=b.collate,
        generator=generator,
    )  # fmt: skip


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


def evaluate_split(model, loader, accelerator, task: TaskData, id_remap=None) -> dict[str, float]:
    """Task metrics of a model over a prepared loader, gathered across processes."""
    model.eval()
    all_logits, all_labels = [], []
    with torch.no_grad():
        for batch in loader:
            inputs, _ = batching.split_inputs(batch)
            if id_remap is not None:
                inputs = {**inputs, "input_ids": id_remap[inputs["input_ids"]]}
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
) -> dict:
    """Train a student as the recipe says; returns the run summary written to train_results.json.

    ``stage`` is ``task`` (finetune-distill) or ``pretrain`` (pretrain-distill).
    """
    validate(recipe, losses.TERMS_NEED_TEACHER)
    out = prepare_output_dir(output_dir, overwrite, main=_is_main_rank())
    cfg = recipe.train

    # setup
    accelerator = make_accelerator(cfg, out)
    main = accelerator.is_main_process
    set_seed(cfg.seed)
    if main:
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
    train_loader = make_train_loader(b, cfg)
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

    # fit
    masker = TokenMasker(
        b.input_tokenizer or b.tokenizer, seed=cfg.seed + accelerator.process_index
    )
    step, samples, started = 0, 0, time.perf_counter()
    window = _Window()
    student.train()
    for plan in plans:
        phase_end = step + plan.steps
        while step < phase_end:
            for batch in train_loader:
                loss, parts = train_step(
                    student, teacher, batch, plan, b, vocab_index, masker, optimizer, accelerator,
                    cfg.max_grad_norm,
                )  # fmt: skip
                window.add(loss, parts, batch["attention_mask"])
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
        "stage": stage,
        "steps": step,
        "phases": {p.name: p.steps for p in plans},
        "num_processes": accelerator.num_processes,
        "runtime_s": round(runtime, 2),
        "train_samples_per_s": round(samples * accelerator.num_processes / runtime, 2),
        "final_loss": window.last_loss,
    }
    if eval_loader is not None:
        model = accelerator.unwrap_model(student).model
        metrics = evaluate_split(model, eval_loader, accelerator, b.task, b.id_remap)
        summary["eval_split"] = recipe.data.eval_split
        summary["eval"] = metrics
        summary["primary_metric"] = PRIMARY[b.task.metric]
        if main:
            writer.write({"step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
        if cfg.report_to:
            accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)

    # save
    accelerator.wait_for_everyone()
    if main:
        write_json_atomic(out / "train_results.json", summary)
        # a compressed student keeps its vocabulary map (and report) through further training
        for name in ("vocab_map.json", "compression.json"):
            source = Path(recipe.student.path or "") / name
            if recipe.student.path and source.is_file():
                write_text_atomic(out / name, source.read_text())
        save_model_atomic(accelerator.unwrap_model(student).model, b.tokenizer, out)
    accelerator.end_training()
    summary["is_main_process"] = main
    return summary


def train_step(
    student, teacher, batch, plan, b, vocab_index, masker, optimizer, accelerator, max_grad_norm
):
    """Mask (encoders, when the phase says so), forward, backward, clip, optimizer step."""
    mask_p = 0.0 if b.causal else plan.mlm_probability
    if mask_p > 0:
        batch["input_ids"], _ = masker(batch["input_ids"], batch["attention_mask"], mask_p)
    with accelerator.accumulate(student):
        loss, parts = compute_loss(
            student, teacher, batch, plan.terms, plan.needs, b, vocab_index, accelerator
        )
        accelerator.backward(loss)
        if accelerator.sync_gradients and max_grad_norm > 0:
            accelerator.clip_grad_norm_(student.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
    return loss, parts


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
        self.tokens += attention_mask.sum()  # a tensor: no device sync per step

    def flush(self, accelerator, step: int, phase: str, lr: float) -> dict:
        names = sorted(self.parts)
        local = torch.stack([self.loss, *[self.parts[k] for k in names]]) / max(self.n, 1)
        mean = accelerator.reduce(local.to(accelerator.device), reduction="mean").tolist()
        tokens = accelerator.reduce(
            torch.as_tensor(self.tokens, device=accelerator.device), reduction="sum"
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

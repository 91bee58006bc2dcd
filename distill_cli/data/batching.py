"""Tokenization and dynamic padding: each batch is padded to its own longest sequence."""

from __future__ import annotations

import numpy as np
import torch

TEACHER_PREFIX = "teacher_"


def tokenize(ds, tokenizer, text_columns: list[str], max_length: int, prefix: str = ""):
    """Add ``{prefix}input_ids`` etc. to a dataset; returns (dataset, number of truncated rows)."""

    def encode(batch):
        texts = [batch[c] for c in text_columns]
        enc = tokenizer(*texts, truncation=True, max_length=max_length)
        out = {f"{prefix}{k}": v for k, v in enc.items() if k != "offset_mapping"}
        full = tokenizer(*texts, truncation=False)["input_ids"]
        out[f"{prefix}truncated"] = [len(ids) > max_length for ids in full]
        return out

    ds = ds.map(encode, batched=True, desc=None)
    truncated = sum(ds[f"{prefix}truncated"])
    return ds.remove_columns(f"{prefix}truncated"), truncated


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# what the losses and metrics read beside the inputs: labels (a class id or value; per-token tags;
# QA start and end positions), each word's first sub-token, a row's index in its split, the
# positions a chat loss reads, where a conversation's last reply starts (on-policy prompts), and
# a cloze's blank and verbalizer ids
TARGETS = (
    "label",
    "labels",
    "start_positions",
    "end_positions",
    "word_starts",
    "row",
    "loss_mask",
    "reply_start",
    "blank_position",
    "verbalizer_ids",
)
# the value a padded position of a list column gets
PAD_VALUES = {"labels": -100, "word_starts": -1}


def model_columns(ds) -> list[str]:
    keep = (*MODEL_INPUTS, *TARGETS)
    return [c for c in ds.column_names if c.removeprefix(TEACHER_PREFIX) in keep]


class PadCollator:
    """Pads every id/mask/label column to the longest row in the batch. Labels come out as
    ``labels``: class ids or values, per-token tags, or QA [start, end] positions."""

    def __init__(self, pad_id: int, teacher_pad_id: int | None = None):
        self.pad = {
            "": pad_id,
            TEACHER_PREFIX: teacher_pad_id if teacher_pad_id is not None else pad_id,
        }

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        for key in rows[0]:
            values = [r[key] for r in rows]
            if isinstance(values[0], str):
                continue  # raw text columns stay out of the batch
            if key == "label":
                dtype = torch.float32 if isinstance(values[0], float) else torch.long
                batch["labels"] = torch.tensor(values, dtype=dtype)
                continue
            if not isinstance(values[0], list):
                batch[key] = torch.tensor(values)
                continue
            prefix = TEACHER_PREFIX if key.startswith(TEACHER_PREFIX) else ""
            name = key.removeprefix(prefix)
            fill = self.pad[prefix] if name == "input_ids" else PAD_VALUES.get(name, 0)
            width = max(len(v) for v in values)
            batch[key] = torch.tensor([v + [fill] * (width - len(v)) for v in values])
        if "start_positions" in batch:
            batch["labels"] = torch.stack(
                (batch.pop("start_positions"), batch.pop("end_positions")), dim=1
            )
        return batch


def left_padded(rows: list[list[int]], pad: int, device=None) -> dict[str, torch.Tensor]:
    """Token-id rows left-padded into one batch, as generation needs."""
    width = max(len(r) for r in rows)
    ids = [[pad] * (width - len(r)) + r for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long, device=device),
        "attention_mask": torch.tensor(mask, dtype=torch.long, device=device),
    }


def split_inputs(batch: dict) -> tuple[dict, dict]:
    """Student inputs and teacher inputs (the same tensors when they share a tokenizer)."""
    student = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
    teacher = {
        name: v
        for k, v in batch.items()
        if (name := k.removeprefix(TEACHER_PREFIX)) in MODEL_INPUTS and k != name
    }
    return student, teacher or student


def selected_positions(batch: dict) -> torch.Tensor:
    """The positions token-level losses read: every real token, or those a chat task predicts."""
    return batch["loss_mask"] if "loss_mask" in batch else batch["attention_mask"]


class EpochBatchSampler:
    """Batches of dataset indices whose order depends only on (seed, epoch).

    A resumed run sets the epoch and skips the batches already seen, and gets exactly the
    batches an uninterrupted run would. ``fixed`` batches (length buckets) keep their contents
    and are reordered each epoch; otherwise all indices are shuffled and cut into batches.
    """

    def __init__(self, n: int, batch_size: int, seed: int, fixed: list[list[int]] | None = None):
        self.n, self.batch_size, self.seed, self.fixed = n, batch_size, seed, fixed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.fixed) if self.fixed is not None else -(-self.n // self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.fixed is not None:
            yield from (self.fixed[i] for i in rng.permutation(len(self.fixed)))
            return
        order = rng.permutation(self.n)
        for start in range(0, self.n, self.batch_size):
            yield order[start : start + self.batch_size].tolist()

"""What a task type is: one record of plain functions and facts (no base class with hooks).

Each module of this package fills one :class:`TaskType`; ``tasks.TASKS`` maps names to them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import datasets
import torch

if TYPE_CHECKING:
    from distill_cli.data.tables import TaskData
    from distill_cli.recipe import DataConfig

IGNORE = -100  # a label position no loss reads (special tokens, later sub-tokens, padding)
MASKED = -1e9  # a logit that takes a position out of a softmax (padding, for QA positions)
SENTENCES = (
    "the movie was good and the acting was great",
    "a dull film",
    "this story is so boring but the cast was quite lovely",
    "awful",
)  # what an export of a sentence or word model is checked on


@dataclass
class EvalFeatures:
    """What evaluation batches (``loader_ds``) and scores (``features``: QA windows with their
    offsets, for mapping predicted positions back to answer text) are made of."""

    loader_ds: datasets.Dataset
    features: datasets.Dataset | None = None


@dataclass(frozen=True)
class Layout:
    """How a task's logits pair up into rows of one distribution each, for the KD terms.

    ``losses.Step.task`` names a layout; each function takes that Step.
    """

    name: str
    rows: Callable[[Any], tuple[torch.Tensor, torch.Tensor | None]]  # (student, teacher) rows
    hard_loss: Callable[[Any], torch.Tensor]  # the task's loss on hard labels
    logit_mse: Callable[[Any], torch.Tensor]  # MSE between the paired logits
    # read through windows (data.windows): whether its logits combine over an input's windows,
    # and the logits dim that indexes positions (None: one row per input, averaged)
    windows: bool = False
    position_dim: int | None = None


@dataclass
class Scoring:
    """What a scorer reads besides the model's outputs: the split's rows, its features and the
    data settings (QA: max_answer_length)."""

    task: TaskData
    examples: datasets.Dataset
    features: EvalFeatures
    d: DataConfig
    word: tuple[str, float] | None = None  # cloze: the model's word mode and scale (None: auto)


@dataclass(frozen=True)
class TaskType:
    """Everything the tool does differently for one task type."""

    name: str  # the registry key and data.task_type value
    layout: Layout
    auto_class: type  # the transformers Auto class of its models
    pipeline: str  # transformers' pipeline() name, also the model card's pipeline_tag
    architecture_suffix: str | tuple[str, ...]  # how a saved model's architecture ends
    # data: whether a data config names data of this type (cheap, never raises), and reading it
    # as (cfg, splits, label_names, optional) → TaskData
    claims: Callable[[DataConfig], bool]
    load: Callable[..., TaskData]
    # features: (split, task, tokenizer, cfg, teacher_tokenizer) → model inputs and targets;
    # (split, task, tokenizer, cfg, split name) → EvalFeatures; (task, split) → plain text
    train_features: Callable[..., datasets.Dataset]
    eval_features: Callable[..., EvalFeatures]
    plain_text: Callable[[TaskData, datasets.Dataset], tuple[datasets.Dataset, list[str]]]
    # models: config arguments for a new head over ``labels``; the outputs it must have
    label_kwargs: Callable[[list[str] | None], dict]
    num_outputs: Callable[[list[str] | None], int | None]  # None: no label set to check
    # scoring: one plain record per row of a batch; the metrics of all records
    records: Callable[[Any, dict], list]
    metrics: Callable[[Scoring, list], dict[str, float]]
    samples: tuple = SENTENCES  # what export feeds the model when it verifies it
    output_names: tuple[str, ...] = ("logits",)  # the model outputs its logits come from
    class_logits: bool = True  # its logits are class scores (not a regression value)
    compares_positions: bool = False  # its KD terms compare positions: one tokenizer for both
    fixed_length: bool = False  # timed padded to a fixed length (long inputs, as at serving)
    one_label_per_text: bool = False  # sentence labels: an embedder's probe can read them
    generates: bool = False  # a causal LM writing text: no masking, word logits from its LM head
    # its class logits are a word model's word logits at a blank, restricted to verbalizer ids
    # (cloze): batches carry blank_position and verbalizer_ids (models.forward.Blank), and
    # word_logits: auto reads a trained LM head where the model was saved with one
    word_head: bool = False
    # JSON files written beside the saved model: (task data, tokenizer, word mode, word scale)
    # → {file name: contents}
    saved_files: Callable[..., dict[str, dict]] | None = None

    @property
    def description(self) -> str:
        return self.name.replace("_", " ")


def outputs_logits(out, names: tuple[str, ...]) -> torch.Tensor:
    """A model output's logits in the layout the losses read: one output as it is, several
    (QA start and end) stacked on dim 1."""
    if len(names) == 1:
        return getattr(out, names[0])
    return torch.stack([getattr(out, n) for n in names], dim=1)

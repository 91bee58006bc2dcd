"""Tokenized features of a task split, by task type: sentences (or pairs) with a label; words
with their tags on the first sub-tokens; QA windows of long contexts with answer positions."""

from __future__ import annotations

from dataclasses import dataclass

import datasets

from distill_cli import batching
from distill_cli.data import TaskData
from distill_cli.errors import DistillError
from distill_cli.recipe import DataConfig
from distill_cli.reporting import log
from distill_cli.task_heads import kind


@dataclass
class EvalFeatures:
    """What evaluation batches (``loader_ds``) and scores (``features``: QA windows with their
    offsets, for mapping predicted positions back to answer text) are made of."""

    loader_ds: datasets.Dataset
    features: datasets.Dataset | None = None


def _log_truncated(truncated: int, max_length: int, name: str) -> None:
    if truncated:
        log(f"{name}: {truncated} texts longer than data.max_length={max_length} were truncated")


def _encoder(task: TaskData, d: DataConfig):
    """(split, tokenizer, column prefix) → (features, rows truncated), for sentence and word
    tasks."""
    if kind(task.task_type) == "token":
        from distill_cli.token_data import tokenize_tokens

        return lambda ds, tok, prefix="": tokenize_tokens(
            ds, tok, d.max_length, d.label_all_tokens, prefix
        )
    return lambda ds, tok, prefix="": batching.tokenize(
        ds, tok, task.text_columns, d.max_length, prefix
    )


def check_stride(d: DataConfig) -> None:
    if d.doc_stride >= d.max_length:
        raise DistillError(
            f"data.doc_stride ({d.doc_stride}) must be below data.max_length ({d.max_length}); "
            "lower doc_stride (e.g. a quarter of max_length) or raise max_length"
        )


def train_features(ds, task: TaskData, tokenizer, d: DataConfig, teacher_tokenizer=None):
    """The training split as model inputs and targets; ``teacher_tokenizer`` adds the teacher's
    own inputs (``teacher_`` columns) when the two models tokenize differently."""
    k = kind(task.task_type)
    if k == "span":
        from distill_cli.qa_windows import qa_train_features

        check_stride(d)
        ds = qa_train_features(ds, tokenizer, d.max_length, d.doc_stride)
    else:
        encode = _encoder(task, d)
        ds, truncated = encode(ds, tokenizer)
        if teacher_tokenizer is not None:
            ds, _ = encode(ds, teacher_tokenizer, batching.TEACHER_PREFIX)
        _log_truncated(truncated, d.max_length, d.train_split)
    return ds.select_columns(batching.model_columns(ds))


def eval_features(ds, task: TaskData, tokenizer, d: DataConfig, name: str) -> EvalFeatures:
    """An evaluation split as the model reads it: inputs and targets, and for QA each window's
    row index (``row``) into the windows kept for scoring."""
    k = kind(task.task_type)
    if k == "span":
        from distill_cli.qa_windows import qa_eval_features

        check_stride(d)
        features = qa_eval_features(ds, tokenizer, d.max_length, d.doc_stride)
        loader_ds = features.add_column("row", list(range(len(features))))
        return EvalFeatures(loader_ds.select_columns(batching.model_columns(loader_ds)), features)
    out, truncated = _encoder(task, d)(ds, tokenizer)
    _log_truncated(truncated, d.max_length, name)
    return EvalFeatures(out.select_columns(batching.model_columns(out)))


def plain_text(task: TaskData, ds) -> tuple[datasets.Dataset, list[str]]:
    """A split as plain text columns (sentence tasks: as they are; words joined by spaces;
    question and context), for what reads text rather than labels: latency, word agreement."""
    k = kind(task.task_type)
    if k == "token":
        return datasets.Dataset.from_dict({"text": [" ".join(t) for t in ds["tokens"]]}), ["text"]
    return ds.select_columns(task.text_columns), list(task.text_columns)

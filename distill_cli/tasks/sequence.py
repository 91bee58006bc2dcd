"""Sequence classification and regression: one label (or score) per text or text pair.

Logits are [batch, classes] (one output for regression); each example is one row for the KD
terms; data is read by ``data.tables``; metrics are accuracy, F1, MCC or Pearson.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from distill_cli.data import batching, tables
from distill_cli.evaluation.metrics import compute_metrics
from distill_cli.reporting import log
from distill_cli.tasks.base import EvalFeatures, Layout, Scoring, TaskType

CLASSIFICATION_NAME, REGRESSION_NAME = tables.CLASSIFICATION, tables.REGRESSION


def hard_label_loss(student_logits, labels) -> torch.Tensor:
    """Cross-entropy on hard labels, or MSE when the task is regression (one output)."""
    if student_logits.shape[-1] == 1:
        return F.mse_loss(student_logits.float().squeeze(-1), labels.float())
    return F.cross_entropy(student_logits.float(), labels)


def _rows(step):
    t = step.teacher.logits if step.teacher is not None else None
    return step.student.logits, t


def _logit_mse(step) -> torch.Tensor:
    return F.mse_loss(step.student.logits.float(), step.teacher.logits.float())


LAYOUT = Layout(
    name="sequence",
    rows=_rows,
    hard_loss=lambda step: hard_label_loss(step.student.logits, step.labels),
    logit_mse=_logit_mse,
    windows=True,  # the mean (or max) of the window logits
)


def predictions_from_logits(logits: np.ndarray, task_type: str) -> np.ndarray:
    """Class ids (argmax) for classification, the single output for regression."""
    logits = np.asarray(logits)
    if task_type == REGRESSION_NAME:
        return logits.reshape(len(logits), -1)[:, 0] if logits.ndim > 1 else logits
    return logits.argmax(axis=-1)


def log_truncated(truncated: int, max_length: int, name: str) -> None:
    if truncated:
        log(f"{name}: {truncated} texts longer than data.max_length={max_length} were truncated")


def encoded_features(encode, ds, tokenizer, d, teacher_tokenizer=None):
    """Training features from ``encode(ds, tokenizer, prefix) → (features, truncated)``;
    ``teacher_tokenizer`` adds the teacher's own inputs (``teacher_`` columns) when the two
    models tokenize differently."""
    ds, truncated = encode(ds, tokenizer, "")
    if teacher_tokenizer is not None:
        ds, _ = encode(ds, teacher_tokenizer, batching.TEACHER_PREFIX)
    log_truncated(truncated, d.max_length, d.train_split)
    return ds.select_columns(batching.model_columns(ds))


def encoded_eval_features(encode, ds, tokenizer, d, name: str) -> EvalFeatures:
    out, truncated = encode(ds, tokenizer, "")
    log_truncated(truncated, d.max_length, name)
    return EvalFeatures(out.select_columns(batching.model_columns(out)))


def _encoder(task, d):
    return lambda ds, tok, prefix: batching.tokenize(
        ds, tok, task.text_columns, d.max_length, prefix
    )


def train_features(ds, task, tokenizer, d, teacher_tokenizer=None):
    return encoded_features(_encoder(task, d), ds, tokenizer, d, teacher_tokenizer)


def eval_features(ds, task, tokenizer, d, name: str) -> EvalFeatures:
    return encoded_eval_features(_encoder(task, d), ds, tokenizer, d, name)


def plain_text(task, ds):
    return ds.select_columns(task.text_columns), list(task.text_columns)


def records(out, batch: dict) -> list:
    logits = out.logits.float().cpu().numpy()
    return list(zip(logits, batch["labels"].cpu().numpy(), strict=True))


def metrics(scoring: Scoring, records: list) -> dict[str, float]:
    logits = np.stack([r[0] for r in records])
    labels = np.array([r[1] for r in records])
    preds = predictions_from_logits(logits, scoring.task.task_type)
    return compute_metrics(scoring.task.metric, preds, labels)


def load(cfg, splits=None, label_names=None, optional=()):
    """Labelled text tables; ``data.task_type`` forces classes or scores, else the labels tell."""
    forced = {CLASSIFICATION_NAME: False, REGRESSION_NAME: True}.get(cfg.task_type)
    return tables.load_task_data(cfg, splits, label_names, optional, regression=forced)


def label_maps(labels) -> dict:
    """Config arguments for a head over ``labels``: its size and both name maps."""
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }


def _class_kwargs(labels) -> dict:
    return {**label_maps(labels), "problem_type": "single_label_classification"}


_SHARED = dict(
    layout=LAYOUT,
    auto_class=AutoModelForSequenceClassification,
    pipeline="text-classification",
    architecture_suffix="ForSequenceClassification",
    train_features=train_features,
    eval_features=eval_features,
    plain_text=plain_text,
    records=records,
    metrics=metrics,
    one_label_per_text=True,
)

CLASSIFICATION = TaskType(
    name=CLASSIFICATION_NAME,
    # the fallback for any data the other task types do not claim (classes or scores)
    claims=lambda cfg: not cfg.task_type or cfg.task_type == CLASSIFICATION_NAME,
    load=load,
    label_kwargs=_class_kwargs,
    num_outputs=len,
    **_SHARED,
)

REGRESSION = TaskType(
    name=REGRESSION_NAME,
    claims=lambda cfg: cfg.task_type == REGRESSION_NAME,
    load=load,
    label_kwargs=lambda labels: {"num_labels": 1, "problem_type": "regression"},
    num_outputs=lambda labels: 1,
    class_logits=False,
    **_SHARED,
)

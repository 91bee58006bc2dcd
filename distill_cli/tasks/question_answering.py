"""Extractive question answering: an answer span in a context.

Logits are start and end scores per position, stacked as [batch, 2, positions]; each start and
each end distribution is one row for the KD terms, padding left out of the softmax; long contexts
are read as overlapping windows (``data.qa_windows``); data is read by ``data.squad``; the
metrics are SQuAD's exact match and F1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoModelForQuestionAnswering

from distill_cli.data import batching, qa_windows, squad
from distill_cli.errors import DistillError
from distill_cli.evaluation.metrics import squad_metrics
from distill_cli.tasks import sequence
from distill_cli.tasks.base import MASKED, SENTENCES, EvalFeatures, Layout, Scoring, TaskType

NAME = squad.TASK
OUTPUTS = ("start_logits", "end_logits")  # one score per position each
QUESTIONS = ("how was the acting?", "what was dull?", "who was lovely?", "how was it?")
QA_PAIRS = tuple(zip(QUESTIONS, SENTENCES, strict=True))  # (question, context)


def span_rows(logits, mask) -> torch.Tensor:
    """QA logits [batch, 2, L] as [2·batch, L] start and end rows, padding out of the softmax."""
    pad = ~mask.bool()[:, None, :]
    return logits.float().masked_fill(pad, MASKED).flatten(0, 1)


def _rows(step):
    s = span_rows(step.student.logits, step.mask)
    t = step.teacher.logits if step.teacher is not None else None
    return s, None if t is None else span_rows(t, step.mask)


def _hard_loss(step) -> torch.Tensor:
    """CE on the start and end positions, averaged."""
    return F.cross_entropy(span_rows(step.student.logits, step.mask), step.labels.flatten())


def _logit_mse(step) -> torch.Tensor:
    """MSE between the start and end logits at non-pad positions."""
    keep = step.mask.bool()[:, None, :].expand_as(step.student.logits)
    return F.mse_loss(step.student.logits[keep].float(), step.teacher.logits[keep].float())


LAYOUT = Layout(
    name="span",
    rows=_rows,
    hard_loss=_hard_loss,
    logit_mse=_logit_mse,
    windows=True,  # start and end logits [batch, 2, positions] mapped back to the input
    position_dim=2,
)


def check_stride(d) -> None:
    if d.doc_stride >= d.max_length:
        raise DistillError(
            f"data.doc_stride ({d.doc_stride}) must be below data.max_length ({d.max_length}); "
            "lower doc_stride (e.g. a quarter of max_length) or raise max_length"
        )


def train_features(ds, task, tokenizer, d, teacher_tokenizer=None):
    """Windows of each context with the answer's start and end positions."""
    check_stride(d)
    ds = qa_windows.qa_train_features(ds, tokenizer, d.max_length, d.doc_stride)
    return ds.select_columns(batching.model_columns(ds))


def eval_features(ds, task, tokenizer, d, name: str) -> EvalFeatures:
    """Windows, each with its row index (``row``) into the windows kept for scoring."""
    check_stride(d)
    features = qa_windows.qa_eval_features(ds, tokenizer, d.max_length, d.doc_stride)
    loader_ds = features.add_column("row", list(range(len(features))))
    return EvalFeatures(loader_ds.select_columns(batching.model_columns(loader_ds)), features)


def records(out, batch: dict) -> list:
    """Each window's row index with its start and end logits at its real positions."""
    mask = batch["attention_mask"].bool()
    return [
        (int(i), out.start_logits[r][m].float().cpu().numpy(),
         out.end_logits[r][m].float().cpu().numpy())
        for r, (i, m) in enumerate(zip(batch["row"].tolist(), mask, strict=True))
    ]  # fmt: skip


def metrics(scoring: Scoring, records: list) -> dict[str, float]:
    """Answers mapped back to text once every window is in, scored against the references."""
    records = sorted(records, key=lambda r: r[0])
    answers = qa_windows.postprocess(
        scoring.examples,
        scoring.features.features,
        [r[1] for r in records],
        [r[2] for r in records],
        max_answer_length=scoring.d.max_answer_length,
        with_negative=scoring.task.metric == "squad_v2",
    )
    return squad_metrics(answers, qa_windows.references(scoring.examples))


def claims(cfg) -> bool:
    if cfg.task_type:
        return cfg.task_type == NAME
    return squad.looks_like(cfg)


def load(cfg, splits=None, label_names=None, optional=()):
    return squad.load_qa_data(cfg, splits, optional)


QUESTION_ANSWERING = TaskType(
    name=NAME,
    layout=LAYOUT,
    auto_class=AutoModelForQuestionAnswering,
    pipeline="question-answering",
    architecture_suffix="ForQuestionAnswering",
    claims=claims,
    load=load,
    train_features=train_features,
    eval_features=eval_features,
    plain_text=sequence.plain_text,  # question and context
    label_kwargs=lambda labels: {"num_labels": 2},  # start and end
    num_outputs=lambda labels: None,
    records=records,
    metrics=metrics,
    samples=QA_PAIRS,
    output_names=OUTPUTS,
    compares_positions=True,
    fixed_length=True,
)

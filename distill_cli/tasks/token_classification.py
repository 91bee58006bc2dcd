"""Token classification (NER): one tag per word.

Logits are [batch, tokens, tags]; each labelled token is one row for the KD terms (each word's
first sub-token when the two models tokenize differently); data is read by ``data.tokens``;
the metric is seqeval's entity F1.
"""

from __future__ import annotations

import datasets
import torch
import torch.nn.functional as F
from transformers import AutoModelForTokenClassification

from distill_cli.data import tokens
from distill_cli.evaluation.metrics import entity_metrics
from distill_cli.tasks.base import IGNORE, EvalFeatures, Layout, Scoring, TaskType
from distill_cli.tasks.sequence import encoded_eval_features, encoded_features, label_maps

NAME = tokens.TASK_TYPE


def word_rows(logits, starts, keep) -> torch.Tensor:
    """Token logits [batch, L, C] at each kept word's first sub-token: [words, C]."""
    rows = torch.arange(len(starts), device=starts.device)[:, None].expand_as(starts)
    return logits[rows[keep], starts[keep]]


def _rows(step):
    s = step.student.logits
    t = step.teacher.logits if step.teacher is not None else None
    if step.word_starts is not None and t is not None:
        s_starts, t_starts = step.word_starts
        keep = (s_starts >= 0) & (t_starts >= 0)
        return word_rows(s, s_starts, keep), word_rows(t, t_starts, keep)
    keep = step.labels != IGNORE
    return s[keep], None if t is None else t[keep]


def _hard_loss(step) -> torch.Tensor:
    logits, labels = step.student.logits, step.labels
    keep = labels != IGNORE
    if not keep.any():
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits[keep].float(), labels[keep])


def _logit_mse(step) -> torch.Tensor:
    s, t = _rows(step)
    return F.mse_loss(s.float(), t.float())


LAYOUT = Layout(
    name="token",
    rows=_rows,
    hard_loss=_hard_loss,
    logit_mse=_logit_mse,
    windows=True,  # each token from the window where it sits most centrally
    position_dim=1,
)


def _encoder(d):
    return lambda ds, tok, prefix: tokens.tokenize_tokens(
        ds, tok, d.max_length, d.label_all_tokens, prefix
    )


def train_features(ds, task, tokenizer, d, teacher_tokenizer=None):
    return encoded_features(_encoder(d), ds, tokenizer, d, teacher_tokenizer)


def eval_features(ds, task, tokenizer, d, name: str) -> EvalFeatures:
    return encoded_eval_features(_encoder(d), ds, tokenizer, d, name)


def plain_text(task, ds):
    """Each sentence's words joined by spaces."""
    return datasets.Dataset.from_dict({"text": [" ".join(t) for t in ds["tokens"]]}), ["text"]


def records(out, batch: dict) -> list:
    """Each sentence's predicted and gold tags at its words' first sub-tokens."""
    predicted, gold = out.logits.argmax(-1).cpu(), batch["labels"].cpu()
    starts = batch["word_starts"].cpu()
    return [
        (predicted[r][s[s >= 0]].tolist(), gold[r][s[s >= 0]].tolist())
        for r, s in enumerate(starts)
    ]


def metrics(scoring: Scoring, records: list) -> dict[str, float]:
    names = scoring.task.labels
    predicted = [[names[i] for i in pred] for pred, _ in records]
    gold = [[names[i] for i in g] for _, g in records]
    return entity_metrics(gold, predicted)


def claims(cfg) -> bool:
    if cfg.task_type:
        return cfg.task_type == NAME
    return tokens.looks_like(cfg)


def load(cfg, splits=None, label_names=None, optional=()):
    return tokens.load_token_data(cfg, splits, label_names, optional)


TOKEN_CLASSIFICATION = TaskType(
    name=NAME,
    layout=LAYOUT,
    auto_class=AutoModelForTokenClassification,
    pipeline="token-classification",
    architecture_suffix="ForTokenClassification",
    claims=claims,
    load=load,
    train_features=train_features,
    eval_features=eval_features,
    plain_text=plain_text,
    label_kwargs=label_maps,
    num_outputs=len,
    records=records,
    metrics=metrics,
)

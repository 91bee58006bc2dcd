"""Chat: an instruction-tuned causal LM learns its teacher's replies.

Conversations are rendered with the chat template (``data.chat``); the loss reads the positions
that predict an assistant token (``data.train_on: all``: every token). Those positions are the
``loss_mask`` the word-level KD terms read, and ``labels`` holds the next token there (-100
elsewhere), so the class terms (``ce``, ``soft_label_kl``) see one row per predicted token. The
held-out metric is the NLL (and perplexity) of the assistant's tokens.
"""

from __future__ import annotations

import math

import datasets
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from distill_cli.data import chat
from distill_cli.data.tables import TaskData
from distill_cli.errors import DistillError
from distill_cli.evaluation.metrics import token_nll
from distill_cli.reporting import log
from distill_cli.tasks.base import IGNORE, EvalFeatures, Layout, Scoring, TaskType
from distill_cli.tasks.token_classification import LAYOUT as TOKEN_LAYOUT

NAME = "chat"
METRIC = "nll"

# per predicted token, as a tagger's per labelled token
LAYOUT = Layout(
    name="next_token",
    rows=TOKEN_LAYOUT.rows,
    hard_loss=TOKEN_LAYOUT.hard_loss,
    logit_mse=TOKEN_LAYOUT.logit_mse,
)


def claims(cfg) -> bool:
    if cfg.task_type:
        return cfg.task_type == NAME
    return cfg.chat_template is not None or chat.looks_like(cfg)


def load(cfg, splits=None, label_names=None, optional=()):
    if cfg.min_words is not None:
        raise DistillError(
            "data.min_words does not apply to chat data (conversations, not documents); remove it"
        )
    by_split = chat.load_conversations(cfg, splits, optional)
    out = {s: datasets.Dataset.from_dict({"messages": c}) for s, c in by_split.items()}
    return TaskData(
        splits=datasets.DatasetDict(out),
        text_columns=["messages"],
        labels=None,
        task_type=NAME,
        metric=METRIC,
    )


def _shifted(row: dict) -> dict:
    """Position t reads the next token: loss_mask[t] = assistant_mask[t+1]."""
    ids, mask = row["input_ids"], row.pop("assistant_mask")
    loss_mask = [*mask[1:], 0]
    labels = [nxt if m else IGNORE for nxt, m in zip([*ids[1:], IGNORE], loss_mask, strict=True)]
    return {**row, "loss_mask": loss_mask, "labels": labels}


def _features(ds, tokenizer, d, split: str) -> datasets.Dataset:
    template = chat.chat_template(tokenizer, d.chat_template)
    out, truncated, empty = chat.encode_split(
        tokenizer, template, ds["messages"], d.max_length, d.train_on, split
    )
    if truncated:
        log(
            f"{split}: {truncated} conversations longer than data.max_length={d.max_length} "
            f"were truncated; {empty} of them lost every assistant token and were dropped"
        )
    return out.map(_shifted, desc=None)


def train_features(ds, task, tokenizer, d, teacher_tokenizer=None):
    return _features(ds, tokenizer, d, d.train_split)


def eval_features(ds, task, tokenizer, d, name: str) -> EvalFeatures:
    return EvalFeatures(_features(ds, tokenizer, d, name))


def plain_text(task, ds):
    """Each conversation's turns joined by newlines."""
    texts = ["\n".join(m["content"] for m in messages) for messages in ds["messages"]]
    return datasets.Dataset.from_dict({"text": texts}), ["text"]


def records(out, batch: dict) -> list:
    """Each conversation's summed NLL of the tokens it predicts, and their count."""
    labels = batch["labels"]
    nll = F.cross_entropy(
        out.logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none"
    )
    keep = labels != IGNORE
    return list(zip(nll.sum(1).tolist(), keep.sum(1).tolist(), strict=True))


def metrics(scoring: Scoring, records: list) -> dict[str, float]:
    return token_nll(math.fsum(r[0] for r in records), sum(r[1] for r in records))


CHAT = TaskType(
    name=NAME,
    layout=LAYOUT,
    auto_class=AutoModelForCausalLM,
    pipeline="text-generation",
    architecture_suffix=("ForCausalLM", "LMHeadModel"),
    claims=claims,
    load=load,
    train_features=train_features,
    eval_features=eval_features,
    plain_text=plain_text,
    label_kwargs=lambda labels: {},
    num_outputs=lambda labels: None,
    records=records,
    metrics=metrics,
    generates=True,
)

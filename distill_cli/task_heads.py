"""Task heads: the model class each task type trains, and how its outputs are laid out.

Sequence tasks (classification, regression) give logits [batch, classes]; token classification
[batch, tokens, labels]; extractive QA start and end logits, stacked here as [batch, 2, tokens]
so that the losses see two distributions over positions per row.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

SEQUENCE = ("classification", "regression")
TOKEN = "token_classification"
SPAN = "question_answering"

AUTO_CLASS = {
    "classification": AutoModelForSequenceClassification,
    "regression": AutoModelForSequenceClassification,
    TOKEN: AutoModelForTokenClassification,
    SPAN: AutoModelForQuestionAnswering,
}
# the first module name of each task head's weights, across architectures
HEAD_MODULES = ("classifier", "score", "qa_outputs")
PIPELINE = {
    "classification": "text-classification",
    "regression": "text-classification",
    TOKEN: "token-classification",
    SPAN: "question-answering",
}


def kind(task_type: str) -> str:
    """sequence | token | span: how a task's logits line up with its labels."""
    return {TOKEN: "token", SPAN: "span"}.get(task_type, "sequence")


def model_class(task_type: str):
    return AUTO_CLASS[task_type]


def task_type_of(config) -> str:
    """The task a saved model was trained for, from its architecture (and problem type)."""
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForTokenClassification") for a in archs):
        return TOKEN
    if any(a.endswith("ForQuestionAnswering") for a in archs):
        return SPAN
    regression = getattr(config, "problem_type", None) == "regression"
    return "regression" if regression else "classification"


def is_head_key(key: str, pooler: bool = True) -> bool:
    """A weight of the task head (or, with ``pooler``, of the pooler a head may read)."""
    first = key.split(".")[0]
    head = first in HEAD_MODULES or "classifier" in first  # DistilBERT's pre_classifier too
    return head or (pooler and (first == "pooler" or ".pooler." in key))


def head_logits(out) -> torch.Tensor:
    """A model output's logits in the layout the losses read (QA: [batch, 2, tokens])."""
    if getattr(out, "start_logits", None) is not None:
        return torch.stack((out.start_logits, out.end_logits), dim=1)
    return out.logits

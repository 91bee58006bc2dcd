"""Sentence embeddings: one vector per text (transformer, pooling, optional Dense, normalised).

The student learns the teacher's embeddings of raw text (pretrain-distill with the embedding
terms), so no data is claimed by name and there are no labels. Each text's embedding is one row
for the KD terms; the model is a transformer with a sentence-transformers head
(``models.embedder``); evaluation (``evaluation.embedding``) reads labelled sentences or scored
pairs for its probe and STS figures; export checks one output, ``sentence_embedding``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoModel

from distill_cli.errors import DistillError
from distill_cli.tasks.base import Layout, TaskType

NAME = "sentence_embedding"
OUTPUT = "sentence_embedding"  # the output's name, as sentence-transformers calls it
PIPELINE = "sentence-similarity"  # the Hub's pipeline tag for sentence embedders


def _rows(step):
    t = step.teacher.embedding if step.teacher is not None else None
    return step.student.embedding, t


def _no_labels(step) -> torch.Tensor:
    raise DistillError("sentence embeddings have no hard labels; drop ce from the recipe")


def _unsupported(*args, **kwargs):
    raise DistillError(
        "sentence embeddings are distilled from raw text (pretrain-distill with "
        "recipes/embedding.yaml), not read as task data"
    )


LAYOUT = Layout(
    name="sentence_embedding",
    rows=_rows,
    hard_loss=_no_labels,
    logit_mse=lambda step: F.mse_loss(*(r.float() for r in _rows(step))),
)

SENTENCE_EMBEDDING = TaskType(
    name=NAME,
    layout=LAYOUT,
    auto_class=AutoModel,
    pipeline=PIPELINE,
    architecture_suffix="",  # a bare transformer: told by its sentence-transformers files
    claims=lambda cfg: False,  # chosen by the recipe's embedding terms, not by the data
    load=_unsupported,
    train_features=_unsupported,
    eval_features=_unsupported,
    plain_text=_unsupported,
    label_kwargs=lambda labels: {},
    num_outputs=lambda labels: None,
    records=_unsupported,
    metrics=_unsupported,
    output_names=(OUTPUT,),
    class_logits=False,
)

"""One module per task type, and the registry of them.

``TASKS`` maps each task-type name (``data.task_type``) to its :class:`~tasks.base.TaskType`:
how its data is claimed and read, its features, model class and pipeline, how its logits pair up
for the KD terms, its scorer and what export checks it on. The rest of the package looks a task
up here and never compares task-type names. To add a task type: one module, its tests, one line
below.
"""

from __future__ import annotations

from distill_cli.tasks.base import (
    IGNORE,
    MASKED,
    EvalFeatures,
    Layout,
    Scoring,
    TaskType,
    outputs_logits,
)
from distill_cli.tasks.chat import CHAT
from distill_cli.tasks.cloze import CLOZE
from distill_cli.tasks.question_answering import QUESTION_ANSWERING
from distill_cli.tasks.sentence_embedding import SENTENCE_EMBEDDING
from distill_cli.tasks.sequence import CLASSIFICATION, REGRESSION
from distill_cli.tasks.token_classification import TOKEN_CLASSIFICATION

# In the order data is offered to them: classification takes whatever the others do not claim;
# cloze claims labelled tables before it when data.template or data.verbalizers is set.
TASKS: dict[str, TaskType] = {
    t.name: t
    for t in (CLOZE, CHAT, TOKEN_CLASSIFICATION, QUESTION_ANSWERING, CLASSIFICATION, REGRESSION)
}
TASKS[SENTENCE_EMBEDDING.name] = SENTENCE_EMBEDDING
# the task types data can be read as (data.task_type)
DATA_TASKS = tuple(n for n, t in TASKS.items() if t is not SENTENCE_EMBEDDING)
LAYOUTS: dict[str, Layout] = {t.layout.name: t.layout for t in TASKS.values()}

__all__ = [
    "CHAT",
    "CLOZE",
    "IGNORE",
    "MASKED",
    "TASKS",
    "EvalFeatures",
    "Layout",
    "Scoring",
    "TaskType",
]


def get(name: str) -> TaskType:
    return TASKS[name]


def of(task_data) -> TaskType:
    """The task type of loaded task data."""
    return TASKS[task_data.task_type]


def load_task_data(cfg, splits=None, label_names=None, optional=()):
    """Read ``cfg``'s data as the first task type that claims it (see ``TASKS``' order)."""
    for task in TASKS.values():
        if task.claims(cfg):
            return task.load(cfg, splits, label_names, optional)
    return CLASSIFICATION.load(cfg, splits, label_names, optional)


def claiming(cfg) -> TaskType:
    """The task type that would read ``cfg``'s data (without reading it)."""
    return next((t for t in TASKS.values() if t.claims(cfg)), CLASSIFICATION)


def with_head(config) -> TaskType | None:
    """The task a saved model's head was trained for, from its architecture (and problem type);
    None for a model without a task head."""
    archs = getattr(config, "architectures", None) or []
    for task in (TOKEN_CLASSIFICATION, QUESTION_ANSWERING, CLASSIFICATION, CHAT):
        if any(a.endswith(task.architecture_suffix) for a in archs):
            regression = getattr(config, "problem_type", None) == "regression"
            return REGRESSION if task is CLASSIFICATION and regression else task
    return None


def of_config(config) -> TaskType:
    """As :func:`with_head`, taking a model without a recognised head for a classifier."""
    task = with_head(config)
    if task is not None:
        return task
    regression = getattr(config, "problem_type", None) == "regression"
    return REGRESSION if regression else CLASSIFICATION


def head_logits(out):
    """A model output's logits in the layout the losses read (QA: [batch, 2, tokens])."""
    names = QUESTION_ANSWERING.output_names
    if all(getattr(out, n, None) is not None for n in names):
        return outputs_logits(out, names)
    return out.logits


def same_head(a: TaskType, b: TaskType) -> bool:
    """Whether models of ``a`` and ``b`` have the same head (classification and regression do)."""
    return a.layout is b.layout

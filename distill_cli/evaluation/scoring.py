"""From a model's outputs on evaluation batches to task metrics, through the task's scorer.

Each batch is turned into one plain record per row (``TaskType.records``), so records can be
gathered across processes in any order; the task's ``metrics`` reads them all at the end.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from distill_cli import tasks
from distill_cli.data import batching


def scorer(task, examples, features, d) -> tasks.Scoring:
    """What scoring the split ``examples`` (as ``features``) of ``task`` data needs."""
    return tasks.Scoring(task, examples, features, d)


def score(model, loader, scoring: tasks.Scoring, gather: Callable[[list], list] | None = None):
    """Task metrics of ``model`` over ``loader``; ``gather`` collects records across processes."""
    kind = tasks.of(scoring.task)
    records = []
    with torch.inference_mode():
        for batch in loader:
            inputs, _ = batching.split_inputs(batch)
            got = kind.records(model(**inputs), batch)
            records += gather(got) if gather is not None else got
    return kind.metrics(scoring, records)

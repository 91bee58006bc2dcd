"""From a model's outputs on evaluation batches to task metrics, through the task's scorer.

Each batch is turned into one plain record per row (``TaskType.records``), so records can be
gathered across processes in any order; the task's ``metrics`` reads them all at the end.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from distill_cli import tasks
from distill_cli.data import batching, windows
from distill_cli.models import forward as heads


def scorer(task, examples, features, d) -> tasks.Scoring:
    """What scoring the split ``examples`` (as ``features``) of ``task`` data needs."""
    return tasks.Scoring(task, examples, features, d)


def score(
    model,
    loader,
    scoring: tasks.Scoring,
    gather: Callable[[list], list] | None = None,
    window: windows.Spec | None = None,
    tally: windows.Tally | None = None,
):
    """Task metrics of ``model`` over ``loader``; ``gather`` collects records across processes;
    ``window``: a model with fewer positions than the inputs reads them through windows (what
    they cost is counted in ``tally``)."""
    kind = tasks.of(scoring.task)
    records = []
    word = None
    if kind.word_head and isinstance(model, torch.nn.Module):  # class logits at the blank
        word = scoring.word or (heads.word_mode("auto", model, prefer_head=True), 1.0)
    with torch.inference_mode():
        for batch in loader:
            inputs, _ = batching.split_inputs(batch)
            if word is not None:
                out = heads.read_blank(model, inputs, heads.blank_of(batch, word[1]), word[0])
            else:
                out = windows.call(model, inputs, window, tally)
            got = kind.records(out, batch)
            records += gather(got) if gather is not None else got
    return kind.metrics(scoring, records)

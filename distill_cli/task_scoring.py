"""From a model's outputs on evaluation batches to task metrics, by task type.

Each batch is turned into one plain record per row, so records can be gathered across processes
in any order: class logits and label; a sentence's predicted and gold word tags; a QA window's
start and end logits with its row index, mapped back to answer text after all windows are in.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from distill_cli import batching
from distill_cli.data import TaskData
from distill_cli.metrics import compute_metrics, predictions_from_logits
from distill_cli.recipe import DataConfig
from distill_cli.task_features import EvalFeatures
from distill_cli.task_heads import kind


class Scorer:
    def __init__(self, task: TaskData, examples, features: EvalFeatures, d: DataConfig):
        self.task, self.examples, self.features, self.d = task, examples, features, d
        self.kind = kind(task.task_type)

    def records(self, out, batch: dict) -> list:
        if self.kind == "span":
            mask = batch["attention_mask"].bool()
            return [
                (int(i), out.start_logits[r][m].float().cpu().numpy(),
                 out.end_logits[r][m].float().cpu().numpy())
                for r, (i, m) in enumerate(zip(batch["row"].tolist(), mask, strict=True))
            ]  # fmt: skip
        if self.kind == "token":
            predicted, gold = out.logits.argmax(-1).cpu(), batch["labels"].cpu()
            starts = batch["word_starts"].cpu()
            return [
                (predicted[r][s[s >= 0]].tolist(), gold[r][s[s >= 0]].tolist())
                for r, s in enumerate(starts)
            ]
        logits = out.logits.float().cpu().numpy()
        return list(zip(logits, batch["labels"].cpu().numpy(), strict=True))

    def metrics(self, records: list) -> dict[str, float]:
        if self.kind == "span":
            return self._span_metrics(records)
        if self.kind == "token":
            from distill_cli.metrics import entity_metrics

            names = self.task.labels
            predicted = [[names[i] for i in pred] for pred, _ in records]
            gold = [[names[i] for i in g] for _, g in records]
            return entity_metrics(gold, predicted)
        logits = np.stack([r[0] for r in records])
        labels = np.array([r[1] for r in records])
        preds = predictions_from_logits(logits, self.task.task_type)
        return compute_metrics(self.task.metric, preds, labels)

    def _span_metrics(self, records: list) -> dict[str, float]:
        from distill_cli.metrics import squad_metrics
        from distill_cli.qa_windows import postprocess, references

        records = sorted(records, key=lambda r: r[0])
        answers = postprocess(
            self.examples,
            self.features.features,
            [r[1] for r in records],
            [r[2] for r in records],
            max_answer_length=self.d.max_answer_length,
            with_negative=self.task.metric == "squad_v2",
        )
        return squad_metrics(answers, references(self.examples))


def score(model, loader, scorer: Scorer, gather: Callable[[list], list] | None = None) -> dict:
    """Task metrics of ``model`` over ``loader``; ``gather`` collects records across processes."""
    records = []
    with torch.inference_mode():
        for batch in loader:
            inputs, _ = batching.split_inputs(batch)
            got = scorer.records(model(**inputs), batch)
            records += gather(got) if gather is not None else got
    return scorer.metrics(records)

"""Task metrics with scikit-learn and scipy, returned as plain Python floats."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

# The headline key of each metric's result.
PRIMARY = {"accuracy": "accuracy", "f1": "f1", "mcc": "mcc", "pearson": "pearson"}


def _correlation(fn, predictions: np.ndarray, references: np.ndarray) -> float:
    # Constant input has no defined correlation: report 0.0, as sklearn does for MCC.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(fn(predictions, references)[0])
    return 0.0 if np.isnan(value) else value


def compute_metrics(
    metric: str, predictions: np.ndarray, references: np.ndarray
) -> dict[str, float]:
    """``metric``: accuracy, f1 (binary; macro when more than two classes), mcc or pearson."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    if metric == "pearson":
        predictions, references = predictions.astype(float), references.astype(float)
        return {
            "pearson": _correlation(pearsonr, predictions, references),
            "spearman": _correlation(spearmanr, predictions, references),
        }
    if metric not in PRIMARY:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(PRIMARY)}")
    out = {"accuracy": float(accuracy_score(references, predictions))}
    if metric == "f1":
        binary = set(np.union1d(references, predictions).tolist()) <= {0, 1}
        average = "binary" if binary else "macro"
        out["f1"] = float(f1_score(references, predictions, average=average, zero_division=0))
    elif metric == "mcc":
        out["mcc"] = float(matthews_corrcoef(references, predictions))
    return {PRIMARY[metric]: out[PRIMARY[metric]], **out}


# ---------------------------------------------------------------- token classification

PRIMARY["seqeval"] = "f1"


def entity_metrics(references: list[list[str]], predictions: list[list[str]]) -> dict:
    """Entity-level precision, recall and F1 over BIO tags (seqeval, default mode), and token
    accuracy; one list of tag names per sentence."""
    from seqeval.metrics import accuracy_score as token_accuracy
    from seqeval.metrics.sequence_labeling import precision_recall_fscore_support

    if not any(references):
        return {"f1": 0.0, "precision": 0.0, "recall": 0.0, "accuracy": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tags outside BIO ("x seems not to be NE tag")
        precision, recall, f1, _ = precision_recall_fscore_support(
            references, predictions, average="micro", zero_division=0
        )
        accuracy = token_accuracy(references, predictions)
    return {
        "f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        "accuracy": float(accuracy),
    }


# ---------------------------------------------------------------- language modelling

PRIMARY["nll"] = "nll"
LOWER_IS_BETTER = {"nll"}  # retention is then the teacher's ÷ the student's


def token_nll(total: float, count: int) -> dict[str, float]:
    """Mean negative log-likelihood per token and its perplexity."""
    nll = total / count if count else float("nan")
    return {"nll": nll, "perplexity": math.exp(nll) if count else float("nan"), "tokens": count}


# ---------------------------------------------------------------- question answering

PRIMARY["squad"] = "f1"
PRIMARY["squad_v2"] = "f1"


def squad_metrics(predictions: dict[str, str], references: dict[str, list[str]]) -> dict:
    """SQuAD F1 and exact match (torchmetrics, SQuAD normalisation) as floats 0..1, averaged over
    every question in ``references``; the best over each question's answers. A question with no
    answer (squad_v2) scores 1 when the prediction is empty after normalisation, else 0."""
    from torchmetrics.functional.text import squad

    missing = [qid for qid in references if qid not in predictions]
    if not references:
        raise ValueError("squad_metrics needs at least one reference")
    if missing:
        raise ValueError(f"no prediction for {len(missing)} of {len(references)} questions")
    preds = [{"id": qid, "prediction_text": predictions[qid]} for qid in references]
    # [""] as the reference: torchmetrics then scores 1 exactly for an empty prediction.
    target = [
        {"id": qid, "answers": {"text": list(texts) or [""]}} for qid, texts in references.items()
    ]
    scores = squad(preds, target)
    return {"f1": float(scores["f1"]) / 100, "exact_match": float(scores["exact_match"]) / 100}

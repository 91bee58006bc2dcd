"""Sentence-embedding metrics on numpy arrays (one row per text), returned as Python floats.

Agreement and neighbour recall compare a student with its teacher on the same texts; the linear
probe and STS Spearman score one model on its own, so their retention is student / teacher.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler, normalize

from distill_cli.errors import DistillError

# Metric names as they appear in evaluation.json. The first two are measured against the teacher.
AGREEMENT = "agreement"
NEIGHBOUR_RECALL = "neighbour_recall"
PROBE_ACCURACY = "probe_accuracy"
STS_SPEARMAN = "sts_spearman"
AGAINST_TEACHER = (AGREEMENT, NEIGHBOUR_RECALL)
METRICS = (*AGAINST_TEACHER, PROBE_ACCURACY, STS_SPEARMAN)


def _rows(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array (texts x width), got shape {x.shape}")
    return x


def _paired(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> tuple[np.ndarray, ...]:
    a, b = _rows(a, names[0]), _rows(b, names[1])
    if len(a) != len(b):
        raise ValueError(f"{names[0]} has {len(a)} rows but {names[1]} has {len(b)}")
    return a, b


def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(a_i, b_i) for each row; a zero vector has cosine 0 with everything."""
    return np.einsum("ij,ij->i", normalize(a), normalize(b))


def agreement(student: np.ndarray, teacher: np.ndarray) -> float:
    """Mean cosine between each text's student and teacher embeddings (1.0 when identical)."""
    student, teacher = _paired(student, teacher, ("student", "teacher"))
    if student.shape[1] != teacher.shape[1]:
        raise DistillError(
            f"the student's embeddings have width {student.shape[1]} but the teacher's have "
            f"{teacher.shape[1]}; give the student a Dense projection to the teacher's size"
        )
    return float(_row_cosine(student, teacher).mean())


def _neighbours(x: np.ndarray, k: int) -> np.ndarray:
    # kneighbors() without X leaves each text out of its own list (by index, so duplicates count).
    return NearestNeighbors(n_neighbors=k, metric="cosine").fit(x).kneighbors(return_distance=False)


def neighbour_recall(student: np.ndarray, teacher: np.ndarray, k: int = 10) -> float:
    """Share of each text's k nearest neighbours under the teacher (cosine, itself excluded) that
    the student also puts in its k nearest, averaged over texts.

    k is capped at n - 1 for n texts (then every other text is a neighbour and the recall is 1).
    The widths may differ: this compares neighbour sets, not vectors. Ties in distance are broken
    by the neighbour search, so exact duplicates can swap places.
    """
    student, teacher = _paired(student, teacher, ("student", "teacher"))
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if len(teacher) < 2:
        raise DistillError(
            f"neighbour recall needs at least 2 texts, got {len(teacher)}; "
            "evaluate on a larger split"
        )
    k = min(k, len(teacher) - 1)
    hits = [
        len(np.intersect1d(s, t, assume_unique=True))
        for s, t in zip(_neighbours(student, k), _neighbours(teacher, k), strict=True)
    ]
    return float(np.mean(hits) / k)


def probe_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    seed: int = 0,
) -> float:
    """Accuracy on test of a logistic regression fitted on frozen train embeddings (features
    standardised first, so one iteration budget fits every model's scale)."""
    train_x, test_x = _rows(train_x, "train_x"), _rows(test_x, "test_x")
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError("each embedding row needs one label")
    if len(np.unique(train_y)) < 2:
        raise DistillError(
            "the linear probe needs at least 2 label classes in the train split; "
            "use data whose train split has several labels"
        )
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(train_x, train_y)
    return float(probe.score(test_x, test_y))


def sts_scores(values) -> np.ndarray:
    """Gold STS scores as a float array; numbers or numeric strings ("3.5"), all finite."""
    out = []
    for i, value in enumerate(values):
        try:
            if isinstance(value, bool | np.bool_):
                raise TypeError
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise DistillError(
                f"STS score {value!r} (example {i}) is not a number; "
                "give every sentence pair a numeric similarity score"
            )
        out.append(number)
    return np.asarray(out, dtype=np.float64)


def sts_spearman(a: np.ndarray, b: np.ndarray, scores: np.ndarray) -> float:
    """Spearman correlation between cos(a_i, b_i) and the gold scores; 0.0 when either side is
    constant (no correlation defined), as in metrics.py."""
    a, b = _paired(a, b, ("a", "b"))
    scores = sts_scores(scores)
    if len(scores) != len(a):
        raise ValueError(f"{len(a)} sentence pairs but {len(scores)} scores")
    if len(scores) < 2:
        raise DistillError(
            f"STS Spearman needs at least 2 scored pairs, got {len(scores)}; use a larger split"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input
        value = float(spearmanr(_row_cosine(a, b), scores)[0])
    return 0.0 if math.isnan(value) else value


def embedding_report(student: dict, teacher: dict | None) -> dict:
    """``retention/<metric>`` for each metric of METRICS in ``student``.

    Agreement and neighbour recall already compare the student with the teacher (the teacher's
    own value is 1.0 by definition), so their retention is the value itself, teacher or not. The
    probe and STS Spearman retain student / teacher: present only when the teacher has that metric,
    None when the teacher's value is 0.
    """
    out = {}
    for name in METRICS:
        if name not in student:
            continue
        if name in AGAINST_TEACHER:
            out[f"retention/{name}"] = student[name]
        elif teacher is not None and name in teacher:
            t_value = teacher[name]
            out[f"retention/{name}"] = student[name] / t_value if t_value else None
    return out

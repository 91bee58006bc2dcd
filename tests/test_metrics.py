import math

import numpy as np
import pytest

from distill_cli.evaluation.metrics import PRIMARY, compute_metrics
from distill_cli.tasks.sequence import predictions_from_logits


def test_predictions_from_logits():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 1.0]])
    assert predictions_from_logits(logits, "classification").tolist() == [1, 0]
    assert predictions_from_logits(np.array([[0.5], [2.5]]), "regression").tolist() == [0.5, 2.5]


def test_accuracy():
    out = compute_metrics("accuracy", np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]))
    assert out == {"accuracy": 0.75}
    assert type(out["accuracy"]) is float


def test_binary_f1():
    # tp=2, fp=1, fn=1: precision 2/3, recall 2/3, f1 2/3; 3 of 5 right.
    out = compute_metrics("f1", np.array([1, 1, 1, 0, 0]), np.array([1, 1, 0, 1, 0]))
    assert out["f1"] == pytest.approx(2 / 3) and out["accuracy"] == pytest.approx(0.4 * 1.5)


def test_macro_f1_for_three_classes():
    # Per class f1: class 0 = 1.0, class 1 = 2/3 (tp 1, fp 0, fn 1), class 2 = 2/3 (tp 1, fp 1).
    out = compute_metrics("f1", np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))
    assert out["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert out["accuracy"] == 0.75


def test_mcc():
    # tp=2 tn=1 fp=1 fn=1: (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6.
    out = compute_metrics("mcc", np.array([1, 1, 1, 0, 0]), np.array([1, 1, 0, 1, 0]))
    assert out["mcc"] == pytest.approx(1 / 6) and out["accuracy"] == pytest.approx(0.6)


def test_pearson_and_spearman():
    predictions = np.array([1.0, 2.0, 3.0, 5.0])
    references = np.array([1.0, 3.0, 2.0, 4.0])
    out = compute_metrics("pearson", predictions, references)
    # Centred: p = [-1.75, -0.75, 0.25, 2.25], r = [-1.5, 0.5, -0.5, 1.5].
    expected = 5.5 / math.sqrt(8.75 * 5.0)
    assert out["pearson"] == pytest.approx(expected)
    assert out["spearman"] == pytest.approx(0.8)  # rank differences 0,1,1,0: 1 - 6*2/60
    assert set(out) == {"pearson", "spearman"}


def test_constant_predictions_have_zero_correlation():
    out = compute_metrics("pearson", np.ones(4), np.array([1.0, 2.0, 3.0, 4.0]))
    assert out == {"pearson": 0.0, "spearman": 0.0}


def test_primary_keys_are_returned():
    preds, refs = np.array([0, 1, 1]), np.array([0, 1, 0])
    for metric in ("accuracy", "f1", "mcc", "pearson"):  # seqeval, squad: their own functions
        assert PRIMARY[metric] in compute_metrics(metric, preds, refs)
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics("bleu", preds, refs)

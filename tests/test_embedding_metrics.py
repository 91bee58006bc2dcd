import math

import numpy as np
import pytest

from distill_cli.errors import DistillError
from distill_cli.evaluation.embedding_metrics import (
    agreement,
    embedding_report,
    neighbour_recall,
    probe_accuracy,
    sts_scores,
    sts_spearman,
)


def unit(*degrees: float) -> np.ndarray:
    """Points on the unit circle at the given angles."""
    radians = np.radians(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def rotate(x: np.ndarray, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return x @ np.array([[c, s], [-s, c]])


# ---------------------------------------------------------------- agreement


def test_identical_embeddings_agree_fully():
    x = np.random.default_rng(0).normal(size=(6, 5))
    assert agreement(x, x) == pytest.approx(1.0)
    assert agreement(x, 3 * x) == pytest.approx(1.0)  # cosine ignores scale
    assert neighbour_recall(x, x, k=3) == 1.0


def test_agreement_by_hand():
    student = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [2.0, 0.0]])
    teacher = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 3.0], [-1.0, 0.0]])
    # Per row: 1, 1/sqrt(2), 0 (orthogonal), -1 (opposite).
    assert agreement(student, teacher) == pytest.approx((1 + 1 / math.sqrt(2) + 0 - 1) / 4)


def test_agreement_needs_the_teachers_width():
    with pytest.raises(DistillError, match="Dense projection to the teacher's size") as err:
        agreement(np.ones((3, 4)), np.ones((3, 8)))
    assert "\n" not in str(err.value)


def test_rotation_keeps_neighbours_but_not_agreement():
    teacher = unit(0, 20, 90, 130, 250)
    student = rotate(teacher, 90)  # every row orthogonal to its teacher row, same geometry
    assert agreement(student, teacher) == pytest.approx(0.0, abs=1e-12)
    assert neighbour_recall(student, teacher, k=2) == 1.0


# ---------------------------------------------------------------- neighbour recall


def test_neighbour_recall_by_hand():
    # Teacher at 0, 10, 90, 100 degrees; the student moves text 3 to 200 degrees.
    teacher, student = unit(0, 10, 90, 100), unit(0, 10, 90, 200)
    # k=1: teacher 0->1, 1->0, 2->3, 3->2; student 0->1, 1->0, 2->1, 3->2: hits 1, 1, 0, 1.
    assert neighbour_recall(student, teacher, k=1) == pytest.approx(0.75)
    # k=2: teacher {1,2} {0,2} {3,1} {2,1}; student {1,2} {0,2} {1,0} {2,0}: 2, 2, 1, 1 of 2.
    assert neighbour_recall(student, teacher, k=2) == pytest.approx(0.75)


def test_neighbour_recall_of_a_shuffled_student_is_zero_at_k1():
    teacher, student = unit(0, 10, 90, 100), unit(0, 90, 10, 100)
    # Teacher pairs (0,1), (2,3); the student pairs (0,2), (1,3): no nearest neighbour kept.
    assert neighbour_recall(student, teacher, k=1) == 0.0


def test_neighbour_recall_across_widths():
    teacher = unit(0, 10, 90, 100, 200)
    student = np.hstack([2 * teacher, np.zeros((5, 3))])  # width 5, same directions
    assert neighbour_recall(student, teacher, k=2) == 1.0


def test_k_is_capped_at_n_minus_1():
    rng = np.random.default_rng(1)
    student, teacher = rng.normal(size=(3, 4)), rng.normal(size=(3, 6))
    # k=10 with 3 texts means k=2: every other text is a neighbour of each, under either model.
    assert neighbour_recall(student, teacher, k=10) == 1.0


def test_a_text_is_not_its_own_neighbour_even_when_duplicated():
    # Texts 0 and 1 are identical under the teacher: each is the other's nearest neighbour.
    teacher = unit(0, 0, 90, 91)
    student = unit(0, 5, 90, 91)
    assert neighbour_recall(student, teacher, k=1) == 1.0


def test_neighbour_recall_needs_two_texts():
    with pytest.raises(DistillError, match="at least 2 texts"):
        neighbour_recall(np.ones((1, 2)), np.ones((1, 2)))
    with pytest.raises(ValueError, match="k must be"):
        neighbour_recall(np.eye(3), np.eye(3), k=0)


# ---------------------------------------------------------------- linear probe


def test_probe_on_separable_points_is_perfect():
    train_x = np.array([[-2.0, 0.3], [-1.0, -0.2], [1.0, 0.1], [2.0, -0.4]])
    train_y = np.array(["neg", "neg", "pos", "pos"])
    test_x = np.array([[-3.0, 0.0], [-0.5, 1.0], [0.5, -1.0], [3.0, 0.0]])
    test_y = np.array(["neg", "neg", "pos", "pos"])
    assert probe_accuracy(train_x, train_y, test_x, test_y) == 1.0
    # Test labels swapped: every prediction is wrong.
    assert probe_accuracy(train_x, train_y, test_x, test_y[::-1]) == 0.0


def test_probe_needs_two_classes():
    with pytest.raises(DistillError, match="at least 2 label classes"):
        probe_accuracy(np.eye(3), [1, 1, 1], np.eye(3), [1, 0, 1])


# ---------------------------------------------------------------- STS


def test_spearman_of_a_monotone_transform_is_one():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(8, 4)), rng.normal(size=(8, 4))
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert sts_spearman(a, b, 5 * np.exp(cos) + 1) == pytest.approx(1.0)
    assert sts_spearman(a, b, -cos) == pytest.approx(-1.0)


def test_spearman_by_hand():
    a = unit(0, 0, 0, 0)
    b = unit(0, 60, 90, 180)  # cosines 1, 0.5, 0, -1: ranks 4 3 2 1
    # Score ranks 4 3 1 2: d^2 sums to 2, rho = 1 - 6*2 / (4*15) = 0.8.
    assert sts_spearman(a, b, [5.0, 4.0, 2.0, 3.0]) == pytest.approx(0.8)
    assert sts_spearman(a, b, [3.0, 3.0, 3.0, 3.0]) == 0.0  # constant: no correlation


def test_sts_scores_accept_numbers_and_numeric_strings():
    out = sts_scores([1, "2.5", 3.0, np.float32(0.5), " 4 "])
    assert out.dtype == np.float64 and out.tolist() == [1.0, 2.5, 3.0, 0.5, 4.0]


@pytest.mark.parametrize(
    ("values", "bad"),
    [
        (["1.0", "high", "x"], "'high' (example 1)"),
        ([2.0, None], "None (example 1)"),
        ([float("nan")], "nan (example 0)"),
        ([1.0, 2.0, True], "True (example 2)"),
        (["inf"], "'inf' (example 0)"),
    ],
)
def test_bad_sts_scores_name_the_first_bad_value(values, bad):
    with pytest.raises(DistillError, match="numeric similarity score") as err:
        sts_scores(values)
    message = str(err.value)
    assert bad in message and "\n" not in message


def test_sts_spearman_checks_its_scores():
    with pytest.raises(DistillError, match="'n/a' \\(example 1\\)"):
        sts_spearman(unit(0, 1), unit(2, 3), ["1", "n/a"])


# ---------------------------------------------------------------- report


def test_report_retention():
    student = {
        "agreement": 0.9,
        "neighbour_recall": 0.6,
        "probe_accuracy": 0.72,
        "sts_spearman": 0.4,
        "parameters": 10,  # not an embedding metric: no retention
    }
    teacher = {"agreement": 1.0, "neighbour_recall": 1.0, "probe_accuracy": 0.8, "sts_spearman": 0}
    assert embedding_report(student, teacher) == {
        "retention/agreement": 0.9,
        "retention/neighbour_recall": 0.6,
        "retention/probe_accuracy": pytest.approx(0.9),
        "retention/sts_spearman": None,  # the teacher's value is 0
    }


def test_report_without_teacher_metrics():
    student = {"agreement": 0.9, "neighbour_recall": 0.6, "probe_accuracy": 0.7}
    expected = {"retention/agreement": 0.9, "retention/neighbour_recall": 0.6}
    assert embedding_report(student, None) == expected
    assert embedding_report(student, {"sts_spearman": 0.5}) == expected

"""Metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from nuclei.metrics import (
    average_precision,
    dice,
    dsb_score,
    foreground_iou,
    iou_matrix,
    matching,
    pixel_accuracy,
    score_image,
)


def _square(shape: tuple[int, int], y: int, x: int, size: int, value: int = 1, out: np.ndarray | None = None
            ) -> np.ndarray:
    out = np.zeros(shape, np.int32) if out is None else out
    out[y : y + size, x : x + size] = value
    return out


def test_identical_labels_score_one() -> None:
    labels = _square((8, 8), 0, 0, 3, 1, _square((8, 8), 4, 4, 3, 2))
    scores = score_image(labels, labels)
    assert (scores.pixel_accuracy, scores.foreground_iou, scores.dice, scores.dsb_score, scores.ap50) == (1, 1, 1, 1, 1)


def test_iou_below_half_is_no_match() -> None:
    truth = _square((4, 4), 0, 0, 2)          # 4 pixels
    pred = np.zeros((4, 4), np.int32)
    pred[0, 0:2] = 1                          # covers 2 of them
    pred[3, 3] = 1                            # plus 1 extra: IoU = 2 / 5 = 0.4
    assert iou_matrix(truth, pred)[0, 0] == pytest.approx(0.4)
    m = matching(truth, pred)
    assert (m.tp, m.fp, m.fn) == (0, 1, 1)
    assert pixel_accuracy(truth, pred) == pytest.approx(13 / 16)   # 2 wrong + 1 wrong of 16 -> 3 wrong
    assert foreground_iou(truth, pred) == pytest.approx(2 / 5)
    assert dice(truth, pred) == pytest.approx(2 * 2 / (4 + 3))


def test_iou_exactly_half_is_not_a_match() -> None:
    truth = _square((4, 4), 0, 0, 2)          # 4 pixels
    pred = np.zeros((4, 4), np.int32)
    pred[0:2, 0] = 1                          # 2 inside -> IoU 2 / 4 = 0.5, not > 0.5
    assert average_precision(truth, pred) == 0.0


def test_dsb_score_of_two_objects_by_hand() -> None:
    # object A: IoU 0.6 (6 of 10 true pixels, no extra); object B: IoU 0.9 (9 of 10).
    truth = np.zeros((10, 10), np.int32)
    truth[0, :10] = 1
    truth[5, :10] = 2
    pred = np.zeros((10, 10), np.int32)
    pred[0, :6] = 7                            # ids need not be consecutive
    pred[5, :9] = 300
    iou = iou_matrix(truth, pred)
    assert iou[0, 0] == pytest.approx(0.6) and iou[1, 1] == pytest.approx(0.9)
    # thresholds 0.50, 0.55: both match -> 1; 0.60..0.85 (6 values): B only -> 1 / (1 + 1 + 1) = 1/3;
    # 0.90, 0.95: none -> 0 / 4 = 0. Mean = (2 * 1 + 6 / 3 + 0) / 10 = 0.4
    assert dsb_score(truth, pred) == pytest.approx(0.4)


def test_empty_conventions_and_shape_errors() -> None:
    empty = np.zeros((4, 4), np.int32)
    one = _square((4, 4), 0, 0, 2)
    assert dsb_score(empty, empty) == 1.0 and dsb_score(empty, one) == 0.0 and dsb_score(one, empty) == 0.0
    with pytest.raises(ValueError, match="shape"):
        dsb_score(one, np.zeros((4, 5), np.int32))


def test_iou_matrix_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, (30, 30))
    pred = rng.integers(0, 4, (30, 30)) * 3
    iou = iou_matrix(truth, pred)
    for i, t in enumerate(np.unique(truth[truth > 0])):
        for j, p in enumerate(np.unique(pred[pred > 0])):
            a, b = truth == t, pred == p
            assert iou[i, j] == pytest.approx((a & b).sum() / (a | b).sum())

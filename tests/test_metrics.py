"""nuclei.core.metrics against small cases computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import numpy as np
import pytest

from nuclei.core.metrics import (
    DSB_THRESHOLDS,
    ImageScores,
    average_precision,
    dice,
    dsb_score,
    foreground_iou,
    iou_matrix,
    matching,
    pixel_accuracy,
    score_image,
    summarize,
)


def _two_rows(first: int = 1, second: int = 2) -> np.ndarray:
    """10x10 truth: object ``first`` is row 0 (10 px), object ``second`` is row 5 (10 px)."""
    truth = np.zeros((10, 10), np.int32)
    truth[0, :] = first
    truth[5, :] = second
    return truth


def _two_rows_pred(first: int = 1, second: int = 2) -> np.ndarray:
    """Prediction: row 0 cols 0-5 (IoU 6/10 = 0.6 with row 0) and row 5 cols 0-8 (IoU 9/10 = 0.9)."""
    pred = np.zeros((10, 10), np.int32)
    pred[0, :6] = first
    pred[5, :9] = second
    return pred


def _square_and_partial() -> tuple[np.ndarray, np.ndarray]:
    """4x4: a true 2x2 square (4 px); a prediction on 2 of its pixels plus 1 outside (3 px)."""
    truth = np.zeros((4, 4), np.int32)
    truth[0:2, 0:2] = 1
    pred = np.zeros((4, 4), np.int32)
    pred[0, 0:2] = 1
    pred[3, 3] = 1
    return truth, pred


def test_dsb_thresholds_are_the_ten_bowl_values() -> None:
    assert DSB_THRESHOLDS.tolist() == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]


def test_identical_label_images_score_one() -> None:
    labels = _two_rows()
    scores = score_image(labels, labels)
    assert scores == ImageScores(1.0, 1.0, 1.0, 1.0, 1.0, 2, 2)
    m = matching(labels, labels, 0.95)
    assert (m.tp, m.fp, m.fn, m.precision, m.recall, m.f1, m.ap) == (2, 0, 0, 1.0, 1.0, 1.0, 1.0)
    assert np.array_equal(iou_matrix(labels, labels), np.eye(2))


def test_iou_below_half_is_no_match_and_pixel_scores() -> None:
    truth, pred = _square_and_partial()
    # intersection 2, union 4 + 3 - 2 = 5 -> IoU 2/5 = 0.4
    assert iou_matrix(truth, pred).tolist() == [[0.4]]
    m = matching(truth, pred)
    assert (m.tp, m.fp, m.fn, m.n_true, m.n_pred, m.thresh) == (0, 1, 1, 1, 1, 0.5)
    assert (m.precision, m.recall, m.f1, m.ap) == (0.0, 0.0, 0.0, 0.0)
    # wrong pixels: (1,0), (1,1) missed, (3,3) extra -> 3 of 16 -> 13/16 = 0.8125
    assert pixel_accuracy(truth, pred) == 0.8125
    assert foreground_iou(truth, pred) == pytest.approx(0.4)  # 2 / 5
    assert dice(truth, pred) == pytest.approx(4 / 7)  # 2 * 2 / (4 + 3)
    assert dsb_score(truth, pred) == 0.0 and average_precision(truth, pred) == 0.0


def test_pixel_scores_ignore_ids_and_accept_boolean_masks() -> None:
    truth, pred = _square_and_partial()
    assert pixel_accuracy(truth * 9, pred > 0) == 0.8125  # only > 0 matters
    assert foreground_iou(truth > 0, pred * 4) == pytest.approx(0.4)
    relabelled = _two_rows(3, 8)
    assert (pixel_accuracy(_two_rows(), relabelled), dice(_two_rows(), relabelled)) == (1.0, 1.0)


def test_iou_exactly_half_is_not_a_match() -> None:
    truth = np.zeros((4, 4), np.int32)
    truth[0:2, 0:2] = 1  # 4 px
    pred = np.zeros((4, 4), np.int32)
    pred[0:2, 0] = 1  # 2 px inside: IoU 2 / 4 = 0.5, and 0.5 > 0.5 is false
    assert iou_matrix(truth, pred).tolist() == [[0.5]]
    m = matching(truth, pred, 0.5)
    assert (m.tp, m.fp, m.fn) == (0, 1, 1)
    assert average_precision(truth, pred) == 0.0 and dsb_score(truth, pred) == 0.0


def test_iou_three_quarters_matches_up_to_070_only() -> None:
    truth = np.zeros((4, 4), np.int32)
    truth[0:2, 0:2] = 1
    pred = truth.copy()
    pred[1, 1] = 0  # 3 px inside: IoU 3/4 = 0.75
    # matches at 0.50, 0.55, 0.60, 0.65, 0.70 (5 of 10; 0.75 > 0.75 is false) -> 5 / 10
    assert dsb_score(truth, pred) == 0.5
    assert matching(truth, pred, 0.7).tp == 1 and matching(truth, pred, 0.75).tp == 0


def test_dsb_score_of_two_objects_by_hand() -> None:
    truth, pred = _two_rows(), _two_rows_pred()
    assert iou_matrix(truth, pred) == pytest.approx(np.array([[0.6, 0.0], [0.0, 0.9]]))
    # 0.50, 0.55: both match -> 2 / 2 = 1
    # 0.60 .. 0.85 (6 values): only IoU 0.9 matches -> 1 / (1 + 1 + 1) = 1/3
    # 0.90, 0.95: none -> 0 / (0 + 2 + 2) = 0
    # mean = (2 * 1 + 6 * 1/3 + 2 * 0) / 10 = 4 / 10 = 0.4
    assert dsb_score(truth, pred) == pytest.approx(0.4)
    assert average_precision(truth, pred) == 1.0
    m = matching(truth, pred, 0.6)
    assert (m.tp, m.fp, m.fn, m.ap) == (1, 1, 1, pytest.approx(1 / 3))


def test_dsb_score_with_a_false_positive() -> None:
    truth, pred = _two_rows(), _two_rows_pred()
    pred[8, 0:2] = 5  # a third prediction, touching no true object
    # 0.50, 0.55: tp 2 fp 1 fn 0 -> 2/3;  0.60 .. 0.85: tp 1 fp 2 fn 1 -> 1/4;  0.90, 0.95: tp 0 -> 0
    # mean = (2 * 2/3 + 6 * 1/4) / 10 = (4/3 + 3/2) / 10 = 17/60
    assert dsb_score(truth, pred) == pytest.approx(17 / 60)
    m = matching(truth, pred)
    assert (m.tp, m.fp, m.fn, m.n_true, m.n_pred) == (2, 1, 0, 2, 3)
    assert m.precision == pytest.approx(2 / 3) and m.recall == 1.0
    assert m.f1 == pytest.approx(0.8)  # 2 * 2 / (2 + 3)
    assert m.ap == pytest.approx(2 / 3)  # 2 / (2 + 1 + 0)


def test_non_consecutive_ids_give_the_same_scores() -> None:
    plain = (_two_rows(1, 2), _two_rows_pred(1, 2))
    sparse = (_two_rows(7, 300), _two_rows_pred(300, 7))  # gaps, and the prediction's ids in reverse order
    assert np.allclose(iou_matrix(*sparse), [[0.0, 0.6], [0.9, 0.0]])  # columns in id order: 7, then 300
    assert dsb_score(*sparse) == dsb_score(*plain) == pytest.approx(0.4)
    assert score_image(*sparse) == score_image(*plain)


def test_empty_conventions() -> None:
    empty = np.zeros((4, 4), np.int32)
    one, _ = _square_and_partial()
    assert iou_matrix(empty, empty).shape == (0, 0) and iou_matrix(empty, one).shape == (0, 1)
    assert dsb_score(empty, empty) == 1.0 and average_precision(empty, empty) == 1.0
    assert dsb_score(empty, one) == 0.0 and dsb_score(one, empty) == 0.0
    assert average_precision(empty, one) == 0.0 and average_precision(one, empty) == 0.0
    m = matching(empty, empty)
    assert (m.tp, m.fp, m.fn, m.precision, m.recall, m.f1, m.ap) == (0, 0, 0, 1.0, 1.0, 1.0, 1.0)
    assert (pixel_accuracy(empty, empty), foreground_iou(empty, empty), dice(empty, empty)) == (1.0, 1.0, 1.0)
    assert (foreground_iou(empty, one), dice(empty, one)) == (0.0, 0.0)


def test_invalid_inputs_raise() -> None:
    one, _ = _square_and_partial()
    with pytest.raises(ValueError, match=r"\(4, 4\) and \(4, 5\)"):
        dsb_score(one, np.zeros((4, 5), np.int32))
    with pytest.raises(ValueError, match="shape"):
        pixel_accuracy(one, np.zeros((5, 4), np.int32))
    with pytest.raises(ValueError, match="2-D"):
        iou_matrix(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="threshold"):
        matching(one, one, 0.3)


def test_score_image_and_summarize() -> None:
    truth, pred = _square_and_partial()
    partial = score_image(truth, pred)
    assert partial.as_dict() == pytest.approx({
        "pixel_accuracy": 0.8125, "foreground_iou": 0.4, "dice": 4 / 7, "dsb_score": 0.0, "ap50": 0.0,
        "n_true": 1.0, "n_pred": 1.0,
    })
    perfect = score_image(_two_rows(), _two_rows())
    summary = summarize([perfect, partial])
    # means of (1, 0.8125), (1, 0.4), (1, 4/7), (1, 0), (1, 0), (2, 1), (2, 1)
    assert summary == pytest.approx({
        "n_images": 2, "pixel_accuracy": 0.90625, "foreground_iou": 0.7, "dice": 11 / 14,
        "dsb_score": 0.5, "ap50": 0.5, "n_true": 1.5, "n_pred": 1.5,
    })
    assert summarize([]) == {"n_images": 0}


def test_iou_matrix_equals_brute_force() -> None:
    rng = np.random.default_rng(42)
    truth = rng.choice([0, 3, 4, 11, 250], size=(40, 50))
    pred = rng.choice([0, 0, 2, 9, 17], size=(40, 50))
    iou = iou_matrix(truth, pred)
    t_ids, p_ids = np.unique(truth[truth > 0]), np.unique(pred[pred > 0])
    expected = np.zeros((t_ids.size, p_ids.size))
    for i, t in enumerate(t_ids):
        for j, p in enumerate(p_ids):
            a, b = truth == t, pred == p
            expected[i, j] = np.count_nonzero(a & b) / np.count_nonzero(a | b)
    assert iou.dtype == np.float64 and iou.shape == (4, 3)
    np.testing.assert_allclose(iou, expected, rtol=0, atol=1e-12)


def test_sparse_overlap_counting_agrees_with_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    from nuclei.core import metrics as metrics

    rng = np.random.default_rng(7)
    truth = rng.choice([0, 3, 4, 11, 250], size=(40, 50))
    pred = truth.copy()
    pred[rng.random(truth.shape) < 0.2] = 0  # objects keep about 80 % of their pixels: IoU near 0.8
    dense = score_image(truth, pred), matching(truth, pred, 0.75)
    monkeypatch.setattr(metrics, "_DENSE_MAX", 0)  # force the sparse path
    assert (score_image(truth, pred), matching(truth, pred, 0.75)) == dense
    assert dense[0].dsb_score > 0

"""Segmentation quality metrics, pure numpy: pixel scores and the 2018 Data Science Bowl instance score.

Pixel scores (accuracy, foreground IoU, Dice) treat anything > 0 as nucleus. Instance scores match true and
predicted objects by IoU: a match when IoU > t (strictly, as the Data Science Bowl defines it). For t >= 0.5
an object can overlap more than half of at most one other object, so matches are unique and thresholding the
IoU matrix is enough: no assignment problem to solve.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from skimage.segmentation import relabel_sequential

#: IoU thresholds of the 2018 Data Science Bowl: 0.50, 0.55, ..., 0.95 (rounded so that 0.6 is exactly 0.6).
DSB_THRESHOLDS: np.ndarray = np.round(np.arange(0.5, 1.0, 0.05), 2)


def _check_pair(true: np.ndarray, pred: np.ndarray) -> None:
    """Raise ValueError unless both images are 2-D and of one shape (a silent broadcast would mislead)."""
    if true.shape != pred.shape:
        raise ValueError(f"true and predicted images differ in shape: {true.shape} and {pred.shape}")
    if true.ndim != 2:
        raise ValueError(f"expected 2-D images, got shape {true.shape}")


def _ratio(num: float, den: float, empty: float) -> float:
    """num / den, or ``empty`` when den is 0 (the score of a case with nothing to count)."""
    return empty if den == 0 else float(num) / float(den)


# --- pixel scores ---------------------------------------------------------------------------------------


def _counts(true_mask: np.ndarray, pred_mask: np.ndarray) -> tuple[int, int, int, int]:
    """Foreground pixel counts: intersection, union, |true|, |pred|."""
    _check_pair(true_mask, pred_mask)
    t, p = np.asarray(true_mask) > 0, np.asarray(pred_mask) > 0
    return (int(np.count_nonzero(t & p)), int(np.count_nonzero(t | p)),
            int(np.count_nonzero(t)), int(np.count_nonzero(p)))


def _accuracy(inter: int, union: int, size: int) -> float:
    """Right calls over all pixels: the wrong ones are the union less the intersection."""
    return _ratio(size - (union - inter), size, empty=1.0)


def pixel_accuracy(true_mask: np.ndarray, pred_mask: np.ndarray) -> float:
    """Share of pixels whose nucleus/background call is right (masks or label images; > 0 is nucleus)."""
    inter, union, _, _ = _counts(true_mask, pred_mask)
    return _accuracy(inter, union, true_mask.size)


def foreground_iou(true_mask: np.ndarray, pred_mask: np.ndarray) -> float:
    """|T and P| / |T or P| over nucleus pixels; 1.0 when both are empty (nothing to find, nothing found)."""
    inter, union, _, _ = _counts(true_mask, pred_mask)
    return _ratio(inter, union, empty=1.0)


def dice(true_mask: np.ndarray, pred_mask: np.ndarray) -> float:
    """2 |T and P| / (|T| + |P|) over nucleus pixels; 1.0 when both are empty."""
    inter, _, n_t, n_p = _counts(true_mask, pred_mask)
    return _ratio(2 * inter, n_t + n_p, empty=1.0)


# --- instance scores ------------------------------------------------------------------------------------


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Flat labels mapped to 0..n (0 = background, objects 1..n in id order), and n: ids may have gaps."""
    relabelled, _, _ = relabel_sequential(np.asarray(labels).reshape(-1))
    return relabelled.astype(np.intp, copy=False), int(relabelled.max(initial=0))


def _dense_iou(t: np.ndarray, n_true: int, p: np.ndarray, n_pred: int) -> np.ndarray:
    """The (n_true, n_pred) IoU table of relabelled flat images, from one bincount over pair indices."""
    width = n_pred + 1
    overlap = np.bincount(t * width + p, minlength=(n_true + 1) * width).reshape(n_true + 1, width)
    true_area = overlap.sum(axis=1)[1:, None]  # row sums include the overlap with background: full areas
    pred_area = overlap.sum(axis=0)[None, 1:]
    inter = overlap[1:, 1:].astype(np.float64)
    return inter / (true_area + pred_area - inter)  # every object has a pixel: the union is never 0


def _sparse_iou(t: np.ndarray, n_true: int, p: np.ndarray, n_pred: int) -> np.ndarray:
    """IoUs of the overlapping pairs only (1-D), for images with too many objects for a dense table."""
    both = (t > 0) & (p > 0)
    codes, inter = np.unique(t[both] * (n_pred + 1) + p[both], return_counts=True)
    i, j = np.divmod(codes, n_pred + 1)
    true_area, pred_area = np.bincount(t, minlength=n_true + 1), np.bincount(p, minlength=n_pred + 1)
    return inter / (true_area[i] + pred_area[j] - inter)


def iou_matrix(true_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """IoU of every true object (rows) with every predicted object (columns), background excluded.

    One ``np.bincount`` over the pair index ``true * (n_pred + 1) + pred`` gives every overlap at once, so the
    cost is one pass over the pixels whatever the number of objects. Rows and columns follow sorted label ids.
    """
    _check_pair(true_labels, pred_labels)
    t, n_true = _relabel(true_labels)
    p, n_pred = _relabel(pred_labels)
    return _dense_iou(t, n_true, p, n_pred)


#: Pair-table entries (128 MiB as int64) above which instance scores count overlaps sparsely instead.
_DENSE_MAX = 1 << 24


@dataclass(frozen=True)
class _Candidates:
    """The IoUs above 0.5 (the only ones a threshold >= 0.5 can pass) and the object counts of one image."""

    iou: np.ndarray
    n_true: int
    n_pred: int


def _candidates(true_labels: np.ndarray, pred_labels: np.ndarray) -> _Candidates:
    """Match candidates of one image: a dense bincount table, or sparse counts when objects are myriad."""
    _check_pair(true_labels, pred_labels)
    t, n_true = _relabel(true_labels)
    p, n_pred = _relabel(pred_labels)
    dense = (n_true + 1) * (n_pred + 1) <= _DENSE_MAX
    iou = _dense_iou(t, n_true, p, n_pred) if dense else _sparse_iou(t, n_true, p, n_pred)
    return _Candidates(iou[iou > 0.5], n_true, n_pred)


@dataclass(frozen=True)
class Matching:
    """Object matching at one IoU threshold.

    ``ap`` is TP / (TP + FP + FN), what the Data Science Bowl calls the precision at a threshold. Ratios with
    nothing to count are 1.0 when both images are empty and 0.0 otherwise.
    """

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    ap: float
    n_true: int
    n_pred: int
    thresh: float


def _check_thresh(thresh: float) -> None:
    """Below IoU 0.5 one object may match several, which plain thresholding does not resolve."""
    if not 0.5 <= thresh <= 1.0:
        raise ValueError(f"IoU threshold must be in [0.5, 1], got {thresh}")


def _true_positives(cand: _Candidates, thresholds: np.ndarray) -> np.ndarray:
    """Matches at each threshold: pairs with IoU > t (unique for t >= 0.5, see the module docstring)."""
    return np.count_nonzero(cand.iou[:, None] > thresholds[None, :], axis=0)


def _ap(tp: int, n_true: int, n_pred: int) -> float:
    """TP / (TP + FP + FN); 1.0 when both images are empty, 0.0 when only one is."""
    return _ratio(tp, n_true + n_pred - tp, empty=1.0)


def _matching(cand: _Candidates, thresh: float) -> Matching:
    """Build a Matching from the match candidates already computed."""
    n_true, n_pred = cand.n_true, cand.n_pred
    tp = int(_true_positives(cand, np.array([thresh]))[0])
    both_empty = float(n_true == 0 and n_pred == 0)
    return Matching(
        tp=tp, fp=n_pred - tp, fn=n_true - tp,
        precision=_ratio(tp, n_pred, empty=both_empty),
        recall=_ratio(tp, n_true, empty=both_empty),
        f1=_ratio(2 * tp, n_true + n_pred, empty=1.0),
        ap=_ap(tp, n_true, n_pred),
        n_true=n_true, n_pred=n_pred, thresh=float(thresh),
    )


def matching(true_labels: np.ndarray, pred_labels: np.ndarray, thresh: float = 0.5) -> Matching:
    """Match true and predicted objects: a pair matches when IoU > thresh (strictly); thresh in [0.5, 1]."""
    _check_thresh(thresh)
    return _matching(_candidates(true_labels, pred_labels), thresh)


def _dsb(cand: _Candidates) -> float:
    """Mean over DSB_THRESHOLDS of TP / (TP + FP + FN), from one image's candidates."""
    tps = _true_positives(cand, DSB_THRESHOLDS)
    return float(np.mean([_ap(int(tp), cand.n_true, cand.n_pred) for tp in tps]))


def dsb_score(true_labels: np.ndarray, pred_labels: np.ndarray) -> float:
    """The 2018 Data Science Bowl score of one image: mean over IoU 0.50..0.95 of TP / (TP + FP + FN).

    Both images empty score 1.0; one empty and the other not score 0.0.
    """
    return _dsb(_candidates(true_labels, pred_labels))


def average_precision(true_labels: np.ndarray, pred_labels: np.ndarray, thresh: float = 0.5) -> float:
    """TP / (TP + FP + FN) at one IoU threshold: 'AP@0.5' as the DSB community reports it."""
    return matching(true_labels, pred_labels, thresh).ap


# --- per image and over images --------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageScores:
    """Every score of one image: pixel scores, DSB score, AP@0.5 and the object counts."""

    pixel_accuracy: float
    foreground_iou: float
    dice: float
    dsb_score: float
    ap50: float
    n_true: int
    n_pred: int

    def as_dict(self) -> dict[str, float]:
        """Field name to value, all as floats (for CSV rows and JSON)."""
        return {k: float(v) for k, v in asdict(self).items()}


def score_image(true_labels: np.ndarray, pred_labels: np.ndarray) -> ImageScores:
    """Every score of one image, the pixel counts and the IoUs each computed once."""
    inter, union, n_t, n_p = _counts(true_labels, pred_labels)
    cand = _candidates(true_labels, pred_labels)
    return ImageScores(
        pixel_accuracy=_accuracy(inter, union, true_labels.size),
        foreground_iou=_ratio(inter, union, empty=1.0),
        dice=_ratio(2 * inter, n_t + n_p, empty=1.0),
        dsb_score=_dsb(cand),
        ap50=_matching(cand, 0.5).ap,
        n_true=cand.n_true,
        n_pred=cand.n_pred,
    )


def summarize(scores: Sequence[ImageScores]) -> dict[str, float]:
    """Mean of each score over the images, plus ``n_images`` (only that when there are none)."""
    if not scores:
        return {"n_images": 0}
    rows = [s.as_dict() for s in scores]
    means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    return {"n_images": len(scores), **means}

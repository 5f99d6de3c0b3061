"""Segmentation quality metrics, pure numpy: pixel scores and the 2018 Data Science Bowl instance score."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

DSB_THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)  # 0.50, 0.55, ..., 0.95


def _check(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two 2-D images of one shape, got {a.shape} and {b.shape}")


def pixel_accuracy(true_mask: np.ndarray, pred_mask: np.ndarray) -> float:
    """Share of pixels whose nucleus/background call is right."""
    _check(true_mask, pred_mask)
    return float(np.mean((true_mask > 0) == (pred_mask > 0)))


def foreground_iou(true_mask: np.ndarray, pred_mask: np.ndarray) -> float:
    """Intersection over union of the nucleus pixels (1.0 when both are empty)."""
    _check(true_mask, pred_mask)
    t, p = true_mask > 0, pred_mask > 0
    union = np.count_nonzero(t | p)
    return 1.0 if union == 0 else np.count_nonzero(t & p) / union


def dice(true_mask: np.ndarray, pred_mask: np.ndarray) -> float:
    """2|T and P| / (|T| + |P|) over nucleus pixels (1.0 when both are empty)."""
    _check(true_mask, pred_mask)
    t, p = true_mask > 0, pred_mask > 0
    total = np.count_nonzero(t) + np.count_nonzero(p)
    return 1.0 if total == 0 else 2 * np.count_nonzero(t & p) / total


def iou_matrix(true_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """IoU of every true object (rows) with every predicted object (columns), from one bincount."""
    _check(true_labels, pred_labels)
    _, t = np.unique(true_labels, return_inverse=True)
    _, p = np.unique(pred_labels, return_inverse=True)
    t, p = t.reshape(-1), p.reshape(-1)
    t_has_bg, p_has_bg = bool((true_labels == 0).any()), bool((pred_labels == 0).any())
    n_t, n_p = int(t.max()) + 1, int(p.max()) + 1
    overlap = np.bincount(t * n_p + p, minlength=n_t * n_p).reshape(n_t, n_p).astype(np.float64)
    true_area, pred_area = overlap.sum(axis=1, keepdims=True), overlap.sum(axis=0, keepdims=True)
    rows, cols = slice(int(t_has_bg), None), slice(int(p_has_bg), None)  # drop the background row/column
    overlap = overlap[rows, cols]
    union = true_area[rows] + pred_area[:, cols] - overlap
    return np.divide(overlap, union, out=np.zeros_like(overlap), where=union > 0)


@dataclass(frozen=True)
class Matching:
    """Object matching at one IoU threshold; ``ap`` is TP / (TP + FP + FN), the DSB 'precision'."""

    thresh: float
    tp: int
    fp: int
    fn: int
    n_true: int
    n_pred: int

    @property
    def precision(self) -> float:
        return self.tp / self.n_pred if self.n_pred else float(self.n_true == 0)

    @property
    def recall(self) -> float:
        return self.tp / self.n_true if self.n_true else float(self.n_pred == 0)

    @property
    def f1(self) -> float:
        total = self.n_true + self.n_pred
        return 2 * self.tp / total if total else 1.0

    @property
    def ap(self) -> float:
        total = self.tp + self.fp + self.fn
        return self.tp / total if total else 1.0


def _match(iou: np.ndarray, thresh: float) -> Matching:
    """For thresholds >= 0.5 each object matches at most one other, so thresholding the matrix suffices."""
    n_true, n_pred = iou.shape
    tp = int(np.count_nonzero(iou > thresh))
    return Matching(float(thresh), tp, n_pred - tp, n_true - tp, n_true, n_pred)


def matching(true_labels: np.ndarray, pred_labels: np.ndarray, thresh: float = 0.5) -> Matching:
    """Match objects when IoU > thresh (strictly, as the Data Science Bowl defines it)."""
    if thresh < 0.5:
        raise ValueError("thresholds below 0.5 allow one object to match several; not supported")
    return _match(iou_matrix(true_labels, pred_labels), thresh)


def dsb_score(true_labels: np.ndarray, pred_labels: np.ndarray) -> float:
    """The 2018 Data Science Bowl score of one image: mean over IoU 0.50..0.95 of TP / (TP + FP + FN)."""
    iou = iou_matrix(true_labels, pred_labels)
    return float(np.mean([_match(iou, t).ap for t in DSB_THRESHOLDS]))


def average_precision(true_labels: np.ndarray, pred_labels: np.ndarray, thresh: float = 0.5) -> float:
    """TP / (TP + FP + FN) at one IoU threshold ('AP@0.5' as the DSB community reports it)."""
    return matching(true_labels, pred_labels, thresh).ap


@dataclass(frozen=True)
class ImageScores:
    pixel_accuracy: float
    foreground_iou: float
    dice: float
    dsb_score: float
    ap50: float
    n_true: int
    n_pred: int

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def score_image(true_labels: np.ndarray, pred_labels: np.ndarray) -> ImageScores:
    """Every score of one image, the IoU matrix computed once."""
    iou = iou_matrix(true_labels, pred_labels)
    return ImageScores(
        pixel_accuracy=pixel_accuracy(true_labels, pred_labels),
        foreground_iou=foreground_iou(true_labels, pred_labels),
        dice=dice(true_labels, pred_labels),
        dsb_score=float(np.mean([_match(iou, t).ap for t in DSB_THRESHOLDS])),
        ap50=_match(iou, 0.5).ap,
        n_true=iou.shape[0],
        n_pred=iou.shape[1],
    )


def summarize(scores: Sequence[ImageScores]) -> dict[str, float]:
    """Mean of each score over images, plus the image count."""
    if not scores:
        return {"n_images": 0}
    keys = scores[0].as_dict().keys()
    return {"n_images": len(scores), **{k: float(np.mean([s.as_dict()[k] for s in scores])) for k in keys}}

"""Per-nucleus measurements from labels and the image, a block of rows at a time."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from nuclei.core.labels import dense_labels as _dense_labels
from nuclei.core.normalize import channel_mean

MEASUREMENT_COLUMNS: tuple[str, ...] = (
    "label",
    "area",
    "centroid_y",
    "centroid_x",
    "bbox_min_y",
    "bbox_min_x",
    "bbox_max_y",
    "bbox_max_x",
    "mean_intensity",
)

_BLOCK_ROWS = 512  # measure() sums this many rows at a time


def measure(labels: NDArray[Any], image: NDArray[Any]) -> NDArray[np.float64]:
    """One row per nucleus, in label order, with the columns of `MEASUREMENT_COLUMNS`.

    Centroids are pixel-index means; bbox max is exclusive (like regionprops); the intensity is the
    mean over the nucleus of the image averaged across its channels, the image scaled as the model sees it
    (`to_float_rgb`: by its dtype's range, alpha dropped; float images are taken as [0, 1]). Sums run over
    blocks of rows, so memory stays near the size of the inputs even for whole-slide images.
    """
    arr = np.asarray(labels)
    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ValueError(f"labels must be a 2-D integer array, got {arr.dtype} {arr.shape}")
    if np.shape(image)[:2] != arr.shape:
        raise ValueError(f"image shape {np.shape(image)} does not match labels shape {arr.shape}")
    if arr.size and int(arr.min()) < 0:
        raise ValueError("labels must be non-negative")
    top = int(arr.max(initial=0))
    if top > 2 * arr.size:  # arbitrary huge ids: measure a dense relabelling, then put the ids back
        dense, ids = _dense_labels(arr)
        table = measure(dense, image)
        table[:, 0] = ids
        return table
    sums = np.zeros((4, top + 1), dtype=np.float64)  # area, sum of rows, sum of columns, sum of intensity
    height, width = arr.shape
    for y0 in range(0, height, _BLOCK_ROWS):
        y1 = min(height, y0 + _BLOCK_ROWS)
        flat = arr[y0:y1].ravel().astype(np.intp)
        gray = channel_mean(np.asarray(image[y0:y1]))
        sums[0] += np.bincount(flat, minlength=top + 1)
        rows = np.repeat(np.arange(y0, y1, dtype=np.float64), width)
        sums[1] += np.bincount(flat, weights=rows, minlength=top + 1)
        sums[2] += np.bincount(flat, weights=np.tile(np.arange(width, dtype=np.float64), y1 - y0),
                               minlength=top + 1)
        sums[3] += np.bincount(flat, weights=gray.ravel(), minlength=top + 1)
    ids = np.flatnonzero(sums[0, 1:]) + 1
    table = np.zeros((ids.size, len(MEASUREMENT_COLUMNS)), dtype=np.float64)
    if ids.size == 0:
        return table
    area = sums[0, ids]
    table[:, 0] = ids
    table[:, 1] = area
    table[:, 2] = sums[1, ids] / area
    table[:, 3] = sums[2, ids] / area
    slices = ndi.find_objects(arr.astype(np.int32, copy=False) if arr.dtype == np.bool_ else arr)
    table[:, 4:8] = [(slices[i - 1][0].start, slices[i - 1][1].start, slices[i - 1][0].stop, slices[i - 1][1].stop)
                     for i in ids]
    table[:, 8] = sums[3, ids] / area
    return table


def median_diameter(label_images: Iterable[NDArray[Any]]) -> float:
    """Median equivalent diameter (px) of the nuclei in these label images (0 when there are none): the
    nucleus size a model learnt, or the one to give `--diameter`."""
    counts = [np.bincount(labels.ravel())[1:] for labels in label_images]
    areas = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    areas = areas[areas > 0]
    return float(np.median(2.0 * np.sqrt(areas / np.pi))) if areas.size else 0.0

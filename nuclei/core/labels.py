"""Label-image helpers shared by post-processing, training targets and measurement."""

from __future__ import annotations

from typing import Any

import edt as edt_package
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi


def edt(mask: NDArray[np.bool_]) -> NDArray[np.float32]:
    """Exact Euclidean distance to the nearest False pixel.

    The `edt` package (seung-lab): equal to scipy's distance_transform_edt in float32 on every pixel tested
    and deterministic to the last bit (watershed ties depend on it; OpenCV's DIST_MASK_PRECISE is not, run
    to run), about 4x faster than scipy. One thread: runs already put a batch on each core.

    Beyond the image edge counts as foreground, except when there is no False pixel at all: then the
    edge is taken as the border.
    """
    if mask.size == 0:
        return np.zeros(mask.shape, np.float32)
    if mask.all():
        return edt(np.pad(mask, 1, constant_values=False))[1:-1, 1:-1]
    if mask.ndim != 2:
        return np.asarray(ndi.distance_transform_edt(mask), dtype=np.float32)
    return np.asarray(edt_package.edt(np.ascontiguousarray(mask, dtype=np.bool_), parallel=1), dtype=np.float32)


def dense_labels(labels: NDArray[Any]) -> tuple[NDArray[np.intp], NDArray[np.int64]]:
    """Relabel to 0..K (0 stays background) and return the original id of each of 1..K, in order.

    Works whatever the ids are (gaps, huge values), so the vectorised code below can index by label.
    """
    arr = np.asarray(labels)
    if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        raise ValueError(f"labels must be an integer array, got {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {arr.shape}")
    flat = arr.astype(np.int64, copy=False).ravel()
    if flat.size == 0:
        return np.zeros(arr.shape, np.intp), np.zeros(0, np.int64)
    if flat.min() < 0:
        raise ValueError("labels must be non-negative")
    top = int(flat.max())
    if top <= 2 * flat.size:
        ids = np.flatnonzero(np.bincount(flat, minlength=top + 1)[1:]).astype(np.int64) + 1
        lut = np.zeros(top + 1, np.intp)
        lut[ids] = np.arange(1, ids.size + 1)
        return lut[flat].reshape(arr.shape), ids
    present, inverse = np.unique(flat, return_inverse=True)
    if present[0] == 0:
        return inverse.astype(np.intp).reshape(arr.shape), present[1:].astype(np.int64)
    return (inverse + 1).astype(np.intp).reshape(arr.shape), present.astype(np.int64)

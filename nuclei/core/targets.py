"""Training targets from ground-truth instance labels: nucleus cores and the contact zones of touching nuclei."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from nuclei.core.labels import dense_labels as _dense_labels
from nuclei.core.labels import edt as _edt


def core_targets(labels: NDArray[Any]) -> NDArray[np.bool_]:
    """Training target for the core channel from ground-truth instance labels.

    A pixel is core when its distance to its own nucleus's border (touching neighbours included) is
    at least half of that nucleus's largest such distance; every nucleus gets at least one core pixel.
    """
    dense, ids = _dense_labels(labels)
    inside = dense > 0
    if ids.size == 0:
        return np.zeros(dense.shape, dtype=bool)
    # Zeroing each object's inner rim separates touching nuclei, so the distance is to the own border.
    distance = _edt(inside & ~find_boundaries(dense, mode="inner"))
    peak = np.zeros(ids.size + 1, dtype=np.float32)
    np.maximum.at(peak, dense[inside], distance[inside])  # per-nucleus max, unbuffered and fast
    return np.asarray(inside & (distance >= 0.5 * peak[dense]))


def contact_zone(labels: NDArray[Any], radius: int = 2) -> NDArray[np.bool_]:
    """Pixels within `radius` (a square window) of two different nuclei: the seams of touching nuclei and the
    narrow gaps between close ones, where a U-Net most easily merges them (the U-Net paper's border weights)."""
    dense, ids = _dense_labels(labels)
    size, beyond = 2 * radius + 1, ids.size + 1  # background counts as `beyond` for the minimum
    highest = ndi.maximum_filter(dense, size=size)
    lowest = ndi.minimum_filter(np.where(dense > 0, dense, beyond), size=size)
    return np.asarray((lowest < highest) & (highest > 0) & (lowest < beyond))

"""Debris: small bright specks on the background that a network trained on nuclei takes for small nuclei.

By size alone a speck cannot be told from a small nucleus: DSB2018's fields label micronuclei and fragments a
twentieth of their neighbours' area, and a size cut of 0.1x the median area costs its held-out 360x360 fields
0.030 AP@0.5. Measured on the generalist's validation and held-out groups and on 40 specks of 3-8 px added to 18
held-out BBBC039 fields (`python -m benchmarks microscope`; BENCHMARKS section 8a), an object is debris when it is
all of these:

- small: under `DEBRIS_AREA` of the image's typical nucleus, the area-weighted median (the area of the object
  holding the median nucleus pixel), which a field with more specks than nuclei cannot pull down;
- bright: its mean intensity above the median nucleus's (small dim objects are fragments or out-of-focus nuclei);
- alone: more than `DEBRIS_GAP` typical diameters from any other object (micronuclei and apoptotic fragments lie
  beside a nucleus, and DSB2018 labels small fragments in clusters: counting only big neighbours cost its 360x360
  fields 0.003 more);
- whole: not cut by the image's edge (a nucleus the edge cuts is small and real).

Nuclei must be brighter than their background (fluorescence); stained brightfield is left alone.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from nuclei.core.postprocess import keep_only

DEBRIS_AREA = 0.1  # of the typical nucleus's area
DEBRIS_GAP = 0.2  # typical nucleus diameters to the nearest other object


def typical_area(areas: NDArray[Any]) -> float:
    """The area-weighted median: the area of the object that holds the median foreground pixel."""
    ordered = np.sort(areas[areas > 0])
    if ordered.size == 0:
        return 0.0
    cumulative = np.cumsum(ordered)
    return float(ordered[np.searchsorted(cumulative, cumulative[-1] / 2)])


def debris_ids(labels: NDArray[Any], image: NDArray[Any]) -> NDArray[np.int64]:
    """Ids of the objects of ``labels`` (H, W) that are debris in ``image`` (H, W) or (H, W, C) by the rule above."""
    areas = np.bincount(labels.ravel())
    typical = typical_area(areas[1:])
    small = np.flatnonzero((areas > 0) & (areas < DEBRIS_AREA * typical))
    small = small[small > 0]
    if small.size == 0:
        return small
    inside = labels > 0  # sums over nuclei pixels only: no float copy of the whole image
    grey = image if image.ndim == 2 else image.mean(axis=-1)
    sums = np.bincount(labels[inside], weights=grey[inside].astype(np.float64), minlength=areas.size)
    found = areas > 0
    found[0] = False
    means = sums / np.maximum(areas, 1)
    brighter = means > np.median(means[found])
    gap = DEBRIS_GAP * math.sqrt(4.0 * typical / math.pi)
    margin = math.ceil(gap) + 1
    height, width = labels.shape
    boxes = ndi.find_objects(labels)
    out = []
    for i in small:
        rows, cols = boxes[i - 1]
        if not brighter[i] or rows.start == 0 or cols.start == 0 or rows.stop == height or cols.stop == width:
            continue
        crop = labels[max(0, rows.start - margin):rows.stop + margin, max(0, cols.start - margin):cols.stop + margin]
        others = (crop > 0) & (crop != i)
        if not others.any() or ndi.distance_transform_edt(~others)[crop == i].min() > gap:
            out.append(i)
    return np.asarray(out, np.int64)


def drop_debris(labels: NDArray[Any], image: NDArray[Any]) -> NDArray[np.uint32]:
    """``labels`` without its debris (`debris_ids`), the rest renumbered 1..N in their order."""
    arr = np.asarray(labels).astype(np.uint32, copy=False)
    gone = debris_ids(arr, np.asarray(image))
    if gone.size == 0:
        return arr
    kept = np.ones(int(arr.max()) + 1, bool)
    kept[gone] = False
    return keep_only(arr, kept)

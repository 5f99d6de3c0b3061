"""Turn per-pixel U-Net probabilities into labelled nuclei, build core targets, measure nuclei.

The model predicts, per pixel, a foreground probability (channel 0) and, optionally, a "core"
probability (channel 1): the inner half of each nucleus, which stays separated even where nuclei
touch. Cores seed a watershed that splits touching nuclei; without a core channel the seeds come
from the maxima of the distance transform of the foreground mask.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import find_boundaries, watershed

from nuclei.images import to_float_rgb

log = logging.getLogger(__name__)

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

# Height (in pixels of distance) a maximum of the distance transform must rise above its
# surroundings to seed its own nucleus when there is no core channel: lower splits more.
MARKER_H = 2.0

# 4-connectivity, shared by the labelling of markers/leftovers and by the watershed.
_BLOCK_ROWS = 512  # measure() sums this many rows at a time
_STRUCTURE = ndi.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class Thresholds:
    """Cut-offs that turn probabilities into objects; kept together so they can be tuned and saved."""

    foreground: float = 0.5
    core: float = 0.5
    min_size: int = 8

    def __post_init__(self) -> None:
        """Reject values that cannot be probabilities or sizes."""
        for name in ("foreground", "core"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Thresholds.{name} must lie in [0, 1], got {value!r}")
        if self.min_size < 0:
            raise ValueError(f"Thresholds.min_size must be >= 0, got {self.min_size!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Thresholds:
        """Build from a (JSON-loaded) mapping; missing keys keep their defaults, unknown keys are errors."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown threshold keys: {sorted(unknown)}")
        kwargs: dict[str, Any] = {}
        if "foreground" in data:
            kwargs["foreground"] = float(data["foreground"])
        if "core" in data:
            kwargs["core"] = float(data["core"])
        if "min_size" in data:
            kwargs["min_size"] = int(data["min_size"])
        return cls(**kwargs)

    def as_dict(self) -> dict[str, float | int]:
        """Plain JSON-serialisable dict, the inverse of `from_dict`."""
        return asdict(self)


def _as_hwc(prob: NDArray[Any]) -> NDArray[np.float32]:
    """Return `prob` as a float32 (H, W, C) array; a 2-D map is taken as one channel."""
    arr = np.asarray(prob, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[..., np.newaxis]
    if arr.ndim != 3 or arr.shape[-1] < 1:
        raise ValueError(f"prob must have shape (H, W, C) with C >= 1, got {arr.shape}")
    return arr


def _edt(mask: NDArray[np.bool_]) -> NDArray[np.float32]:
    """Exact Euclidean distance to the nearest False pixel (scipy: deterministic to the last bit, which
    OpenCV's distanceTransform is not, and watershed ties depend on it).

    Beyond the image edge counts as foreground, except when there is no False pixel at all: then the
    edge is taken as the border.
    """
    if mask.size == 0:
        return np.zeros(mask.shape, np.float32)
    if mask.all():
        return _edt(np.pad(mask, 1, constant_values=False))[1:-1, 1:-1]
    return np.asarray(ndi.distance_transform_edt(mask), dtype=np.float32)


def _dense_labels(labels: NDArray[Any]) -> tuple[NDArray[np.intp], NDArray[np.int64]]:
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


def binary_mask(prob: NDArray[Any], thresholds: Thresholds) -> NDArray[np.bool_]:
    """Foreground mask: channel 0 above the foreground threshold."""
    return np.asarray(_as_hwc(prob)[..., 0] > thresholds.foreground)


def _grow(box: tuple[slice, slice], margin: int, shape: tuple[int, ...]) -> tuple[slice, slice]:
    rows, cols = box
    return (slice(max(0, rows.start - margin), min(shape[0], rows.stop + margin)),
            slice(max(0, cols.start - margin), min(shape[1], cols.stop + margin)))


def _seeds(own: NDArray[np.bool_], distance: NDArray[np.float32], core: NDArray[Any] | None,
           threshold: float, h: float = MARKER_H) -> tuple[NDArray[np.int32], int]:
    """Seeds of one blob: its connected cores above the threshold or, without a core channel, the regional
    maxima of the distance that stand at least `h` high (a bumpy ridge gives one seed, not several)."""
    if core is not None:
        seeds, n = ndi.label((core > threshold) & own, structure=_STRUCTURE)
    else:
        peaks = own & h_maxima(np.where(own, distance, 0), h).astype(bool)
        seeds, n = ndi.label(peaks, structure=ndi.generate_binary_structure(2, 2))
    return np.asarray(seeds, dtype=np.int32), int(n)


def _split_blob(
    own: NDArray[np.bool_], core: NDArray[Any] | None, thresholds: Thresholds
) -> tuple[NDArray[np.int32], int]:
    """Nuclei of one connected blob, numbered 1..n: a watershed on -distance from the seeds (cuts fall at
    the necks); a blob without a seed is one nucleus; pieces under min_size pixels are dropped."""
    distance = _edt(own)
    seeds, n = _seeds(own, distance, core, thresholds.core)
    if n <= 1:
        pieces = own.astype(np.int32)
    else:
        pieces = np.asarray(watershed(-distance, seeds, connectivity=1, mask=own), dtype=np.int32)
    sizes = np.bincount(pieces[own], minlength=max(n, 1) + 1)
    keep = sizes >= max(1, thresholds.min_size)
    keep[0] = False
    renumber = np.zeros(sizes.size, np.int32)
    renumber[keep] = np.arange(1, int(keep.sum()) + 1)
    return renumber[pieces], int(keep.sum())


def instances(prob: NDArray[Any], thresholds: Thresholds) -> NDArray[np.uint32]:
    """Label nuclei: (H, W) uint32, 0 background, 1..N consecutive (blobs in raster order).

    With a core channel the cores seed the split of touching nuclei; otherwise maxima of the distance
    transform do. Each 4-connected foreground blob is split on its own bounding box (plus one pixel), so
    memory stays near the size of the image's mask and labels whatever the image size.
    """
    arr = _as_hwc(prob)
    mask = arr[..., 0] > thresholds.foreground
    components, _ = ndi.label(mask, structure=_STRUCTURE)
    out = np.zeros(mask.shape, np.uint32)
    count = 0
    for index, box in enumerate(ndi.find_objects(components), start=1):
        if box is None:
            continue
        box = _grow(box, 1, mask.shape)
        own = components[box] == index
        core = arr[box][..., 1] if arr.shape[-1] >= 2 else None
        pieces, n = _split_blob(own, core, thresholds)
        placed = out[box]
        placed[own] = np.where(pieces[own] > 0, pieces[own] + count, 0)
        count += n
    return out


def remove_small(labels: NDArray[Any], min_size: int) -> NDArray[np.uint32]:
    """Drop nuclei under `min_size` pixels and renumber the rest 1..N in their order: what `instances` does with
    that min_size, so thresholds can be tuned without labelling again."""
    arr = np.asarray(labels)
    areas = np.bincount(arr.ravel().astype(np.intp))
    keep = areas >= max(1, min_size)
    keep[0] = False
    renumber = np.zeros(areas.size, np.uint32)
    renumber[keep] = np.arange(1, int(keep.sum()) + 1)
    return renumber[arr]


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
        gray = to_float_rgb(np.asarray(image[y0:y1])).mean(axis=-1, dtype=np.float64)
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



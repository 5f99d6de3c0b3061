"""Per-nucleus measurements: the one definition of the columns a store holds and every reader shows.

The table is computed once per image (by the segmentation worker), stored with the entry, and read as it is by
the CSV/Parquet export, `nuclei view` and the query API. Columns follow CellProfiler's object table (area and
shape, intensity), with the unit in the name: ``_px`` pixels, ``_um``/``_um2`` micrometres (NaN where the
image's pixel size is unknown: no unit is made up), ``_raw`` the image file's own intensity units (the channels
averaged; no scaling, so float, negative and 32-bit images keep their values: integrated intensity is what
labs use for DNA content).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.measure import grid_points_in_poly

from nuclei.core.labels import dense_labels as _dense_labels


@dataclass(frozen=True)
class Column:
    """One measurement: its name (unit included), whether its values are whole numbers, what it means."""

    name: str
    integer: bool
    description: str


COLUMNS: tuple[Column, ...] = (
    Column("label", True, "the nucleus' value in the label image"),
    Column("area_px", True, "pixels in the nucleus"),
    Column("area_um2", False, "area in square micrometres"),
    Column("centroid_y_px", False, "mean row of its pixels"),
    Column("centroid_x_px", False, "mean column of its pixels"),
    Column("centroid_y_um", False, "centroid row in micrometres"),
    Column("centroid_x_um", False, "centroid column in micrometres"),
    Column("bbox_min_y_px", True, "first row of the bounding box"),
    Column("bbox_min_x_px", True, "first column of the bounding box"),
    Column("bbox_max_y_px", True, "row after the bounding box (exclusive, as regionprops)"),
    Column("bbox_max_x_px", True, "column after the bounding box (exclusive)"),
    Column("perimeter_px", False, "outline length (regionprops' 4-connected estimate)"),
    Column("perimeter_um", False, "outline length in micrometres"),
    Column("major_axis_length_px", False, "major axis of the ellipse with the same second moments"),
    Column("minor_axis_length_px", False, "minor axis of that ellipse"),
    Column("major_axis_length_um", False, "major axis in micrometres"),
    Column("minor_axis_length_um", False, "minor axis in micrometres"),
    Column("eccentricity", False, "of that ellipse: 0 a circle, towards 1 a line"),
    Column("orientation_deg", False, "angle from the row axis to the major axis, -90..90 (regionprops' convention)"),
    Column("solidity", False, "area / convex hull area"),
    Column("extent", False, "area / bounding box area"),
    Column("euler_number", True, "1 minus the number of holes (8-connectivity)"),
    Column("mean_intensity_raw", False, "mean pixel value, in the file's units (channels averaged)"),
    Column("integrated_intensity_raw", False, "sum of pixel values (e.g. DNA content), in the file's units"),
    Column("std_intensity_raw", False, "standard deviation of pixel values (population)"),
    Column("min_intensity_raw", False, "smallest pixel value"),
    Column("max_intensity_raw", False, "largest pixel value"),
)
COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
INTEGER_COLUMNS: frozenset[str] = frozenset(c.name for c in COLUMNS if c.integer)
_AT = {name: i for i, name in enumerate(COLUMN_NAMES)}
_BLOCK_ROWS = 512  # sums run over this many rows at a time


def measure(labels: NDArray[Any], image: NDArray[Any], pixel_size_um: float | None = None) -> NDArray[np.float64]:
    """One row per nucleus, in label order, with the columns of `COLUMNS` (float64).

    Sums run over the nucleus pixels of blocks of rows, so memory stays near the size of the inputs even for
    whole-slide images; only the outline features (perimeter, solidity, Euler number) look at each nucleus' own
    crop. Perimeter, Euler number and solidity are scikit-image's (its convex image counted with a faster hull,
    `_convex_area`).
    """
    arr = _check(labels, image)
    top = int(arr.max(initial=0))
    if top > 2 * arr.size:  # arbitrary huge ids: measure a dense relabelling, then put the ids back
        dense, ids = _dense_labels(arr)
        table = measure(dense, image, pixel_size_um)
        table[:, 0] = ids
        return table
    sums = _sums(arr, image, top)
    ids = np.flatnonzero(sums["n"][1:]) + 1
    table = np.full((ids.size, len(COLUMNS)), np.nan, dtype=np.float64)
    if ids.size == 0:
        return table
    table[:, _AT["label"]] = ids
    _moments(table, {k: v[ids] for k, v in sums.items()})
    _intensity(table, arr, image, ids, {k: v[ids] for k, v in sums.items()})
    _outlines(table, arr, ids)
    if pixel_size_um:
        _micrometres(table, pixel_size_um)
    return table


def _check(labels: NDArray[Any], image: NDArray[Any]) -> NDArray[Any]:
    arr = np.asarray(labels)
    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ValueError(f"labels must be a 2-D integer array, got {arr.dtype} {arr.shape}")
    if np.shape(image)[:2] != arr.shape:
        raise ValueError(f"image shape {np.shape(image)} does not match labels shape {arr.shape}")
    if arr.size and int(arr.min()) < 0:
        raise ValueError("labels must be non-negative")
    return arr.astype(np.uint8) if arr.dtype == np.bool_ else arr


def raw_grey(block: NDArray[Any]) -> NDArray[np.float64]:
    """The image in its own units as one float64 plane: channels averaged, an alpha channel (RGBA) left out."""
    values = np.asarray(block)
    if values.ndim == 3:
        colours = values[..., :3] if values.shape[-1] == 4 else values
        return colours.mean(axis=-1, dtype=np.float64)
    return values.astype(np.float64)


def _foreground(arr: NDArray[Any], image: NDArray[Any], y0: int, y1: int
                ) -> tuple[NDArray[np.intp], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """A block of rows' nucleus pixels: their labels, rows, columns and grey values (background left out: most
    of an image, and nothing is measured there)."""
    ys, xs = np.nonzero(arr[y0:y1])
    labels = arr[y0:y1][ys, xs].astype(np.intp)
    grey = raw_grey(np.asarray(image[y0:y1])[ys, xs][:, None] if np.ndim(image) == 2
                    else np.asarray(image[y0:y1])[ys, xs][:, None, :])[:, 0]
    return labels, (ys + y0).astype(np.float64), xs.astype(np.float64), grey


def _sums(arr: NDArray[Any], image: NDArray[Any], top: int) -> dict[str, NDArray[np.float64]]:
    """Per-label sums over row blocks: pixel count, coordinates and their products, intensity, min, max."""
    names = ("n", "y", "x", "yy", "xx", "xy", "g")
    sums = {name: np.zeros(top + 1, dtype=np.float64) for name in names}
    sums["min"], sums["max"] = np.full(top + 1, np.inf), np.full(top + 1, -np.inf)
    for y0 in range(0, arr.shape[0], _BLOCK_ROWS):
        labels, rows, cols, grey = _foreground(arr, image, y0, min(arr.shape[0], y0 + _BLOCK_ROWS))
        for name, weights in (("n", None), ("y", rows), ("x", cols), ("yy", rows * rows), ("xx", cols * cols),
                              ("xy", rows * cols), ("g", grey)):
            sums[name] += np.bincount(labels, weights=weights, minlength=top + 1)
        np.minimum.at(sums["min"], labels, grey)
        np.maximum.at(sums["max"], labels, grey)
    return sums


def _moments(table: NDArray[np.float64], s: dict[str, NDArray[np.float64]]) -> None:
    """Area, centroid and the ellipse of the same second moments (regionprops' definitions)."""
    n = s["n"]
    cy, cx = s["y"] / n, s["x"] / n
    vyy = np.maximum(s["yy"] / n - cy * cy, 0.0)
    vxx = np.maximum(s["xx"] / n - cx * cx, 0.0)
    cxy = s["xy"] / n - cy * cx
    half_gap = np.sqrt(((vyy - vxx) / 2) ** 2 + cxy**2)
    big, small = (vyy + vxx) / 2 + half_gap, np.maximum((vyy + vxx) / 2 - half_gap, 0.0)
    table[:, _AT["area_px"]] = n
    table[:, _AT["centroid_y_px"]], table[:, _AT["centroid_x_px"]] = cy, cx
    table[:, _AT["major_axis_length_px"]] = 4 * np.sqrt(big)
    table[:, _AT["minor_axis_length_px"]] = 4 * np.sqrt(small)
    table[:, _AT["eccentricity"]] = np.sqrt(1 - np.divide(small, big, out=np.ones_like(big), where=big > 0))
    angle = np.where(vxx == vyy, np.where(cxy > 0, np.pi / 4, -np.pi / 4), 0.5 * np.arctan2(2 * cxy, vyy - vxx))
    table[:, _AT["orientation_deg"]] = np.degrees(angle)


def _intensity(table: NDArray[np.float64], arr: NDArray[Any], image: NDArray[Any], ids: NDArray[np.intp],
               s: dict[str, NDArray[np.float64]]) -> None:
    """Mean, sum, min, max, and the standard deviation from a second pass around the mean (no cancellation
    for large raw values such as 32-bit images)."""
    mean = s["g"] / s["n"]
    top = int(arr.max(initial=0))
    around = np.zeros(top + 1, dtype=np.float64)
    per_label = np.zeros(top + 1, dtype=np.float64)
    per_label[ids] = mean
    for y0 in range(0, arr.shape[0], _BLOCK_ROWS):
        labels, _, _, grey = _foreground(arr, image, y0, min(arr.shape[0], y0 + _BLOCK_ROWS))
        around += np.bincount(labels, weights=(grey - per_label[labels]) ** 2, minlength=top + 1)
    table[:, _AT["mean_intensity_raw"]] = mean
    table[:, _AT["integrated_intensity_raw"]] = s["g"]
    table[:, _AT["std_intensity_raw"]] = np.sqrt(around[ids] / s["n"])
    table[:, _AT["min_intensity_raw"]], table[:, _AT["max_intensity_raw"]] = s["min"], s["max"]


def _outlines(table: NDArray[np.float64], arr: NDArray[Any], ids: NDArray[np.intp]) -> None:
    """Bounding box and extent, perimeter and Euler number for all nuclei at once (`_perimeters`, `_euler`),
    and solidity, the one feature that needs each nucleus' own crop."""
    slices = ndi.find_objects(arr)
    boxes = np.array([(slices[i - 1][0].start, slices[i - 1][1].start, slices[i - 1][0].stop,
                       slices[i - 1][1].stop) for i in ids], dtype=np.float64).reshape(-1, 4)
    for j, name in enumerate(("bbox_min_y_px", "bbox_min_x_px", "bbox_max_y_px", "bbox_max_x_px")):
        table[:, _AT[name]] = boxes[:, j]
    table[:, _AT["extent"]] = table[:, _AT["area_px"]] / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    padded = np.pad(arr, 1)
    table[:, _AT["perimeter_px"]] = _perimeters(padded, len(slices))[ids]
    table[:, _AT["euler_number"]] = _euler(padded, len(slices))[ids]
    for row, label in enumerate(ids):
        crop = slices[label - 1]
        table[row, _AT["solidity"]] = table[row, _AT["area_px"]] / _convex_area(arr[crop] == label)


# scikit-image's perimeter: a border pixel's code is 1 + the weights of the border pixels of its own object around it
_NEIGHBOURS = ((-1, -1, 10), (-1, 0, 2), (-1, 1, 10), (0, -1, 2), (0, 1, 2), (1, -1, 10), (1, 0, 2), (1, 1, 10))
_PERIMETER_WEIGHTS = np.zeros(50, dtype=np.float64)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1
_PERIMETER_WEIGHTS[[21, 33]] = np.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + np.sqrt(2)) / 2
# scikit-image's Euler number (8-connected objects): a coefficient per 2x2 configuration (Ohser et al. 2002)
_EULER_COEFS = np.array([0, 0, 0, 0, 0, 0, -1, 0, 1, 0, 0, 0, 0, 0, -1, 0], dtype=np.float64)


def _shifted(padded: NDArray[Any], dy: int, dx: int) -> NDArray[Any]:
    """The padded image's interior moved by (dy, dx): at each pixel, its neighbour's value."""
    height, width = padded.shape[0] - 2, padded.shape[1] - 2
    return padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]


def _perimeters(padded: NDArray[Any], top: int) -> NDArray[np.float64]:
    """`skimage.measure.perimeter(region.image, 4)` of every label at once (label-indexed): each object's border
    pixels (a 4-neighbour of another label) coded by their same-object border neighbours, as scikit-image codes
    them in each object's own crop."""
    centre = _shifted(padded, 0, 0)
    inner = (centre > 0) & (_shifted(padded, -1, 0) == centre) & (_shifted(padded, 1, 0) == centre)
    inner &= (_shifted(padded, 0, -1) == centre) & (_shifted(padded, 0, 1) == centre)
    border = np.pad(np.where(inner, 0, centre), 1)
    ys, xs = np.nonzero(border)
    labels = border[ys, xs]
    code = np.ones(labels.size, dtype=np.intp)
    for dy, dx, weight in _NEIGHBOURS:
        code += weight * (border[ys + dy, xs + dx] == labels)
    found = np.bincount(labels.astype(np.intp), weights=_PERIMETER_WEIGHTS[code], minlength=top + 1)
    return found.astype(np.float64, copy=False)  # float already (weights); the stubs say int


def _euler(padded: NDArray[Any], top: int) -> NDArray[np.float64]:
    """`skimage.measure.euler_number(region.image, 2)` of every label at once (label-indexed): each 2x2 window
    adds, for each label in it, the coefficient of that label's own pattern there."""
    corners = (padded[1:, 1:], padded[:-1, 1:], padded[1:, :-1], padded[:-1, :-1])  # bits 1, 2, 4, 8
    found = np.zeros(top + 1, dtype=np.float64)
    for k, label in enumerate(corners):
        first = label > 0
        for earlier in corners[:k]:
            first &= earlier != label  # each label once per window
        ys, xs = np.nonzero(first)
        which = label[ys, xs]
        pattern = sum((1 << bit) * (corner[ys, xs] == which) for bit, corner in enumerate(corners))
        found += np.bincount(which.astype(np.intp), weights=_EULER_COEFS[pattern], minlength=top + 1)
    return found


_DIAMOND = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, -0.5], [0.0, 0.5]], dtype=np.float32)  # (x, y) offsets


def _convex_area(mask: NDArray[np.bool_]) -> float:
    """Pixels of scikit-image's convex image (the hull of each pixel's four edge midpoints, then every pixel
    centre inside it or on its border), with the hull from OpenCV over the outline's pixels only: about 5x
    faster than regionprops' own, the same count."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    centres = np.concatenate(contours).reshape(-1, 1, 2).astype(np.float32)  # (x, y)
    hull = cv2.convexHull((centres + _DIAMOND[None]).reshape(-1, 2)).reshape(-1, 2)
    inside = grid_points_in_poly(mask.shape, hull[:, ::-1].astype(np.float64), binarize=False) >= 1
    return float(max(np.count_nonzero(inside), np.count_nonzero(mask)))


def in_micrometres(table: NDArray[np.float64], pixel_size_um: float | None) -> NDArray[np.float64]:
    """The table with its micrometre columns from the pixel ones (NaN where the pixel size is unknown): the
    store fills them from the pixel size its record states, so the two never disagree."""
    table = np.array(table, dtype=np.float64).reshape(-1, len(COLUMNS))
    if pixel_size_um:
        _micrometres(table, pixel_size_um)
    else:
        for name in COLUMN_NAMES:
            if name.endswith(("_um", "_um2")):
                table[:, _AT[name]] = np.nan
    return table


def _micrometres(table: NDArray[np.float64], pixel_size_um: float) -> None:
    for name in ("centroid_y", "centroid_x", "perimeter", "major_axis_length", "minor_axis_length"):
        table[:, _AT[f"{name}_um"]] = table[:, _AT[f"{name}_px"]] * pixel_size_um
    table[:, _AT["area_um2"]] = table[:, _AT["area_px"]] * pixel_size_um**2


def median_diameter(label_images: Iterable[NDArray[Any]]) -> float:
    """Median equivalent diameter (px) of the nuclei in these label images (0 when there are none): the
    nucleus size a model learnt, or the one to give `--diameter`."""
    counts = [np.bincount(labels.ravel())[1:] for labels in label_images]
    areas = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    areas = areas[areas > 0]
    return float(np.median(2.0 * np.sqrt(areas / np.pi))) if areas.size else 0.0

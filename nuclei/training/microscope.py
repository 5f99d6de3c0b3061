"""What a microscope does to a field, added to raw pixels before the normalisation (so the network learns what
the normalisation leaves of it): uneven illumination (a gradient, vignetting, out-of-focus glow), nuclei
pushed to saturation, small bright specks of debris on the background (never labelled), the seam between two
fields recorded at other brightness (a mosaic), defocus, and (`joined`) two fields abutting along a line.

Applied to a window of the raw image, in its stored units; the window is then normalised as inference would
normalise it (`nuclei.core.normalize`). Fluorescence only: images whose nuclei are darker than their
background (brightfield, stained tissue) are returned unchanged.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi

from nuclei.core.tiling import pad_to_at_least

GLOW = (0.3, 4.0)  # the glow's height, in multiples of the nuclei's contrast (log-uniform)
SATURATION = (3.0, 10.0)  # gain of the (background-subtracted) saturated nuclei before clipping
SPECK = (0.08, 0.3)  # a speck's diameter, in nucleus diameters
SPECK_BRIGHTNESS = (0.5, 3.0)  # its height, in multiples of the nuclei's contrast (log-uniform)
MARGIN = 64  # context around the crop, so the window's normalisation sees past the crop's edges


def nucleus_diameter(labels: np.ndarray) -> float:
    """The median nucleus' equivalent diameter, pixels (0 without nuclei)."""
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return float(2.0 * np.sqrt(np.median(areas) / np.pi)) if areas.size else 0.0


def raw_window(raw: np.ndarray, target: np.ndarray, labels: np.ndarray, side: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same random side x side window of the raw image, its targets and its labels (mirror-padded if the
    image is smaller)."""
    raw, target, labels = (pad_to_at_least(a, side, side) for a in (raw, target, labels))
    y = int(rng.integers(0, raw.shape[0] - side + 1))
    x = int(rng.integers(0, raw.shape[1] - side + 1))
    return raw[y : y + side, x : x + side], target[y : y + side, x : x + side], labels[y : y + side, x : x + side]


def _side_of_a_line(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[slice, slice]:
    """One side of a random horizontal or vertical line through the middle half of a window."""
    axis = int(rng.integers(0, 2))
    cut = int(rng.integers(shape[axis] // 4, 3 * shape[axis] // 4 + 1))
    side = [slice(None), slice(None)]
    side[axis] = slice(cut, None) if rng.random() < 0.5 else slice(0, cut)
    return side[0], side[1]


def joined(raw: np.ndarray, labels: np.ndarray, other_raw: np.ndarray, other_labels: np.ndarray,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two windows of the same size joined along a random horizontal or vertical line, as a stitched mosaic abuts
    two fields: the nuclei on both sides cut by the seam (and still labelled), the other field's content beyond
    it. The other field's labels are renumbered after this one's."""
    there = _side_of_a_line(raw.shape, rng)
    raw, labels = raw.copy(), labels.astype(np.int32, copy=True)
    raw[there] = other_raw[there]
    moved = other_labels[there].astype(np.int32)
    labels[there] = np.where(moved > 0, moved + int(labels.max()), 0)
    return raw, labels


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth 0..1 field: a linear gradient, vignetting (bright centre), or a few broad glowing blobs."""
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy, xx = yy / max(1, height - 1), xx / max(1, width - 1)
    kind = rng.integers(0, 3)
    if kind == 0:
        angle = rng.uniform(0, 2 * np.pi)
        field = np.cos(angle) * xx + np.sin(angle) * yy
    elif kind == 1:
        cy, cx = rng.uniform(0.2, 0.8, size=2)
        field = -((yy - cy) ** 2 + (xx - cx) ** 2)
    else:
        field = np.zeros(shape, np.float32)
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(-0.2, 1.2, size=2)
            sigma = rng.uniform(0.2, 0.6)
            field += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    field = field - field.min()
    return (field / max(float(field.max()), 1e-6)).astype(np.float32)


def _specks(image: np.ndarray, labels: np.ndarray, diameter: float, contrast: float, rng: np.random.Generator
            ) -> np.ndarray:
    """Sharp bright specks of 0.08-0.3 nucleus diameters (one size a window) on the background, away from
    every nucleus: debris that must not be labelled."""
    height, width = labels.shape
    free = ~ndi.binary_dilation(labels > 0, iterations=max(2, int(diameter * 0.3)))
    n = int(rng.integers(3, 12) * height * width / 256**2) + 1
    ys, xs = rng.integers(0, height, n), rng.integers(0, width, n)
    keep = free[ys, xs]
    if not keep.any():
        return image
    sigma = max(0.5, rng.uniform(*SPECK) * diameter / 2.5)  # a Gaussian's diameter at half height ~ 2.4 sigma
    low, high = (float(v) for v in np.log(SPECK_BRIGHTNESS))
    peaks = contrast * np.exp(rng.uniform(low, high, size=int(keep.sum())))
    impulses = np.zeros((height, width), np.float32)
    np.add.at(impulses, (ys[keep], xs[keep]), peaks * 2 * np.pi * sigma**2)  # peak height after the blur
    return image + cv2.GaussianBlur(impulses, (0, 0), sigma)[..., None]


def _seam(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One side of a random horizontal or vertical line scaled by 1/4..4 (log-uniform): fields of other
    brightness side by side, as a stitched mosaic or a plate scan has them."""
    scaled = image.copy()
    scaled[_side_of_a_line(image.shape, rng)] *= float(np.exp(rng.uniform(np.log(0.25), np.log(4.0))))
    return scaled


def microscope(raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator, diameter: float | None = None
               ) -> np.ndarray:
    """A raw window (H, W) or (H, W, C) as another microscope might have recorded it (its dtype and units)."""
    image: np.ndarray = (raw[..., None] if raw.ndim == 2 else raw).astype(np.float32)
    inside = labels > 0
    if not inside.any() or inside.all():
        return raw
    lum = image.mean(axis=2)
    background = float(np.median(lum[~inside]))
    contrast = float(np.median(lum[inside])) - background
    if contrast <= 0:  # nuclei darker than the background: brightfield, stained tissue
        return raw
    diameter = diameter or nucleus_diameter(labels)
    ceiling = float(np.iinfo(raw.dtype).max) if np.issubdtype(raw.dtype, np.integer) else max(1.0, float(lum.max()))
    if rng.random() < 0.5:  # saturated nuclei: one to three, clipped flat at the camera's top (or below it)
        ids = np.unique(labels[inside])
        chosen = rng.choice(ids, size=min(ids.size, int(rng.integers(1, 4))), replace=False)
        flat = np.isin(labels, chosen)[..., None]
        top = min(ceiling, background + contrast * rng.uniform(2.0, 6.0)) if rng.random() < 0.5 else ceiling
        pushed = background + (image - background) * rng.uniform(*SATURATION)
        image = np.where(flat, np.minimum(pushed, top), image)
    if rng.random() < 0.7:  # uneven illumination, added light (as glow and vignetting are)
        glow = contrast * float(np.exp(rng.uniform(*np.log(GLOW))))
        glow = max(glow, background * rng.uniform(1.0, 3.0))
        image = image + glow * _smooth_field(labels.shape, rng)[..., None]
    if rng.random() < 0.5 and diameter > 0:
        image = _specks(image, labels, diameter, contrast, rng)
    if rng.random() < 0.2:  # a seam of a mosaic: the fields on either side of a line recorded 4x apart
        image = _seam(image, rng)
    if rng.random() < 0.15:  # defocus
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(1.0, 2.5)).reshape(image.shape)
    if np.issubdtype(raw.dtype, np.integer):  # a camera's values: rounded, clipped to its range
        image = np.clip(np.rint(image), 0, ceiling)
    image = image.astype(raw.dtype)
    return image[..., 0] if raw.ndim == 2 else image

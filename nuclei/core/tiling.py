"""Padding to the network's multiple and overlapping tiles for large images, pure numpy.

Tiles start on multiples of the pad multiple (so pooling grids line up) and overlap by at least half the
receptive field, so every kept output pixel saw the same context as in a whole-image run: tiled equals untiled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def pad_to_at_least(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Mirror-pad bottom and right so the array is at least height x width (training and inference alike)."""
    pad_y, pad_x = max(0, height - array.shape[0]), max(0, width - array.shape[1])
    if not pad_y and not pad_x:
        return array
    widths = [(0, pad_y), (0, pad_x)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, mode="symmetric")


def pad_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """Mirror-pad bottom and right to multiples of ``multiple``."""
    height, width = image.shape[:2]
    return pad_to_at_least(image, round_up(height, multiple), round_up(width, multiple))


def overlap_for(receptive_field: int, multiple: int) -> int:
    """Context each tile needs on every side: half the receptive field, rounded up to the pad multiple."""
    return round_up((receptive_field + 1) // 2, multiple)


def check_tile_size(tile_size: int, overlap: int, multiple: int) -> None:
    """Raise ValueError for a tile size that cannot hold its own overlap."""
    if tile_size <= 0 or tile_size % multiple:
        raise ValueError(f"tile_size must be a positive multiple of {multiple}, got {tile_size}")
    if tile_size <= 2 * overlap:
        raise ValueError(f"tile_size {tile_size} must exceed twice the overlap ({overlap} px per side)")


def _spans(length: int, step: int, overlap: int) -> Iterator[tuple[int, int, int, int]]:
    """(window start, window end, kept start, kept end) along one axis."""
    for start in range(0, length, step):
        end = min(length, start + step)
        yield max(0, start - overlap), min(length, end + overlap), start, end


def predict_tiled(predict: Predict, image: np.ndarray, tile_size: int, overlap: int) -> np.ndarray:
    """Run ``predict`` (H, W, 3) -> (H, W, C) over overlapping tiles of an already padded image, stitch cores."""
    height, width = image.shape[:2]
    step = tile_size - 2 * overlap
    out: np.ndarray | None = None
    for y0, y1, ky0, ky1 in _spans(height, step, overlap):
        for x0, x1, kx0, kx1 in _spans(width, step, overlap):
            prob = predict(image[y0:y1, x0:x1])
            if out is None:
                out = np.empty((height, width, prob.shape[-1]), prob.dtype)
            out[ky0:ky1, kx0:kx1] = prob[ky0 - y0 : ky1 - y0, kx0 - x0 : kx1 - x0]
    assert out is not None
    return out

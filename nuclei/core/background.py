"""The `local` normalisation: a smooth background removed and a foreground level measured over neighbourhoods,
so uneven illumination, a few saturated cells and fields of other brightness beside a field do not move what
the network sees of it.

It works on a grid of square cells (``cell`` px, from the image's origin) in three steps, each with one job:

1. `cell_stats`: per cell the 10th, 50th and 90th percentile of the luminance and whether the cell is constant.
   Cells are independent, so a slide computes them a window at a time (cell-aligned) and gets the whole
   image's grid exactly.
2. `local_maps`: on the grid only (tiny: a 566 Mpx slide has 0.55 M cells of 32 px):
   - background: a grey opening of the cells' 10th percentiles over ``opening`` cells (nuclei and clusters
     narrower than that are removed, ramps and glow kept: an opening preserves monotone slopes), smoothed;
   - noise: the spread of the background cells (50th - 10th percentile / 1.2816, a Gaussian's), the local
     25th percentile of it, so glow, which raises a cell's level but hardly its spread, cannot inflate it;
   - foreground level: the geometric mean of the 90th-percentile residual of the cells that stand ``k`` noise
     levels above the background, Gaussian-weighted over ``window`` cells, with the image's own mean as a
     weak prior where a neighbourhood holds no foreground. Constant cells (padding, clipped background,
     saturated nuclei' interiors) count for nothing.
3. `apply_maps`: (pixel - background) / (anchor x foreground level), both interpolated bilinearly between cell
   centres in absolute coordinates, so a tile or a slide block at (y0, x0) gets exactly the whole image's values.

Pure numpy and scipy.ndimage, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage as ndi

# A Gaussian's 50th - 10th percentile, in standard deviations: a background cell's spread gives its noise.
_P50_P10 = 1.2816
# The image-wide foreground level weighs like this share of a neighbourhood being foreground: it decides only
# where nothing near stands out (an empty region of a slide), never beside nuclei.
PRIOR_WEIGHT = 0.005
# How far apart two cells' log backgrounds may be and still share a foreground level (0.35: 1.4x at one sigma;
# fields 3-4x apart do not mix).
GUIDE_SIGMA = 0.2
GUIDED_CHUNK = 4_000_000  # cells x neighbours the guided mean holds at once (32 MB a float64 array)
# A uniform image's scale: finite (interpolation multiplies by 0) and large, so every pixel maps to 0.
UNIFORM_SCALE = 1e30


@dataclass(frozen=True)
class LocalMaps:
    """Per-cell background and scale (what maps to 1) of an image, in its stored units; cell (0, 0) starts at
    the image's pixel (0, 0)."""

    cell: int
    background: np.ndarray  # (ny, nx) float32
    scale: np.ndarray  # (ny, nx) float32, > 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.background.shape  # type: ignore[return-value]


def cell_stats(lum: np.ndarray, cell: int) -> np.ndarray:
    """(ny, nx, 4) float32: each cell's 10th, 50th, 90th percentile and 1.0 where the cell is constant.
    Partial cells at the bottom and right repeat their last row and column (so a slide read in cell-aligned
    bands gets the whole image's statistics)."""
    height, width = lum.shape
    ny, nx = -(-height // cell), -(-width // cell)
    padded = np.pad(lum.astype(np.float32, copy=False), ((0, ny * cell - height), (0, nx * cell - width)),
                    mode="edge")
    values = padded.reshape(ny, cell, nx, cell).transpose(0, 2, 1, 3).reshape(ny, nx, cell * cell)
    n = cell * cell
    ranks = [0, int(0.1 * (n - 1)), int(0.5 * (n - 1)), int(0.9 * (n - 1)), n - 1]
    parts = np.partition(values, ranks, axis=-1)[..., ranks]
    constant = (parts[..., 0] == parts[..., 4]).astype(np.float32)
    return np.stack([parts[..., 1], parts[..., 2], parts[..., 3], constant], axis=-1)


def value_step(stats: np.ndarray) -> float:
    """The step between the image's stored values, as its cells' percentiles show it (1 for 8- and 12-bit
    data, 257 for 8-bit data stretched to 16 bits, 1/255 for it as float; about 0 for continuous values): the
    least noise there can be, in the image's own units, so a rescaled copy of an image is normalised alike."""
    values = np.unique(stats[..., :3])
    steps = np.diff(values)
    steps = steps[steps > 1e-6 * max(1e-30, float(np.abs(values).max()))]
    return float(steps.min()) if steps.size else 0.0


def local_maps(stats: np.ndarray, cell: int, opening: int, window: float, k: float, anchor: float,
               quantum: float = 0.0) -> LocalMaps:
    """The background and scale maps from a whole image's (or slide's) `cell_stats`."""
    p10, p50, p90 = stats[..., 0], stats[..., 1], stats[..., 2]
    valid = stats[..., 3] == 0
    if not valid.any():  # a uniform (or fully clipped) image: its level is the background, nothing stands out
        flat = np.full(p10.shape, float(np.median(p10)), np.float32)
        return LocalMaps(cell, flat, np.full(p10.shape, UNIFORM_SCALE, np.float32))
    background = _background(p10, valid, opening)
    spread = np.where(valid, (p50 - p10) / _P50_P10, np.inf)
    noise = ndi.percentile_filter(spread, 25, size=opening, mode="nearest")
    fallback = float(np.percentile(spread[valid], 25))
    noise = np.maximum(np.where(np.isfinite(noise), noise, fallback), max(quantum, 1e-6 * float(np.abs(p90).max())))
    residual = p90 - background
    # A cell's say grows from 0 at k noise levels to 1 at 2k: cells near the threshold (a nucleus' edge in a
    # corner of the cell) count little, so a change in the noise estimate does not flip the level.
    say = np.where(valid, np.clip(residual / (k * noise) - 1.0, 0.0, 1.0), 0.0)
    foreground = say > 0
    if foreground.any():
        logs = np.log(np.where(foreground, residual, 1.0))
        guide = np.log(np.maximum(background, 0.0) + 3.0 * float(np.median(noise)))
        prior = float(np.average(logs[foreground], weights=say[foreground]))
        level = np.exp(_guided_mean(logs, say, guide, window, prior))
    else:  # only noise: it maps to about 1 / (anchor k), as an empty well's does
        level = np.asarray(k * noise, np.float64)
    scale = np.maximum(anchor * level, k * noise)
    return LocalMaps(cell, background.astype(np.float32), scale.astype(np.float32))


def _guided_mean(values: np.ndarray, weights: np.ndarray, guide: np.ndarray, window: float, prior: float
                 ) -> np.ndarray:
    """Per cell: the mean of ``values`` over the cells with ``weights``, Gaussian in distance (sigma ``window``
    cells) and in the ``guide`` (log background, sigma GUIDE_SIGMA): a field beside a field 4x brighter (a
    mosaic, a slide) has another background too, so the two do not mix, while glow, which changes the
    background slowly, is averaged over. Where nothing near has weight, ``prior``."""
    radius = int(np.ceil(3 * window))
    ny, nx = values.shape
    span = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(span, span, indexing="ij")
    disc = dy**2 + dx**2 <= radius**2
    spatial = np.where(disc, np.exp(-(dy**2 + dx**2) / (2 * window**2)), 0.0)
    spatial /= spatial.sum()
    pad = ((radius, radius), (radius, radius))
    v, w, g = np.pad(values, pad), np.pad(weights.astype(np.float64), pad), np.pad(guide, pad)
    total, weight = np.zeros((ny, nx)), np.zeros((ny, nx))
    rows = max(1, GUIDED_CHUNK // (nx * spatial.size))  # a band of rows at a time bounds the memory
    for y0 in range(0, ny, rows):
        y1 = min(ny, y0 + rows)
        band = (slice(y0, y1 + 2 * radius), slice(None))
        windows = [sliding_window_view(a[band], spatial.shape)[..., disc] for a in (v, w, g)]
        centre = guide[y0:y1, :, None]
        share = spatial[disc] * windows[1] * np.exp(-((windows[2] - centre) ** 2) / (2 * GUIDE_SIGMA**2))
        total[y0:y1] = (share * windows[0]).sum(axis=-1)
        weight[y0:y1] = share.sum(axis=-1)
    return (total + PRIOR_WEIGHT * prior) / (weight + PRIOR_WEIGHT)


def _background(p10: np.ndarray, valid: np.ndarray, opening: int) -> np.ndarray:
    """Grey opening of the cells' 10th percentiles. Invalid cells (padding, clipped or saturated areas) take
    their nearest valid cell's value first; the grid is extended by point reflection, which continues a ramp,
    so glow rising towards an edge is kept there too (an opening would cut a ramp's end like a peak)."""
    if not valid.all():
        _, (iy, ix) = ndi.distance_transform_edt(~valid, return_indices=True)
        p10 = p10[iy, ix]
    reach = opening // 2
    extended = np.pad(p10.astype(np.float64), reach, mode="reflect", reflect_type="odd") if reach else p10
    opened = ndi.grey_opening(extended, size=(opening, opening), mode="nearest")
    return opened[reach : reach + p10.shape[0], reach : reach + p10.shape[1]] if reach else opened


def _axis_weights(start: int, length: int, cell: int, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear interpolation between cell centres along one axis: indices i0, i1 and weight of i1."""
    position = (start + np.arange(length) + 0.5) / cell - 0.5
    i0 = np.clip(np.floor(position).astype(np.int64), 0, cells - 1)
    i1 = np.minimum(i0 + 1, cells - 1)
    t = np.clip(position - i0, 0.0, 1.0).astype(np.float32)
    return i0, i1, t


def interpolate(grid: np.ndarray, cell: int, y0: int, x0: int, height: int, width: int) -> np.ndarray:
    """The map at the pixels of the box (y0, x0, height, width), in absolute image coordinates."""
    ny, nx = grid.shape
    r0, r1, rt = _axis_weights(y0, height, cell, ny)
    c0, c1, ct = _axis_weights(x0, width, cell, nx)
    rows = grid[r0] * (1 - rt)[:, None] + grid[r1] * rt[:, None]
    return (rows[:, c0] * (1 - ct) + rows[:, c1] * ct).astype(np.float32)


def apply_maps(rgb: np.ndarray, maps: LocalMaps, y0: int = 0, x0: int = 0) -> np.ndarray:
    """(rgb - background) / scale for float32 (h, w, 3) pixels whose first lies at (y0, x0); in place."""
    height, width = rgb.shape[:2]
    background = interpolate(maps.background, maps.cell, y0, x0, height, width)
    scale = interpolate(maps.scale, maps.cell, y0, x0, height, width)
    rgb -= background[..., None]
    rgb /= scale[..., None]
    return rgb

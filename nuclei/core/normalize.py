"""Intensity normalisation: what turns an image as read (any dtype, any used range) into the model's input.

A model's config.json says which one it was trained with, and every consumer (training, threshold tuning,
evaluation, the inference engine, tiled or not) goes through `normalized` with those settings:

- ``foreground`` (default for new models): the ``low``-th percentile of the image's content maps to 0 and
  the ``quantile``-th percentile of its *foreground* pixels (75th) to ``1 / anchor``. The foreground is what
  stands ``k`` background noise levels above the background (both estimated below an Otsu split), so neither
  the amount of empty background around the cells (a sparse well, a field inside a slide) nor a handful of
  saturated cells moves the window: dim nuclei beside bright ones stay visible. Padding (one exact value
  filling a large share of the image, as slides and mosaics have) is left out of every statistic. Images
  whose background is the bright part (brightfield) keep the ``percentile`` window, which background does not
  move there.
- ``percentile``: per image, the ``low``-th and ``high``-th percentiles of the luminance map to 0 and 1 (as
  StarDist and Cellpose do). The more empty background an image has, the lower its ``high`` percentile falls.
- Either way a 12-bit image stored as uint16, a dim image and its stretched 8-bit copy reach the network
  alike, and the statistics are the whole image's (a strided sample), never a tile's.
- ``dtype_range`` (models trained before normalisation was part of the model): divide by the dtype's maximum.
- ``local``: the image's smooth background removed and its foreground level measured over neighbourhoods of
  ``window`` cells (`nuclei.core.background`), so glow and vignetting, a few saturated cells, and fields of
  other brightness beside a field (a mosaic, a slide) do not move what the network sees of it. Bright-background
  images keep the ``percentile`` window, as with ``foreground``.

`measure_scaling` measures how an image is scaled (a `Scaling`); calling it on the image, or on any part of it
with the part's position, gives the model input, so tiles and slide blocks get exactly the whole image's values.

Pure numpy, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from nuclei.core.background import LocalMaps, apply_maps, cell_stats, local_maps, value_step

# Percentiles of a huge image come from a strided sample of about this many pixels (np.percentile sorts).
PERCENTILE_SAMPLE = 2_000_000
# A range narrower than this (after scaling by the dtype) is a uniform image: it maps to 0, not to noise / 0.
MIN_RANGE = 1e-6
# Bounds for values far outside the percentile range (hot pixels), so one outlier cannot dominate an input.
CLIP = (-1.0, 4.0)


def _colour_channels(array: np.ndarray) -> np.ndarray:
    """(H, W, 1 or 3): grey as one channel, alpha dropped (grey + alpha, RGBA)."""
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[2] == 2:  # grey + alpha
        array = array[..., :1]
    return array[..., :3]


def _dtype_scale(dtype: np.dtype) -> float:
    """What divides an integer image into [0, 1]: its dtype's maximum (1 for bool)."""
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def to_float_rgb(array: np.ndarray) -> np.ndarray:
    """Scale by the dtype's range to float32 [0, 1] and make 3 channels (grey copied, alpha dropped)."""
    array = _colour_channels(array)
    if np.issubdtype(array.dtype, np.integer):
        scaled = array.astype(np.float32) / _dtype_scale(array.dtype)
    elif array.dtype == bool:
        scaled = array.astype(np.float32)
    else:
        scaled = np.clip(array.astype(np.float32), 0.0, 1.0)
    if scaled.shape[2] == 1:
        scaled = np.repeat(scaled, 3, axis=2)
    return np.ascontiguousarray(scaled)


def channel_mean(array: np.ndarray) -> np.ndarray:
    """`to_float_rgb(array).mean(axis=-1)` as float64, summing the (1 or 3) channel planes instead of reducing
    over a short last axis, which costs numpy several times more (grey stays one plane: its 3 copies have its
    mean). The intensity that per-nucleus measurements average."""
    channels = _colour_channels(array)
    planes = [channels[..., c] for c in range(channels.shape[2])]
    integer = np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_
    total = planes[0].astype(np.float64) if integer else np.clip(planes[0].astype(np.float64), 0.0, 1.0)
    for plane in planes[1:]:
        total += plane if integer else np.clip(plane, 0.0, 1.0)
    return total / (_dtype_scale(array.dtype) * len(planes))



class Normalization(BaseModel):
    """How a model's input is scaled; written into config.json as `normalization`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["local", "foreground", "percentile", "dtype_range"] = "percentile"
    low: float = Field(default=1.0, ge=0.0, lt=100.0, description="percentile that maps to 0")
    high: float = Field(default=99.8, gt=0.0, le=100.0, description="percentile that maps to 1 (percentile kind, and "
                        "the foreground kind on bright-background images)")
    quantile: float = Field(default=75.0, gt=0.0, lt=100.0, description="foreground kind: this percentile of "
                            "the foreground pixels maps to 1 / anchor (a few saturated cells, under a quarter of "
                            "the foreground, cannot move it)")
    anchor: float = Field(default=1.75, gt=0.0, le=100.0, description="foreground kind: the foreground's "
                          "`quantile` maps to 1 / anchor (1.75 gives the training images about the window of "
                          "their 1st..99.8th percentiles: median ratio 1.0 on DSB2018, BBBC039 and S-BSST265)")
    k: float = Field(default=6.0, gt=0.0, le=100.0, description="foreground kind: pixels this many background "
                     "noise levels (1.4826 MAD) above the background's median are foreground")
    cell: int = Field(default=32, ge=4, le=1024, description="local kind: the side of the grid's cells, pixels")
    opening: int = Field(default=9, ge=1, le=255, description="local kind: the background is an opening over "
                         "this many cells (wider than the largest nucleus or cluster: 288 px at 32 px cells)")
    window: float = Field(default=3.0, gt=0.0, le=1000.0, description="local kind: the foreground level is "
                          "averaged with a Gaussian of this many cells (sigma)")

    @model_validator(mode="after")
    def _ordered(self) -> Normalization:
        if self.low >= self.high:
            raise ValueError(f"normalization low ({self.low}) must be below high ({self.high})")
        return self

    def describe(self) -> str:
        if self.kind == "dtype_range":
            return "RGB scaled by the dtype's range to [0, 1]"
        window = f"the image's luminance {_ordinal(self.low)}..{_ordinal(self.high)} percentiles mapped to 0..1"
        if self.kind == "percentile":
            return f"RGB, {window}"
        if self.kind == "local":
            return (f"RGB, minus the image's smooth background (an opening of {self.cell} px cells' 10th percentiles "
                    f"over {self.opening} cells), divided by {self.anchor:g} x the local foreground level (the "
                    f"geometric mean of the 90th percentile of cells {self.k:g} noise levels above the background, "
                    f"Gaussian sigma {self.window:g} cells); bright-background images: {window}")
        return (f"RGB, the {_ordinal(self.low)} percentile of the image's luminance mapped to 0 and the "
                f"{_ordinal(self.quantile)} percentile of its foreground (> background + {self.k:g} noise) to "
                f"1/{self.anchor:g}; padding ignored; bright-background images: {window}")


def _ordinal(value: float) -> str:
    """1 -> '1st', 2 -> '2nd', 99.8 -> '99.8th' (the model description said '1th')."""
    text = f"{value:g}"
    suffix = {"1": "st", "2": "nd", "3": "rd"}.get(text[-1], "th")
    return text + ("th" if "." in text or text.endswith(("11", "12", "13")) else suffix)


LEGACY = Normalization(kind="dtype_range", low=0.0, high=100.0)


def as_float_rgb(raw: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 of the stored values, unscaled: grey copied to 3 channels, alpha dropped."""
    array = raw[..., None] if raw.ndim == 2 else raw
    array = array[..., :1] if array.shape[2] == 2 else array[..., :3]
    array = array.astype(np.float32, copy=False)
    return np.ascontiguousarray(np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array)


def _luminance_sample(raw: np.ndarray) -> np.ndarray:
    step = max(1, int(np.sqrt(raw.shape[0] * raw.shape[1] / PERCENTILE_SAMPLE)))
    sample = as_float_rgb(raw[::step, ::step])
    return sample.mean(axis=2)


def intensity_range(raw: np.ndarray, norm: Normalization) -> tuple[float, float]:
    """(value that maps to 0, width that maps to 1) for this image, in its stored units."""
    if norm.kind == "dtype_range":
        return 0.0, 1.0  # to_float_rgb scales; nothing per image
    lum = _luminance_sample(raw)
    quantum = 1.0 if np.issubdtype(raw.dtype, np.integer) else 0.0
    return sample_range(lum[np.isfinite(lum)].ravel(), norm, quantum)


def sample_range(values: np.ndarray, norm: Normalization, quantum: float = 0.0) -> tuple[float, float]:
    """`intensity_range` of an image from a 1-D sample of its finite luminance values (a slide's sample too).
    ``quantum``: the step between stored values (1 for integer images), the least noise there can be."""
    if values.size == 0:
        return 0.0, 1.0
    if norm.kind == "foreground":  # sorted once: the several percentiles below then cost half as much
        values = np.sort(values)
    scale = float(np.abs(values).max()) or 1.0
    lo, hi = (float(v) for v in np.percentile(values, (norm.low, norm.high)))
    if norm.kind == "foreground" and hi - lo > MIN_RANGE * scale:
        values = without_padding(values, tolerance=0.01 * (hi - lo))
        lo, hi = (float(v) for v in np.percentile(values, (norm.low, norm.high)))
        hi = _foreground_anchor(values, lo, norm, quantum) or hi
    span = hi - lo
    if span <= MIN_RANGE * scale:  # uniform or empty image: everything maps to 0
        return lo, float("inf")
    return lo, span


# One exact value holding more than this share of an image is padding (a slide's empty area, a canvas).
PADDING_SHARE = 0.2
# Fewer foreground pixels than this in the sample: no foreground to anchor on (keep the percentiles). A count,
# not a share of the image: a field inside a slide-sized canvas is a tiny share of it and still the content.
MIN_FOREGROUND = 64


def without_padding(values: np.ndarray, tolerance: float) -> np.ndarray:
    """The sample without its most common exact value when that fills more than PADDING_SHARE of it and its
    neighbours (within ``tolerance``) hold few pixels: zero- or constant-filled margins are not image content,
    whereas a dark background quantised to a few levels (8-bit) is, and keeps its neighbouring levels full."""
    uniques, counts = np.unique(values, return_counts=True)
    top = int(np.argmax(counts))
    if counts[top] <= PADDING_SHARE * values.size or counts[top] == values.size:
        return values
    near = np.abs(uniques - uniques[top]) <= max(tolerance, 1e-12)
    if counts[near].sum() - counts[top] > 0.25 * counts[top]:
        return values  # a noisy background's mode, not a fill
    return values[values != uniques[top]]


def _foreground_anchor(values: np.ndarray, lo: float, norm: Normalization, quantum: float) -> float | None:
    """``lo + anchor * (foreground's quantile - lo)``, or None where the background is the bright part
    (brightfield) or nothing stands out: the caller keeps the percentile window then."""
    from skimage.filters import threshold_otsu

    split = float(threshold_otsu(values))
    below = values[values <= split]
    if below.size < 0.5 * values.size:
        return None  # the bright class is the larger: brightfield polarity (or confluent cells): percentiles
    background = float(np.median(below))
    noise = max(1.4826 * float(np.median(np.abs(below - background))), quantum)
    foreground = values[values > background + norm.k * noise]
    if foreground.size < MIN_FOREGROUND:
        return None
    return lo + norm.anchor * (float(np.percentile(foreground, norm.quantile)) - lo)


def apply_range(raw: np.ndarray, norm: Normalization, lo: float, span: float) -> np.ndarray:
    """Scale (part of) an image with a range measured on the whole image: float32 RGB."""
    if norm.kind == "dtype_range":
        return to_float_rgb(raw)
    rgb = as_float_rgb(raw)
    rgb -= np.float32(lo)
    rgb /= np.float32(span)
    np.clip(rgb, *CLIP, out=rgb)
    return np.nan_to_num(rgb, copy=False)


@dataclass(frozen=True)
class Scaling:
    """How one image (or slide) is scaled: a window (lo, span) for all of it, or its `LocalMaps`. Called on
    the image, or on a part of it with the part's first pixel, it gives the model input (float32 RGB)."""

    norm: Normalization
    lo: float = 0.0
    span: float = 1.0
    maps: LocalMaps | None = None

    def __call__(self, part: np.ndarray, y0: int = 0, x0: int = 0) -> np.ndarray:
        if self.maps is None:
            return apply_range(part, self.norm, self.lo, self.span)
        rgb = apply_maps(as_float_rgb(part).copy() if part.dtype == np.float32 else as_float_rgb(part),
                         self.maps, y0, x0)
        np.clip(rgb, *CLIP, out=rgb)
        return np.nan_to_num(rgb, copy=False)

    def describe(self) -> list[float] | dict[str, float]:
        """What a record keeps of it: the window, or the maps' medians and a digest."""
        if self.maps is None:
            return [self.lo, self.span]
        import hashlib

        digest = hashlib.sha256(self.maps.background.tobytes() + self.maps.scale.tobytes()).hexdigest()[:16]
        return {"background_median": float(np.median(self.maps.background)),
                "scale_median": float(np.median(self.maps.scale)), "maps_sha256": digest}  # type: ignore[dict-item]


def is_bright_background(values: np.ndarray) -> bool:
    """Whether the brighter Otsu class is the larger (brightfield, or confluent cells): the window stays global."""
    from skimage.filters import threshold_otsu

    values = values[np.isfinite(values)]
    if values.size == 0 or values.min() == values.max():
        return False
    return bool(np.count_nonzero(values <= float(threshold_otsu(values))) < 0.5 * values.size)


def luminance(raw: np.ndarray) -> np.ndarray:
    """(H, W) float32 mean of the (1 or 3) colour channels, in stored units (planes summed: numpy reduces a
    short last axis several times slower)."""
    channels = _colour_channels(raw)
    total = channels[..., 0].astype(np.float32)
    for c in range(1, channels.shape[2]):
        total += channels[..., c]
    if channels.shape[2] > 1:
        total /= np.float32(channels.shape[2])
    return total


def scaling_from_stats(stats: np.ndarray, norm: Normalization) -> Scaling:
    """A `local` Scaling from a whole image's (or slide's) `cell_stats`."""
    maps = local_maps(stats, norm.cell, norm.opening, norm.window, norm.k, norm.anchor, value_step(stats))
    return Scaling(norm, maps=maps)


def measure_scaling(raw: np.ndarray, norm: Normalization) -> Scaling:
    """How this whole image is scaled (a slide measures its own a window at a time: `nuclei.inference.slide`)."""
    if norm.kind != "local":
        return Scaling(norm, *intensity_range(raw, norm))
    lum = luminance(raw)
    step = max(1, int(np.sqrt(lum.size / PERCENTILE_SAMPLE)))
    if is_bright_background(lum[::step, ::step].ravel()):
        return Scaling(norm, *intensity_range(raw, norm.model_copy(update={"kind": "percentile"})))
    return scaling_from_stats(cell_stats(lum, norm.cell), norm)


def normalized(raw: np.ndarray, norm: Normalization) -> np.ndarray:
    """The model input for a whole image: float32 (H, W, 3)."""
    return measure_scaling(raw, norm)(raw)

"""Intensity normalisation: what turns an image as read (any dtype, any used range) into the model's input.

A model's config.json says which one it was trained with, and every consumer (training, threshold tuning,
evaluation, the inference engine, tiled or not) goes through `normalized` with those settings:

- ``percentile`` (default for new models): per image, the ``low``-th and ``high``-th percentiles of the
  luminance map to 0 and 1 (as StarDist and Cellpose do). A 12-bit image stored as uint16, a dim image and its
  stretched 8-bit copy reach the network alike. Percentiles are of the whole image, never of a tile.
- ``dtype_range`` (models trained before normalisation was part of the model): divide by the dtype's maximum.

Pure numpy, no I/O.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

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

    kind: Literal["percentile", "dtype_range"] = "percentile"
    low: float = Field(1.0, ge=0.0, lt=100.0, description="percentile that maps to 0")
    high: float = Field(99.8, gt=0.0, le=100.0, description="percentile that maps to 1")

    @model_validator(mode="after")
    def _ordered(self) -> Normalization:
        if self.low >= self.high:
            raise ValueError(f"normalization low ({self.low}) must be below high ({self.high})")
        return self

    def describe(self) -> str:
        if self.kind == "dtype_range":
            return "RGB scaled by the dtype's range to [0, 1]"
        return f"RGB, the image's luminance {self.low:g}th..{self.high:g}th percentiles mapped to 0..1"


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
    finite = lum[np.isfinite(lum)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, (norm.low, norm.high))
    span = float(hi - lo)
    scale = float(np.abs(finite).max()) or 1.0
    if span <= MIN_RANGE * scale:  # uniform or empty image: everything maps to 0
        return float(lo), float("inf")
    return float(lo), span


def apply_range(raw: np.ndarray, norm: Normalization, lo: float, span: float) -> np.ndarray:
    """Scale (part of) an image with a range measured on the whole image: float32 RGB."""
    if norm.kind == "dtype_range":
        return to_float_rgb(raw)
    rgb = as_float_rgb(raw)
    rgb -= np.float32(lo)
    rgb /= np.float32(span)
    np.clip(rgb, *CLIP, out=rgb)
    return np.nan_to_num(rgb, copy=False)


def normalized(raw: np.ndarray, norm: Normalization) -> np.ndarray:
    """The model input for a whole image: float32 (H, W, 3)."""
    return apply_range(raw, norm, *intensity_range(raw, norm))

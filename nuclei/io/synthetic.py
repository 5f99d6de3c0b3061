"""Synthetic nuclei: textured, noisy elliptical blobs, some in touching pairs, for fast tests and demos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from nuclei.io.images import write_png


def make_sample(
    shape: tuple[int, int] = (128, 128),
    n_nuclei: int = 12,
    touching_pairs: int = 2,
    seed: int = 0,
    radius: tuple[float, float] = (5.0, 11.0),
) -> tuple[np.ndarray, np.ndarray]:
    """An RGB uint8 image of bright nuclei on a dark background and its uint16 instance labels."""
    rng = np.random.default_rng(seed)
    height, width = shape
    labels = np.zeros(shape, np.uint16)
    for index in range(1, n_nuclei + 1):
        r = rng.uniform(*radius)
        centre = _touching_centre(rng, labels, r) if index <= 2 * touching_pairs and index % 2 == 0 else None
        if centre is None:
            centre = (rng.uniform(r, max(r + 1, width - r)), rng.uniform(r, max(r + 1, height - r)))
        _draw_ellipse(labels, centre, r, rng, index)
    return _render(labels, rng), labels


def _touching_centre(rng: np.random.Generator, labels: np.ndarray, r: float) -> tuple[float, float] | None:
    """A centre that makes the new nucleus touch the previous one."""
    ys, xs = np.nonzero(labels == labels.max()) if labels.any() else (np.array([]), np.array([]))
    if ys.size == 0:
        return None
    angle = rng.uniform(0, 2 * np.pi)
    prev_r = np.sqrt(ys.size / np.pi)
    distance = 0.85 * (prev_r + r)
    return float(xs.mean() + distance * np.cos(angle)), float(ys.mean() + distance * np.sin(angle))


def _draw_ellipse(
    labels: np.ndarray, centre: tuple[float, float], r: float, rng: np.random.Generator, index: int
) -> None:
    axes = (max(2, round(r * rng.uniform(0.75, 1.25))), max(2, round(r * rng.uniform(0.75, 1.25))))
    blob = np.zeros_like(labels, dtype=np.uint8)
    cv2.ellipse(blob, (round(centre[0]), round(centre[1])), axes, rng.uniform(0, 180), 0, 360, 1, -1)
    labels[(blob > 0) & (labels == 0)] = index


def _render(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Nuclei brighter than background, with chromatin texture, blur and shot noise."""
    fg = (labels > 0).astype(np.float32)
    brightness = rng.uniform(0.45, 0.9, size=int(labels.max()) + 1).astype(np.float32)
    brightness[0] = 0.0
    texture = cv2.GaussianBlur(rng.normal(0, 1, labels.shape).astype(np.float32), (0, 0), 1.5)
    signal = brightness[labels] * (1 + 0.25 * texture) * fg + 0.06
    signal = cv2.GaussianBlur(signal, (0, 0), 1.0)
    noisy = signal + rng.normal(0, 0.03, labels.shape).astype(np.float32)
    tint = np.array([0.9, 1.0, 0.8], np.float32)
    return (np.clip(noisy[..., None] * tint, 0, 1) * 255).astype(np.uint8)


def write_dataset(root: str | Path, n: int = 8, shape: tuple[int, int] = (128, 128), seed: int = 0) -> Path:
    """Write ``n`` samples in the paired layout (``images/`` and ``labels/``) and return ``root``."""
    root = Path(root)
    for i in range(n):
        image, labels = make_sample(shape, seed=seed + i)
        write_png(root / "images" / f"synth_{i:03d}.png", image)
        write_png(root / "labels" / f"synth_{i:03d}.png", labels)
    return root

"""Pictures people would rather look at than read: training curves, nucleus outlines, worst images."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # not pyplot: no backend switch, no global state in the user's process
from skimage.segmentation import find_boundaries

OUTLINE = np.array([1.0, 0.9, 0.0], np.float32)  # yellow shows on dark fluorescence and purple stains
MISSED = np.array([1.0, 0.1, 0.1], np.float32)


def read_history(path: Path) -> dict[str, list[float]]:
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    return {key: [float(r[key]) if r[key] else float("nan") for r in rows] for key in (rows[0] if rows else {})}


def stage_starts(history: dict[str, list[float]]) -> list[tuple[int, int]]:
    """(first epoch counting from 1, stage number) of every fine-tuning stage after the first."""
    stages = history.get("stage", [])
    return [(i + 1, int(stage)) for i, stage in enumerate(stages) if i and stage != stages[i - 1]]


def training_curves(history: dict[str, list[float]], out: Path) -> Path:
    """Loss and foreground metrics per epoch, training against validation; dashed lines where a stage begins."""
    names = [k for k in ("loss", "foreground_iou", "pixel_accuracy", "dice") if k in history]
    fig = Figure(figsize=(4 * len(names), 3.2))
    axes = fig.subplots(1, len(names), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        epochs = np.arange(1, len(history[name]) + 1)
        ax.plot(epochs, history[name], label="train")
        if f"val_{name}" in history:
            ax.plot(epochs, history[f"val_{name}"], label="validation")
        for epoch, stage in stage_starts(history):
            ax.axvline(epoch - 0.5, color="grey", linestyle="--", linewidth=0.8)
            ax.annotate(f"stage {stage}", (epoch, 1.0), xycoords=("data", "axes fraction"), va="top",
                        fontsize=8, color="grey")
        ax.set_title(name.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out


def overlay(image: np.ndarray, labels: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8: the image with predicted nuclei outlined (and missed true nuclei in red, if given)."""
    rgb = image.astype(np.float32)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    rgb = rgb[..., :3]
    if rgb.max() > 1.0:
        rgb = rgb / (65535.0 if rgb.max() > 255 else 255.0)
    low, high = np.percentile(rgb, (1, 99.8))
    rgb = np.clip((rgb - low) / max(high - low, 1e-6), 0, 1)
    if truth is not None:
        missed = (truth > 0) & (labels == 0)
        rgb[missed] = 0.5 * rgb[missed] + 0.5 * MISSED
    rgb[find_boundaries(labels, mode="inner")] = OUTLINE
    return (rgb * 255).astype(np.uint8)


def image_grid(panels: Sequence[tuple[str, np.ndarray]], out: Path, columns: int = 4) -> Path:
    """Titled RGB panels in a grid, saved as one PNG."""
    rows = max(1, -(-len(panels) // columns))
    fig = Figure(figsize=(4 * columns, 4 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, panel) in zip(axes.flat, panels, strict=False):
        ax.imshow(panel)
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    return out

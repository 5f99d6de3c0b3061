"""Scoring segmentations against ground truth, choosing thresholds, and writing an evaluation report."""

from __future__ import annotations

import csv
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nuclei.metrics import ImageScores, score_image, summarize
from nuclei.plots import image_grid, overlay
from nuclei.postprocess import Thresholds, instances

log = logging.getLogger(__name__)

FOREGROUND_GRID = (0.4, 0.5, 0.6, 0.7)
CORE_GRID = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)


def image_category(image: np.ndarray) -> str:
    """gray_dark / gray_bright / color_dark / color_bright, as the DSB2018 image types are named."""
    grey = np.allclose(image[..., 0], image[..., 1], atol=1e-3) and np.allclose(image[..., 1], image[..., 2], atol=1e-3)
    return f"{'gray' if grey else 'color'}_{'bright' if float(image.mean()) > 0.5 else 'dark'}"


@dataclass
class Scored:
    """One image's scores, with what is needed to show it."""

    id: str
    category: str
    scores: ImageScores


@dataclass
class Report:
    """Scores per image, overall and per category."""

    images: list[Scored] = field(default_factory=list)

    def overall(self) -> dict[str, float]:
        return summarize([s.scores for s in self.images])

    def by_category(self) -> dict[str, dict[str, float]]:
        categories = sorted({s.category for s in self.images})
        return {c: summarize([s.scores for s in self.images if s.category == c]) for c in categories}

    def as_dict(self) -> dict[str, object]:
        return {"overall": self.overall(), "by_category": self.by_category()}


def choose_thresholds(
    probs: Sequence[np.ndarray], truths: Sequence[np.ndarray], base: Thresholds | None = None
) -> tuple[Thresholds, float]:
    """The thresholds with the best mean DSB2018 score on the given (validation) images."""
    base = base or Thresholds()
    cores: Sequence[float] = CORE_GRID if probs[0].shape[-1] > 1 else (base.core,)
    best, best_score = base, -1.0
    for fg, core in itertools.product(FOREGROUND_GRID, cores):
        candidate = Thresholds(foreground=fg, core=core, min_size=base.min_size)
        score = float(np.mean([
            score_image(t, instances(p, candidate)).dsb_score for p, t in zip(probs, truths, strict=True)
        ]))
        log.info("thresholds foreground %.2f core %.2f: DSB score %.4f", fg, core, score)
        if score > best_score:
            best, best_score = candidate, score
    return best, best_score


def score_all(
    ids: Sequence[str],
    predicted: Callable[[int], np.ndarray],
    truths: Sequence[np.ndarray],
    categories: Sequence[str],
    progress: bool = True,
) -> Report:
    """Score each image's predicted labels (``predicted(i)``) against its true labels."""
    report = Report()
    for i in tqdm(range(len(ids)), desc="scoring", unit="img", disable=not progress):
        report.images.append(Scored(ids[i], categories[i], score_image(truths[i], predicted(i))))
    return report


def write_report(
    report: Report,
    out_dir: Path,
    images: Callable[[str], tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    worst: int = 8,
) -> dict[str, Path]:
    """per_image.csv, summary.json and (given a loader of image, truth, prediction) worst_images.png."""
    from nuclei.modeldir import write_json  # local import keeps this module free of model-dir concerns

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"per_image": out_dir / "per_image.csv", "summary": out_dir / "summary.json"}
    with open(paths["per_image"], "w", newline="") as handle:
        writer = csv.writer(handle)
        keys = list(report.images[0].scores.as_dict()) if report.images else []
        writer.writerow(["id", "category", *keys])
        for s in report.images:
            writer.writerow([s.id, s.category, *(f"{v:.6g}" for v in s.scores.as_dict().values())])
    write_json(paths["summary"], report.as_dict())
    if images is not None and report.images:
        ranked = sorted(report.images, key=lambda s: s.scores.dsb_score)[:worst]
        panels = []
        for s in ranked:
            image, truth, pred = images(s.id)
            panels.append((f"{s.id[:16]} DSB {s.scores.dsb_score:.2f}", overlay(image, pred, truth)))
        paths["worst_images"] = image_grid(panels, out_dir / "worst_images.png")
    return paths


def format_table(report: Report) -> str:
    """A readable table: one row per category and one overall."""
    columns = ("n_images", "pixel_accuracy", "foreground_iou", "dice", "dsb_score", "ap50")
    rows = [("overall", report.overall()), *report.by_category().items()]
    lines = [f"{'':14}" + "".join(f"{c:>16}" for c in columns)]
    for name, values in rows:
        lines.append(f"{name:14}" + "".join(
            f"{int(values[c]):>16d}" if c == "n_images" else f"{values[c]:>16.4f}" for c in columns
        ))
    return "\n".join(lines)

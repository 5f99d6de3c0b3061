"""Scoring segmentations against ground truth, choosing thresholds, and writing an evaluation report."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from tqdm import tqdm

from nuclei.core.metrics import ImageScores, score_image, summarize
from nuclei.core.postprocess import Thresholds, drop_unsure, instances, remove_small
from nuclei.core.text import spreadsheet_cell
from nuclei.errors import InputError
from nuclei.plots import image_grid, overlay

if TYPE_CHECKING:
    from nuclei.io.datasets import Sample
    from nuclei.store.record import EntryRecord

log = logging.getLogger(__name__)

FOREGROUND_GRID = (0.4, 0.5, 0.6, 0.7)
CORE_GRID = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)
# Specks under a few dozen pixels are mostly debris or noise on DSB2018-like images (about 20x-40x).
MIN_SIZE_GRID = (8, 16, 24, 32)
# Mean foreground probability a nucleus needs (0: any); tried with each min size once foreground and core are set.
CONFIDENCE_GRID = (0.0, 0.7, 0.75, 0.8, 0.85, 0.9)


@dataclass
class Scored:
    """One image's scores, with what is needed to show it."""

    id: str
    category: str
    scores: ImageScores
    dataset: str = ""

    @property
    def group(self) -> str:
        """The category, prefixed by the data set when there are several (``bbbc039/gray_dark``)."""
        return f"{self.dataset}/{self.category}" if self.dataset else self.category


@dataclass
class Report:
    """Scores per image, overall and per category."""

    images: list[Scored] = field(default_factory=list)

    def overall(self) -> dict[str, float]:
        return summarize([s.scores for s in self.images])

    def by_category(self) -> dict[str, dict[str, float]]:
        categories = sorted({s.group for s in self.images})
        return {c: summarize([s.scores for s in self.images if s.group == c]) for c in categories}

    def by_dataset(self) -> dict[str, dict[str, float]]:
        datasets = sorted({s.dataset for s in self.images if s.dataset})
        return {d: summarize([s.scores for s in self.images if s.dataset == d]) for d in datasets}

    def as_dict(self) -> dict[str, object]:
        found: dict[str, object] = {"overall": self.overall(), "by_category": self.by_category()}
        if len(self.by_dataset()) > 1:
            found["by_dataset"] = self.by_dataset()
        return found


def choose_thresholds(
    probs: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    base: Thresholds | None = None,
    groups: Sequence[str] | None = None,
) -> tuple[Thresholds, float]:
    """The thresholds with the best mean DSB2018 score plus AP@0.5 on the given (validation) images: the DSB
    score alone favours outlines exact at high IoU over finding every nucleus, which labs count on. With
    ``groups`` (each image's data set) the mean is over groups, so thresholds suit every set, not the largest.

    First every foreground/core pair with every minimum size (no confidence cut-off), then, for the best pair,
    every minimum size with every confidence cut-off. Each pair labels the images once; minimum sizes and
    cut-offs are then applied to those labels (`remove_small` and `drop_unsure` give what `instances` would).
    """
    base = base or Thresholds()
    cores: Sequence[float] = CORE_GRID if probs[0].shape[-1] > 1 else (base.core,)

    def score(labelled: Sequence[np.ndarray], candidate: Thresholds) -> float:
        scores = [score_image(t, drop_unsure(remove_small(labels, candidate.min_size), p[..., 0],
                                             candidate.confidence))
                  for labels, t, p in zip(labelled, truths, probs, strict=True)]
        found = _group_mean([s.dsb_score + s.ap50 for s in scores], groups)
        log.info("thresholds %s: DSB score + AP@0.5 %.4f", candidate, found)
        return found

    best, best_score, best_labelled = base, -1.0, None
    for fg, core in itertools.product(FOREGROUND_GRID, cores):
        labelled = [instances(p, Thresholds(foreground=fg, core=core, min_size=1)) for p in probs]
        for min_size in MIN_SIZE_GRID:
            candidate = Thresholds(foreground=fg, core=core, min_size=min_size)
            if (found := score(labelled, candidate)) > best_score:
                best, best_score, best_labelled = candidate, found, labelled
    assert best_labelled is not None
    pair = best
    for min_size, confidence in itertools.product(MIN_SIZE_GRID, CONFIDENCE_GRID[1:]):
        candidate = Thresholds(foreground=pair.foreground, core=pair.core, min_size=min_size, confidence=confidence)
        if (found := score(best_labelled, candidate)) > best_score:
            best, best_score = candidate, found
    return best, best_score


def _group_mean(values: Sequence[float], groups: Sequence[str] | None) -> float:
    if not groups:
        return float(np.mean(values))
    names = sorted(set(groups))
    return float(np.mean([np.mean([v for v, g in zip(values, groups, strict=True) if g == n]) for n in names]))


def score_all(
    ids: Sequence[str],
    predicted: Callable[[int], np.ndarray],
    truths: Sequence[np.ndarray],
    categories: Sequence[str],
    progress: bool = True,
    datasets: Sequence[str] | None = None,
) -> Report:
    """Score each image's predicted labels (``predicted(i)``) against its true labels."""
    report = Report()
    for i in tqdm(range(len(ids)), desc="scoring", unit="img", disable=not progress):
        dataset = datasets[i] if datasets else ""
        report.images.append(Scored(ids[i], categories[i], score_image(truths[i], predicted(i)), dataset))
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
            writer.writerow([spreadsheet_cell(s.id), spreadsheet_cell(s.category),
                             *(f"{v:.6g}" for v in s.scores.as_dict().values())])
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
    datasets = report.by_dataset()
    rows = [("overall", report.overall()), *(datasets.items() if len(datasets) > 1 else ()),
            *report.by_category().items()]
    width = max(14, *(len(name) + 2 for name, _ in rows))
    lines = [f"{'':{width}}" + "".join(f"{c:>16}" for c in columns)]
    for name, values in rows:
        lines.append(f"{name:{width}}" + "".join(
            f"{int(values[c]):>16d}" if c == "n_images" else f"{values[c]:>16.4f}" for c in columns
        ))
    return "\n".join(lines)


Split = Literal["all", "validation", "training", "held_out"]


def match_entries(samples: Sequence[Sample], records: Mapping[str, EntryRecord], store: str) -> dict[str, str]:
    """The store entry each labelled image is scored against (sample id -> entry id): the entry made from the
    same file content first (its record's source sha256), else the same id, else the one entry of the same
    name in any folder. Two entries of that name and neither holding the image's content is an error naming
    both, never a silent guess (``p1/x`` and ``p2/x`` against a truth ``x.png``)."""
    by_content: dict[str, list[str]] = {}
    by_name: dict[str, list[str]] = {}
    for entry_id, record in records.items():
        by_content.setdefault(record.source_sha256, []).append(entry_id)
        by_name.setdefault(entry_id.rsplit("/", 1)[-1], []).append(entry_id)
    matched: dict[str, str] = {}
    for sample in samples:
        same = by_content.get(_file_sha256(sample.image_path), [])
        named = by_name.get(sample.id.rsplit("/", 1)[-1], [])
        if same:
            matched[sample.id] = sample.id if sample.id in same else same[0]
        elif sample.id in records:
            matched[sample.id] = sample.id
        elif len(named) == 1:
            matched[sample.id] = named[0]
        elif named:
            raise InputError(sample.image_path, f"{store} holds {len(named)} entries named {sample.id!r} "
                             f"({', '.join(named[:4])}) and none of them was made from this file's content: "
                             "score one folder's entries at a time (a store per folder), or name the truth "
                             "files as the store's ids")
    return matched


def _file_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def score_samples(
    samples: Sequence[Sample], predicted: Callable[[int], np.ndarray], progress: bool = True
) -> tuple[Report, dict[str, np.ndarray]]:
    """Score ``predicted(i)`` against each labelled sample; returns the report and the labels by id."""
    preds: dict[str, np.ndarray] = {}

    def remember(i: int) -> np.ndarray:
        preds[samples[i].id] = predicted(i)
        return preds[samples[i].id]

    several = len({s.dataset for s in samples}) > 1
    report = score_all([s.id for s in samples], remember, [s.labels for s in samples],
                       [s.category for s in samples], progress=progress,
                       datasets=[s.dataset for s in samples] if several else None)
    return report, preds


def _in_split(samples: list[Sample], model_path: Path, split: Split) -> list[Sample]:
    """The samples of a model's validation, training or held-out images (its data.json)."""
    data = json.loads((model_path / "data.json").read_text())
    if split == "held_out":
        keep = {i for ids in data.get("held_out_ids", {}).values() for i in ids}
    else:
        keep = set(data["val_ids" if split == "validation" else "train_ids"])
    return [s for s in samples if s.id in keep]


def _stored_labels(samples: list[Sample], store: str | Path) -> Callable[[int], np.ndarray]:
    """Sample i's labels as a store holds them (none found where the store lacks the image)."""
    from nuclei.store.backend import Store

    results = Store(store)
    matched = match_entries(samples, results.records(), str(store))
    missing = [s.id for s in samples if s.id not in matched]
    if missing:
        log.warning("%d of %d images are not in %s and count as empty: %s", len(missing), len(samples),
                    store, ", ".join(missing[:5]))

    def predicted(i: int) -> np.ndarray:
        sample = samples[i]
        if sample.id not in matched:
            return np.zeros(sample.labels.shape, np.uint32)
        return results.read_labels(matched[sample.id])

    return predicted


def evaluate_against(
    truth_dir: str | Path,
    out_dir: str | Path,
    model: str | Path | None = None,
    store: str | Path | None = None,
    split: Split = "all",
    progress: bool = True,
    int8: bool = True,
    diameter: float | Literal["auto"] | None = None,
    tta: bool = False,
    stained_model: str | None = "default",
    min_diameter: float | None = None,
    drop_debris: bool = True,
) -> tuple[Report, dict[str, Path]]:
    """Score a store's labels, or a model's segmentation, against a labelled folder; write the report.

    With ``store`` the stored labels are scored (an image of the truth set missing from the store counts as
    no nucleus found); otherwise ``model`` (default: the shipped model) segments each image with its own
    thresholds (int8 if it ships a validated int8 variant and ``int8``), colour brightfield images with the
    stained-tissue model as `nuclei segment` would (``stained_model``). ``split`` keeps the model's validation
    (or training) images only, from its data.json.
    """
    from nuclei.inference.engine import Engine
    from nuclei.inference.sizing import label_image
    from nuclei.io.datasets import load_dataset
    from nuclei.modeldir import resolve_model, resolve_stained_model

    samples = load_dataset(truth_dir, progress=progress).samples
    model_dir = resolve_model(model) if (store is None or split != "all") else None
    if split != "all":
        assert model_dir is not None
        samples = _in_split(samples, model_dir.path, split)
    if not samples:
        raise InputError(Path(truth_dir), f"no labelled images to score (split {split!r})")
    if store is not None:
        predicted = _stored_labels(samples, store)
    else:
        assert model_dir is not None
        engine = Engine(model_dir, providers=("CPUExecutionProvider",), int8=int8, diameter=diameter, tta=tta,
                        stained=resolve_stained_model(stained_model, model), min_diameter=min_diameter,
                        drop_debris=drop_debris)

        def predicted(i: int) -> np.ndarray:
            return label_image(engine, samples[i].raw)[0]

    report, preds = score_samples(samples, predicted, progress)
    by_id = {s.id: s for s in samples}
    paths = write_report(report, Path(out_dir),
                         images=lambda i: (by_id[i].image, by_id[i].labels, preds[i]))
    return report, paths

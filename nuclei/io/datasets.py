"""Labelled datasets in the layouts labs have, loaded to one in-memory form.

Layouts (detected from the folder):
- kaggle: ``stage1_train/<id>/images/<id>.png`` with one binary PNG per nucleus in ``<id>/masks/``;
- seed:   ``train|test/inputs`` and ``train|test/masks``, one binary mask per image, paired by file name;
- paired: ``images/`` and ``labels/`` (instance label images), paired by file name.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from nuclei.errors import InputError
from nuclei.io.images import IMAGE_SUFFIXES, binary_to_labels, read_labels, read_raw, to_float_rgb

log = logging.getLogger(__name__)

Layout = Literal["kaggle", "seed", "paired"]
OnError = Literal["raise", "skip"]


@dataclass
class Sample:
    """One labelled image as read (any dtype) and uint16/uint32 instance labels of the same size.

    ``dataset`` names the folder it came from; ``meta`` is its row of that folder's manifest.csv, if any
    (category, preparation, ...), which held-out groups and per-category scores use.
    """

    id: str
    raw: np.ndarray
    labels: np.ndarray
    image_path: Path
    subset: str = "train"
    dataset: str = ""
    meta: dict[str, str] = field(default_factory=dict)

    @cached_property
    def image(self) -> np.ndarray:
        """float32 RGB scaled by the dtype's range to [0, 1]: for display (the model's input is `normalized`)."""
        return to_float_rgb(self.raw)

    @property
    def mask(self) -> np.ndarray:
        """The 0/1 nucleus mask."""
        return (self.labels > 0).astype(np.uint8)

    @property
    def category(self) -> str:
        """The image type: the manifest's category or preparation, else grey/colour and dark/bright."""
        return self.meta.get("category") or self.meta.get("preparation") or image_category(self.image)

    def field(self, name: str) -> str:
        """A manifest field, or `id` / `category` / `dataset` (for held-out group rules)."""
        if name in ("id", "category", "dataset"):
            return str(getattr(self, name))
        return self.meta.get(name, "")


@dataclass
class Dataset:
    """Samples plus the files that were skipped, each with its reason."""

    root: Path
    layout: Layout
    roots: list[Path] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    skipped: list[InputError] = field(default_factory=list)

    def subset(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.subset == name]

    def fingerprint(self) -> str:
        """A hash of ids, sizes and label contents: says whether two trainings saw the same data."""
        digest = hashlib.sha256()
        for s in sorted(self.samples, key=lambda s: s.id):
            digest.update(f"{s.dataset}/{s.subset}/{s.id}:{s.raw.shape[:2]}".encode())
            digest.update(np.ascontiguousarray(s.labels).tobytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class _Pair:
    """Where one sample's files are, before reading them."""

    id: str
    image: Path
    read_labels: Callable[[], np.ndarray]
    subset: str = "train"


def detect_layout(root: Path) -> Layout:
    """Tell the layout from the folder names; an error says which layouts were looked for."""
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "paired"
    if (root / "train" / "inputs").is_dir() and (root / "train" / "masks").is_dir():
        return "seed"
    if _kaggle_root(root) is not None:
        return "kaggle"
    raise InputError(
        root, "no known dataset layout: expected images/ + labels/, train/inputs + train/masks, "
        "or stage1_train/<id>/images + masks/"
    )


def load_dataset(root: str | Path, on_error: OnError = "raise", progress: bool = True) -> Dataset:
    """Load every labelled image under ``root``; with ``on_error="skip"`` bad files are skipped and reported."""
    root = Path(root)
    layout = detect_layout(root)
    dataset = Dataset(root=root, layout=layout)
    pairs = list(_pairs(root, layout, dataset.skipped, on_error))
    manifest = read_manifest(root)
    for pair in tqdm(pairs, desc=f"loading {root.name}", unit="img", disable=not progress):
        try:
            sample = _load_pair(pair)
            sample.dataset, sample.meta = root.name, manifest.get(pair.id, {})
            dataset.samples.append(sample)
        except InputError as exc:
            _fail(exc, dataset.skipped, on_error)
    if not dataset.samples:
        raise InputError(root, f"no usable labelled images ({len(dataset.skipped)} skipped)")
    for problem in dataset.skipped:
        log.warning("skipped %s", problem)
    return dataset


def load_datasets(roots: Sequence[str | Path], on_error: OnError = "raise", progress: bool = True) -> Dataset:
    """Several labelled folders as one dataset; each sample keeps the name of its folder in ``dataset``."""
    parts = [load_dataset(root, on_error, progress) for root in roots]
    names = [p.root.name for p in parts]
    if len(set(names)) != len(names):
        raise InputError(Path(roots[0]), f"dataset folders must have distinct names, got {names}")
    combined = Dataset(root=parts[0].root, layout=parts[0].layout, roots=[p.root for p in parts])
    for part in parts:
        combined.samples.extend(part.samples)
        combined.skipped.extend(part.skipped)
    return combined


def read_manifest(root: Path) -> dict[str, dict[str, str]]:
    """ROOT/manifest.csv (an `id` column plus any others) by id; empty when there is none."""
    path = root / "manifest.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle) if row.get("id")}


def matches_group(sample: Sample, rule: str) -> bool:
    """Does the sample belong to a held-out group ``DATASET:FIELD=REGEX`` (e.g. ``bbbc039:id=_[A-C]\\d\\d_``)?"""
    dataset, _, condition = rule.partition(":")
    name, _, pattern = condition.partition("=")
    return dataset in ("*", sample.dataset) and re.search(pattern, sample.field(name)) is not None


def _fail(exc: InputError, skipped: list[InputError], on_error: OnError) -> None:
    if on_error == "raise":
        raise exc
    skipped.append(exc)


def _load_pair(pair: _Pair) -> Sample:
    image = read_raw(pair.image)
    labels = pair.read_labels()
    if labels.shape[:2] != image.shape[:2]:
        raise InputError(
            pair.image, f"image is {image.shape[0]}x{image.shape[1]} but its labels are "
            f"{labels.shape[0]}x{labels.shape[1]}"
        )
    return Sample(id=pair.id, raw=image, labels=labels, image_path=pair.image, subset=pair.subset)


def _pairs(root: Path, layout: Layout, skipped: list[InputError], on_error: OnError) -> Iterator[_Pair]:
    if layout == "paired":
        yield from _paired_by_name(root / "images", root / "labels", "train", skipped, on_error)
    elif layout == "seed":
        for subset in ("train", "test"):
            if (root / subset / "inputs").is_dir():
                yield from _paired_by_name(
                    root / subset / "inputs", root / subset / "masks", subset, skipped, on_error
                )
    else:
        yield from _kaggle_pairs(_kaggle_root(root) or root, skipped, on_error)


def _image_files(folder: Path) -> dict[str, Path]:
    return {
        p.stem: p for p in sorted(folder.iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    }


def _paired_by_name(
    images: Path, labels: Path, subset: str, skipped: list[InputError], on_error: OnError
) -> Iterator[_Pair]:
    """Pair files by stem (never by directory order); unpaired files are errors."""
    if not labels.is_dir():
        _fail(InputError(labels, "label folder is missing"), skipped, on_error)
        return
    image_files, label_files = _image_files(images), _image_files(labels)
    for stem in sorted(set(image_files) | set(label_files)):
        if stem not in label_files:
            _fail(InputError(image_files[stem], f"image has no mask/label file in {labels}"), skipped, on_error)
        elif stem not in image_files:
            _fail(InputError(label_files[stem], f"mask/label has no image in {images}"), skipped, on_error)
        else:
            label_path = label_files[stem]
            yield _Pair(stem, image_files[stem], partial(read_labels, label_path), subset)


def _kaggle_root(root: Path) -> Path | None:
    for candidate in (root, root / "stage1_train"):
        if candidate.is_dir() and any((d / "images").is_dir() for d in candidate.iterdir() if d.is_dir()):
            return candidate
    return None


def _kaggle_pairs(root: Path, skipped: list[InputError], on_error: OnError) -> Iterator[_Pair]:
    for sample_dir in sorted(d for d in root.iterdir() if d.is_dir()):
        images = _image_files(sample_dir / "images") if (sample_dir / "images").is_dir() else {}
        if len(images) != 1:
            _fail(InputError(sample_dir / "images", f"expected one image, found {len(images)}"), skipped, on_error)
            continue
        masks_dir = sample_dir / "masks"
        if not masks_dir.is_dir() or not _image_files(masks_dir):
            _fail(InputError(next(iter(images.values())), f"image has no masks in {masks_dir}"), skipped, on_error)
            continue
        yield _Pair(sample_dir.name, next(iter(images.values())), partial(merge_instance_masks, masks_dir))


def merge_instance_masks(masks_dir: Path) -> np.ndarray:
    """One binary PNG per nucleus -> uint16 labels 1..N in file-name order (a later mask wins overlaps)."""
    files = sorted(_image_files(masks_dir).values())
    labels: np.ndarray | None = None
    for index, path in enumerate(files, start=1):
        raw = read_raw(path)
        mask = (raw if raw.ndim == 2 else raw[..., 0]) > 0
        if labels is None:
            labels = np.zeros(mask.shape, np.uint16 if len(files) < 2**16 else np.uint32)
        elif mask.shape != labels.shape:
            raise InputError(path, f"mask is {mask.shape[0]}x{mask.shape[1]}, other masks are "
                             f"{labels.shape[0]}x{labels.shape[1]}")
        labels[mask] = index
    assert labels is not None
    return labels


def image_category(image: np.ndarray) -> str:
    """gray_dark / gray_bright / color_dark / color_bright, as the DSB2018 image types are named."""
    grey = np.allclose(image[..., 0], image[..., 1], atol=1e-3) and np.allclose(image[..., 1], image[..., 2], atol=1e-3)
    return f"{'gray' if grey else 'color'}_{'bright' if float(image.mean()) > 0.5 else 'dark'}"


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded shuffle, then the first (1 - val_fraction) for training and the rest for validation."""
    if n < 2:
        raise ValueError(f"need at least 2 samples to split, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return np.sort(order[: n - n_val]), np.sort(order[n - n_val :])


__all__ = ["Dataset", "Sample", "binary_to_labels", "detect_layout", "load_dataset", "load_datasets",
           "matches_group", "split_indices"]

"""Read a results store: list and filter images, fetch labels, masks and measurements, export PNGs.

    >>> store = open_store("results.zarr")                        # doctest: +SKIP
    >>> [i.id for i in store.images(pattern="plate1/*", min_nuclei=5)]  # doctest: +SKIP
    >>> store.labels("plate1/a1")                                 # doctest: +SKIP

Listings read only the small index records, never arrays. Nothing is cached: every call re-reads the
index, so a segmentation run writing the same store shows up as it goes (only committed entries).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nuclei.errors import StoreError
from nuclei.io.images import write_png
from nuclei.store.backend import Store, StoredEntry
from nuclei.store.index import validate_id
from nuclei.store.record import EntryRecord

log = logging.getLogger(__name__)

ExportKind = Literal["labels", "masks", "overlay"]
EXPORT_KINDS: tuple[ExportKind, ...] = ("labels", "masks", "overlay")
_GLOB_CHARS = frozenset("*?[")
# Overlays of larger images are drawn from a pyramid level (about 1 GB to draw one of 4096 x 4096).
OVERLAY_MAX_SIDE = 4096
_UINT16_MAX = 2**16 - 1


@dataclass(frozen=True)
class ImageInfo:
    """One complete image of a store, from its record."""

    id: str
    source: str | None
    shape: tuple[int, int] | None
    n_nuclei: int | None
    model_version: str | None
    status: str | None
    written: str | None


@dataclass(frozen=True)
class _Filters:
    """The listing filters; None means 'any'."""

    pattern: str | None = None
    source: str | None = None
    min_nuclei: int | None = None
    max_nuclei: int | None = None
    model: str | None = None

    def matches(self, record: EntryRecord) -> bool:
        """True when the record passes every filter that is set."""
        return (
            (self.pattern is None or fnmatchcase(record.id, self.pattern))
            and (self.source is None or _source_matches(record.source, self.source))
            and (self.min_nuclei is None or record.n_nuclei >= self.min_nuclei)
            and (self.max_nuclei is None or record.n_nuclei <= self.max_nuclei)
            and (self.model is None or record.model.version.startswith(self.model))
        )


def open_store(path: str | Path) -> NucleiStore:
    """Open a results store read-only; StoreError if it is not a store of this format version."""
    return NucleiStore(path)


class NucleiStore:
    """Read-only view of a results store (local path or fsspec URL)."""

    def __init__(self, path: str | Path) -> None:
        self._store = Store(path, "r")
        self.url = self._store.url

    def __repr__(self) -> str:
        return f"NucleiStore({self.url!r})"

    @property
    def backend(self) -> Store:
        """The store's reader underneath (records and arrays), for whole-store tables."""
        return self._store

    # --- listing (records only) ----------------------------------------------------------------------

    def _records(self, filters: _Filters | None = None) -> Iterator[EntryRecord]:
        """The records of complete entries, in id order, that pass the filters: streamed (a store of 10^6 entries
        is listed holding a page of records at a time, `Store.iter_records`)."""
        return (r for r in self._store.iter_records() if filters is None or filters.matches(r))

    def images(
        self, pattern: str | None = None, source: str | None = None, min_nuclei: int | None = None,
        max_nuclei: int | None = None, model: str | None = None,
    ) -> list[ImageInfo]:
        """Complete images by id; filters: id glob, source substring/glob, count range, model prefix."""
        filters = _Filters(pattern, source, min_nuclei, max_nuclei, model)
        return [_info(r) for r in self._records(filters)]

    def summary(
        self, pattern: str | None = None, source: str | None = None, min_nuclei: int | None = None,
        max_nuclei: int | None = None, model: str | None = None,
    ) -> list[dict[str, Any]]:
        """One row per image (same filters as `images`): counts, coverage, size, model; from records only."""
        filters = _Filters(pattern, source, min_nuclei, max_nuclei, model)
        return [_summary_row(r) for r in self._records(filters)]

    def stats(self) -> dict[str, Any]:
        """Totals over the store: images, nuclei, nuclei per image, mean coverage, images per model."""
        return _stats(self._records())

    def ids(self) -> list[str]:
        """Ids of the complete images, sorted."""
        return self._store.ids()

    def __len__(self) -> int:
        return sum(1 for _ in self._store.iter_records())

    def __contains__(self, image_id: object) -> bool:
        if not isinstance(image_id, str):
            return False
        try:
            return self._store.record(image_id) is not None
        except StoreError:  # an invalid id is never in a store
            return False

    # --- one image -----------------------------------------------------------------------------------

    def metadata(self, image_id: str) -> dict[str, Any]:
        """The image's record (provenance and summary)."""
        record = self._store.record(validate_id(image_id))
        if record is None:
            raise StoreError(f"{self.url}: no complete entry with id {image_id!r}")
        return record.as_dict()

    def labels(self, image_id: str) -> np.ndarray:
        """Instance labels (H, W): 0 background, 1..N nuclei (uint16, or uint32 above 65535)."""
        return self._store.read_labels(validate_id(image_id))

    def mask(self, image_id: str) -> np.ndarray:
        """Binary nucleus mask (H, W) uint8, 0/1."""
        return self._store.read_mask(validate_id(image_id))

    def image(self, image_id: str) -> np.ndarray:
        """The segmented image as stored: (H, W, C) in its original dtype."""
        return self._store.read_image(validate_id(image_id))

    def measurements(self, image_id: str) -> dict[str, np.ndarray]:
        """Per-nucleus measurements: column name -> 1-D array, one value per nucleus in label order."""
        columns, table = self._store.read_measurements(validate_id(image_id))
        return {name: table[:, i] for i, name in enumerate(columns)}

    def overlay(self, image_id: str, max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
        """RGB uint8 (H, W, 3): the stored image with its nuclei outlined. An image larger than ``max_side`` on
        a side (a slide) is drawn from the first pyramid level that fits: a downsampled picture, read without
        the full-size image or labels (drawing a 12000 x 12000 image at full size took 9 GB)."""
        from nuclei.plots import overlay  # matplotlib: only when a picture is asked for

        entry = self._store.open_entry(validate_id(image_id))
        level = 0
        while max(entry.labels_array(level).shape) > max_side and _has_level(entry, level + 1):
            level += 1
        image = np.moveaxis(np.asarray(entry.image_array(level)[...]), 0, -1)
        return overlay(_displayable(image), np.asarray(entry.labels_array(level)[...]))

    # --- export --------------------------------------------------------------------------------------

    def export(self, out_dir: str | Path, what: ExportKind = "labels") -> list[Path]:
        """Write OUT_DIR/<id>.png for every complete image; returns the paths written, in id order."""
        if what not in EXPORT_KINDS:
            raise ValueError(f"what must be one of {EXPORT_KINDS}, got {what!r}")
        out = Path(out_dir)
        if what == "labels":  # a first pass over the records: nothing is written when one cannot be
            _check_label_range(self._records())
        render = self._renderer(what)
        written = []
        for record in self._records():
            path = self._export_one(record.id, out, render)
            if path is not None:
                written.append(path)
        return written

    def _renderer(self, what: ExportKind) -> Callable[[str], np.ndarray]:
        """The function that turns an id into the picture to save."""
        if what == "labels":
            return self._label_picture
        if what == "masks":
            return lambda image_id: (self.mask(image_id) > 0).astype(np.uint8) * np.uint8(255)
        return self.overlay

    def _label_picture(self, image_id: str) -> np.ndarray:
        labels = self.labels(image_id)
        if labels.max(initial=0) > _UINT16_MAX:
            raise StoreError(f"{self.url}: image {image_id!r} has label ids above {_UINT16_MAX}; "
                             "a 16-bit PNG cannot hold them")
        return labels.astype(np.uint16)

    def _export_one(self, image_id: str, out: Path, render: Callable[[str], np.ndarray]) -> Path | None:
        """Render and write one image; None when its entry vanished meanwhile (being rewritten)."""
        path = out / f"{validate_id(image_id)}.png"
        try:
            picture = render(image_id)
        except StoreError:
            if self._store.record(image_id) is not None:
                raise
            log.warning("skipping %s: its entry is being rewritten", image_id)
            return None
        write_png(path, picture)
        return path


# --- helpers ---------------------------------------------------------------------------------------------


def _source_matches(source: str, wanted: str) -> bool:
    """A glob when `wanted` has glob characters, else a substring test."""
    if _GLOB_CHARS & set(wanted):
        return fnmatchcase(source, wanted)
    return wanted in source


def _info(record: EntryRecord) -> ImageInfo:
    return ImageInfo(id=record.id, source=record.source, shape=record.shape, n_nuclei=record.n_nuclei,
                     model_version=record.model.version, status=record.status, written=record.written)


def _summary_row(record: EntryRecord) -> dict[str, Any]:
    return {
        "id": record.id, "source": record.source, "n_nuclei": record.n_nuclei,
        "covered_fraction": record.covered_fraction, "mean_area": record.mean_area,
        "height": record.shape[0], "width": record.shape[1], "model_version": record.model.version,
    }


def _stats(records: Iterable[EntryRecord]) -> dict[str, Any]:
    """The totals of `NucleiStore.stats`, in one pass (only the counts are kept: the median needs them)."""
    counts: list[int] = []
    covered = 0.0
    models: dict[str, int] = {}
    for record in records:
        counts.append(record.n_nuclei)
        covered += record.covered_fraction
        models[record.model.version] = models.get(record.model.version, 0) + 1
    return {
        "n_images": len(counts),
        "n_nuclei": sum(counts),
        "mean_nuclei_per_image": statistics.fmean(counts) if counts else None,
        "median_nuclei_per_image": float(statistics.median(counts)) if counts else None,
        "mean_covered_fraction": covered / len(counts) if counts else None,
        "models": dict(sorted(models.items())),
    }


def _check_label_range(records: Iterable[EntryRecord]) -> None:
    """Fail before writing anything when a record already says its labels cannot fit 16 bits."""
    for record in records:
        if record.n_nuclei > _UINT16_MAX:
            raise StoreError(f"image {record.id!r} has {record.n_nuclei} nuclei; a 16-bit label PNG holds at "
                             f"most {_UINT16_MAX}")


def _has_level(entry: StoredEntry, level: int) -> bool:
    try:
        entry.labels_array(level)
    except (KeyError, StoreError):
        return False
    return True


def _displayable(image: np.ndarray) -> np.ndarray:
    """Grey (H, W) for one channel or grey+alpha, else the colour channels; what plots.overlay expects."""
    if image.ndim == 3 and image.shape[2] <= 2:
        return image[..., 0]
    return image

"""The entry record: one small JSON file per image under STORE/index/, written last (it commits the entry).

Typed and validated on read: a record that does not parse makes that one entry invisible (and listed by
`Store.scan`), never the whole store unreadable. Listings read only these records, never arrays.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import nuclei
from nuclei.config import STORE_FORMAT_VERSION
from nuclei.core.measure import COLUMN_NAMES

if TYPE_CHECKING:
    from nuclei.io.discovery import ImageItem


class ModelInfo(BaseModel):
    """Which model made the labels: name@hash, where it was, and the precision that ran."""

    model_config = ConfigDict(extra="allow", frozen=True)

    version: str
    path: str = ""
    onnx_sha256: str = ""
    precision: Literal["float32", "int8"] = "float32"


class EntryRecord(BaseModel):
    """Provenance and a per-image summary of one store entry."""

    model_config = ConfigDict(extra="allow", frozen=True)  # newer writers may add fields; keep them

    id: str = Field(min_length=1)
    key: str = ""
    source: str
    source_sha256: str
    source_size: int | None = None
    source_mtime: float | None = None
    shape: tuple[int, int]
    dtype: str = ""
    channels: int = Field(1, ge=1)
    n_nuclei: int = Field(ge=0)
    covered_fraction: float = Field(ge=0.0, le=1.0)
    mean_area: float = Field(ge=0.0)
    model: ModelInfo
    thresholds: dict[str, float]
    stained_brightfield: bool = False  # the stained-tissue model made the labels (`Engine.for_image`)
    arrays_sha256: dict[str, str] = Field(default_factory=dict)  # image and labels as stored: `nuclei check`
    output_key: str = ""  # Engine.output_key: model file, precision, thresholds, zoom, normalisation
    diameter: float | None = None  # with --diameter auto: the measured one, where the image was rescaled
    diameter_auto: bool = False
    axes: str = ""  # the file's axes, e.g. "ZCYX"; channel and z say which plane was segmented
    channel: int | None = None
    channel_name: str | None = None
    z: str | None = None
    pixel_size_um: float | None = None  # None: the files did not say and none was given (no unit is made up)
    zoom: float = 1.0
    normalization: dict[str, Any] = Field(default_factory=dict)
    providers: list[str] = Field(default_factory=list)
    nuclei_version: str = ""
    written: str = ""
    status: Literal["complete"] = "complete"
    commit: str = ""  # a new token with every write: a writer compares it with its plan's (`commit_token`)
    store_format_version: int = STORE_FORMAT_VERSION

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def is_current(record: EntryRecord | None, item: ImageItem, output_key: str, sha256: str | Callable[[], str]) -> bool:
    """Whether ``record`` is ``item``'s entry as these settings would make it now: the same source, the same
    output key (`worker.entry_key`) and the same content. ``sha256`` is the content's digest (a slide's:
    `io.lazy.source_identity`), or, where the file was not read yet, a function giving it: then the file's size
    and mtime gate the hash and never replace it (either differs: not current, nothing read; both match: hashed,
    and current only if the digest matches). ``--overwrite`` is the caller's: it asks not to look."""
    if record is None or record.source != item.url or record.output_key != output_key:
        return False
    if callable(sha256):
        if record.source_size != item.size or item.mtime is None or record.source_mtime != item.mtime:
            return False
        sha256 = sha256()
    return record.source_sha256 == sha256


@dataclass(frozen=True)
class MadeBy:
    """What made an entry's labels, as its record states it (the `EntryRecord` fields of the same names): the
    model that ran, the settings that decide the labels, and where it ran."""

    model: ModelInfo
    thresholds: dict[str, float]
    output_key: str
    zoom: float
    normalization: dict[str, Any]
    providers: list[str]
    diameter: float | None = None  # as given, or with --diameter auto the measured one where it rescaled
    diameter_auto: bool = False
    stained_brightfield: bool = False


AREA_COLUMN = COLUMN_NAMES.index("area_px")


def record_for(item: ImageItem, sha256: str, *, shape: tuple[int, int], dtype: np.dtype[Any] | str, channels: int,
               plane: Mapping[str, Any], table: np.ndarray, made: MadeBy, **extra: Any) -> EntryRecord:
    """The record of ``item``'s entry, for an image as for a slide: its source (``sha256``: its digest), the
    plane segmented (``shape``, ``dtype``, ``channels``; ``plane``: `LabImage.describe`'s axes, channel, z and
    the pixel size used), the summary of its measurements ``table`` (`core.measure.COLUMNS`: the nuclei
    count, the share of pixels they cover and their mean area, from the ``area_px`` column), what made it, and
    ``extra`` fields (a slide's ``slide``). The store adds the key, the arrays' hashes and the commit token."""
    n = int(table.shape[0])
    area = np.asarray(table, dtype=np.float64).reshape(n, -1)[:, AREA_COLUMN] if n else np.zeros(0)
    covered = float(area.sum())
    return EntryRecord(
        id=item.id, source=item.url, source_sha256=sha256, source_size=item.size, source_mtime=item.mtime,
        shape=(int(shape[0]), int(shape[1])), dtype=str(dtype), channels=channels, n_nuclei=n,
        covered_fraction=min(1.0, covered / max(1, int(shape[0]) * int(shape[1]))),
        mean_area=covered / n if n else 0.0, model=made.model, thresholds=made.thresholds,
        stained_brightfield=made.stained_brightfield, output_key=made.output_key, **plane, zoom=made.zoom,
        diameter=made.diameter, diameter_auto=made.diameter_auto, normalization=made.normalization,
        providers=made.providers, nuclei_version=nuclei.__version__,
        written=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **extra,
    )


def commit_token(record: EntryRecord | None) -> str:
    """What a plan keeps of an entry it saw ("" for none): under the entry's lock a writer compares it with the
    record's token there now, and a difference means another run committed the entry since the plan."""
    return record.commit if record is not None else ""


class Failure(TypedDict):
    file: str
    reason: str


class RunSummary(TypedDict):
    """What a segmentation run did: the CLI's `--json`, the flow's result and its summary artifact."""

    store: str
    model: str  # name@hash of the model that ran
    found: int
    done: int
    skipped: int  # unchanged, written meanwhile, or failed before and unchanged
    skipped_failed_before: list[Failure]
    failed: int
    failures: list[Failure]
    notes: list[Failure]  # segmented, with something to know (e.g. the file's pixel size over --pixel-size)
    nuclei: int
    seconds: float
    images_per_second: float
    providers: list[str]

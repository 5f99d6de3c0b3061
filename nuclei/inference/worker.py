"""Segmenting a batch of images into the store: what one Dask task does.

A task gets a few dozen image references (never pixels), reads and hashes each file, skips what the store
already holds for the same content and model, runs ONNX Runtime on the rest (same-shaped images batched),
splits nuclei, measures them, and writes each entry. One bad image is reported and the batch goes on.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from nuclei.config import SegmentConfig
from nuclei.core.measure import measure
from nuclei.errors import InputError, NucleiError
from nuclei.inference.engine import AUTO, Engine
from nuclei.inference.sizing import check_rescaled_size, label_image
from nuclei.io.discovery import ImageItem, open_source
from nuclei.io.images import decode_image
from nuclei.io.planes import LabImage, PlaneChoice
from nuclei.modeldir import load_model_dir, resolve_stained_model
from nuclei.store.backend import Store
from nuclei.store.record import EntryRecord, MadeBy, ModelInfo, is_current, record_for

log = logging.getLogger(__name__)

Status = Literal["done", "skipped", "failed"]


@dataclass
class ImageResult:
    """What happened to one image; ``reason`` says why it failed or was skipped."""

    id: str
    url: str
    status: Status
    reason: str = ""
    n_nuclei: int = 0
    seconds: float = 0.0
    providers: list[str] = field(default_factory=list)
    note: str = ""  # done, but the user should know (e.g. --pixel-size overridden by the file's own)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Decoded:
    item: ImageItem
    raw: np.ndarray  # the plane to segment, as stored; the engine and measure() scale it a part at a time
    sha256: str
    lab: LabImage  # what was chosen to get the plane (channel, z) and the pixel size the file gave
    note: str = ""  # what the user should know of the pixels (NaN replaced)


def _read(item: ImageItem, settings: SegmentConfig) -> _Decoded:
    with open_source(item.url) as handle:
        data = handle.read()
    lab = decode_image(data, item.url, settings.max_pixels, PlaneChoice(settings.channel, settings.z))
    raw, note = _finite(lab.array)
    return _Decoded(item, raw, hashlib.sha256(data).hexdigest(), lab, note)


def _finite(raw: np.ndarray) -> tuple[np.ndarray, str]:
    """A float plane with NaN or infinite pixels (no-data regions, stitching gaps) as a plane the model,
    the measurements and the store's JSON metadata can take: NaN and -Inf become the finite minimum (no
    signal), +Inf the finite maximum, and a note says how many. Such a file could never be stored before."""
    if raw.dtype.kind != "f":
        return raw, ""
    finite = np.isfinite(raw)
    bad = int(finite.size - np.count_nonzero(finite))
    if not bad:
        return raw, ""
    if bad == finite.size:
        raise InputError("image", "has no finite pixel value (all NaN or infinite)")
    low, high = raw[finite].min(), raw[finite].max()
    fixed = np.where(np.isposinf(raw), high, np.where(finite, raw, low)).astype(raw.dtype, copy=False)
    return fixed, (f"{bad} NaN or infinite pixel(s) segmented and stored as the image's finite minimum "
                   f"({low:g}; +Inf as its maximum, {high:g})")


def entry_key(engine: Engine, settings: SegmentConfig) -> str:
    """What decides an entry's labels: the engine's output key plus the plane chosen from the file."""
    return f"{engine.output_key}:{settings.channel or ''}:{settings.z or ''}"


def build_engine(settings: SegmentConfig) -> Engine:
    """The engine a run's settings describe (after `preflight`: the stained-tissue model is a path or "none")."""
    assert settings.model is not None, "the plan resolves the model before any task is sent"
    stained = resolve_stained_model(settings.stained_model, settings.model)
    return Engine(load_model_dir(settings.model), tuple(settings.providers), settings.threads, settings.tile_size,
                  settings.batch_size, settings.int8, settings.diameter, settings.tta, stained,
                  settings.min_diameter, settings.drop_debris)


def segment_batch(items: Sequence[ImageItem], settings: SegmentConfig, seen: Mapping[str, str] | None = None
                  ) -> list[ImageResult]:
    """Segment ``items`` into the store; returns one result per item, in order. ``seen``: each id's commit
    token as the plan saw it (`commit_token`), so a concurrent run's write with other settings is not replaced
    silently."""
    engine = build_engine(settings)
    key = entry_key(engine, settings)
    store = Store(settings.store, mode="a")
    results: dict[str, ImageResult] = {}
    todo: list[_Decoded] = []
    for item in items:  # any one file's failure (name, decode, store path) fails that file only
        try:
            decoded = _read(item, settings)
            check_rescaled_size(engine.for_image(decoded.raw), decoded.raw.shape, settings.max_pixels)
            if not settings.overwrite and is_current(store.record(item.id), item, key, decoded.sha256):
                results[item.id] = ImageResult(item.id, item.url, "skipped", "already in the store")
            else:
                todo.append(decoded)
        except Exception as exc:  # noqa: BLE001 - e.g. an undecodable file, an id the file system refuses
            results[item.id] = _failed(store, item, _reason(exc), key=key)
    providers = engine.session_providers() if todo else []
    # Writes stay on the task's thread: a writer thread beside it was slower on 2 cores (BENCHMARKS section 0).
    for chunk in _chunks(todo, engine):
        started = time.perf_counter()
        probs = engine.predict_many([d.raw for d in chunk])
        per_image = (time.perf_counter() - started) / len(chunk)
        for decoded in chunk:  # pop: each probability map is freed as soon as its labels exist
            found = _finish(store, decoded, probs.pop(0), engine, providers, per_image, settings)
            results[decoded.item.id] = found if isinstance(found, ImageResult) else _commit(
                store, found, settings, (seen or {}).get(decoded.item.id))
    return [results[item.id] for item in items]


def _chunks(todo: list[_Decoded], engine: Engine) -> Iterator[list[_Decoded]]:
    """Images that fit one model run go in groups of the engine's batch size; a tiled image goes alone, so
    a task never holds the probabilities of several large images at once."""
    group: list[_Decoded] = []
    for decoded in sorted(todo, key=lambda d: d.raw.shape[:2]):  # same sizes together: full batches
        if max(decoded.raw.shape[:2]) > engine.tile_size:
            yield [decoded]
            continue
        group.append(decoded)
        if len(group) == engine.batch_size:
            yield group
            group = []
    if group:
        yield group


@dataclass
class _Computed:
    """An image's entry, ready to write."""

    decoded: _Decoded
    labels: np.ndarray
    table: np.ndarray
    record: EntryRecord
    key: str
    seconds: float  # the network's share and post-processing so far


def _finish(
    store: Store, decoded: _Decoded, prob: np.ndarray, engine: Engine, providers: list[str], seconds: float,
    settings: SegmentConfig,
) -> _Computed | ImageResult:
    """Post-process and measure one image: its entry to write, or its failure."""
    item, key = decoded.item, entry_key(engine, settings)
    try:
        started = time.perf_counter()
        labels, used = label_image(engine, decoded.raw, prob, settings.max_pixels)  # `used`: as measured, if auto
        del prob  # the caller holds no other reference: a large image's probabilities go now
        table = measure(labels, decoded.raw)
        record = _record(decoded, labels, table, engine, used, providers, settings)
        return _Computed(decoded, labels, table, record, key, seconds + time.perf_counter() - started)
    except Exception as exc:  # noqa: BLE001 - one image must not stop the batch
        # The summary says why; the traceback is for -v (a per-image failure printed one, unasked, on every run).
        log.info("failed on %s", item.url, exc_info=True)
        return _failed(store, item, _reason(exc), decoded.sha256, key)


def _commit(store: Store, computed: _Computed, settings: SegmentConfig, seen: str | None) -> ImageResult:
    """Write one entry under its lock, unless a concurrent run wrote it meanwhile; any failure is its result."""
    decoded, key = computed.decoded, computed.key
    item = decoded.item
    try:
        started = time.perf_counter()
        with store.writing(item.id):
            if not settings.overwrite and is_current(store.record(item.id), item, key, decoded.sha256):
                return ImageResult(item.id, item.url, "skipped", "written meanwhile by a concurrent run")
            if conflict := _written_meanwhile(store.record(item.id), seen, item, key):
                return ImageResult(item.id, item.url, "failed", conflict)  # not remembered: not the file's fault
            store.write_entry(item.id, decoded.raw, computed.labels, computed.table, computed.record)
        elapsed = computed.seconds + time.perf_counter() - started
        note = "; ".join(n for n in (decoded.note, _pixel_size(decoded, settings)[1]) if n)
        return ImageResult(item.id, item.url, "done", n_nuclei=int(computed.table.shape[0]), seconds=elapsed,
                           providers=computed.record.providers, note=note)
    except Exception as exc:  # noqa: BLE001 - one image must not stop the batch
        # The store failed, not the file (a full disk, a lost mount): not remembered as the file's failure, so
        # the next run writes it instead of skipping the file until it changes.
        log.info("could not write %s", item.url, exc_info=True)
        return ImageResult(item.id, item.url, "failed", f"writing its entry failed: {_reason(exc)}")


def _written_meanwhile(record: EntryRecord | None, seen: str | None, item: ImageItem, output_key: str) -> str:
    """Why not to write (or ""), under the entry's lock: the record's commit token is not the one the plan saw
    (``seen``, `commit_token`), and that other run wrote it with other settings or from another file. Two runs
    at once (--diameter 20 and 40) both said "30 segmented" and the store held one run's labels; now the later
    writer fails those images, and the store holds whole runs' entries."""
    if seen is None or record is None or record.commit == seen:
        return ""
    if record.source != item.url:
        what = f"from another file, {record.source}"
    elif record.output_key != output_key:
        what = f"with other settings: output key {record.output_key}, this run's {output_key}"
    else:
        return ""  # the same file and settings: this run's content is the newer one
    return f"another run wrote this entry while this one ran ({what}); not replacing it: run again when it is done"


def _failed(store: Store, item: ImageItem, reason: str, sha256: str | None = None, key: str = "") -> ImageResult:
    """The failed result; the store remembers it (with the file's size, mtime and hash, and the settings) so
    that a scheduled run skips the file until it or the settings change, instead of failing on it every time."""
    try:
        store.record_failure(item.id, {"source": item.url, "size": item.size, "mtime": item.mtime,
                                       "sha256": sha256, "reason": reason, "key": key})
    except Exception:  # noqa: BLE001 - remembering is a convenience; the result still says it failed
        log.warning("could not record the failure of %s", item.url)
        log.info("why the failure of %s was not recorded", item.url, exc_info=True)
    return ImageResult(item.id, item.url, "failed", reason)


def _record(
    decoded: _Decoded, labels: np.ndarray, table: np.ndarray, engine: Engine, used: Engine, providers: list[str],
    settings: SegmentConfig,
) -> EntryRecord:
    """Provenance and a per-image summary (`record_for`), so listings never need to read arrays."""
    raw = decoded.raw
    return record_for(decoded.item, decoded.sha256, shape=(int(labels.shape[0]), int(labels.shape[1])),
                      dtype=raw.dtype, channels=1 if raw.ndim == 2 else int(raw.shape[2]),
                      plane={**decoded.lab.describe(), "pixel_size_um": _pixel_size(decoded, settings)[0]},
                      table=table, made=made_by(engine, used, settings, providers, used.model is not engine.model))


def made_by(engine: Engine, used: Engine, settings: SegmentConfig, providers: list[str], stained: bool) -> MadeBy:
    """What made an entry's labels: ``used`` ran (the stained-tissue model's engine, or one rescaled to a measured
    diameter), under the run's ``engine`` and ``settings`` (the output key, whether the diameter was auto)."""
    model = used.model
    return MadeBy(
        model=ModelInfo.model_validate({"version": model.version, "path": str(model.path),
                                        "onnx_sha256": model.onnx_sha256, "precision": used.precision}),
        thresholds=used.thresholds.as_dict(), output_key=entry_key(engine, settings), zoom=used.zoom,
        normalization=model.normalization.model_dump(), providers=providers,
        diameter=float(used.diameter) if isinstance(used.diameter, int | float) else None,  # auto: if it rescaled
        diameter_auto=engine.diameter == AUTO, stained_brightfield=stained,
    )


def _pixel_size(decoded: _Decoded, settings: SegmentConfig) -> tuple[float | None, str]:
    """(the pixel size in micrometres, a note when the file and --pixel-size disagree). The file's own size
    wins: --pixel-size is for files that do not say (a mixed folder of OME-TIFFs and PNGs)."""
    stated, given = decoded.lab.pixel_size_um, settings.pixel_size
    if stated is None:
        return given, ""
    if given is None or abs(given - stated) <= 0.01 * stated:
        return stated, ""
    return stated, (f"the file states a pixel size of {stated:g} um; used that, not --pixel-size {given:g} "
                    "(which is for files that do not say)")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, NucleiError):
        return str(getattr(exc, "reason", exc))
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return "its id is too long for the store's file system (rename the file or shorten its folders)"
    return f"{type(exc).__name__}: {exc}"

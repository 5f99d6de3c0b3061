"""A segmentation run: plan the work (what is new, what is current, how it is grouped), run it on the run's
executor (`inference.execution`: threads here, or a Dask cluster) and summarize what happened.

The `segment` flow wires these steps as Prefect tasks and the CLI calls them directly; `segment()` below runs
them without Prefect (the Python API), so a library call never starts a server. Each shell renders the summary
its own way (text for a terminal, Markdown for an artifact).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from os import PathLike, fspath
from typing import Any

import fsspec
import numpy as np
from tqdm import tqdm

from nuclei.config import SegmentConfig
from nuclei.errors import InputError, ModelError, StoreError
from nuclei.inference.cluster import cluster_address, probe_scheduler
from nuclei.inference.engine import Engine
from nuclei.inference.execution import Executor, executor, expected_workers
from nuclei.inference.preflight import preflight
from nuclei.inference.worker import ImageResult, build_engine, entry_key, segment_batch
from nuclei.io.discovery import ImageItem, discover, open_source
from nuclei.io.lazy import is_slide, source_identity
from nuclei.modeldir import SHIPPED_MODELS, STAINED_MODEL_NAME, resolve_model
from nuclei.store.backend import Store
from nuclei.store.record import EntryRecord, Failure, RunSummary, commit_token, is_current

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What a run will do: the settings every task gets, and the images grouped into tasks."""

    settings: SegmentConfig  # with the model resolved to its directory
    model_version: str
    n_found: int
    batches: list[list[ImageItem]]
    unchanged: list[str] = field(default_factory=list)
    failed_before: list[Failure] = field(default_factory=list)  # unchanged files that failed last time
    problems: list[InputError] = field(default_factory=list)
    seen: dict[str, str] = field(default_factory=dict)  # id -> its record's `commit_token` when planned
    started: float = field(default_factory=time.perf_counter)
    slides: list[ImageItem] = field(default_factory=list)  # whole slides: each runs as blocks (`inference.slide`)

    @property
    def items(self) -> list[ImageItem]:
        return [item for batch in self.batches for item in batch]

    def seen_of(self, batch: list[ImageItem]) -> dict[str, str]:
        return {item.id: self.seen.get(item.id, "") for item in batch}


def check_model(config: SegmentConfig) -> Engine:
    """Load the model and build a session once here, so a bad model fails before any work is sent. A stained-tissue
    model the user named is checked the same way; the shipped one (checked by the project's tests) gets its
    session with the first colour brightfield image: a run of grey images never builds it."""
    engine = build_engine(config.model_copy(update={"model": str(resolve_model(config.model).path)}))
    log.info("model %s (%s) on providers %s", engine.model.version, engine.precision, engine.session_providers())
    check_outputs(engine)
    if engine.stained is not None:
        stained = engine.stained_engine
        log.info("colour brightfield images: model %s (%s)", stained.model.version, stained.precision)
        if stained.model.path.resolve() != (SHIPPED_MODELS / STAINED_MODEL_NAME).resolve():
            check_outputs(stained)
    return engine


def check_outputs(engine: Engine) -> None:
    """Run the model once on a blank image of its pad multiple: an ONNX file whose output is not one
    probability map per config.json channel failed every image, after inferring it, with a reason about
    arrays. Costs a few milliseconds."""
    size, channels = engine.model.pad_multiple, engine.model.channels
    onnx = engine.model.int8_path if engine.precision == "int8" else engine.model.onnx_path
    try:
        prob = engine.predict(np.zeros((size, size, 3), np.uint8))
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - ORT raises several types for a graph that cannot run
        raise ModelError(f"{onnx}: fails on a blank {size}x{size} image ({type(exc).__name__}: {exc})") from exc
    if prob.shape != (size, size, len(channels)):
        raise ModelError(f"{onnx}: gives output of shape {prob.shape} for a {size}x{size} image; config.json "
                         f"says ({size}, {size}, {len(channels)}): one probability map per channel {channels}")


def _digest(item: ImageItem, record: EntryRecord) -> str:
    """The file's digest as ``record`` took it, for `is_current` to compare (called only once size and mtime
    match: a sequential read, about 1 GB/s locally, far less than segmenting it)."""
    if getattr(record, "slide", None):  # a slide's record says what its digest hashes (gigabytes: not all)
        return source_identity(item.url, item.size)[0]
    return file_sha256(item.url)


def file_sha256(url: str, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open_source(url) as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _other_source(item: ImageItem, record: EntryRecord | None) -> InputError | None:
    """An id the store already holds for another file: never replaced silently (data loss)."""
    if record is None or record.source == item.url:
        return None
    gone = "://" not in record.source and not os.path.exists(record.source)
    return InputError(item.url, f"the store's entry {item.id!r} comes from {record.source}"
                      f"{' (no longer there: moved?)' if gone else ''}; not replacing it with other content (use "
                      "another store, or --overwrite to replace it)")


def _moved(item: ImageItem, record: EntryRecord | None) -> bool:
    """The entry holds this very content from another path (an input folder moved or copied): no clash."""
    return bool(record and record.source != item.url and record.source_size == item.size
                and file_sha256(item.url) == record.source_sha256)


def open_for_writing(url: str) -> Store:
    """The store, created if new, and proven writable before any image is read: a read-only store, or a new
    one under a folder this user cannot write, failed every image only after inferring them all."""
    try:
        store = _open_or_join(url)
        for folder in ("", "/images", "/index"):
            if folder == "" or store.fs.exists(store.root_path + folder):
                probe = f"{store.root_path}{folder}/.nuclei-write-probe-{uuid.uuid4().hex}"
                store.fs.pipe_file(probe, b"")
                store.fs.rm_file(probe)
    except OSError as exc:
        raise StoreError(f"{url}: cannot write to this store ({exc.strerror or exc})") from exc
    return store


JOIN_PAUSES_S = (0.05, 0.1, 0.15)  # runs creating one new store at once: the later ones open what one created


def _open_or_join(url: str) -> Store:
    """The store, created if new. Runs started together on a new store race to create it: one that finds the
    store half-made (refused as a foreign folder or an unreadable root: 32 of 160 opens in a stress test, before
    the root was written atomically) opens it again, after a pause, once a root exists. A refusal with no root
    there (a file, another tool's folder) is the answer at once, as is the last attempt's."""
    for pause in JOIN_PAUSES_S:
        try:
            return Store(url, mode="a")
        except StoreError:
            if not _has_root(url):
                raise
        time.sleep(pause)
    return Store(url, mode="a")


def _has_root(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return bool(fs.exists(f"{path}/zarr.json"))


def plan(config: SegmentConfig) -> Plan:
    """Check the model, the inputs, the cluster and that the store is writable (in that order, so a user error
    creates no store); leave out unchanged images, and group the rest into tasks."""
    config = preflight(config)  # again: the flow and the API may be called without the CLI
    engine = check_model(config)
    model_dir = engine.model
    found = discover(config.inputs)
    if (address := cluster_address(config.dask_address)) is not None:
        probe_scheduler(address)
    store = open_for_writing(config.store)
    records, failures = store.records(), store.failures()
    key = entry_key(engine, config)
    todo, unchanged, failed_before, clashes = [], [], [], []
    for item in found.items:
        record, failure = records.get(item.id), failures.get(item.id)
        clash = _other_source(item, record)
        if clash and not config.overwrite and _moved(item, record):
            clash = None  # the same content at a new path: segmented again only if the settings changed
            if record is not None and record.output_key == key:
                unchanged.append(item.id)
                continue
        if config.overwrite:
            todo.append(item)
        elif clash:
            clashes.append(clash)  # counted once: the item is in found.items already
        elif record is not None and is_current(record, item, key, functools.partial(_digest, item, record)):
            unchanged.append(item.id)
        elif failure and _same_file(item, failure) and failure.get("key") == key:
            failed_before.append(Failure(file=item.url, reason=str(failure.get("reason", ""))))
        else:
            todo.append(item)
    settings = config.model_copy(update={"model": str(model_dir.path)})
    slides = [item for item in todo if is_slide(item.url, config.slide_pixels)]
    todo = [item for item in todo if item not in slides]
    batches = balanced(todo, config.images_per_task, expected_workers(config))
    version = model_dir.version + (f" (stained tissue: {engine.stained.version})" if engine.stained else "")
    return Plan(settings, version, len(found.items) + len(found.problems), batches, unchanged, failed_before,
                found.problems + clashes, seen={i.id: commit_token(records.get(i.id)) for i in todo}, slides=slides)


def _same_file(item: ImageItem, failure: dict[str, Any]) -> bool:
    """The file that failed, unchanged: same source, size and modification time."""
    return (failure.get("source") == item.url and failure.get("size") == item.size and item.mtime is not None
            and failure.get("mtime") == item.mtime)


# (images finished, images in the run): e.g. a Prefect progress artifact. A slide counts as the share of its
# blocks labelled, so a run of one slide moves block by block.
OnBatch = Callable[[float, int], None]


def run(plan: Plan, progress: bool = False, on_batch: OnBatch | None = None,
        stop: threading.Event | None = None) -> list[ImageResult]:
    """Run the planned batches, then the slides' blocks, on one executor: threads in this process unless a
    Dask cluster is named or a LocalCluster asked for (`execution.uses_dask`); a batch that fails as a whole
    marks its images failed with the reason.

    ``stop``: once set (a signal handler sets it), queued tasks are cancelled, the cluster is closed in order
    and `Interrupted` is raised; every entry already written is whole."""
    if not plan.batches and not plan.slides:
        return []
    total, results = len(plan.items) + len(plan.slides), []
    with (tqdm(total=total, unit="img", desc="segmenting", disable=not progress) as bar,
          executor(plan.settings, stop) as tasks):
        for batch, found in _batches(plan, tasks):
            results += found
            bar.update(len(batch))
            if on_batch:
                on_batch(len(results), total)

        def on_block(done: int, blocks: int) -> None:
            if on_batch:
                on_batch(len(results) + done / max(1, blocks), total)

        for found_slide in _slides(plan, tasks, progress, on_block):  # blocks as tasks
            results.append(found_slide)
            bar.update(1)
            if on_batch:
                on_batch(len(results), total)
    return results


def _slides(plan: Plan, tasks: Executor, progress: bool, on_block: Callable[[int, int], None]) -> Iterator[Any]:
    """The planned slides' entries, block by block (`inference.slide`, imported only when a run has a slide: its
    modules, zarr-python's writer among them, are 70 ms of a small run's start-up)."""
    if not plan.slides:
        return iter(())
    from nuclei.inference.slide import segment_slides

    return segment_slides(plan.slides, plan.settings, tasks, progress, on_block)


def _batches(plan: Plan, tasks: Executor) -> Iterator[tuple[list[ImageItem], list[ImageResult]]]:
    """(batch, its results) as each batch finishes. In this process the batches share the cores (a single
    batch gets them all in its session); each call of the shared ONNX session is on one thread."""
    if not plan.batches:
        return
    if tasks.in_process:
        log.info("%d images: segmenting in this process, %d thread(s)", len(plan.items),
                 tasks.at_once(len(plan.batches)))
    settings = tasks.task_settings(plan.settings, len(plan.batches))
    args = [(batch, settings, plan.seen_of(batch)) for batch in plan.batches]
    for index, future in tasks.finished(segment_batch, args):
        yield plan.batches[index], _collect(future, plan.batches[index])


def balanced(items: list[ImageItem], images_per_task: int, n_workers: int) -> list[list[ImageItem]]:
    """Tasks of at most ``images_per_task`` images, but at least 8 per worker while there are enough images,
    so that no worker sits idle while another finishes a long last task."""
    size = max(1, min(images_per_task, math.ceil(len(items) / (8 * max(1, n_workers)))))
    return [items[i : i + size] for i in range(0, len(items), size)]


def _collect(future: Any, batch: list[ImageItem]) -> list[ImageResult]:
    try:
        return list(future.result())
    except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker after repeated worker deaths
        reason = f"task failed: {type(exc).__name__}: {exc}"
        return [ImageResult(item.id, item.url, "failed", reason) for item in batch]


def summarize(plan: Plan, results: Sequence[ImageResult]) -> RunSummary:
    """Counts, failures with reasons, nuclei found and throughput of one run."""
    seconds = time.perf_counter() - plan.started
    status = Counter(r.status for r in results)
    failed = [Failure(file=str(p.path), reason=p.reason) for p in plan.problems]
    failed += [Failure(file=r.url, reason=r.reason) for r in results if r.status == "failed"]
    done = status["done"]
    return {
        "store": plan.settings.store,
        "model": plan.model_version,
        "found": plan.n_found,
        "done": done,
        "skipped": len(plan.unchanged) + status["skipped"] + len(plan.failed_before),
        "skipped_failed_before": plan.failed_before,
        "failed": len(failed),
        "failures": failed,
        "notes": [Failure(file=r.url, reason=r.note) for r in results if r.note],
        "nuclei": sum(r.n_nuclei for r in results),
        "seconds": round(seconds, 2),
        "images_per_second": round(done / seconds, 3) if seconds > 0 else 0.0,
        "providers": sorted({p for r in results for p in r.providers}),
    }


def segment(inputs: Sequence[str | PathLike[str]] | str | PathLike[str], store: str | PathLike[str],
            model: str | PathLike[str] | None = None, progress: bool = False, **options: Any) -> RunSummary:
    """Python API: segment ``inputs`` into ``store`` (the `segment` flow's steps, without Prefect).

    ``options`` are the other fields of `SegmentConfig` (dask_address, n_workers, diameter, ...).
    """
    listed = [inputs] if isinstance(inputs, str | PathLike) else list(inputs)
    config = SegmentConfig(inputs=[fspath(i) for i in listed], store=fspath(store),
                           model=fspath(model) if model is not None else None, **options)
    work = plan(config)
    return summarize(work, run(work, progress))

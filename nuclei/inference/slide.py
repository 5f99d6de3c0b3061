"""Whole slides: one image bigger than memory, segmented as blocks on the run's executor (threads or Dask).

    nuclei segment slide.ome.tif --store s.zarr --workers 2

An image that can be read a window at a time (`nuclei.io.lazy`) and is larger than ``slide_pixels`` runs here,
in four rounds of tasks that each get a reference (the job and a block), never pixels:

1. label: read the block's window, run the model (normalised by the whole slide's range, measured once on a
   strided sample), label the nuclei over the block's reach, write the core of the image; keep the labels
   (the block is done: a killed run resumes from here, by block);
2. match: join the nuclei two neighbouring blocks both labelled (`core.blocks.match`);
3. write: the slide's ids 1..N (`core.blocks.number`) into the core of the labels and mask;
4. measure: every nucleus once, whole, by the block holding its bounding box's first corner.

Then the pyramid levels are built from chunks and the record is written last, as for every entry.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar, cast

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from nuclei.config import DEFAULT_TILE_SIZE, SegmentConfig
from nuclei.core.background import cell_stats
from nuclei.core.blocks import (
    Block,
    Box,
    core_ids,
    match,
    neighbour_pairs,
    number,
    owned,
    plan_blocks,
    to_slide_coordinates,
    touches_inner_edge,
)
from nuclei.core.measure import COLUMN_NAMES, measure
from nuclei.core.normalize import (
    PERCENTILE_SAMPLE,
    Normalization,
    Scaling,
    is_bright_background,
    luminance,
    measure_scaling,
    scaling_from_stats,
)
from nuclei.core.tiling import round_up
from nuclei.errors import InputError, Interrupted
from nuclei.inference.engine import AUTO, Engine
from nuclei.inference.execution import Executor
from nuclei.inference.sizing import nuclei_of
from nuclei.inference.worker import ImageResult, _failed, _reason, build_engine, entry_key, made_by
from nuclei.io.discovery import ImageItem
from nuclei.io.lazy import (
    LazyPlane,
    SlideSource,
    declared,
    percentile_step,
    source_identity,
    stored_bytes,
)
from nuclei.io.planes import PlaneChoice
from nuclei.store import layout
from nuclei.store.backend import Store, array_sha256
from nuclei.store.record import EntryRecord, is_current, record_for
from nuclei.store.slide import SlideEntry, chunk_for

log = logging.getLogger(__name__)

T = TypeVar("T")
Mapper = Callable[[Callable[..., T], Sequence[Any]], Iterator[T]]  # fn(job, arg) over args, as they finish


@dataclass(frozen=True)
class SlideJob:
    """What every block task of one slide gets: small, pickled once per task."""

    item: ImageItem
    settings: SegmentConfig
    height: int
    width: int
    blocks: tuple[Block, ...]
    scaling: Scaling  # the whole slide's, measured once (a window, or local maps)
    stained: bool  # the stained-tissue model runs (decided once, on the slide's sample)
    block_side: int  # a core's side (the last row and column of blocks may be smaller)

    @property
    def source(self) -> SlideSource:
        return SlideSource(self.item.url, PlaneChoice(self.settings.channel, self.settings.z))

    def engine(self) -> Engine:
        engine = _stoppable(build_engine(_slide_tiles(self.settings)))
        return engine.stained_engine if self.stained else engine

    def entry(self) -> SlideEntry:
        return SlideEntry(Store(self.settings.store, mode="a"), self.item.id)


# A block's window runs as tiles of this size unless --tile-size was given: a tile's receptive-field overlap is
# recomputed by its neighbours, 1.78x the pixels with tiles of 1024 and 1.31x with 2048 (about 20% less time
# here), for about 0.4 GB more per worker. Small images keep the default: they fit one tile either way.
SLIDE_TILE_SIZE = 2048


def _slide_tiles(settings: SegmentConfig) -> SegmentConfig:
    if settings.tile_size != DEFAULT_TILE_SIZE:
        return settings
    return settings.model_copy(update={"tile_size": SLIDE_TILE_SIZE})


# --- stopping: a block's model run ends within a second of Ctrl-C, not after the block (20 s and more) -------

class _Runs:
    """The ONNX Runtime runs of slide blocks in this process, so that a stop request ends them mid-run
    (`RunOptions.terminate`): a block cut short is not done (it never saved its labels) and runs again next
    time, and the process exits within seconds instead of waiting for every running block to finish."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, ort.RunOptions] = {}
        self.stopped = False

    def start(self) -> None:
        """A new round of block tasks (a new run in this process): runs may go again."""
        with self._lock:
            self.stopped = False

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            for options in self._active.values():
                options.terminate = True

    def check(self) -> None:
        if self.stopped:
            raise Interrupted("stopped on request")

    @contextlib.contextmanager
    def running(self, options: ort.RunOptions) -> Iterator[None]:
        with self._lock:
            if self.stopped:
                raise Interrupted("stopped on request")
            self._active[id(options)] = options
        try:
            yield
        finally:
            with self._lock:
                self._active.pop(id(options), None)


_RUNS = _Runs()


class _StoppableSession:
    """An ONNX Runtime session whose runs `_RUNS.stop` can end."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def run(self, outputs: Any, feeds: dict[str, np.ndarray], options: ort.RunOptions | None = None) -> Any:
        options = options or ort.RunOptions()
        with _RUNS.running(options):
            return self._session.run(outputs, feeds, options)


@dataclass(frozen=True)
class _StoppableEngine(Engine):
    """The run's engine, its session's runs ended by a stop request (the same model, settings and outputs)."""

    @property
    def session(self) -> ort.InferenceSession:
        return cast(ort.InferenceSession, _StoppableSession(super().session))


def _stoppable(engine: Engine) -> Engine:
    return _StoppableEngine(**{f.name: getattr(engine, f.name) for f in fields(engine)})


# --- the tasks --------------------------------------------------------------------------------------------

def label_block(job: SlideJob, block: Block) -> int:
    """Round 1: the block's nuclei over its reach, and its core of the image; returns the block's index."""
    engine = job.engine()
    with LazyPlane(job.source) as plane:
        raw = plane.read(block.window)
    prob = engine.predict(raw, scaling=job.scaling, origin=(block.window.y0, block.window.x0))
    _RUNS.check()  # stopped meanwhile: the block is not done, and the next run labels it
    reach = block.reach.within(block.window)
    labels = nuclei_of(engine, raw[reach], prob[reach])  # objects cut by the reach's edge are kept
    del prob
    _RUNS.check()
    entry = job.entry()
    entry.write_core(block.core, image=raw[block.core.within(block.window)])
    entry.save_block(block.index, labels, array_sha256(raw))  # last: the block is done
    return block.index


def reads_as_before(job: SlideJob, block: Block) -> tuple[int, bool]:
    """Resume: whether a finished block's window still reads as the pixels it was labelled from."""
    with LazyPlane(job.source) as plane:
        raw = plane.read(block.window)
    return block.index, array_sha256(raw) == job.entry().read_sha256(block.index)


def match_block(job: SlideJob, block: Block) -> tuple[int, np.ndarray, dict[tuple[int, int], np.ndarray]]:
    """Round 2: the block's ids with core pixels, and its matches with the neighbours after it."""
    entry = job.entry()
    labels = entry.load_block(block.index)
    found = {}
    for a, b in neighbour_pairs(job.blocks):
        if a == block.index:
            found[(a, b)] = match(labels, block, entry.load_block(b), job.blocks[b])
    return block.index, core_ids(labels, block), found


def write_block(job: SlideJob, work: tuple[Block, np.ndarray]) -> int:
    """Round 3: the core's labels as slide ids, and the mask."""
    block, lut = work
    labels = job.entry().load_block(block.index)[block.core.within(block.reach)]
    job.entry().write_core(block.core, labels=lut[labels])
    return block.index


def measure_block(job: SlideJob, block: Block) -> tuple[int, np.ndarray, dict[str, str]]:
    """Round 4: the rows of the nuclei this block owns, measured whole over its reach, in slide coordinates, and
    the hashes of its core as stored (what `nuclei check` verifies)."""
    entry = job.entry()
    labels = entry.read_labels(block.reach)
    with LazyPlane(job.source) as plane:
        raw = plane.read(block.reach)
    pixel = _pixel_size(job.settings, plane)
    table = measure(labels, raw, pixel)
    table = to_slide_coordinates(table, COLUMN_NAMES, block.reach, pixel)
    mine = owned(table[:, COLUMN_NAMES.index(_BBOX_Y)], table[:, COLUMN_NAMES.index(_BBOX_X)], block)
    cut = touches_inner_edge(labels, block.reach, job.height, job.width)
    if np.isin(table[mine, 0], cut).any():
        log.warning("%s: nuclei larger than the block margin were measured cut at a block border", job.item.id)
    return block.index, table[mine], entry.core_sha256(block.core)


_BBOX_Y = next(c for c in COLUMN_NAMES if c.startswith("bbox_min_y"))
_BBOX_X = next(c for c in COLUMN_NAMES if c.startswith("bbox_min_x"))


def _pixel_size(settings: SegmentConfig, plane: LazyPlane) -> float | None:
    return settings.pixel_size or plane.lab.pixel_size_um


# --- the driver ---------------------------------------------------------------------------------------------

OnBlock = Callable[[int, int], None]  # (blocks labelled, blocks of the slide), e.g. for a Prefect progress artifact


def segment_slides(items: Sequence[ImageItem], settings: SegmentConfig, tasks: Executor, progress: bool = False,
                   on_block: OnBlock | None = None) -> Iterator[ImageResult]:
    """Segment each slide in turn, its blocks spread over the run's executor. Once a stop is asked for, queued
    blocks are cancelled, running ones end their model run, and `Interrupted` is raised: the finished blocks
    stay for the next run."""
    if not items:
        return
    _RUNS.start()  # a stop of an earlier run in this process is over
    for item in items:
        yield segment_slide(item, settings, tasks, progress, on_block)


def segment_slide(item: ImageItem, settings: SegmentConfig, tasks: Executor, progress: bool = False,
                  on_block: OnBlock | None = None) -> ImageResult:
    """One slide, block by block, into its entry; any failure is the slide's result. A stop request is also
    looked at between the steps the driver runs itself (the sample, the statistics, the pyramid)."""
    mapper, stop = _mapper(tasks), tasks.stop_if_asked
    started = time.perf_counter()
    store = Store(settings.store, mode="a")
    engine = build_engine(settings)
    key = entry_key(engine, settings)
    try:
        refuse_declared_size(item.url, settings)  # before any pixel is read or hashed
        digest, hashed = source_identity(item.url, item.size)
        if not settings.overwrite and is_current(store.record(item.id), item, key, digest):
            return ImageResult(item.id, item.url, "skipped", "already in the store")
        with store.writing(item.id):  # one writer per entry: a second run on this slide waits, then skips it
            if not settings.overwrite and is_current(store.record(item.id), item, key, digest):
                return ImageResult(item.id, item.url, "skipped", "written meanwhile by a concurrent run")
            n_nuclei, used = _segment_into(store, item, settings, engine, mapper, (progress, on_block),
                                           (digest, hashed), key, stop)
        return ImageResult(item.id, item.url, "done", n_nuclei=n_nuclei, seconds=time.perf_counter() - started,
                           providers=used.session_providers())
    except (KeyboardInterrupt, Interrupted):
        raise
    except Exception as exc:  # noqa: BLE001 - one slide must not stop the run
        # The summary names the slide and the reason, as for a plain image; the traceback only with -v (a
        # corrupt tile printed 67 lines of zarr and codec internals on the console).
        log.debug("failed on %s", item.url, exc_info=True)
        return _failed(store, item, _reason(exc), key=key)


def refuse_declared_size(url: str, settings: SegmentConfig) -> None:
    """A header can declare any size (100000 x 100000 px of zeros fit a 0.46 MB tiled TIFF of empty tiles, an
    OME-Zarr's metadata alone declares an array no chunk of which exists): a slide declaring more pixels than
    ``max_slide_pixels``, or more pixel bytes than ``max_compression`` times the bytes it stores, is refused
    (InputError) before a block is planned or a pixel read."""
    claim = declared(url)
    if claim is None:
        return
    height, width = claim.height, claim.width
    if height * width > settings.max_slide_pixels:
        raise InputError(url, f"declares {height}x{width} = {height * width / 1e6:,.0f} Mpixel, above "
                              f"max_slide_pixels={settings.max_slide_pixels / 1e6:,.0f} Mpixel (raise "
                              "--max-slide-pixels if the slide is genuine)")
    stored = stored_bytes(url, enough=math.ceil(claim.nbytes / settings.max_compression))
    if claim.nbytes > settings.max_compression * stored:
        ratio = f"{claim.nbytes / stored:,.0f}x" if stored else "no bytes at all"
        raise InputError(url, f"declares {height}x{width} px, {claim.nbytes / 1e6:,.0f} MB of pixels, in "
                              f"{stored / 1e6:,.2f} MB stored ({ratio}, above max_compression="
                              f"{settings.max_compression:,g}x: real slides compress 2-200x; raise "
                              "--max-compression if the slide is genuine)")


def _segment_into(store: Store, item: ImageItem, settings: SegmentConfig, engine: Engine, mapper: Mapper[Any],
                  progress: tuple[bool, OnBlock | None], identity: tuple[str, str], key: str,
                  stop: Callable[[], None]) -> tuple[int, Engine]:
    """Start or resume the entry, run the rounds, build the pyramid and commit; the nuclei count and the engine
    that ran. ``stop`` raises `Interrupted` once a stop is asked for (the mapper looks for itself)."""
    with _phase(item.id, "opened, range from a strided sample"):
        job, plane_info, omero = _prepare(item, settings, engine, stop)
    entry = SlideEntry(store, item.id)
    manifest = {"source": item.url, "source_sha256": identity[0], "output_key": key,
                "shape": [job.height, job.width], "block_size": settings.block_size, "blocks": len(job.blocks),
                "scaling": job.scaling.describe(), "stained": job.stained}
    arrays = ((job.height, job.width), plane_info["channels"], plane_info["dtype"], chunk_for(job.block_side))
    done = entry.start(manifest, *arrays)
    if done and (changed := _read_otherwise(job, mapper, done)):
        log.warning("%s: the source's pixels under %d of the %d finished blocks changed since the last attempt: "
                    "starting the slide over", item.id, changed, len(done))
        entry.start_over(manifest, *arrays)
        done = set()
    if done:
        log.info("%s: resuming: %d of %d blocks done", item.id, len(done), len(job.blocks))
    n_nuclei, table, sums = _run_rounds(job, mapper, done, *progress)
    with _phase(item.id, "pyramid levels built"):
        levels_sha256 = entry.build_pyramids(stop=stop)
    used = job.engine()
    recorded = _record(item, job, engine, used, plane_info, identity, table, sums)
    entry.commit(recorded, table, COLUMN_NAMES, omero, levels_sha256)
    return n_nuclei, used


def _read_otherwise(job: SlideJob, mapper: Mapper[Any], done: set[int]) -> int:
    """How many finished blocks' windows read otherwise than when they were labelled: the slide's identity is
    what its blocks read (an OME-Zarr's metadata, or a big TIFF's size, head and tail, say nothing of the
    pixels between)."""
    with _phase(job.item.id, f"{len(done)} finished blocks read again"):
        return sum(not same for _, same in mapper(reads_as_before, [(job, job.blocks[i]) for i in sorted(done)]))


MARGIN_NUCLEI = 2.5  # a block labels this many nucleus diameters past its core: a nucleus cut by the core's
# border is labelled whole by both blocks, far from where either block's view ends


def label_margin(engine: Engine) -> int:
    """How far past its core a block labels, in image pixels: 2.5 nucleus diameters (64 px for the default model),
    at most the receptive-field overlap (all of it where a model does not say its nucleus size). Each pixel of
    margin is predicted too: 64 px instead of 128 saves 6% of a 4096 px block's work."""
    multiple, overlap = engine.model.pad_multiple, engine.overlap
    nucleus = engine.model.nucleus_diameter
    margin = min(overlap, MARGIN_NUCLEI * nucleus) if nucleus else overlap
    return round_up(math.ceil(margin / engine.zoom), multiple)


def _prepare(item: ImageItem, settings: SegmentConfig, engine: Engine, stop: Callable[[], None]
             ) -> tuple[SlideJob, dict[str, Any], dict[str, Any]]:
    """Open the slide once: its size, the whole slide's intensity range and model, the blocks (``stop`` is
    called between the bands it reads)."""
    if settings.diameter == AUTO:
        raise InputError(item.url, "--diameter auto measures nuclei per image; give a slide's diameter in pixels")
    with LazyPlane(SlideSource(item.url, PlaneChoice(settings.channel, settings.z))) as plane:
        sample = plane.strided(percentile_step(plane.height, plane.width, PERCENTILE_SAMPLE), between=stop)
        info = {"channels": plane.channels, "dtype": plane.dtype, "lab": plane.lab.describe(),
                "pixel_size_um": _pixel_size(settings, plane)}
        height, width = plane.height, plane.width
        used = engine.for_image(sample)
        scaling = _slide_scaling(plane, sample, used.model.normalization, stop)
    multiple = used.model.pad_multiple
    context = round_up(math.ceil(used.overlap / used.zoom), multiple)  # the receptive field, in image pixels
    side = round_up(settings.block_size, multiple)
    blocks = plan_blocks(height, width, side, label_margin(used), context, multiple)
    cyx = sample[None] if sample.ndim == 2 else np.moveaxis(sample, -1, 0)
    job = SlideJob(item, settings, height, width, tuple(blocks), scaling, used is not engine, side)
    log.info("%s: %dx%d as %d blocks, scaling %s", item.id, height, width, len(blocks), scaling.describe())
    return job, info, layout.omero(np.ascontiguousarray(cyx))


STATS_BAND = 1024  # rows of the slide read at a time for the local normalisation's cell statistics (memory:
# a band of a 25k px wide slide is 0.1 GB as float32)


def _slide_scaling(plane: LazyPlane, sample: np.ndarray, norm: Normalization, stop: Callable[[], None]) -> Scaling:
    """The slide's scaling: the window from its strided sample, or (the `local` kind) the cell statistics of
    the whole slide, read a cell-aligned band at a time, so every block gets exactly the whole image's maps."""
    if norm.kind != "local" or is_bright_background(luminance(sample).ravel()):
        return measure_scaling(sample, norm)
    band = max(norm.cell, STATS_BAND // norm.cell * norm.cell)
    bands = []
    for y0 in range(0, plane.height, band):
        stop()
        bands.append(cell_stats(luminance(plane.read(Box(y0, min(plane.height, y0 + band), 0, plane.width))),
                                norm.cell))
    return scaling_from_stats(np.concatenate(bands, axis=0), norm)


def _run_rounds(job: SlideJob, mapper: Mapper[Any], done: set[int], progress: bool, on_block: OnBlock | None = None
                ) -> tuple[int, np.ndarray, list[dict[str, str]]]:
    """The four rounds; returns the nuclei count, their measurements in label order, and each block's hashes."""
    # Largest windows first: the slide's edge blocks are smaller, and ending on them keeps every worker busy
    # until the last block (on 2 workers, 9 blocks in raster order left one worker a big block alone).
    todo = sorted((b for b in job.blocks if b.index not in done), key=lambda b: -b.window.shape[0] * b.window.shape[1])
    with tqdm(total=len(job.blocks), initial=len(job.blocks) - len(todo), unit="block", desc=job.item.id,
              disable=not progress) as bar, _phase(job.item.id, f"{len(todo)} blocks labelled"):
        for finished, _ in enumerate(mapper(label_block, [(job, b) for b in todo]), len(job.blocks) - len(todo) + 1):
            bar.update(1)
            if on_block:  # not bar.n: a disabled tqdm counts nothing
                on_block(finished, len(job.blocks))
    ids: list[np.ndarray] = [np.zeros(0, np.int64)] * len(job.blocks)
    matches: dict[tuple[int, int], np.ndarray] = {}
    with _phase(job.item.id, "blocks matched and numbered"):
        for index, found_ids, found in mapper(match_block, [(job, b) for b in job.blocks]):
            ids[index] = found_ids
            matches |= found
        luts = number(ids, matches)
    with _phase(job.item.id, "labels written"):
        list(mapper(write_block, [(job, (b, luts[b.index])) for b in job.blocks]))
    with _phase(job.item.id, "nuclei measured"):
        measured = sorted(mapper(measure_block, [(job, b) for b in job.blocks]), key=lambda found: found[0])
    table = np.concatenate([rows for _, rows, _ in measured])
    table = table[np.argsort(table[:, 0], kind="stable")]
    return int(table.shape[0]), table, [sums for _, _, sums in measured]


def _record(item: ImageItem, job: SlideJob, engine: Engine, used: Engine, info: dict[str, Any],
            identity: tuple[str, str], table: np.ndarray, blocks_sha256: list[dict[str, str]]) -> EntryRecord:
    """The entry's record (`record_for`, as for any entry), and how the slide was cut and what its blocks hold."""
    digest, hashed = identity
    slide = {"block_size": job.settings.block_size, "source_hash": hashed, "scaling": job.scaling.describe(),
             "blocks": [[b.core.y0, b.core.y1, b.core.x0, b.core.x1] for b in job.blocks],
             "blocks_sha256": blocks_sha256}
    made = made_by(engine, used, job.settings, used.session_providers(), job.stained)
    return record_for(item, digest, shape=(job.height, job.width), dtype=info["dtype"], channels=info["channels"],
                      plane={**info["lab"], "pixel_size_um": info["pixel_size_um"]}, table=table, made=made,
                      slide=slide)


@contextlib.contextmanager
def _phase(image_id: str, what: str) -> Iterator[None]:
    """Log how long a step of a slide took (where a slide's time goes: `-v`)."""
    started = time.perf_counter()
    yield
    log.info("%s: %s in %.1f s", image_id, what, time.perf_counter() - started)


# --- where the tasks run ------------------------------------------------------------------------------------

def _mapper(tasks: Executor) -> Mapper[Any]:
    """fn(job, arg) over args on the run's executor, results as they finish (a task's error raised here). Each
    job carries its task's settings (in this process, its share of the ONNX Runtime threads), and a stop request
    also ends the blocks' model runs in this process (`_RUNS`)."""

    def mapper(fn: Callable[..., T], args: Sequence[Any]) -> Iterator[T]:
        work = [(replace(job, settings=tasks.task_settings(job.settings)), arg) for job, arg in args]
        finished = tasks.finished(fn, work, on_stop=_RUNS.stop)
        with contextlib.closing(finished):  # a failed block cancels the slide's queued ones now, not when collected
            for _, future in finished:
                yield future.result()

    return mapper

"""A slide's entry, written block by block: the same OME-Zarr layout as any entry (`nuclei.store.layout`), but
its arrays are created first and filled a block's core at a time by the tasks, so neither the slide nor its
label image is ever whole in one process.

    STORE/images/KEY/...             the entry's arrays, chunked; block cores are whole chunks, so tasks never
                                     write the same chunk
    STORE/blocks/KEY/manifest.json   what the blocks below were made from (source, settings, geometry)
    STORE/blocks/KEY/NNNNNN.npy.zst  one block's labels over its reach, and the hash of the source window it
                                     read: the block is done (resume by block)

The record is written last, as for every entry (`Store`'s commit); the blocks folder is removed after it.
A killed run leaves the blocks it finished; the same command, same source and settings, runs only the others,
once every finished block's window still reads as it did (`read_sha256`): a source rewritten in between (other
pixels, the same metadata and size) starts the slide over.
"""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np
import zarr
from numcodecs import Zstd

from nuclei.config import STORE_FORMAT_VERSION
from nuclei.core.blocks import Box
from nuclei.store import layout
from nuclei.store.backend import (
    Store,
    _index_is_ours,
    array_sha256,
    changed_arrays,
    combine_sha256,
    content_sha256,
    id_to_key,
    record_fields,
    window_sha256,
)
from nuclei.store.durable import fsync_tree, write_atomically
from nuclei.store.record import EntryRecord

log = logging.getLogger(__name__)

SCRATCH = "blocks"
CORE_PARTS = ("image", "labels", "mask")  # what a block's hashes cover (`core_sha256`)
# 2: a block keeps the hash of the window it read (`save_block`); scratch of format 1 (labels only) starts over
BLOCK_FORMAT = 2
MEASUREMENT_CHUNK_ROWS = 65536
_ZSTD = Zstd(level=1)


def chunk_for(block_size: int) -> int:
    """Array chunks that tile every block core: the store's chunk where it divides the block, else the block."""
    return layout.CHUNK if block_size % layout.CHUNK == 0 else block_size


class SlideEntry:
    """One slide's entry in a store, while its blocks are being written and when it is committed."""

    def __init__(self, store: Store, image_id: str) -> None:
        self.store, self.image_id = store, image_id
        self.key = id_to_key(image_id)
        self.prefix = f"{store.root_path}/images/{self.key}"
        self.scratch = f"{store.root_path}/{SCRATCH}/{self.key}"

    # --- the attempt: start clean, or resume the blocks a previous attempt finished ----------------------

    def start(self, manifest: dict[str, Any], shape: tuple[int, int], channels: int, dtype: np.dtype,
              chunk: int) -> set[int]:
        """Hide a committed entry of this id, create the arrays unless a previous attempt with the same
        ``manifest`` made them, and return the blocks that attempt finished. An attempt made from another
        source, other settings or an older block format is started over, and a log line says why."""
        self.store.hide(self.image_id)  # invisible until whole again
        manifest = {**manifest, "block_format": BLOCK_FORMAT}
        found = self._manifest()
        if found == manifest and self.store.fs.exists(f"{self.prefix}/labels/nuclei/s0/zarr.json"):
            return self.done_blocks()
        if found is not None and self.done_blocks():
            changed = sorted(k for k in {*found, *manifest} if found.get(k) != manifest.get(k))
            log.warning("%s: the finished blocks of the last attempt were made with another %s: starting the "
                        "slide over", self.image_id, ", ".join(changed))
        self.start_over(manifest, shape, channels, dtype, chunk)
        return set()

    def start_over(self, manifest: dict[str, Any], shape: tuple[int, int], channels: int, dtype: np.dtype,
                   chunk: int) -> None:
        """Drop every block and array of earlier attempts and create the arrays afresh."""
        manifest = {**manifest, "block_format": BLOCK_FORMAT}
        for path in (self.scratch, self.prefix):
            if self.store.fs.exists(path):
                self.store.fs.rm(path, recursive=True)
        self._create_arrays(shape, channels, dtype, chunk)
        self._put(f"{self.scratch}/manifest.json", _json(manifest))

    def _manifest(self) -> dict[str, Any] | None:
        try:
            found = json.loads(self.store.fs.cat_file(f"{self.scratch}/manifest.json"))
        except (FileNotFoundError, ValueError):
            return None
        return found if isinstance(found, dict) else None

    def _create_arrays(self, shape: tuple[int, int], channels: int, dtype: np.dtype, chunk: int) -> None:
        group = self.group()
        height, width = shape
        for level in range(layout.n_levels(height, width)):
            h, w = -(-height // 2**level), -(-width // 2**level)
            group.create_array(layout.IMAGE_PATH.format(level=level), shape=(channels, h, w), dtype=dtype,
                               chunks=(channels, min(h, chunk), min(w, chunk)), fill_value=0,
                               dimension_names=("c", "y", "x"))
            for path, kind in ((layout.LABELS_PATH, np.uint32), (layout.MASK_PATH, np.uint8)):
                group.create_array(path.format(level=level), shape=(h, w), dtype=kind,
                                   chunks=(min(h, chunk), min(w, chunk)), fill_value=0, dimension_names=("y", "x"))

    def group(self) -> zarr.Group:
        with _index_is_ours():
            return self.store.root.require_group(f"images/{self.key}")

    # --- blocks -------------------------------------------------------------------------------------

    def _block_path(self, index: int) -> str:
        return f"{self.scratch}/{index:06d}.npy.zst"

    def done_blocks(self) -> set[int]:
        try:
            names = self.store.fs.ls(self.scratch, detail=False)
        except FileNotFoundError:
            return set()
        return {int(os.path.basename(n).split(".")[0]) for n in names if n.endswith(".npy.zst")}

    def save_block(self, index: int, labels: np.ndarray, read_sha256: str) -> None:
        """A block's labels over its reach, with the hash of the source window they were made from; once
        written, the block is done."""
        buffer = io.BytesIO()
        np.savez(buffer, labels=np.ascontiguousarray(labels), read_sha256=np.array(read_sha256))
        self._put(self._block_path(index), bytes(_ZSTD.encode(buffer.getvalue())))

    def _load(self, index: int) -> Any:
        blob = self.store.fs.cat_file(self._block_path(index))
        return np.load(io.BytesIO(bytes(_ZSTD.decode(blob))))

    def load_block(self, index: int) -> np.ndarray:
        return np.asarray(self._load(index)["labels"])

    def read_sha256(self, index: int) -> str:
        """The hash of the source window a finished block read (`array_sha256` of the pixels as read)."""
        return str(self._load(index)["read_sha256"])

    def _put(self, path: str, blob: bytes) -> None:
        """Whole or absent: a temp file fsynced and renamed into place on local disks, one PUT on object stores."""
        if not self.store.local:
            self.store.fs.pipe_file(path, blob)
            return
        write_atomically(path, blob)  # fsynced: a block the next run skips must be on disk after a power cut

    # --- arrays ------------------------------------------------------------------------------------------

    def write_core(self, box: Box, image: np.ndarray | None = None, labels: np.ndarray | None = None) -> None:
        """Write a block's core (whole chunks) of level 0: the image (h, w[, c]), or labels and their mask."""
        group, rows, cols = self.group(), slice(box.y0, box.y1), slice(box.x0, box.x1)
        if image is not None:
            _array(group, layout.IMAGE_PATH.format(level=0))[:, rows, cols] = layout.to_cyx(image)
        if labels is not None:
            _array(group, layout.LABELS_PATH.format(level=0))[rows, cols] = labels
            _array(group, layout.MASK_PATH.format(level=0))[rows, cols] = (labels > 0).astype(np.uint8)

    def read_labels(self, box: Box) -> np.ndarray:
        return np.asarray(_array(self.group(), layout.LABELS_PATH.format(level=0))[box.y0:box.y1, box.x0:box.x1])

    def core_sha256(self, box: Box, parts: Sequence[str] = CORE_PARTS) -> dict[str, str]:
        """Hashes of a block's core of level 0 as stored (image, labels, mask): `nuclei check` recomputes the
        ``parts`` a record holds (slides committed before the mask's hash hold image and labels)."""
        group, rows, cols = self.group(), slice(box.y0, box.y1), slice(box.x0, box.x1)
        paths = {"image": layout.IMAGE_PATH, "labels": layout.LABELS_PATH, "mask": layout.MASK_PATH}
        return {part: array_sha256(np.asarray(_array(group, paths[part].format(level=0))[..., rows, cols]))
                for part in parts}

    def build_pyramids(self, threads: int = 4, stop: Callable[[], None] | None = None) -> dict[str, str]:
        """Levels 1.. from the level below, a chunk at a time: area-averaged image, nearest labels and mask.
        Returns each level's `content_sha256` (by its path) from the chunks as written, so `nuclei check` can
        read them back without this run reading them again. ``stop`` is called between levels (Ctrl-C)."""
        group, sums = self.group(), {}
        levels = layout.n_levels(*_array(group, layout.IMAGE_PATH.format(level=0)).shape[-2:])
        for path, nearest in ((layout.IMAGE_PATH, False), (layout.LABELS_PATH, True), (layout.MASK_PATH, True)):
            for level in range(1, levels):
                if stop is not None:
                    stop()
                source, target = _array(group, path.format(level=level - 1)), _array(group, path.format(level=level))
                boxes = _chunk_boxes(target)
                with ThreadPoolExecutor(threads) as pool:
                    chunk_sums = list(pool.map(
                        lambda box, s=source, t=target, n=nearest: _halve_into(s, t, box, n), boxes))
                sums[path.format(level=level)] = combine_sha256(target.shape, chunk_sums)
        return sums

    # --- the commit ----------------------------------------------------------------------------------

    def commit(self, record: EntryRecord | Mapping[str, Any], measurements: np.ndarray, columns: Sequence[str],
               omero: dict[str, Any], levels_sha256: dict[str, str] | None = None) -> EntryRecord:
        """Write the measurements and the OME metadata (`layout.entry_metadata`, as for any entry), then the
        record (`Store.commit`), then drop the blocks.
        The record's ``arrays_sha256`` holds the pyramid levels' hashes (`build_pyramids`) and the table's:
        level 0 is covered block by block (``slide.blocks_sha256``)."""
        table = np.asarray(measurements, np.float64).reshape(-1, len(columns))
        chunks = (max(1, min(len(table), MEASUREMENT_CHUNK_ROWS)), max(1, len(columns)))
        sums = {**(levels_sha256 or {}), layout.MEASUREMENTS_PATH: content_sha256(table, chunks)}
        typed = EntryRecord(**{**record_fields(record), "id": self.image_id, "key": self.key, "arrays_sha256": sums,
                               "commit": uuid.uuid4().hex, "store_format_version": STORE_FORMAT_VERSION})
        group = self.group()
        array = group.create_array(layout.MEASUREMENTS_PATH, shape=table.shape, dtype=np.float64, chunks=chunks,
                                   fill_value=0.0, overwrite=True, attributes={"columns": list(columns)})
        array[...] = table
        for path, attributes in layout.entry_metadata(typed, omero, layout.n_levels(*typed.shape)).items():
            (group.require_group(path) if path else group).attrs.update(attributes)
        if self.store.local:  # zarr wrote the chunks unsynced: on disk before the record that points at them
            fsync_tree(f"{self.store.root_path}/images/{self.key}")
        self.store.commit(typed)  # the record, written last
        self.store.fs.rm(self.scratch, recursive=True)
        return typed


def _array(group: zarr.Group, path: str) -> zarr.Array:
    node = group[path]
    assert isinstance(node, zarr.Array), path
    return node


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True).encode()


def _chunk_boxes(array: zarr.Array) -> list[Box]:
    height, width = array.shape[-2:]
    ch, cw = array.chunks[-2:]
    return [Box(y, min(height, y + ch), x, min(width, x + cw)) for y in range(0, height, ch)
            for x in range(0, width, cw)]


def _halve_into(source: zarr.Array, target: zarr.Array, box: Box, nearest: bool) -> str:
    """target[box] from source[2 * box]: what `layout`'s whole-array halving gives there; returns the chunk's
    hash as written (`window_sha256`)."""
    rows, cols = slice(2 * box.y0, 2 * box.y1), slice(2 * box.x0, 2 * box.x1)
    h, w = box.shape
    if nearest:
        chunk = np.asarray(np.asarray(source[rows, cols])[::2, ::2], dtype=target.dtype)
        target[box.y0:box.y1, box.x0:box.x1] = chunk
        return window_sha256(chunk)
    planes = np.asarray(source[:, rows, cols])
    chunk = np.asarray(np.stack([cv2.resize(p, (w, h), interpolation=cv2.INTER_AREA) for p in planes]),
                       dtype=target.dtype)
    target[:, box.y0:box.y1, box.x0:box.x1] = chunk
    return window_sha256(chunk)


def slide_problem(store: Store, record: EntryRecord) -> str | None:
    """`nuclei check` for a slide entry, a block at a time (never the whole slide in memory): every block's
    stored image and labels against the hashes written with the record, the mask against the labels, every
    pyramid level and the measurements against their hashes (a chunk at a time), and the counts (ids 1..N,
    one measurement row each). Slides committed before the level and table hashes: their table's label column
    is read instead."""
    slide = (record.model_extra or {}).get("slide") or {}
    entry = SlideEntry(store, record.id)
    try:
        group = entry.group()
        top = 0
        for box, sums in zip(slide.get("blocks", []), slide.get("blocks_sha256", []), strict=True):
            core = Box(*box)
            if entry.core_sha256(core, tuple(sums)) != sums:
                return f"block {box} differs from what was written (missing or changed chunks)"
            labels = entry.read_labels(core)
            mask = np.asarray(_array(group, layout.MASK_PATH.format(level=0))[core.y0:core.y1, core.x0:core.x1])
            if not np.array_equal(mask > 0, labels > 0):
                return f"mask and labels disagree in block {box}"
            top = max(top, int(labels.max(initial=0)))
        if changed := changed_arrays(lambda path: _array(group, path), record.arrays_sha256):
            return f"{changed} differs from what was written (missing or changed chunks)"
        table = _array(group, layout.MEASUREMENTS_PATH)
        columns = table.attrs.get("columns")
        numbered = (layout.MEASUREMENTS_PATH in record.arrays_sha256 or not isinstance(columns, list)
                    or "label" not in columns or _numbered(table, columns.index("label")))
    except Exception as exc:  # noqa: BLE001 - a codec error, a missing array: all mean "damaged"
        return unreadable(exc)
    if not slide.get("blocks_sha256"):
        return "a slide entry without block hashes"
    if top != record.n_nuclei or table.shape[0] != record.n_nuclei:
        return (f"counts disagree: record {record.n_nuclei} nuclei, labels up to {top}, "
                f"{table.shape[0]} measurement rows")
    if not isinstance(columns, list) or "label" not in columns:
        return "measurements have no label column"
    if not numbered:
        return "measurements' label column is not 1..N (missing or changed chunks)"
    return None


def _numbered(table: zarr.Array, column: int) -> bool:
    """The table's label column is 1..N, read a chunk of rows at a time."""
    rows = table.chunks[0]
    return all(np.array_equal(np.asarray(table[start:start + rows, column]),
                              np.arange(start + 1, min(table.shape[0], start + rows) + 1))
               for start in range(0, table.shape[0], rows))


def unreadable(exc: Exception) -> str:
    """`nuclei check`'s reason for an entry whose arrays cannot be read."""
    return f"arrays unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"

"""The results store's commit protocol: entries become visible all at once, one writer per entry.

Layout (``KEY`` is the image id, percent-encoded into one path segment)::

    STORE/zarr.json                        attrs: {"nuclei": {"store_format_version": 1, ...}}
    STORE/images/KEY/                      one OME-Zarr 0.5 image with its labels and measurements
                                           (`nuclei.store.layout`)
    STORE/index/KEY.json                   the entry's record, written last: the commit
    STORE/locks/KEY.lock                   the entry's one-writer lock (local stores)
    STORE/failed/KEY.json                  why the file failed last time

An entry is visible only once its record exists, so readers never see half-written arrays. On local disks
the arrays and their folders are flushed to disk before the record is written, and the record is replaced
atomically (temp file, flushed, rename, flushed again): after a power cut an entry is whole or absent. A flush
is one syncfs of the file system where that is safe, else an fsync of each path (`nuclei.store.durable`).
On object stores a record is a single PUT, written after the arrays' PUTs have returned.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import os
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote

import fsspec
import numpy as np
from filelock import FileLock, Timeout

from nuclei.config import STORE_FORMAT_VERSION
from nuclei.core.measure import COLUMN_NAMES, in_micrometres
from nuclei.errors import StoreError
from nuclei.store import layout
from nuclei.store.durable import remove_durably, write_atomically, write_files
from nuclei.store.index import IndexScan, id_to_key, in_flight, parse_record, stray_reason
from nuclei.store.record import EntryRecord
from nuclei.store.zarr_files import group_files

if TYPE_CHECKING:  # zarr-python reads arrays; a run that only writes entries (as plain files) never imports it
    import zarr

log = logging.getLogger(__name__)

INDEX_PAGE = 2_000  # record files an object store's listing reads (one batch of GETs) and holds at a time


@contextlib.contextmanager
def _index_is_ours() -> Iterator[None]:
    """zarr warns about index/, which is ours and not a Zarr node: silence that warning here only (a global
    filter would change the warnings of the user's whole process)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Object at index is not recognized")
        yield


def array_sha256(array: np.ndarray) -> str:
    """Content hash of an array as stored (dtype, shape and C-order bytes)."""
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def chunk_windows(shape: Sequence[int], chunks: Sequence[int]) -> Iterator[tuple[slice, ...]]:
    """The windows of an array's chunks in C order (edge chunks cut to the array)."""
    grid = [range(0, size, chunk) for size, chunk in zip(shape, chunks, strict=True)]
    for corner in itertools.product(*grid):
        yield tuple(slice(start, min(size, start + chunk))
                    for start, size, chunk in zip(corner, shape, chunks, strict=True))


def combine_sha256(shape: Sequence[int], chunk_sums: Iterable[str]) -> str:
    """One digest of an array from its chunks' `array_sha256` in C order (`content_sha256`)."""
    digest = hashlib.sha256(f"chunks{tuple(int(s) for s in shape)}".encode())
    for chunk in chunk_sums:
        digest.update(chunk.encode())
    return digest.hexdigest()


def window_sha256(window: np.ndarray) -> str:
    """`array_sha256` of a window as Zarr gives it back (little-endian), whatever byte order it was written from."""
    return array_sha256(np.asarray(window, dtype=window.dtype.newbyteorder("<")))


def content_sha256(array: Any, chunks: Sequence[int]) -> str:
    """Content hash of an array, a chunk at a time: a numpy array as it is written, or a Zarr array as it is read
    back (never whole in memory, so a slide's pyramid levels and tables are hashed as any entry's). A chunk
    lost or changed on disk changes it (a lost chunk reads as the fill value)."""
    return combine_sha256(array.shape, (window_sha256(np.asarray(array[window]))
                                        for window in chunk_windows(array.shape, chunks)))


LEVEL0_SUMS = ("image", "labels")  # `arrays_sha256` keys of the first records: level 0's image and labels, whole


def changed_arrays(array: Callable[[str], zarr.Array], sums: dict[str, str]) -> str | None:
    """The first array whose content differs from its path hash in ``sums`` (read a chunk at a time), or None.
    The whole-array hashes of level 0 (`LEVEL0_SUMS`) are the caller's."""
    for path, digest in sums.items():
        if path in LEVEL0_SUMS:
            continue
        found = array(path)
        if content_sha256(found, found.chunks) != digest:
            return "measurements" if path == layout.MEASUREMENTS_PATH else f"array {path}"
    return None


def record_fields(record: EntryRecord | Mapping[str, Any]) -> dict[str, Any]:
    """A record's fields, from a typed record (`record.record_for`) or a plain mapping (validated again)."""
    return record.model_dump() if isinstance(record, EntryRecord) else dict(record)


class StoredEntry:
    """One complete entry's arrays, read against the record that was checked once when it was opened."""

    def __init__(self, record: EntryRecord, group: zarr.Group, url: str) -> None:
        self.record, self._group, self._url = record, group, url

    def array(self, path: str) -> zarr.Array:
        """One of the entry's arrays unread, by its path in the entry (`layout`: "s1", "labels/mask/s0", ...)."""
        return self._array(path)

    def _array(self, path: str) -> zarr.Array:
        node = self._group[path]
        import zarr

        if not isinstance(node, zarr.Array):
            raise StoreError(f"{self._url}: {self.record.id!r}/{path} is not an array")
        return node

    def labels(self, level: int = 0) -> np.ndarray:
        return np.asarray(self.labels_array(level)[...])

    def labels_array(self, level: int = 0) -> zarr.Array:
        """The label image unread (a slide's may not fit memory): read windows of it."""
        return self._array(layout.LABELS_PATH.format(level=level))

    def image_array(self, level: int = 0) -> zarr.Array:
        """The stored image unread, (c, y, x)."""
        return self._array(layout.IMAGE_PATH.format(level=level))

    def mask(self, level: int = 0) -> np.ndarray:
        return np.asarray(self._array(layout.MASK_PATH.format(level=level))[...])

    def image(self, level: int = 0) -> np.ndarray:
        """The stored image as (y, x, c), in its original dtype."""
        return np.moveaxis(np.asarray(self._array(layout.IMAGE_PATH.format(level=level))[...]), 0, -1)

    def measurements(self) -> tuple[list[str], np.ndarray]:
        array = self._array(layout.MEASUREMENTS_PATH)
        columns = array.attrs["columns"]
        if not isinstance(columns, list):
            raise StoreError(f"{self._url}: {self.record.id!r}/measurements has no column names")
        return [str(c) for c in columns], np.asarray(array[...])

    @property
    def group(self) -> zarr.Group:
        return self._group


class Store:
    """A results store on local disk or any fsspec URL (s3://, gs://, memory://, ...)."""

    def __init__(self, url: str | Path, mode: Literal["r", "a"] = "r") -> None:
        self.url = str(url)
        if self.url.split("://", 1)[0].split("::", 1)[0] == "zip" or self.url.startswith("zip::"):
            raise StoreError(f"{self.url}: a zipped store cannot be read or written in place; unzip it and give "
                             "the folder")
        self.fs, self.root_path = fsspec.core.url_to_fs(self.url)
        self.local = "file" in _protocols(self.fs)
        self.mode = mode
        self._open_root(mode)

    def _open_root(self, mode: Literal["r", "a"]) -> None:
        """The store's root, created when ``mode`` is "a" and nothing is there, then checked: a Zarr v3 group
        written by this format version of nuclei. Read as the JSON it is: zarr-python opens it (`root`) only
        where arrays are read."""
        path = f"{self.root_path}/zarr.json"
        exists = self.fs.exists(path)
        if not exists and mode == "r":
            raise StoreError(f"{self.url}: not a nuclei store (no zarr.json)")
        if not exists:
            self._refuse_foreign_folder()
            self._create_root()
        try:
            meta = json.loads(self.fs.cat_file(path))
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.url}: not a readable Zarr v3 store ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("zarr_format") != 3 or meta.get("node_type") != "group":
            raise StoreError(f"{self.url}: not a readable Zarr v3 store (its zarr.json is no v3 group)")
        attributes = meta.get("attributes")
        ours = attributes.get("nuclei") if isinstance(attributes, dict) else None
        version = ours.get("store_format_version") if isinstance(ours, dict) else None
        if version != STORE_FORMAT_VERSION:
            raise StoreError(
                f"{self.url}: store format version {version!r}; this nuclei reads version {STORE_FORMAT_VERSION}"
                if version is not None else f"{self.url}: a Zarr store, but not one written by nuclei"
            )

    @functools.cached_property
    def root(self) -> zarr.Group:
        """The root group as zarr-python reads it (opened on first use: reading arrays)."""
        import zarr

        with _index_is_ours():
            try:
                return zarr.open_group(self.url, mode=self.mode, zarr_format=3)
            except Exception as exc:  # noqa: BLE001 - zarr raises many kinds for a broken store
                raise StoreError(f"{self.url}: not a readable Zarr v3 store ({exc})") from exc

    def _create_root(self) -> None:
        """The root group and images/, as files; the root's zarr.json last and replaced atomically, so runs
        creating one new store at once all write the same files and none ever reads half a root."""
        images = group_files("images", {})
        root = group_files("", {"nuclei": {"store_format_version": STORE_FORMAT_VERSION}})
        if not self.local:
            self.fs.pipe({f"{self.root_path}/{name}": blob for name, blob in images.items()})
            self.fs.pipe({f"{self.root_path}/{name}": blob for name, blob in root.items()})
            return
        for name, blob in (*images.items(), *root.items()):
            write_atomically(os.path.join(self.root_path, name), blob)

    def _refuse_foreign_folder(self) -> None:
        """A new store goes only where nothing is, or into an empty folder (or one holding only what another run
        creating this store at the same moment has made so far): never over a file, a Zarr v2 store or anyone's
        data (writing a v3 zarr.json there would take it over)."""
        if self.fs.isfile(self.root_path):
            raise StoreError(f"{self.url}: is a file, not a store folder")
        if not self.fs.isdir(self.root_path):
            return
        present = [Path(p).name for p in self.fs.ls(self.root_path, detail=False)]
        present = [name for name in present if name not in _OURS and not name.startswith("zarr.json.")]
        if present:
            zarr_v2 = {".zgroup", ".zarray", ".zattrs"} & set(present)
            what = "a Zarr v2 store" if zarr_v2 else f"a folder that is not a nuclei store ({len(present)} items)"
            raise StoreError(f"{self.url}: {what}; give a new path or an empty folder for the store")

    # --- records: the index of complete entries --------------------------------------------------------

    def _record_path(self, image_id: str) -> str:
        return f"{self.root_path}/index/{id_to_key(image_id)}.json"

    def record(self, image_id: str) -> EntryRecord | None:
        """The record of a complete entry, or None (also when the record is damaged: see `scan`)."""
        path = self._record_path(image_id)
        try:
            record = parse_record(self.fs.cat_file(path), path)
        except FileNotFoundError:
            return None
        return None if record is None or record.id != image_id else record  # a hand-edited id hides its entry

    def scan(self) -> IndexScan:
        """Every complete entry's record by id, and the index files that do not parse (reads only the small
        index files, never arrays). A damaged record hides its own entry only. On local disks the records
        already read come from `catalog` while their files are unchanged (never over a record)."""
        if self.local and (cataloged := _catalog_scan(self.root_path)) is not None:
            return cataloged
        found: dict[str, EntryRecord] = {}
        damaged: list[str] = []
        strays: dict[str, str] = {}
        for page in self._pages():
            found.update(page.records)
            damaged += page.damaged
            strays.update(page.strays)
        return IndexScan(dict(sorted(found.items())), sorted(damaged), dict(sorted(strays.items())))

    def records(self) -> dict[str, EntryRecord]:
        """Every complete entry's record, by id (`scan` also lists the damaged ones)."""
        return self.scan().records

    def iter_records(self) -> Iterator[EntryRecord]:
        """`records` one at a time, in id order, read a page of index files at a time: what a listing, a table
        or the totals of a store of 10^6 entries use, holding a page of records instead of all of them."""
        if self.local and (cataloged := _catalog_records(self.root_path)) is not None:
            return cataloged
        return (record for page in self._pages() for record in page.records.values())

    def _pages(self) -> Iterator[IndexScan]:
        """The index's files read `INDEX_PAGE` at a time, in id order (an object store's, or with the catalog
        off): each page's records, damaged files and strays."""
        index = f"{self.root_path}/index"
        try:
            listed = self.fs.ls(index, detail=True)
        except FileNotFoundError:
            return
        strays: dict[str, str] = {}
        paths = []
        for info in listed:
            path, name = info["name"], Path(info["name"]).name
            if info.get("type") == "file" and name.endswith(".json"):
                paths.append(path)
            elif not in_flight(name):
                strays[path] = "not a record (records are index/ID.json)"
        yield IndexScan(strays=strays)
        paths.sort(key=lambda path: unquote(Path(path).name[: -len(".json")]))  # the ids' order
        for start in range(0, len(paths), INDEX_PAGE):
            part = paths[start : start + INDEX_PAGE]
            found, damaged, strays = {}, [], {}
            for path, blob in self.fs.cat(part, on_error="omit").items():
                record = parse_record(blob, path)
                if record is None:
                    damaged.append(path)
                elif reason := stray_reason(record, Path(path).name):
                    log.warning("stray index file %s: %s", path, reason)
                    strays[path] = reason
                else:
                    found[record.id] = record
            yield IndexScan(dict(sorted(found.items())), damaged, strays)

    def ids(self) -> list[str]:
        return list(self.records())

    def commit(self, record: EntryRecord) -> None:
        """Make an entry visible: write its record, last (its arrays must be durable already: `_put_files`)."""
        self._put_json(self._record_path(record.id), record.as_dict())
        self.clear_failure(record.id)

    def _put_json(self, path: str, data: dict[str, Any]) -> None:
        """Write a small JSON file atomically and durably (`durable.write_atomically` on local disks)."""
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        if self.local:
            write_atomically(path, blob)
        else:
            self.fs.pipe_file(path, blob)

    # --- files that failed: remembered so a schedule does not retry them until they change ---------------

    def _failure_path(self, image_id: str) -> str:
        return f"{self.root_path}/failed/{id_to_key(image_id)}.json"

    def record_failure(self, image_id: str, failure: dict[str, Any]) -> None:
        """Remember why an input failed, with what identifies its content (source, size, mtime, hash)."""
        if self.mode != "r":
            self._put_json(self._failure_path(image_id), {**failure, "id": image_id})

    def clear_failure(self, image_id: str) -> None:
        path = self._failure_path(image_id)
        if self.fs.exists(path):
            self.fs.rm_file(path)

    def failures(self) -> dict[str, dict[str, Any]]:
        """The remembered failures by id (unreadable ones are ignored: the file is simply tried again)."""
        folder = f"{self.root_path}/failed"
        try:
            paths = [p for p in self.fs.ls(folder, detail=False) if p.endswith(".json")]
        except FileNotFoundError:
            return {}
        found = {}
        for blob in (self.fs.cat(paths, on_error="omit") if paths else {}).values():
            try:
                failure = json.loads(blob)
                found[str(failure["id"])] = failure
            except (ValueError, KeyError, TypeError):
                continue
        return found

    def hide(self, image_id: str) -> None:
        """Make an entry invisible (its arrays stay until rewritten): the next run segments it again."""
        self._uncommit(image_id)

    def remove_record_file(self, path: str) -> None:
        """Delete an index file that does not parse (`scan().damaged`)."""
        if self.fs.exists(path):
            self.fs.rm_file(path)

    def move_aside(self, path: str) -> str:
        """Move a stray index file (`scan().strays`) to STORE/aside/index/, where nothing reads it and its owner
        can look at it (a conflict copy may hold work of theirs); returns where it went."""
        folder = f"{self.root_path}/aside/index"
        self.fs.makedirs(folder, exist_ok=True)
        target, number = f"{folder}/{Path(path).name}", 1
        while self.fs.exists(target):
            number += 1
            target = f"{folder}/{Path(path).name}.{number}"
        self.fs.mv(path, target, recursive=True)
        return target

    def _uncommit(self, image_id: str) -> None:
        """Remove the record, durably before anything else changes: after a power cut an old record must never
        describe arrays that were half rewritten."""
        path = self._record_path(image_id)
        if self.local:
            remove_durably(path)
        elif self.fs.exists(path):
            self.fs.rm_file(path)

    # --- writing -------------------------------------------------------------------------------------

    def _lock_path(self, image_id: str) -> str:
        return os.path.join(self.root_path, "locks", f"{id_to_key(image_id)}.lock")

    @contextlib.contextmanager
    def writing(self, image_id: str) -> Iterator[None]:
        """Hold the one-writer lock of an entry (local stores), so concurrent runs never interleave writes.

        An OS file lock: the kernel releases it when its holder dies, so a killed run leaves no stale lock.
        Object stores have no such lock; there, give concurrent runs disjoint inputs.
        """
        if not self.local:
            yield
            return
        path = self._lock_path(image_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with FileLock(path):
            yield

    @contextlib.contextmanager
    def unless_being_written(self, image_id: str) -> Iterator[bool]:
        """Hold the entry's lock if nobody does; yields False (holding nothing) while a writer has it, so a
        reader that would act on the entry (`nuclei check --repair`) never races a run. Object stores have no
        lock: True, as before."""
        if not self.local:
            yield True
            return
        path = self._lock_path(image_id)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            lock = FileLock(path, timeout=0)
            lock.acquire()
        except Timeout:
            yield False
            return
        except OSError:  # a read-only store: nobody can be writing it
            yield True
            return
        try:
            yield True
        finally:
            lock.release()

    def write_entry(
        self, image_id: str, image: np.ndarray, labels: np.ndarray, measurements: np.ndarray,
        record: EntryRecord | Mapping[str, Any],
    ) -> EntryRecord:
        """Write one image's arrays, then commit its (validated) record with a new commit token; returns the
        record. Call it inside `writing(image_id)`, where the caller compares the record there now with what it
        planned on (`record.commit_token`)."""
        if self.mode == "r":
            raise StoreError(f"{self.url}: opened read-only")
        key = id_to_key(image_id)
        label_dtype = np.uint16 if labels.max(initial=0) < 2**16 else np.uint32
        labels = labels.astype(label_dtype, copy=False)
        typed = EntryRecord(**{**record_fields(record), "id": image_id, "key": key, "commit": uuid.uuid4().hex,
                               "store_format_version": STORE_FORMAT_VERSION})
        table = in_micrometres(measurements, typed.pixel_size_um)  # um columns with the record's pixel size
        arrays = layout.entry_arrays(image, labels, table, len(COLUMN_NAMES))
        typed = typed.model_copy(update={"arrays_sha256": self._entry_sums(image, labels, arrays)})
        # Composed in memory, then written as plain files in one batch: one round trip per file (a batched
        # upload on object stores).
        files = layout.files_of(typed, arrays, COLUMN_NAMES)
        self._uncommit(image_id)  # an overwritten entry is invisible until it is whole again
        self._put_files(f"{self.root_path}/images/{key}", files)
        self.commit(typed)
        return typed

    @staticmethod
    def _entry_sums(image: np.ndarray, labels: np.ndarray, arrays: dict[str, np.ndarray]) -> dict[str, str]:
        """What `nuclei check` re-reads: level 0's image and labels whole (as the first records had them), and
        every other array (the mask, each pyramid level, the measurements) a chunk at a time, by its path."""
        level0 = (layout.IMAGE_PATH.format(level=0), layout.LABELS_PATH.format(level=0))
        return {"image": array_sha256(image), "labels": array_sha256(labels),
                **{path: content_sha256(array, layout.chunks_of(path, array))
                   for path, array in arrays.items() if path not in level0}}

    def _put_files(self, prefix: str, files: dict[str, bytes]) -> None:
        """Replace the folder ``prefix`` by ``files`` (relative paths -> bytes); on local disks every file and
        folder is flushed to disk before this returns, so the record that follows never outlives its arrays."""
        if self.fs.exists(prefix):
            self.fs.rm(prefix, recursive=True)
        if self.local:
            write_files(prefix, files, fsync=True)
        else:
            self.fs.pipe({f"{prefix}/{name}": blob for name, blob in files.items()})

    # --- reading -------------------------------------------------------------------------------------

    def open_entry(self, image_id: str, record: EntryRecord | None = None) -> StoredEntry:
        """A complete entry's arrays; its record is read here once (or taken as given, from `scan`), not again
        for each array."""
        record = record or self.record(image_id)
        if record is None:
            raise StoreError(f"{self.url}: no complete entry with id {image_id!r}")
        import zarr

        with _index_is_ours():
            node = self.root[f"images/{id_to_key(image_id)}"]
        if not isinstance(node, zarr.Group):
            raise StoreError(f"{self.url}: entry {image_id!r} is not a group")
        return StoredEntry(record, node, self.url)

    def entry(self, image_id: str) -> zarr.Group:
        return self.open_entry(image_id).group

    def read_labels(self, image_id: str, level: int = 0) -> np.ndarray:
        return self.open_entry(image_id).labels(level)

    def read_mask(self, image_id: str, level: int = 0) -> np.ndarray:
        return self.open_entry(image_id).mask(level)

    def read_image(self, image_id: str, level: int = 0) -> np.ndarray:
        """The stored image as (y, x, c), in its original dtype."""
        return self.open_entry(image_id).image(level)

    def read_measurements(self, image_id: str) -> tuple[list[str], np.ndarray]:
        return self.open_entry(image_id).measurements()


_OURS = frozenset({"zarr.json", "images", "index", "locks", "failed", "blocks", "aside",
                   "catalog"})  # what a store's root holds


def _catalog_scan(root_path: str) -> IndexScan | None:
    from nuclei.store import catalog  # it reads records as this module does: imported once a scan runs

    return catalog.scan(root_path)


def _catalog_records(root_path: str) -> Iterator[EntryRecord] | None:
    from nuclei.store import catalog

    return catalog.records(root_path)


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return tuple(protocol) if isinstance(protocol, (tuple, list)) else (protocol,)

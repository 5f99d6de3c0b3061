"""The results store: one Zarr v3 group per target, one OME-Zarr 0.5 image per segmented image.

Layout (``KEY`` is the image id, percent-encoded into one path segment)::

    STORE/zarr.json                        attrs: {"nuclei": {"store_format_version": 1, ...}}
    STORE/images/KEY/                      OME-Zarr 0.5 image: s0 (c, y, x) [, s1, ...] + attrs "nuclei" (provenance)
    STORE/images/KEY/labels/nuclei/s0      instance labels 1..N (image-label)
    STORE/images/KEY/labels/mask/s0        binary mask 0/1 (image-label)
    STORE/images/KEY/measurements          float64 (N, k), column names in attrs
    STORE/index/KEY.json                   the entry's record, written last: the commit

An entry is visible only once its record exists, so readers never see half-written arrays; a record is
replaced atomically (rename on local disks, a single PUT on object stores).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote

import cv2
import fsspec
import numpy as np
import zarr
from filelock import FileLock

from nuclei.config import STORE_FORMAT_VERSION
from nuclei.core.measure import MEASUREMENT_COLUMNS
from nuclei.errors import StoreError
from nuclei.store.record import EntryRecord
from nuclei.store.zarr_files import array_files, group_files

log = logging.getLogger(__name__)

OME_VERSION = "0.5"
PYRAMID_MIN_SIZE = 1024  # add half-resolution levels until the smallest is at most this (for viewers)
CHUNK = 1024
LABEL_NAMES = ("nuclei", "mask")



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


def _parse_record(blob: bytes, path: str) -> EntryRecord | None:
    """The record in ``blob``, or None (logged) when it is empty, truncated or not a valid record."""
    try:
        return EntryRecord.model_validate_json(blob)
    except ValueError as exc:  # pydantic's ValidationError (bad JSON included) is a ValueError
        log.warning("damaged index record %s: %s", path, str(exc).splitlines()[0])
        return None


def validate_id(image_id: str) -> str:
    """An id is a relative POSIX path without '..', '.', empty or absolute parts: it can never escape."""
    parts = image_id.split("/")
    if not image_id or image_id.startswith("/") or "\\" in image_id or "\x00" in image_id or any(
        part in ("", ".", "..") for part in parts
    ):
        raise StoreError(f"invalid image id {image_id!r}: must be a relative path without '..' or '.' parts")
    return image_id


def id_to_key(image_id: str) -> str:
    """One safe path segment per id ('/' and every special character percent-encoded)."""
    return quote(validate_id(image_id), safe="")


def key_to_id(key: str) -> str:
    return validate_id(unquote(key))


class Store:
    """A results store on local disk or any fsspec URL (s3://, gs://, memory://, ...)."""

    def __init__(self, url: str | Path, mode: Literal["r", "a"] = "r") -> None:
        self.url = str(url)
        self.fs, self.root_path = fsspec.core.url_to_fs(self.url)
        self.local = "file" in _protocols(self.fs)
        self.mode = mode
        self.damaged: list[str] = []  # index records the last `records()` could not read
        self.root = self._open_root(mode)

    def _open_root(self, mode: Literal["r", "a"]) -> zarr.Group:
        with _index_is_ours():
            return self._open_root_quietly(mode)

    def _open_root_quietly(self, mode: Literal["r", "a"]) -> zarr.Group:
        exists = self.fs.exists(f"{self.root_path}/zarr.json")
        if not exists and mode == "r":
            raise StoreError(f"{self.url}: not a nuclei store (no zarr.json)")
        if not exists:
            if self.fs.isfile(self.root_path):
                raise StoreError(f"{self.url}: is a file, not a store folder")
            attrs: dict[str, Any] = {"nuclei": {"store_format_version": STORE_FORMAT_VERSION}}
            root = zarr.open_group(self.url, mode="a", attributes=attrs, zarr_format=3)
            root.require_group("images")
            return root
        try:
            root = zarr.open_group(self.url, mode=mode, zarr_format=3)
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"{self.url}: not a readable Zarr v3 store ({exc})") from exc
        ours = root.attrs.asdict().get("nuclei")
        version = ours.get("store_format_version") if isinstance(ours, dict) else None
        if version != STORE_FORMAT_VERSION:
            raise StoreError(
                f"{self.url}: store format version {version!r}; this nuclei reads version {STORE_FORMAT_VERSION}"
                if version is not None else f"{self.url}: a Zarr store, but not one written by nuclei"
            )
        return root

    # --- records: the index of complete entries --------------------------------------------------------

    def _record_path(self, image_id: str) -> str:
        return f"{self.root_path}/index/{id_to_key(image_id)}.json"

    def record(self, image_id: str) -> EntryRecord | None:
        """The record of a complete entry, or None (also when the record is damaged: see `damaged`)."""
        path = self._record_path(image_id)
        try:
            return _parse_record(self.fs.cat_file(path), path)
        except FileNotFoundError:
            return None

    def records(self) -> dict[str, EntryRecord]:
        """Every complete entry's record, by id (reads only the small index files, never arrays). A damaged
        record hides its entry only: it is logged and listed in `damaged`."""
        index = f"{self.root_path}/index"
        try:
            paths = [p for p in self.fs.ls(index, detail=False) if p.endswith(".json")]
        except FileNotFoundError:
            return {}
        if not paths:  # fsspec's cat([]) raises; an index holding only a record being written is empty
            return {}
        found = {}
        self.damaged.clear()
        for path, blob in self.fs.cat(paths, on_error="omit").items():
            record = _parse_record(blob, path)
            if record is None:
                self.damaged.append(path)
                continue
            found[record.id] = record
        return dict(sorted(found.items()))

    def ids(self) -> list[str]:
        return list(self.records())

    def _commit(self, record: EntryRecord) -> None:
        self._put_json(self._record_path(record.id), record.as_dict())
        self.clear_failure(record.id)

    def _put_json(self, path: str, data: dict[str, Any]) -> None:
        """Write a small JSON file durably: temp file, fsync, rename, fsync the folder (local stores); a
        reader sees the old file or the new one, never half of one, even after a power cut."""
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        if not self.local:
            self.fs.pipe_file(path, blob)
            return
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

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
        """Delete an index file that does not parse (`damaged`)."""
        if self.fs.exists(path):
            self.fs.rm_file(path)

    def _uncommit(self, image_id: str) -> None:
        path = self._record_path(image_id)
        if self.fs.exists(path):
            self.fs.rm_file(path)

    # --- writing -------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self, image_id: str) -> Iterator[None]:
        """Hold the one-writer lock of an entry (local stores), so concurrent runs never interleave writes.

        An OS file lock: the kernel releases it when its holder dies, so a killed run leaves no stale lock.
        Object stores have no such lock; there, give concurrent runs disjoint inputs.
        """
        if not self.local:
            yield
            return
        path = os.path.join(self.root_path, "locks", f"{id_to_key(image_id)}.lock")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with FileLock(path):
            yield

    def write_entry(
        self, image_id: str, image: np.ndarray, labels: np.ndarray, measurements: np.ndarray,
        record: dict[str, Any],
    ) -> EntryRecord:
        """Write one image's arrays, then commit its (validated) record; returns the record."""
        if self.mode == "r":
            raise StoreError(f"{self.url}: opened read-only")
        key = id_to_key(image_id)
        self._uncommit(image_id)  # an overwritten entry is invisible until it is whole again
        label_dtype = np.uint16 if labels.max(initial=0) < 2**16 else np.uint32
        labels = labels.astype(label_dtype, copy=False)
        sums = {"image": array_sha256(image), "labels": array_sha256(labels)}  # `nuclei check` re-reads them
        typed = EntryRecord(**{**record, "id": image_id, "key": key, "arrays_sha256": sums,
                               "store_format_version": STORE_FORMAT_VERSION})
        # The entry is composed in memory, then written as plain files in one batch: one round trip per file
        # (a batched upload on object stores).
        self._put_files(f"{self.root_path}/images/{key}", _entry_files(typed, image, labels, measurements))
        self._commit(typed)
        return typed

    def _put_files(self, prefix: str, files: dict[str, bytes]) -> None:
        """Replace the folder ``prefix`` by ``files`` (relative paths -> bytes)."""
        if self.fs.exists(prefix):
            self.fs.rm(prefix, recursive=True)
        if not self.local:
            self.fs.pipe({f"{prefix}/{name}": blob for name, blob in files.items()})
            return
        for name, blob in files.items():
            path = os.path.join(prefix, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(blob)

    # --- reading -------------------------------------------------------------------------------------

    def entry(self, image_id: str) -> zarr.Group:
        if self.record(image_id) is None:
            raise StoreError(f"{self.url}: no complete entry with id {image_id!r}")
        with _index_is_ours():
            node = self.root[f"images/{id_to_key(image_id)}"]
        if not isinstance(node, zarr.Group):
            raise StoreError(f"{self.url}: entry {image_id!r} is not a group")
        return node

    def _array(self, image_id: str, path: str) -> zarr.Array:
        node = self.entry(image_id)[path]
        if not isinstance(node, zarr.Array):
            raise StoreError(f"{self.url}: {image_id!r}/{path} is not an array")
        return node

    def read_labels(self, image_id: str, level: int = 0) -> np.ndarray:
        return np.asarray(self._array(image_id, f"labels/nuclei/s{level}")[...])

    def read_mask(self, image_id: str, level: int = 0) -> np.ndarray:
        return np.asarray(self._array(image_id, f"labels/mask/s{level}")[...])

    def read_image(self, image_id: str, level: int = 0) -> np.ndarray:
        """The stored image as (y, x, c), in its original dtype."""
        return np.moveaxis(np.asarray(self._array(image_id, f"s{level}")[...]), 0, -1)

    def read_measurements(self, image_id: str) -> tuple[list[str], np.ndarray]:
        array = self._array(image_id, "measurements")
        columns = array.attrs["columns"]
        if not isinstance(columns, list):
            raise StoreError(f"{self.url}: {image_id!r}/measurements has no column names")
        return [str(c) for c in columns], np.asarray(array[...])


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return tuple(protocol) if isinstance(protocol, (tuple, list)) else (protocol,)


def _to_cyx(image: np.ndarray) -> np.ndarray:
    return image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)


def _levels(array: np.ndarray, nearest: bool) -> Iterator[np.ndarray]:
    """Full resolution, then half sizes until the largest side is at most PYRAMID_MIN_SIZE."""
    yield array
    while max(array.shape[-2:]) > PYRAMID_MIN_SIZE:
        if nearest:
            array = array[..., ::2, ::2]
        else:
            h, w = array.shape[-2:]
            planes = [cv2.resize(p, ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_AREA) for p in array]
            array = np.stack(planes)
        yield array


def _entry_files(record: EntryRecord, image: np.ndarray, labels: np.ndarray, measurements: np.ndarray
                 ) -> dict[str, bytes]:
    """An entry's files (relative paths -> bytes): the OME-Zarr image, its two label images, measurements."""
    pixel_um = record.pixel_size_um
    levels = list(_levels(_to_cyx(image), nearest=False))
    files = group_files("", {
        "nuclei": record.as_dict(),
        "ome": {"version": OME_VERSION, "multiscales": _multiscales(_cyx(pixel_um), len(levels), "image", pixel_um),
                "omero": _omero(levels[0])},
    })
    files |= _level_files("", levels)
    files |= group_files("labels", {"ome": {"version": OME_VERSION, "labels": list(LABEL_NAMES)}})
    for name, label_image in (("nuclei", labels), ("mask", (labels > 0).astype(np.uint8))):
        label_levels = list(_levels(label_image, nearest=True))
        files |= group_files(f"labels/{name}", {"ome": {
            "version": OME_VERSION,
            "multiscales": _multiscales(_yx(pixel_um), len(label_levels), name, pixel_um),
            "image-label": {"version": OME_VERSION, "source": {"image": "../../"}},
        }})
        files |= _level_files(f"labels/{name}", label_levels)
    table = np.asarray(measurements, dtype=np.float64)
    files |= array_files("measurements", table, chunks=(max(1, table.shape[0]), table.shape[1]),
                         attributes={"columns": list(MEASUREMENT_COLUMNS)})
    return files


def _omero(cyx: np.ndarray) -> dict[str, Any]:
    """OME-Zarr rendering settings, so viewers show an RGB image in its colours (red, green, blue channels
    added up) and a dim 16-bit image with a usable contrast (window 1st..99.8th percentile) rather than black."""
    colours = ["FF0000", "00FF00", "0000FF"] if cyx.shape[0] == 3 else ["FFFFFF"] * cyx.shape[0]
    names = ["red", "green", "blue"] if cyx.shape[0] == 3 else [f"channel {i}" for i in range(cyx.shape[0])]
    step = max(1, max(cyx.shape[1:]) // 512)  # percentiles of a subsample: cheap on big images, same window
    channels = []
    for plane, colour, name in zip(cyx, colours, names, strict=True):
        full = (0.0, float(np.iinfo(plane.dtype).max)) if plane.dtype.kind in "ui" else (float(plane.min()),
                                                                                          float(plane.max()))
        if cyx.shape[0] == 3:  # RGB is shown as it is: no window to compute
            start, end = full
        else:
            low, high = (float(v) for v in np.percentile(plane[::step, ::step], [1.0, 99.8]))
            start, end = low, max(high, low + 1e-6)
        channels.append({"color": colour, "label": name, "active": True,
                         "window": {"min": full[0], "max": full[1], "start": start, "end": end}})
    return {"channels": channels, "rdefs": {"model": "color" if cyx.shape[0] == 3 else "greyscale"}}


def _level_files(path: str, levels: list[np.ndarray]) -> dict[str, bytes]:
    """A multiscale's level arrays s0, s1, ... under ``path``."""
    files: dict[str, bytes] = {}
    for index, level in enumerate(levels):
        chunks = tuple(min(s, CHUNK) if i >= level.ndim - 2 else s for i, s in enumerate(level.shape))
        prefix = f"{path}/s{index}" if path else f"s{index}"
        files |= array_files(prefix, level, chunks, dimension_names=("c", "y", "x")[-level.ndim:])
    return files


def _multiscales(
    axes: list[dict[str, str]], n_levels: int, name: str, pixel_um: float | None
) -> list[dict[str, Any]]:
    """OME-NGFF multiscales: the scale is in micrometres when the pixel size is known, else in pixels (the
    axes then carry no unit rather than a made-up one)."""
    spatial = sum(1 for a in axes if a["type"] == "space")
    size = pixel_um or 1.0
    datasets = [
        {"path": f"s{i}", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0] * (len(axes) - spatial) + [size * 2**i] * spatial}]}
        for i in range(n_levels)
    ]
    return [{"name": name, "axes": axes, "datasets": datasets}]


def _yx(pixel_um: float | None) -> list[dict[str, str]]:
    unit = {"unit": "micrometer"} if pixel_um else {}
    return [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]


def _cyx(pixel_um: float | None) -> list[dict[str, str]]:
    return [{"name": "c", "type": "channel"}, *_yx(pixel_um)]

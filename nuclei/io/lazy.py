"""Images read a window at a time: tiled and pyramidal (OME-)TIFF / BigTIFF through tifffile's Zarr interface,
and OME-Zarr images (another tool's output), local or on fsspec URLs: whole slides that never fit one process.

The plane to segment is chosen as for any lab image (`nuclei.io.planes.select`: --channel, --z), on each window
read, so a slide and a small file of the same layout give the same plane and the same errors. Tasks get a
`SlideSource` (a URL and the plane choice), never pixels, and open it themselves.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import tifffile

from nuclei.core.blocks import Box
from nuclei.errors import InputError
from nuclei.io.images import TIFF_SUFFIXES
from nuclei.io.planes import _TO_UM, LabImage, PlaneChoice, _ome_channels_and_size, _resolution_size, select

ZARR_SUFFIX = ".zarr"
# Files up to this size are identified by the sha256 of their bytes, as small images are (a sequential read, about
# 1 s a GB locally); larger ones by their size and first and last MiB, which hold a TIFF's header and tags.
FULL_HASH_MAX_BYTES = 1 << 30
_HEAD_TAIL = 1 << 20


@dataclass(frozen=True)
class SlideSource:
    """What a block task needs to open a slide: where it is and which plane to take."""

    url: str
    choice: PlaneChoice = PlaneChoice()


def is_slide(url: str, slide_pixels: int) -> bool:
    """An image read a window at a time and segmented as blocks: an OME-Zarr image, or a TIFF whose header says
    a plane has more than ``slide_pixels``."""
    if url.rstrip("/").lower().endswith(ZARR_SUFFIX):
        return True  # an OME-Zarr image is only ever read a window at a time, whatever its size
    return is_lazy_name(url) and (plane_pixels(url) or 0) > slide_pixels


def is_lazy_name(url: str) -> bool:
    """A file or folder name this module can open a window at a time."""
    name = url.rstrip("/").lower()
    return name.endswith(TIFF_SUFFIXES) or name.endswith(ZARR_SUFFIX)


class LazyPlane:
    """An open slide: the plane's (height, width), dtype and colour samples, its description, and windows of it."""

    def __init__(self, source: SlideSource) -> None:
        self.source = source
        self._handle: Any = None
        self._tiff: tifffile.TiffFile | None = None
        try:
            if source.url.rstrip("/").lower().endswith(ZARR_SUFFIX):
                self.array, self.axes, names, size = _open_ome_zarr(source.url)
            else:
                self.array, self.axes, names, size = self._open_tiff(source.url)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - every reader error becomes one clear message
            raise InputError(source.url, f"cannot open as a tiled image ({type(exc).__name__}: {exc})") from exc
        self._names, self._size = names, size
        self.height = int(self.array.shape[self.axes.index("Y")])
        self.width = int(self.array.shape[self.axes.index("X")])
        probe = self._select(Box(0, min(self.height, 4), 0, min(self.width, 4)))  # checks the choice at once
        self.lab = LabImage(np.empty(0), probe.axes, probe.channel, probe.channel_name, probe.z, size)
        self.dtype = probe.array.dtype
        self.channels = 1 if probe.array.ndim == 2 else int(probe.array.shape[2])

    def _open_tiff(self, url: str) -> tuple[Any, str, list[str] | None, float | None]:
        self._handle = fsspec.open(url, "rb").open()
        self._tiff = tifffile.TiffFile(self._handle)
        series = self._tiff.series[0]
        names, size = _ome_channels_and_size(self._tiff)
        import zarr  # slides only: zarr-python is 60 ms of every small run's start-up otherwise

        array = zarr.open_array(series.aszarr(level=0), mode="r")
        return array, series.axes, names, size or _resolution_size(self._tiff)

    @property
    def pixels(self) -> int:
        return self.height * self.width

    def _select(self, box: Box) -> LabImage:
        index = tuple(slice(box.y0, box.y1) if a == "Y" else slice(box.x0, box.x1) if a == "X" else slice(None)
                      for a in self.axes)
        return select(np.asarray(self.array[index]), self.axes, self.source.choice, self.source.url, self._names,
                      self._size)

    def read(self, box: Box) -> np.ndarray:
        """The plane's pixels in ``box``: (h, w) or (h, w, S), as stored."""
        return self._select(box).array

    def strided(self, step: int, band_rows: int = 1024, between: Callable[[], None] | None = None) -> np.ndarray:
        """plane[::step, ::step], read a band of rows at a time (memory: one band, not the slide); ``between``
        is called before each band (a stop request raises there)."""
        band = step * max(1, band_rows // step)  # whole strides per band, so rows stay on the grid
        parts = []
        for y0 in range(0, self.height, band):
            if between is not None:
                between()
            parts.append(self.read(Box(y0, min(self.height, y0 + band), 0, self.width))[::step, ::step])
        return np.concatenate(parts, axis=0)

    def close(self) -> None:
        if self._tiff is not None:
            self._tiff.close()
        if self._handle is not None:
            self._handle.close()

    def __enter__(self) -> LazyPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_ome_zarr(url: str) -> tuple[Any, str, list[str] | None, float | None]:
    """Level 0 of an OME-Zarr image (NGFF 0.4 on Zarr v2 or 0.5 on v3), its axes, channel names, pixel size."""
    import zarr

    group = zarr.open_group(url.rstrip("/"), mode="r")
    attrs = group.attrs.asdict()
    ome = attrs.get("ome", attrs)
    if not isinstance(ome, dict) or not ome.get("multiscales"):
        raise InputError(url, "a Zarr group, but not an OME-Zarr image (no multiscales)")
    multiscale = ome["multiscales"][0]
    axes_meta = multiscale["axes"]
    axes = "".join((a["name"] if isinstance(a, dict) else a).upper() for a in axes_meta)
    level0 = multiscale["datasets"][0]
    names = [str(c.get("label") or f"C{i}") for i, c in enumerate(ome.get("omero", {}).get("channels", []))]
    return group[level0["path"]], axes, names or None, _ngff_pixel_size(level0, axes_meta, axes)


def _ngff_pixel_size(level0: dict[str, Any], axes_meta: list[Any], axes: str) -> float | None:
    """Micrometres per pixel from level 0's scale along x, where its axis names a length unit."""
    x = axes.index("X")
    unit = axes_meta[x].get("unit") if isinstance(axes_meta[x], dict) else None
    factor = _TO_UM.get(str(unit)) if unit else None
    factor = 1.0 if unit == "micrometer" else factor
    scales = [t["scale"] for t in level0.get("coordinateTransformations", []) if t.get("type") == "scale"]
    return float(scales[0][x]) * factor if scales and factor else None


def plane_pixels(url: str) -> int | None:
    """Pixels of a TIFF's or OME-Zarr's first image from its header only, or None when it cannot be told (the
    regular path then reads and reports the file)."""
    found = declared(url)
    return found.height * found.width if found else None


@dataclass(frozen=True)
class Declared:
    """What a slide's header claims of its first image at full resolution: the plane's size and the bytes of
    all its pixels (every plane and colour sample, at the declared dtype), before any pixel is read."""

    height: int
    width: int
    nbytes: int


def declared(url: str) -> Declared | None:
    """The header's claim of a TIFF's or OME-Zarr's first image (`Declared`), or None when it cannot be told."""
    try:
        if url.rstrip("/").lower().endswith(ZARR_SUFFIX):
            array, axes, _, _ = _open_ome_zarr(url)
            shape, itemsize = tuple(int(n) for n in array.shape), np.dtype(array.dtype).itemsize
        else:
            with fsspec.open(url, "rb") as handle, tifffile.TiffFile(handle) as tif:
                series = tif.series[0]
                shape, axes, itemsize = tuple(int(n) for n in series.shape), series.axes, series.dtype.itemsize
        return Declared(shape[axes.index("Y")], shape[axes.index("X")], math.prod(shape) * itemsize)
    except Exception:  # noqa: BLE001 - not ours to report: the small-image path says what is wrong
        return None


def stored_bytes(url: str, enough: int) -> int:
    """The bytes a slide holds: a TIFF's file size; an OME-Zarr's files (chunks and metadata) summed over a walk
    of its folders that stops once ``enough`` are seen (a real slide's first few folders pass it)."""
    fs, root = fsspec.core.url_to_fs(url.rstrip("/"))
    if not url.rstrip("/").lower().endswith(ZARR_SUFFIX):
        return int(fs.size(root))
    total = 0
    for _, _, files in fs.walk(root, detail=True):
        total += sum(int(info.get("size") or 0) for info in files.values() if info.get("type") != "directory")
        if total >= enough:
            break
    return total


def percentile_step(height: int, width: int, sample_pixels: int) -> int:
    """The stride of a sample of about ``sample_pixels``, as `core.normalize` strides a whole image."""
    return max(1, int(math.sqrt(height * width / sample_pixels)))


def source_identity(url: str, size: int) -> tuple[str, str]:
    """(digest, what it hashes) of a slide: the file's bytes up to `FULL_HASH_MAX_BYTES`, else its size with its
    first and last MiB; an OME-Zarr image by its metadata documents (its chunks are thousands of objects)."""
    if url.rstrip("/").lower().endswith(ZARR_SUFFIX):
        return _zarr_metadata_sha256(url), "metadata"
    digest = hashlib.sha256()
    with fsspec.open(url, "rb") as handle:
        if size <= FULL_HASH_MAX_BYTES:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
            return digest.hexdigest(), "content"
        digest.update(str(size).encode())
        digest.update(handle.read(_HEAD_TAIL))
        handle.seek(size - _HEAD_TAIL)
        digest.update(handle.read(_HEAD_TAIL))
    return digest.hexdigest(), "size+head+tail"


def _zarr_metadata_sha256(url: str) -> str:
    fs, root = fsspec.core.url_to_fs(url.rstrip("/"))
    digest = hashlib.sha256()
    for path in sorted(_metadata_files(fs, root)):
        digest.update(path[len(root):].encode())
        digest.update(fs.cat_file(path))
    return digest.hexdigest()


def _metadata_files(fs: fsspec.AbstractFileSystem, root: str) -> Iterator[str]:
    """The group's metadata documents and those of its first level (v2 or v3 names)."""
    names = ("zarr.json", ".zattrs", ".zgroup", ".zarray")
    for name in names:
        if fs.exists(f"{root}/{name}"):
            yield f"{root}/{name}"
    try:
        attrs = json.loads(fs.cat_file(f"{root}/zarr.json")).get("attributes", {}) if fs.exists(
            f"{root}/zarr.json") else json.loads(fs.cat_file(f"{root}/.zattrs"))
        level0 = attrs.get("ome", attrs)["multiscales"][0]["datasets"][0]["path"]
    except (KeyError, IndexError, ValueError, FileNotFoundError):
        return
    for name in names:
        if fs.exists(f"{root}/{level0}/{name}"):
            yield f"{root}/{level0}/{name}"

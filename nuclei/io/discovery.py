"""Finding the images to segment: directories, globs or single files, local or fsspec URLs.

Each image gets a stable id: its path relative to its input root, without the extension, '/'-separated.
Names that look like images but cannot be (a directory named x.png, a broken link, a symlink loop) are
reported as problems rather than silently ignored.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

import fsspec

from nuclei.errors import InputError
from nuclei.io.images import IMAGE_SUFFIXES

GLOB_CHARS = "*?["
# Microscopy and picture formats nuclei does not read: reported by name (a folder of .czi files said "0 of 0
# found" and exited 0), never skipped in silence. Other files (notes, CSVs) are not images and are left alone.
UNSUPPORTED_SUFFIXES = (".czi", ".nd2", ".lif", ".lsm", ".oib", ".oif", ".vsi", ".ims", ".dv", ".r3d", ".ndpi",
                        ".scn", ".mrxs", ".webp", ".gif", ".jp2", ".j2k", ".jxl", ".heic", ".heif", ".avif", ".ppm",
                        ".pgm", ".pnm", ".exr", ".dcm")
UNSUPPORTED = "not a format nuclei reads (PNG, TIFF, JPEG, BMP): export it as (OME-)TIFF"


@dataclass(frozen=True)
class ImageItem:
    """One image to segment: where it is, its id, and what a cheap stat says of it."""

    id: str
    url: str
    size: int
    mtime: float | None


@dataclass
class Discovery:
    items: list[ImageItem]
    problems: list[InputError]


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not os.path.basename(name).startswith(".")


def _is_unsupported(name: str) -> bool:
    return (name.lower().endswith(UNSUPPORTED_SUFFIXES) and not _is_image_name(name)
            and not os.path.basename(name).startswith("."))


def _image_id(relative: str) -> str:
    path = PurePosixPath(relative.replace(os.sep, "/"))
    return str(path.with_suffix(""))


def _local_files(root: Path) -> Iterator[tuple[str, str | None, os.stat_result | None]]:
    """(path, problem, stat) for every image-named entry under root; symlinked folders are not followed, and a
    folder that cannot be listed (no permission, a path longer than PATH_MAX) is a problem, not a silence. Plain
    strings, not Paths: a folder of 10^5 images spent most of its listing building Path objects."""
    unlisted: list[OSError] = []
    for folder, dirs, files in os.walk(root, followlinks=False, onerror=unlisted.append):
        yield from _unlisted(unlisted, root)
        dirs.sort()
        for name in sorted(dirs):
            if _is_image_name(name):
                yield os.path.join(folder, name), "is a directory, not an image file", None
            elif os.path.islink(os.path.join(folder, name)):
                yield (os.path.join(folder, name),
                       "is a symlinked folder: not followed (give it as an input to include it)", None)
        for name in sorted(files):
            if _is_unsupported(name):
                yield os.path.join(folder, name), UNSUPPORTED, None
            elif _is_image_name(name):
                path = os.path.join(folder, name)
                try:
                    stat = os.stat(path)
                except OSError as exc:  # broken link, symlink loop
                    yield path, f"cannot open ({exc.strerror or exc})", None
                    continue
                yield path, None, stat
    yield from _unlisted(unlisted, root)


def _unlisted(errors: list[OSError], root: Path) -> Iterator[tuple[str, str, None]]:
    """os.walk's listing errors so far, as problems (it drops them unless asked)."""
    while errors:
        error = errors.pop(0)
        yield str(error.filename or root), f"cannot list this folder ({error.strerror or error})", None


def _local(root: Path, files: Sequence[Path] | None = None) -> Discovery:
    found = Discovery([], [])
    entries = ((str(f), None, None) for f in files) if files is not None else _local_files(root)
    base = os.path.abspath(root)
    under = os.path.join(base, "")  # base and a separator: what every path found under it starts with
    for path, problem, stat in entries:
        if problem:
            found.problems.append(InputError(Path(path), problem))
            continue
        if stat is None:  # a file named by the caller or a glob: stat it here
            try:
                stat = os.stat(path)
            except OSError as exc:  # a broken link, a symlink loop: a problem of that file, not of the run
                found.problems.append(InputError(Path(path), f"cannot open ({exc.strerror or exc})"))
                continue
        # Absolute: a task may run on a worker whose working directory is not ours.
        full = os.path.abspath(path)
        if full.startswith(under):  # normalised (abspath): the id is the rest without its suffix
            image_id = os.path.splitext(full[len(under):])[0].replace(os.sep, "/")
        else:
            image_id = _image_id(os.path.relpath(full, base))
        found.items.append(ImageItem(image_id, full, stat.st_size, stat.st_mtime))
    return found


def _remote(url: str) -> Discovery:
    fs, path = fsspec.core.url_to_fs(url)
    protocol = url.split("://", 1)[0]
    has_glob = any(c in path for c in GLOB_CHARS)
    root = _glob_root(path) if has_glob else (path if fs.isdir(path) else path.rsplit("/", 1)[0])
    listing = fs.glob(path, detail=True) if has_glob else fs.find(path, detail=True)
    found = Discovery([], [])
    if has_glob and not listing:
        found.problems.append(InputError(url, "matches no file"))
    for name, info in sorted(listing.items()):
        if _is_unsupported(name):
            found.problems.append(InputError(f"{protocol}://{name}", UNSUPPORTED))
        if not _is_image_name(name):
            continue
        if info.get("type") == "directory":
            found.problems.append(InputError(f"{protocol}://{name}", "is a directory, not an image file"))
            continue
        rel = name[len(root):].lstrip("/")
        mtime = info.get("mtime") or info.get("LastModified")
        found.items.append(ImageItem(_image_id(rel), f"{protocol}://{name}", int(info.get("size") or 0),
                                     mtime.timestamp() if hasattr(mtime, "timestamp") else mtime))
    return found


def _glob_root(pattern: str) -> str:
    """The folder part of a glob before its first wildcard: ids are relative to it."""
    head = pattern[: min(pattern.index(c) for c in GLOB_CHARS if c in pattern)]
    return head.rsplit("/", 1)[0] if "/" in head else "."


def open_source(url: str) -> AbstractContextManager[IO[bytes]]:
    """An input file for reading: a local path as it is (fsspec would read '::' in a name as a URL chain and
    never find ``in::x/a.png``), anything with a scheme through fsspec."""
    if "://" not in url:
        return open(url, "rb")  # noqa: SIM115 - the caller's with-block closes it
    opened: AbstractContextManager[IO[bytes]] = fsspec.open(url, "rb")
    return opened


def _is_ome_zarr(path: Path) -> bool:
    """An OME-Zarr image given as an input (Zarr v3 or v2 metadata at its top)."""
    return path.name.lower().endswith(".zarr") and any((path / n).is_file() for n in ("zarr.json", ".zattrs"))


def _zarr_mtime(path: Path) -> float:
    """The image's metadata's modification time: a rewritten OME-Zarr rewrites it."""
    return max((path / n).stat().st_mtime for n in ("zarr.json", ".zattrs") if (path / n).is_file())


def discover_one(spec: str) -> Discovery:
    """Images of one input: a folder (recursive), a glob, or a file; local paths or fsspec URLs."""
    if "://" in spec and not spec.startswith("file://"):
        return _remote(spec)
    spec = spec.removeprefix("file://")
    if not Path(spec).exists() and any(c in spec for c in GLOB_CHARS):  # an existing path is never a glob
        root = Path(_glob_root(spec))
        every = sorted(glob.glob(spec, recursive=True))
        matches = [Path(p) for p in every if _is_image_name(p)]
        dirs = [p for p in matches if p.is_dir()]
        found = _local(root, [p for p in matches if not p.is_dir()])
        found.problems += [InputError(p, "is a directory, not an image file") for p in dirs]
        found.problems += [InputError(p, UNSUPPORTED) for p in every if _is_unsupported(p)]
        if not every:
            found.problems.append(InputError(spec, "matches no file"))
        return found
    path = Path(spec)
    if path.is_dir() and _is_ome_zarr(path):  # one image (a whole slide, read a window at a time), not a folder
        stat = path.stat()
        return Discovery([ImageItem(_image_id(path.name), os.path.abspath(path), stat.st_size, _zarr_mtime(path))],
                         [])
    if path.is_dir():
        return _local(path)
    if path.is_file():
        return _local(path.parent, [path])
    raise InputError(path, "input does not exist")


def discover(inputs: Sequence[str]) -> Discovery:
    """Images of every input; the same file named twice counts once; two files giving the same id is a problem
    (the later one is reported)."""
    found = Discovery([], [])
    seen: dict[str, str] = {}
    for spec in inputs:
        part = discover_one(str(spec))
        found.problems += part.problems
        for item in part.items:
            if seen.get(item.id) == item.url:
                continue
            if item.id in seen:
                found.problems.append(InputError(item.url, f"id {item.id!r} is also {seen[item.id]}"))
                continue
            seen[item.id] = item.url
            found.items.append(item)
    return found

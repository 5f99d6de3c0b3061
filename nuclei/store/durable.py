"""Files that survive a power cut on local disks: every file, then every folder that names it, flushed to disk.

A rename or a new file is durable only once its folder is flushed too (POSIX: the directory entry lives in
the folder). The commit protocol (`nuclei.store.backend`) relies on this order: an entry's arrays are on
disk before its record is, so after a crash a record never points at arrays that are not there.

How a set of paths is flushed (`make_durable`): where one ``syncfs(2)`` is known to flush them all, one call for
the file system, else an ``fsync`` of each. syncfs flushes every dirty page and inode of the file system and
commits its journal, so it covers the files and folders just written. It is used only where it is safe and
reports errors: Linux 5.8 or later (earlier kernels dropped writeback errors from syncfs) on the local file
systems of `SYNCFS_SAFE` (FUSE and network file systems may implement it as a no-op; they get fsyncs).
`python -m benchmarks fsync_cost` measures both per entry and per run. Because
it also flushes other programs' dirty pages on that file system, a process whose syncfs calls turn slow (a
big copy onto the same disk) falls back to fsyncs for the rest of its run. ``NUCLEI_SYNC=fsync`` always
fsyncs each path.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Sequence

log = logging.getLogger(__name__)

SYNC_ENV = "NUCLEI_SYNC"  # "fsync": flush each path, never one syncfs for the file system
# statfs f_type of the local file systems whose syncfs flushes every file's data and metadata and commits the
# journal or log (overlay: its upper file system's)
SYNCFS_SAFE = {0xEF53: "ext2/3/4", 0x58465342: "xfs", 0x9123683E: "btrfs", 0x2FC12FC1: "zfs",
               0x01021994: "tmpfs", 0x794C7630: "overlay"}
SLOW_SYNCFS_S = 0.1  # a syncfs slower than this is flushing other programs' writes too
SLOW_SYNCFS_LIMIT = 3  # after this many slow ones, fsync each path for the rest of the process
_usable: dict[int, bool] = {}  # st_dev -> whether syncfs serves it
_slow = 0


def fsync_path(path: str) -> None:
    """Flush a written (and closed) file to disk, or make the names in a folder (new files, renames, deletions)
    durable."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def make_durable(paths: Sequence[str]) -> None:
    """Flush ``paths`` (written and closed files, folders whose names changed; the fallback fsyncs them in this
    order: files before the folders that name them) to disk: one syncfs of their file system where that is safe,
    else an fsync of each."""
    if not paths:
        return
    if syncfs_serves(paths[0], paths[-1]):
        sync_filesystem(paths[-1])
        return
    for path in paths:
        fsync_path(path)


def syncfs_serves(first: str, last: str) -> bool:
    """Whether one syncfs flushes ``first``, ``last`` and what lies between (the same file system, one on which
    syncfs is safe, and no fallback asked for or fallen back to)."""
    if os.environ.get(SYNC_ENV, "").lower() == "fsync" or _slow >= SLOW_SYNCFS_LIMIT or not _kernel_reports_errors():
        return False
    device = os.stat(first).st_dev
    if os.stat(last).st_dev != device:
        return False
    if device not in _usable:
        _usable[device] = _filesystem_type(last) in SYNCFS_SAFE
    return _usable[device]


def sync_filesystem(path: str) -> None:
    """syncfs(2) of the file system holding ``path``: every dirty page and inode on it written and committed."""
    global _slow
    handle = os.open(path, os.O_RDONLY)
    try:
        started = time.perf_counter()
        if _libc().syncfs(handle) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"syncfs: {os.strerror(error)}", path)
        if time.perf_counter() - started > SLOW_SYNCFS_S:
            _slow += 1
            if _slow == SLOW_SYNCFS_LIMIT:
                log.info("syncfs turned slow (other writes on the same disk): fsyncing each file from now on")
    finally:
        os.close(handle)


@functools.cache
def _kernel_reports_errors() -> bool:
    """Linux 5.8 or later (syncfs reports writeback errors) with a C library that has syncfs and statfs."""
    if not sys.platform.startswith("linux") or not all(hasattr(_libc(), name) for name in ("syncfs", "statfs")):
        return False
    numbers = [int(n) for n in re.findall(r"\d+", os.uname().release)[:2]]
    return len(numbers) == 2 and (numbers[0], numbers[1]) >= (5, 8)


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 256)]  # f_type first (glibc, every 64-bit ABI)


def _filesystem_type(path: str) -> int | None:
    """statfs(2)'s f_type of the file system holding ``path``, or None where it cannot be read."""
    found = _StatFs()
    if _libc().statfs(os.fsencode(path), ctypes.byref(found)) != 0:
        return None
    return int(found.f_type) & 0xFFFFFFFF


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def write_files(prefix: str, files: dict[str, bytes], fsync: bool = True) -> None:
    """Write ``files`` (relative paths -> bytes) under the folder ``prefix``; with ``fsync``, every file and
    every folder from ``prefix``'s parent down is on disk when this returns.

    All files are written first and flushed after (`make_durable`: one syncfs, or an fsync of each): where
    each file is fsynced, the first fsync on a journalling file system (ext4, XFS) commits the others' pending
    writes in the same journal transaction, so the rest find nothing left to do. Fsyncing each file as it was
    written cost one commit per file (a quarter of a small image's whole run here)."""
    folders: set[str] = set()
    written: list[str] = []
    for name, blob in files.items():
        path = os.path.join(prefix, name)
        folder = os.path.dirname(path)
        if folder not in folders:
            os.makedirs(folder, exist_ok=True)
            folders.add(folder)
        with open(path, "wb") as handle:
            handle.write(blob)
        written.append(path)
    if not fsync:
        return
    deepest_first = sorted(folders | _parents(folders, prefix), key=len, reverse=True)
    make_durable([*written, *deepest_first, os.path.dirname(prefix) or "."])


def fsync_tree(folder: str) -> None:
    """Make every file and folder under ``folder`` (and its name in its parent) durable: for what another writer
    (zarr, chunk by chunk) wrote there, before a record that points at it."""
    paths = []
    for root, _, names in os.walk(folder, topdown=False):  # files, then their folder, deepest first
        paths += [os.path.join(root, name) for name in names]
        paths.append(root)
    make_durable([*paths, os.path.dirname(folder) or "."])


def _parents(folders: set[str], prefix: str) -> set[str]:
    """Every folder between ``prefix`` and the files' own folders (os.makedirs may create several)."""
    found = set()
    for folder in folders:
        while len(folder) > len(prefix):
            folder = os.path.dirname(folder)
            found.add(folder)
    return found


def write_atomically(path: str, blob: bytes) -> None:
    """Replace ``path`` by ``blob``: temp file, fsync, rename, fsync the folder. A reader sees the old file or
    the new one, never half of one, even after a power cut."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(blob)
    make_durable([tmp])
    os.replace(tmp, path)
    make_durable([folder])


def remove_durably(path: str) -> bool:
    """Delete ``path`` and make the deletion durable; False when it was not there."""
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    make_durable([os.path.dirname(path)])
    return True

"""Files that survive a power cut on local disks: fsync each file, then each folder that names it.

A rename or a new file is durable only once its folder is fsynced too (POSIX: the directory entry lives in
the folder). The commit protocol (`nuclei.store.backend`) relies on this order: an entry's arrays are on
disk before its record is, so after a crash a record never points at arrays that are not there.
`python -m benchmarks fsync_cost` measures what it costs per entry.
"""

from __future__ import annotations

import os
import uuid


def fsync_path(path: str) -> None:
    """Flush a written (and closed) file to disk, or make the names in a folder (new files, renames, deletions)
    durable."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_files(prefix: str, files: dict[str, bytes], fsync: bool = True) -> None:
    """Write ``files`` (relative paths -> bytes) under the folder ``prefix``; with ``fsync``, every file and
    every folder from ``prefix``'s parent down is on disk when this returns.

    All files are written first and fsynced after: on a journalling file system (ext4, XFS) the first fsync
    commits the others' pending writes in the same journal transaction, so the rest find nothing left to do.
    Fsyncing each file as it was written cost one commit per file (about 30 an entry: a quarter of a small
    image's whole run here, `python -m benchmarks fsync_cost`)."""
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
    for path in written:
        fsync_path(path)
    for folder in sorted(folders | _parents(folders, prefix), key=len, reverse=True):  # deepest first
        fsync_path(folder)
    fsync_path(os.path.dirname(prefix) or ".")


def fsync_tree(folder: str) -> None:
    """Make every file and folder under ``folder`` (and its name in its parent) durable: for what another writer
    (zarr, chunk by chunk) wrote there, before a record that points at it."""
    for root, _, names in os.walk(folder, topdown=False):  # files, then their folder, deepest first
        for name in names:
            fsync_path(os.path.join(root, name))
        fsync_path(root)
    fsync_path(os.path.dirname(folder) or ".")


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
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_path(folder)


def remove_durably(path: str) -> bool:
    """Delete ``path`` and make the deletion durable; False when it was not there."""
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    fsync_path(os.path.dirname(path))
    return True

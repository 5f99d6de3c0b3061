"""The index catalog: a cache of the records already read, so a store of 10^5 entries is listed without opening
10^5 files. The records stay the truth: the catalog is never served over a record.

``STORE/catalog/index.sqlite`` keeps, per record file of ``index/``, what its file was when it was read (size,
mtime, ctime and inode) and what was read from it (the record's JSON, and why it is a stray if it is one). Every
scan still lists ``index/`` with each file's stat: a row is used only for a file whose four values are the same
now; any other file is read and parsed as before, and a file that is gone is gone. A file that changed less than
`SETTLED_S` before it was read is not kept (its timestamps could not yet tell a second write from the first, as
git's "racily clean" files), so a record rewritten in place, even to the same size, is always read again.

The catalog is only a cache, never needed: one that cannot be opened, read or written (a read-only store, a
locked or damaged database, a crash mid-update) is ignored or rebuilt, and the scan is what the records say.
SQLite commits each update whole (a crash mid-update leaves the previous catalog), and readers only ever
*remove* what they cannot trust. Object stores have no catalog (`Store.local` only).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote

from nuclei.store.index import IndexScan, in_flight, parse_record, stray_reason
from nuclei.store.record import EntryRecord

log = logging.getLogger(__name__)

ENABLED = True  # False: every scan reads every record file (the benchmark's "before", `benchmarks/store_scale`)
FOLDER, FILE = "catalog", "index.sqlite"  # STORE/catalog/index.sqlite (and SQLite's journal beside it)
FORMAT = "1"  # the catalog's schema: another one is dropped and rebuilt
SETTLED_S = 3.0  # a record file changed this recently when read is not cached (coarse file system clocks)
BUSY_S = 1.0  # another process updating the catalog: wait this long, then scan without updating it
PAGE = 2_000  # record files read (and catalog rows fetched, kept, committed) at a time

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (name TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL, ino INTEGER NOT NULL, stray TEXT, record BLOB NOT NULL);
"""


class Stamp(NamedTuple):
    """What a file was when it was read: any write, rename over it or touch changes one of these."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int

    @classmethod
    def of(cls, stat: os.stat_result) -> Stamp:
        return cls(stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


def path_of(store_root: str) -> Path:
    return Path(store_root) / FOLDER / FILE


def scan(store_root: str) -> IndexScan | None:
    """`Store.scan` for a local store: the same result, from the catalog where a record file is unchanged since
    it was read. None when the catalog is switched off (`ENABLED`)."""
    if not ENABLED:
        return None
    found: dict[str, EntryRecord] = {}
    damaged: list[str] = []
    strays: dict[str, str] = {}
    with _collector_paused():  # 10^5 records kept alive: each collection would walk them all (half the time)
        for page in _pages(store_root):
            found.update(page.records)
            damaged += page.damaged
            strays.update(page.strays)
    return IndexScan(dict(sorted(found.items())), sorted(damaged), dict(sorted(strays.items())))


def records(store_root: str) -> Iterator[EntryRecord] | None:
    """`scan`'s records, in id order, read a page at a time: a listing of 10^6 entries holds `PAGE` records at
    once, not all of them. None when the catalog is switched off."""
    if not ENABLED:
        return None
    return (record for page in _pages(store_root) for record in page.records.values())


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while the records are read (records hold no cycles; what a scan drops is
    freed by reference counting as ever)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _pages(store_root: str) -> Iterator[IndexScan]:
    """The index read `PAGE` record files at a time, in id order: each page's records (from the catalog where
    the file is unchanged), damaged files and strays; the catalog updated page by page, and rid of the rows of
    files that are gone at the end."""
    index = f"{store_root}/index"
    started_ns = time.time_ns()
    listed = _listing(index)
    if listed is None:
        return
    files, strays = listed
    yield IndexScan(strays=strays)
    names = sorted(files, key=_id_order)
    db = _open(path_of(store_root))
    try:
        known = 0  # catalog rows of files listed now, kept or written: fewer than its rows means some are gone
        for start in range(0, len(names), PAGE):
            db, page, kept = _page(db, store_root, names[start : start + PAGE], files, started_ns)
            known += kept
            yield page
        if db is not None:
            _forget_gone(db, files, known)
    finally:
        if db is not None:
            db.close()


def _id_order(name: str) -> str:
    """The id a record file's name stands for (index/KEY.json): pages go in the order of `scan`'s records."""
    return unquote(name[: -len(".json")])


def _listing(index: str) -> tuple[dict[str, Stamp], dict[str, str]] | None:
    """index/'s record files with their stamps, and its strays (what `Store.scan` calls them); None: no index."""
    files: dict[str, Stamp] = {}
    strays: dict[str, str] = {}
    try:
        entries = os.scandir(index)
    except FileNotFoundError:
        return None
    with entries:
        for entry in entries:
            try:
                is_file, stat = entry.is_file(), entry.stat()
            except FileNotFoundError:  # removed while listed
                continue
            if is_file and entry.name.endswith(".json"):
                files[entry.name] = Stamp.of(stat)
            elif not in_flight(entry.name):
                strays[f"{index}/{entry.name}"] = "not a record (records are index/ID.json)"
    return files, strays


def _page(db: sqlite3.Connection | None, store_root: str, names: list[str], files: dict[str, Stamp],
          started_ns: int) -> tuple[sqlite3.Connection | None, IndexScan, int]:
    """One page of record files: served from their catalog rows where a file is as it was when read, else read
    (and its row kept once settled, `SETTLED_S`). Returns the catalog (made again if it was damaged), the page
    and how many of the catalog's rows are now of files listed."""
    index = f"{store_root}/index"
    rows, db = _rows(db, path_of(store_root), names)
    found: dict[str, EntryRecord] = {}
    damaged: list[str] = []
    strays: dict[str, str] = {}
    fresh: dict[str, tuple[Stamp, str | None, bytes]] = {}  # rows to keep: read now, settled
    served: set[str] = set()
    for name in names:
        path = f"{index}/{name}"
        row = rows.get(name)
        cached = parse_record(row[2], f"index catalog row {name}") if row and row[0] == files[name] else None
        if row is not None and cached is not None:  # a damaged row (None): its file is read, the row replaced
            record, reason = cached, row[1]
            served.add(name)
        else:
            if (read := _read(path)) is None:  # removed since the listing: gone
                continue
            blob, stamp = read
            if (parsed := parse_record(blob, path)) is None:
                damaged.append(path)
                continue
            record, reason = parsed, stray_reason(parsed, name)
            if max(stamp.mtime_ns, stamp.ctime_ns) < started_ns - SETTLED_S * 1e9:
                fresh[name] = (stamp, reason, blob)
        if reason:
            log.warning("stray index file %s: %s", path, reason)
            strays[path] = reason
        else:
            found[record.id] = record
    if db is not None:
        _update(db, rows.keys() - served - fresh.keys(), fresh)
    return db, IndexScan(found, damaged, strays), len(served) + len(fresh)


def _read(path: str) -> tuple[bytes, Stamp] | None:
    """A record file's bytes and what the file was when read (not when listed); None when it is gone."""
    try:
        with open(path, "rb") as handle:
            return handle.read(), Stamp.of(os.fstat(handle.fileno()))
    except FileNotFoundError:
        return None


def _rows(db: sqlite3.Connection | None, path: Path, names: list[str]
          ) -> tuple[dict[str, tuple[Stamp, str | None, bytes]], sqlite3.Connection | None]:
    """The catalog's rows of ``names`` (stamp, stray reason, record JSON), and the catalog: made again when it
    is damaged (no row served then); a catalog another process is committing to serves nothing this time."""
    if db is None:
        return {}, None
    marks = ",".join("?" * len(names))
    try:
        found = db.execute(f"SELECT name, size, mtime_ns, ctime_ns, ino, stray, record FROM records "  # noqa: S608
                           f"WHERE name IN ({marks})", names).fetchall()
    except sqlite3.OperationalError as exc:  # locked by a writer for longer than BUSY_S: read the files
        log.debug("index catalog busy (%s): reading the records", exc)
        return {}, db
    except sqlite3.DatabaseError as exc:  # not a database, malformed: read the files, make it again
        log.warning("index catalog unreadable (%s): rebuilding it from the records", exc)
        return {}, _rebuild(db, path)
    return {name: (Stamp(size, mtime, ctime, ino), reason, blob)
            for name, size, mtime, ctime, ino, reason, blob in found}, db


def _forget_gone(db: sqlite3.Connection, files: dict[str, Stamp], known: int) -> None:
    """Drop the rows of record files that are no longer listed (only looked for when the catalog holds more rows
    than the scan kept or wrote)."""
    try:
        (held,) = db.execute("SELECT COUNT(*) FROM records").fetchone()
        if held <= known:
            return
        gone = [(name,) for (name,) in db.execute("SELECT name FROM records") if name not in files]
        with db:
            db.executemany("DELETE FROM records WHERE name = ?", gone)
    except sqlite3.Error as exc:
        log.debug("index catalog not updated: %s", exc)


def _update(db: sqlite3.Connection, stale: set[str], fresh: dict[str, tuple[Stamp, str | None, bytes]]) -> None:
    """One transaction: drop the rows of files that are gone or changed, keep those read now. Skipped (the scan's
    result stands) when another process holds the catalog or it cannot be written."""
    if not stale and not fresh:
        return
    try:
        with db:
            db.executemany("DELETE FROM records WHERE name = ?", [(name,) for name in stale])
            db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(name, *stamp, reason, blob) for name, (stamp, reason, blob) in fresh.items()])
    except sqlite3.Error as exc:
        log.debug("index catalog not updated: %s", exc)


def _open(path: Path) -> sqlite3.Connection | None:
    """The catalog, created if absent (one unreadable is made again); None when it cannot be had (a read-only
    store, a database locked for longer than `BUSY_S`)."""
    try:
        return _connect(path)
    except sqlite3.OperationalError as exc:
        log.debug("no index catalog: %s", exc)
    except sqlite3.DatabaseError as exc:  # not a database, damaged: it is only a cache
        log.warning("index catalog %s unreadable (%s): rebuilding it from the records", path, exc)
        return _rebuild(None, path)
    except OSError as exc:
        log.debug("no index catalog: %s", exc)
    return None


def _rebuild(db: sqlite3.Connection | None, path: Path) -> sqlite3.Connection | None:
    """A new, empty catalog in place of a damaged one (None if it cannot be made)."""
    if db is not None:
        db.close()
    try:
        _remove(path)
        return _connect(path)
    except (OSError, sqlite3.Error) as exc:
        log.debug("index catalog not rebuilt: %s", exc)
        return None


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(exist_ok=True)
    db = sqlite3.connect(path, timeout=BUSY_S, isolation_level="DEFERRED")
    try:
        db.executescript(_SCHEMA)
        found = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if found.get("format") != FORMAT:  # new, or another schema: its rows are not read
            with db:
                db.execute("DELETE FROM records")
                db.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (FORMAT,))
    except BaseException:
        db.close()
        raise
    return db


def _remove(path: Path) -> None:
    for stale in (path, path.with_name(path.name + "-journal"), path.with_name(path.name + "-wal")):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()

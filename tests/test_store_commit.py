"""The commit protocol on its own (no model, no run): durable order, one writer per entry, check and repair
never racing a writer, the writer's commit-token check, and stores that are refused. Real files on disk, fast."""

from __future__ import annotations

import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from skimage.segmentation import relabel_sequential

from nuclei.cli.main import main
from nuclei.core.measure import measure
from nuclei.errors import StoreError
from nuclei.io.synthetic import make_sample
from nuclei.store.backend import Store
from nuclei.store.check import check
from tests.conftest import Flushes


def _record(image: np.ndarray, labels: np.ndarray, table: np.ndarray) -> dict[str, Any]:
    n = int(table.shape[0])
    return {"source": "/data/x.png", "source_sha256": "0" * 64, "shape": list(labels.shape), "n_nuclei": n,
            "covered_fraction": float(np.count_nonzero(labels)) / labels.size, "mean_area": 1.0,
            "model": {"version": "m@1"}, "thresholds": {}}


def _write(store: Store, image_id: str, seed: int = 1, **kw: Any) -> Any:
    image, labels = make_sample((48, 48), n_nuclei=4, seed=seed)
    labels = relabel_sequential(labels)[0]  # as the worker writes them (a covered nucleus leaves no gap)
    table = measure(labels, image)
    return store.write_entry(image_id, image, labels, table, _record(image, labels, table), **kw)


def test_arrays_and_folders_are_durable_before_the_record(tmp_path: Path, flushes: Flushes) -> None:
    """After a power cut a record must never point at arrays that were still in the page cache: every file and
    folder of the entry is flushed (fsynced each, or by one syncfs) before the record's rename, the record's
    own bytes before it too, and the rename after."""
    store = Store(tmp_path / "s.zarr", "a")
    _write(store, "a")
    entry, index = tmp_path / "s.zarr" / "images" / "a", tmp_path / "s.zarr" / "index"
    [(renamed_at, source)] = flushes.renamed(lambda target: target == str(index / "a.json"))
    before = flushes.durable(stop=renamed_at)
    assert {str(p) for p in entry.rglob("*")} <= before  # every array file and folder of the entry ...
    assert str(entry) in before and str(entry.parent) in before  # ... its folder, and the name in images/
    assert source in before  # the record's temp file, whole before it is renamed into place
    assert str(index) in flushes.durable(start=renamed_at)  # the rename of the record, made durable last
    assert flushes.kinds() == {flushes.mode}


def test_check_tells_being_written_from_damaged_and_repair_never_races_a_writer(tmp_path: Path) -> None:
    """Issue 28 case 1: `check --repair` during a rewrite of the same entries hid entries the run had just
    written. A writer rewrites entries in a loop (as `segment --overwrite` does) while check --repair runs
    again and again: no entry is ever lost and nothing is called damaged."""
    path = tmp_path / "s.zarr"
    store = Store(path, "a")
    ids = [f"img{i}" for i in range(6)]
    for i, image_id in enumerate(ids):
        _write(store, image_id, seed=i)
    stop = threading.Event()

    def rewrite() -> None:
        writer = Store(path, "a")
        seed = 100
        while not stop.is_set():
            for image_id in ids:
                seed += 1
                with writer.writing(image_id):
                    _write(writer, image_id, seed=seed)

    thread = threading.Thread(target=rewrite)
    thread.start()
    try:
        deadline, rounds, being_written = time.monotonic() + 4, 0, 0
        while time.monotonic() < deadline:
            report = check(path, repair=True)
            assert not report.damaged and not report.unreadable_records, report
            being_written += len(report.being_written)
            rounds += 1
    finally:
        stop.set()
        thread.join()
    assert rounds > 3
    assert sorted(Store(path).ids()) == ids and check(path).ok


def test_an_entry_locked_by_a_writer_is_reported_as_being_written(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    store = Store(path, "a")
    _write(store, "a")
    chunk = next(p for p in (path / "images" / "a" / "labels" / "nuclei" / "s0").rglob("*") if p.is_file()
                 and p.name != "zarr.json")
    chunk.unlink()  # looks damaged: exactly what a rewrite in progress looks like
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with Store(path, "a").writing("a"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    try:
        report = check(path, repair=True)
        assert report.being_written == ["a"] and not report.damaged
        assert Store(path).ids() == ["a"]  # repair left it alone
    finally:
        release.set()
        thread.join()
    report = check(path)
    assert list(report.damaged) == ["a"] and not report.being_written  # no writer now: damaged it is


def test_a_writer_compares_the_commit_token_it_planned_on_under_the_lock(tmp_path: Path) -> None:
    """Issue 28 case 5, the writer's check: every write gets its own commit token (the same content written
    again too); a writer holding the token its plan saw tells another run's commit with other settings or from
    another file from the entry it planned for, and refuses to replace it (the end-to-end runs:
    `test_hostile_round3.py::test_of_two_runs_with_other_settings_at_once_the_later_writer_fails_those_images`)."""
    from nuclei.inference.worker import _written_meanwhile
    from nuclei.io.discovery import ImageItem
    from nuclei.store.record import commit_token

    store = Store(tmp_path / "s.zarr", "a")
    item = ImageItem("a", "/data/x.png", 1, 1.0)
    planned = commit_token(store.record("a"))  # the plan saw no entry
    first = _write(store, "a")
    again = _write(store, "a")  # the very same content, written once more
    assert planned == "" and first.commit and again.commit != first.commit
    with store.writing("a"):
        assert _written_meanwhile(store.record("a"), commit_token(again), item, "") == ""  # as planned
        assert _written_meanwhile(store.record("a"), planned, item, "") == ""  # same file and settings: newer
        assert "other settings" in _written_meanwhile(store.record("a"), planned, item, "key of this run")
        moved = ImageItem("a", "/elsewhere/x.png", 1, 1.0)
        assert "from another file" in _written_meanwhile(store.record("a"), planned, moved, "")
        assert _written_meanwhile(store.record("a"), None, item, "key of this run") == ""  # no plan: no check


def test_an_entry_is_current_for_its_source_settings_and_content_only(tmp_path: Path) -> None:
    """`is_current`, the one freshness rule of the plan, the worker and the slide driver: a digest not taken
    yet is asked for only when the file's size and mtime match the record's."""
    from nuclei.io.discovery import ImageItem
    from nuclei.store.record import is_current

    store = Store(tmp_path / "s.zarr", "a")
    record = _write(store, "a").model_copy(update={"output_key": "k", "source_size": 10, "source_mtime": 5.0})
    item = ImageItem("a", "/data/x.png", 10, 5.0)
    asked: list[str] = []

    def digest(value: str = "0" * 64) -> str:
        asked.append(value)
        return value

    assert is_current(record, item, "k", "0" * 64) and is_current(record, item, "k", digest)
    assert not is_current(record, item, "other key", "0" * 64) and not is_current(None, item, "k", "0" * 64)
    assert not is_current(record, ImageItem("a", "/elsewhere/x.png", 10, 5.0), "k", "0" * 64)
    assert not is_current(record, item, "k", "1" * 64) and not is_current(record, item, "k", lambda: digest("1"))
    asked.clear()
    for touched in (ImageItem("a", "/data/x.png", 11, 5.0), ImageItem("a", "/data/x.png", 10, 6.0),
                    ImageItem("a", "/data/x.png", 10, None)):
        assert not is_current(record, touched, "k", digest)
    assert asked == []  # size or mtime differ: new work at once, nothing hashed
    assert is_current(record, ImageItem("a", "/data/x.png", 11, 6.0), "k", "0" * 64)  # the content decides


def test_only_a_nuclei_store_or_an_empty_folder_is_written(tmp_path: Path) -> None:
    """Issue 28 case 13: a Zarr v2 store given as --store was taken over (a v3 zarr.json written at its root)."""
    v2 = tmp_path / "v2.zarr"
    v2.mkdir()
    (v2 / ".zgroup").write_text('{"zarr_format": 2}')
    with pytest.raises(StoreError, match="Zarr v2 store"):
        Store(v2, "a")
    assert sorted(p.name for p in v2.iterdir()) == [".zgroup"]  # untouched
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a nuclei store"):
        Store(data, "a")
    empty = tmp_path / "empty"
    empty.mkdir()
    Store(empty, "a")  # an empty folder becomes a store
    assert (empty / "zarr.json").is_file()


def test_segment_refuses_a_zarr_v2_store_with_one_line(tmp_path: Path, shipped_model: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from nuclei.io.images import write_png

    v2 = tmp_path / "v2.zarr"
    v2.mkdir()
    (v2 / ".zgroup").write_text('{"zarr_format": 2}')
    write_png(tmp_path / "in" / "a.png", make_sample((64, 64), seed=1)[0])
    argv = ["segment", str(tmp_path / "in"), "--store", str(v2), "--model", str(shipped_model)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Zarr v2 store" in err
    assert sorted(p.name for p in v2.iterdir()) == [".zgroup"]


def test_processes_creating_one_new_store_at_once_all_open_it(tmp_path: Path) -> None:
    """The root is written as files, its zarr.json last and atomically, and a folder holding only a store's own
    names is not foreign: no creator sees half a root (before: 32 of 160 opens failed, 4 processes x 40)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    with context.Pool(4) as pool:
        for i in range(5):
            path = str(tmp_path / f"s{i}.zarr")
            start = time.time() + 0.05
            assert pool.starmap(_open_at, [(path, start)] * 4) == ["ok"] * 4


def _open_at(path: str, start: float) -> str:
    while time.time() < start:
        pass
    try:
        Store(path, "a")
    except Exception as exc:  # noqa: BLE001 - the test wants the reason, not a traceback from a pool worker
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def test_a_zipped_store_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 28 case 13: `zip://::s0.zip` gave "no images", 0 entries checked, exit 0."""
    store = tmp_path / "s0.zarr"
    _write(Store(store, "a"), "a")
    archive = tmp_path / "s0.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in store.rglob("*"):
            handle.write(path, path.relative_to(tmp_path))
    url = f"zip://::{archive}"
    for argv in (["check", url], ["query", url, "list"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "zipped store" in err and "unzip" in err


def test_reading_entries_reads_each_record_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 29: every array read re-read the entry's record. `check` and the export now read the index once
    (`scan`) and each entry's arrays against that record."""
    from nuclei.store.tables import nucleus_rows

    path = tmp_path / "s.zarr"
    store = Store(path, "a")
    for i in range(3):
        _write(store, f"img{i}", seed=i)
    calls: list[str] = []
    real = Store.record

    def counted(self: Store, image_id: str) -> Any:
        calls.append(image_id)
        return real(self, image_id)

    monkeypatch.setattr(Store, "record", counted)
    assert check(path).ok and calls == []  # whole entries: no record read again
    assert len(list(nucleus_rows(Store(path)))) > 0 and calls == []
    entry = Store(path).open_entry("img0")
    entry.labels(), entry.mask(), entry.image(), entry.measurements()
    assert calls == ["img0"]  # opened once, four arrays read


def test_durability_falls_back_to_an_fsync_of_each_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One syncfs where the file system is known to honour it; an fsync of each path when asked
    (NUCLEI_SYNC=fsync), on a file system not known to (FUSE, NFS), and for the rest of a process whose syncfs
    calls turned slow; a failed syncfs raises."""
    import ctypes

    import nuclei.store.durable as durable

    paths = [str(tmp_path / name) for name in ("a", "b")]
    for path in paths:
        Path(path).write_bytes(b"x")
    calls: list[str] = []
    monkeypatch.setattr(durable, "fsync_path", lambda path: calls.append(f"fsync {Path(path).name}"))
    real_syncfs = durable.sync_filesystem
    monkeypatch.setattr(durable, "sync_filesystem", lambda path: calls.append("syncfs"))
    monkeypatch.setattr(durable, "_slow", 0)
    if not durable.syncfs_serves(paths[0], paths[-1]):
        pytest.skip("syncfs does not serve this file system here")

    def flushed() -> list[str]:
        calls.clear()
        durable.make_durable(paths)
        return list(calls)

    assert flushed() == ["syncfs"]
    monkeypatch.setenv(durable.SYNC_ENV, "fsync")
    assert flushed() == ["fsync a", "fsync b"]
    monkeypatch.delenv(durable.SYNC_ENV)
    monkeypatch.setattr(durable, "_usable", {})
    monkeypatch.setattr(durable, "_filesystem_type", lambda path: 0x65735546)  # FUSE
    assert flushed() == ["fsync a", "fsync b"]
    monkeypatch.setattr(durable, "_usable", {})
    monkeypatch.undo()  # the real syncfs, timed as too slow three times
    monkeypatch.setattr(durable, "_slow", 0)
    monkeypatch.setattr(durable, "SLOW_SYNCFS_S", -1.0)
    for _ in range(durable.SLOW_SYNCFS_LIMIT):
        real_syncfs(paths[0])
    assert not durable.syncfs_serves(paths[0], paths[-1])

    class Failing:
        @staticmethod
        def syncfs(fd: int) -> int:
            ctypes.set_errno(5)
            return -1

    monkeypatch.setattr(durable, "_libc", lambda: Failing)
    with pytest.raises(OSError, match="syncfs: Input/output error"):
        real_syncfs(paths[0])

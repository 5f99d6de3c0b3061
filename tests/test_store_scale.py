"""The index catalog (`nuclei.store.catalog`) against the records it caches: after writes, a rewrite by another
process, a deletion, a stray file in index/ and a crash mid-update, a scan says what the records say, and the
same as a scan that reads every record. Real stores on disk, fast."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from skimage.segmentation import relabel_sequential

from nuclei.cli.main import main
from nuclei.core.measure import measure
from nuclei.io.synthetic import make_sample
from nuclei.store import catalog
from nuclei.store.backend import Store
from nuclei.store.index import IndexScan
from nuclei.store.query import open_store

SETTLED_S = 0.05  # the tests' settling time (3 s as shipped): files older than this are cached


@pytest.fixture(autouse=True)
def _settle_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog, "SETTLED_S", SETTLED_S)


def _write(store: Store, image_id: str, seed: int = 1, n: int = 4) -> Any:
    image, labels = make_sample((48, 48), n_nuclei=n, seed=seed)
    labels = relabel_sequential(labels)[0]
    table = measure(labels, image)
    record = {"source": f"/data/{image_id}.png", "source_sha256": "0" * 64, "shape": list(labels.shape),
              "n_nuclei": int(table.shape[0]), "covered_fraction": float(np.count_nonzero(labels)) / labels.size,
              "mean_area": 1.0, "model": {"version": "m@1"}, "thresholds": {}}
    return store.write_entry(image_id, image, labels, table, record)


def _settle() -> None:
    time.sleep(SETTLED_S * 3)


def _uncached(path: Path, monkeypatch: pytest.MonkeyPatch) -> IndexScan:
    with monkeypatch.context() as patched:
        patched.setattr(catalog, "ENABLED", False)
        return Store(path, "r").scan()


def _reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The record files the catalog opens from now on (rows it serves open none)."""
    opened: list[str] = []
    real = open

    def spy(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(Path(file).name)
        return real(file, *args, **kwargs)

    monkeypatch.setattr(catalog, "open", spy, raising=False)
    return opened


def _rows(path: Path) -> dict[str, int]:
    with sqlite3.connect(catalog.path_of(str(path))) as db:
        return {name: json.loads(blob)["n_nuclei"] for name, blob in db.execute("SELECT name, record FROM records")}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "s.zarr"
    writer = Store(path, "a")
    for i, image_id in enumerate(["a", "b", "plate1/c"]):
        _write(writer, image_id, seed=i + 1)
    _settle()
    return path


def test_after_writes_the_catalog_serves_what_the_records_say(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = Store(store, "r").scan()  # reads the records, keeps them
    assert first == _uncached(store, monkeypatch) and sorted(first.records) == ["a", "b", "plate1/c"]
    assert set(_rows(store)) == {"a.json", "b.json", "plate1%2Fc.json"}
    opened = _reads(monkeypatch)
    assert Store(store, "r").scan() == first and opened == []  # from the catalog: no record file opened
    writer = Store(store, "a")
    _write(writer, "d", seed=7)  # a new entry: read from its file, the others from the catalog
    found = Store(store, "r").scan()
    assert found == _uncached(store, monkeypatch) and "d" in found.records and opened == ["d.json"]


def test_a_just_written_record_is_not_cached_until_it_settles(tmp_path: Path) -> None:
    """A file changed within SETTLED_S of its reading could be rewritten again in the same clock tick with the
    same size: it is read every time until it is older."""
    path = tmp_path / "s.zarr"
    _write(Store(path, "a"), "a")
    assert "a" in Store(path, "r").scan().records and _rows(path) == {}
    _settle()
    Store(path, "r").scan()
    assert set(_rows(path)) == {"a.json"}


REWRITE = """
import os, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_store_scale import _write
from nuclei.store.backend import Store
path = Path({path!r})
_write(Store(path, "a"), "a", seed=5, n=9)  # another entry under the same id: record replaced by rename
record = path / "index" / "b.json"
stat = record.stat()
text = record.read_text().replace('"mean_area": 1.0', '"mean_area": 2.0')  # same size, in place
with open(record, "r+") as handle:
    handle.write(text)
os.utime(record, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and its mtime put back
"""


def test_a_record_rewritten_by_another_process_is_read_again(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = Store(store, "r").scan()
    assert before.records["b"].mean_area == 1.0
    script = REWRITE.format(tests=str(Path(__file__).parent), path=str(store))
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    after = Store(store, "r").scan()
    assert after == _uncached(store, monkeypatch)
    assert after.records["a"].commit != before.records["a"].commit and after.records["a"].n_nuclei != \
        before.records["a"].n_nuclei
    assert after.records["b"].mean_area == 2.0  # same size and mtime, but another write (its ctime)
    _settle()
    Store(store, "r").scan()
    assert _rows(store)["a.json"] == after.records["a"].n_nuclei  # the row replaced by what the file says


def test_a_deleted_record_is_gone_and_so_is_its_row(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Store(store, "r").scan()
    Store(store, "a").hide("b")
    found = Store(store, "r").scan()
    assert "b" not in found.records and found == _uncached(store, monkeypatch)
    assert "b" not in [i.id for i in open_store(store).images()] and open_store(store).stats()["n_images"] == 2
    assert "b.json" not in _rows(store)


def test_stray_and_conflict_files_are_never_served(store: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    index = store / "index"
    Store(store, "r").scan()
    conflict = index / "a.sync-conflict-20260101-120000.json"  # an older record of a, 99 nuclei
    conflict.write_text((index / "a.json").read_text().replace('"n_nuclei": ', '"n_nuclei": 99, "x": '))
    (index / "notes.txt").write_text("not a record")
    (index / "broken.json").write_text("{")
    _settle()
    for _ in range(2):  # read from the files, then from the catalog: the same verdicts
        found = Store(store, "r").scan()
        assert found == _uncached(store, monkeypatch)
        assert sorted(found.records) == ["a", "b", "plate1/c"] and found.records["a"].n_nuclei != 99
        assert set(found.strays) == {str(conflict), str(index / "notes.txt")}
        assert found.damaged == [str(index / "broken.json")]
    assert _rows(store)[conflict.name] == 99  # kept with its verdict: a stray, never served
    assert main(["query", str(store), "stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 3
    assert main(["check", str(store)]) == 1  # names the stray and the broken record
    out = capsys.readouterr().out
    assert conflict.name in out and "broken.json" in out and "notes.txt" in out
    assert main(["check", str(store), "--repair"]) == 0
    capsys.readouterr()
    assert Store(store, "r").scan() == _uncached(store, monkeypatch) and not Store(store, "r").scan().strays


CRASH = """
import os, sqlite3, sys
db = sqlite3.connect({catalog!r}, isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("UPDATE records SET record = replace(record, '\\"n_nuclei\\": ', '\\"n_nuclei\\": 9')")
db.execute("DELETE FROM meta")
os._exit(9)  # killed mid-update: the transaction never commits, SQLite's journal is left behind
"""


def test_a_crash_mid_update_leaves_a_catalog_that_serves_only_the_records(
        store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    truth = Store(store, "r").scan()
    path = catalog.path_of(str(store))
    crashed = subprocess.run([sys.executable, "-c", CRASH.format(catalog=str(path))], timeout=60)
    assert crashed.returncode == 9 and path.with_name(path.name + "-journal").exists()
    assert Store(store, "r").scan() == truth == _uncached(store, monkeypatch)


def test_a_stale_or_damaged_catalog_is_rebuilt_never_trusted(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Store(store, "r").scan()
    path = catalog.path_of(str(store))
    old = path.with_name("old.sqlite")
    shutil.copy(path, old)
    writer = Store(store, "a")
    rewritten = [_write(writer, image_id, seed=9 + i, n=7) for i, image_id in enumerate(["a", "b", "plate1/c"])]
    _settle()
    shutil.copy(old, path)  # a catalog from before the rewrites (restored from a backup, a crash's leftover)
    found = Store(store, "r").scan()
    assert found == _uncached(store, monkeypatch)
    assert [r.commit for r in found.records.values()] == [written.commit for written in rewritten]
    assert _rows(store) == {f"{r.key}.json": r.n_nuclei for r in rewritten}  # the old rows replaced
    for damage in (b"", b"not a database at all" * 100, path.read_bytes()[:3000]):
        path.write_bytes(damage)
        assert Store(store, "r").scan() == found  # unreadable: read from the records, made again
        assert Store(store, "r").scan() == found and len(_rows(store)) == 3


def test_a_store_that_cannot_hold_a_catalog_is_read_from_its_records(store: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    truth = _uncached(store, monkeypatch)
    assert not (store / "catalog").exists()
    (store / "catalog").write_text("a file where the catalog's folder goes")
    assert Store(store, "r").scan() == truth
    if os.geteuid() != 0:  # root writes anywhere
        (store / "catalog").unlink()
        store.chmod(0o555)
        try:
            assert Store(store, "r").scan() == truth
        finally:
            store.chmod(0o755)


def test_records_read_share_their_repeated_parts_and_stay_what_the_files_say(store: Path) -> None:
    """A store's records repeat the model, thresholds, normalisation and field names: a scan keeps one object of
    each (a record took 5.5 KB held apart, 1.8 KB shared), and each record is still exactly its file's."""
    from nuclei.store.record import EntryRecord

    records = Store(store, "r").scan().records
    a, b = records["a"], records["b"]
    assert a.model is b.model and a.thresholds is b.thresholds and a.model_fields_set is b.model_fields_set
    for image_id, record in records.items():
        key = image_id.replace("/", "%2F")
        plain = EntryRecord.model_validate_json((store / "index" / f"{key}.json").read_bytes())
        assert record == plain and record.model_fields_set == plain.model_fields_set
    # a copy (what a writer updates) gets a field set of its own, so updating one never touches the shared one
    assert a.model_copy(update={"n_nuclei": 9}).model_fields_set is not a.model_fields_set


def test_shared_record_parts_keep_their_json_types() -> None:
    """1, 1.0 and True are equal in Python: sharing must never give one record another record's spelling of a
    value, so each record dumps to exactly its own JSON."""
    from nuclei.store.index import parse_record

    base = {"source": "/d/a.png", "source_sha256": "0" * 64, "shape": [4, 4], "n_nuclei": 0,
            "covered_fraction": 0.0, "mean_area": 0.0, "model": {"version": "m@1"}, "thresholds": {}}
    spellings = [{"cell": 32, "flag": True}, {"cell": 32.0, "flag": 1}, {"cell": 32, "flag": 1.0}]
    for n, norm in enumerate(spellings):
        record = parse_record(json.dumps({**base, "id": f"i{n}", "normalization": norm}).encode(), f"i{n}")
        assert record is not None
        assert json.dumps(record.normalization) == json.dumps(norm)


@pytest.mark.parametrize("cataloged", [True, False], ids=["catalog", "files"])
def test_records_stream_a_page_at_a_time_in_the_scans_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            cataloged: bool) -> None:
    """`iter_records` (what `query list/stats` and the tables read) gives the scan's records in the scan's order,
    strays and damaged files left out, from files or catalog rows, parsing a page before its first record: a
    store of 10^6 entries is listed without holding 10^6 records. Ids whose file names sort otherwise ('a-b'
    before 'a/b', but 'a%2Fb.json' before 'a-b.json') come in id order across pages."""
    from nuclei.store import backend

    monkeypatch.setattr(catalog, "PAGE", 2)
    monkeypatch.setattr(backend, "INDEX_PAGE", 2)
    monkeypatch.setattr(catalog, "ENABLED", cataloged)
    path = tmp_path / "s.zarr"
    writer = Store(path, "a")
    ids = ["b", "a/b", "a-b", "a b", "A", "plate1/c", "z%41"]
    for n, image_id in enumerate(ids):
        _write(writer, image_id, seed=n + 1, n=1 + n % 4)
    index = path / "index"
    (index / "b.sync-conflict-20260101-120000.json").write_text((index / "b.json").read_text())
    (index / "broken.json").write_text("{")
    _settle()
    parsed: list[str] = []
    for module in (catalog, backend):
        real = module.parse_record

        def counted(blob: bytes, where: str, real: Any = real) -> Any:
            parsed.append(where)
            return real(blob, where)

        monkeypatch.setattr(module, "parse_record", counted)
    for _ in range(2):  # from the record files, then (with the catalog) from its rows
        parsed.clear()
        stream = Store(path, "r").iter_records()
        first = next(stream)
        assert first.id == "A" and len(parsed) <= 2  # one page parsed, not the store
        streamed = [first, *stream]
        assert [r.id for r in streamed] == sorted(ids)
        assert streamed == list(Store(path, "r").scan().records.values()) == list(
            _uncached(path, monkeypatch).records.values())
    stats = open_store(path).stats()
    assert stats["n_images"] == len(ids) and stats["n_nuclei"] == sum(1 + n % 4 for n in range(len(ids)))
    Store(path, "a").hide("a-b")  # gone: out of the stream, and (past the last page) out of the catalog
    assert [r.id for r in Store(path, "r").iter_records()] == sorted(set(ids) - {"a-b"})
    assert "a-b.json" not in (_rows(path) if cataloged else {})
    if cataloged:
        assert len(_rows(path)) == len(ids) - 1 + 1  # the records left and the conflict copy's verdict

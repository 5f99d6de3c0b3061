"""Tests for nuclei.store.query and `nuclei query`, on a small real store written with Store.write_entry."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import zarr

import nuclei.cli.main
from nuclei.cli.query import add_query
from nuclei.core.measure import COLUMN_NAMES, measure
from nuclei.errors import StoreError
from nuclei.io.synthetic import make_sample
from nuclei.store.backend import Store
from nuclei.store.index import id_to_key
from nuclei.store.query import ImageInfo, NucleiStore, open_store


@dataclass
class Entry:
    image: np.ndarray
    labels: np.ndarray
    table: np.ndarray
    record: dict[str, Any]


# id -> (shape, nuclei asked for, seed, model version, grey 16-bit image)
SPECS: dict[str, tuple[tuple[int, int], int, int, str, bool]] = {
    "a1": ((64, 80), 6, 1, "v1.0", False),
    "plate1/a b": ((48, 64), 3, 2, "v2.0", False),
    "plate1/c": ((40, 56), 9, 3, "v1.1", True),
}


def _record(image_id: str, labels: np.ndarray, table: np.ndarray, version: str) -> dict[str, Any]:
    n = int(table.shape[0])
    return {
        "source": f"/data/{image_id}.png",
        "source_sha256": "0" * 64,
        "shape": [int(labels.shape[0]), int(labels.shape[1])],
        "n_nuclei": n,
        "covered_fraction": float(np.count_nonzero(labels)) / labels.size,
        "mean_area": float(table[:, 1].mean()) if n else 0.0,
        "model": {"version": version, "path": f"/models/{version}", "onnx_sha256": "1" * 64},
        "thresholds": {"foreground": 0.5, "core": 0.5, "min_size": 8},
        "providers": ["CPUExecutionProvider"],
        "written": "2024-01-01T00:00:00+00:00",
        "status": "complete",
    }


def _write(store: Store, image_id: str, shape: tuple[int, int], n: int, seed: int, version: str,
           grey: bool = False) -> Entry:
    image, labels = make_sample(shape, n_nuclei=n, seed=seed, radius=(3.0, 6.0))
    if grey:
        image = image[..., 1].astype(np.uint16) * 200
    table = measure(labels, image)
    record = _record(image_id, labels, table, version)
    store.write_entry(image_id, image, labels, table, record)
    return Entry(image, labels, table, record)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Entry]]:
    """A store with three complete entries and one half-written ('ghost', no index record)."""
    path = tmp_path_factory.mktemp("query") / "results.zarr"
    store = Store(path, "a")
    entries = {image_id: _write(store, image_id, *spec) for image_id, spec in SPECS.items()}
    _write(store, "ghost", (32, 32), 2, 9, "v9")
    (path / "index" / f"{id_to_key('ghost')}.json").unlink()
    return path, entries


@pytest.fixture()
def store(built: tuple[Path, dict[str, Entry]]) -> NucleiStore:
    return open_store(built[0])


@pytest.fixture()
def entries(built: tuple[Path, dict[str, Entry]]) -> dict[str, Entry]:
    return built[1]


# --- listing ---------------------------------------------------------------------------------------------


def test_images_lists_complete_entries_sorted(store: NucleiStore, entries: dict[str, Entry]) -> None:
    infos = store.images()
    assert [i.id for i in infos] == sorted(SPECS)
    first = infos[0]
    assert isinstance(first, ImageInfo)
    entry = entries["a1"]
    assert first == ImageInfo("a1", "/data/a1.png", (64, 80), entry.record["n_nuclei"], "v1.0", "complete",
                              "2024-01-01T00:00:00+00:00")
    assert len(store) == 3
    assert store.ids() == sorted(SPECS)
    assert "plate1/a b" in store
    assert "nope" not in store and "../evil" not in store and 3 not in store


def test_images_filters(store: NucleiStore, entries: dict[str, Entry]) -> None:
    counts = {k: e.record["n_nuclei"] for k, e in entries.items()}
    assert [i.id for i in store.images(pattern="plate1/*")] == ["plate1/a b", "plate1/c"]
    assert [i.id for i in store.images(pattern="*b")] == ["plate1/a b"]
    assert [i.id for i in store.images(source="plate1/c")] == ["plate1/c"]
    assert [i.id for i in store.images(source="/data/a*.png")] == ["a1"]
    assert [i.id for i in store.images(model="v1")] == ["a1", "plate1/c"]
    assert [i.id for i in store.images(model="v2.0")] == ["plate1/a b"]
    low = min(counts.values())
    assert {i.id for i in store.images(min_nuclei=low + 1)} == {k for k, n in counts.items() if n > low}
    assert {i.id for i in store.images(max_nuclei=low)} == {k for k, n in counts.items() if n <= low}
    assert store.images(pattern="plate1/*", model="v1.0") == []


def test_summary_rows(store: NucleiStore, entries: dict[str, Entry]) -> None:
    rows = store.summary()
    assert [r["id"] for r in rows] == sorted(SPECS)
    for row in rows:
        entry = entries[row["id"]]
        assert row["n_nuclei"] == entry.table.shape[0]
        assert row["covered_fraction"] == pytest.approx(np.count_nonzero(entry.labels) / entry.labels.size)
        assert row["mean_area"] == pytest.approx(entry.table[:, 1].mean())
        assert (row["height"], row["width"]) == entry.labels.shape
        assert row["model_version"] == SPECS[row["id"]][3]
    assert [r["id"] for r in store.summary(pattern="plate1/*")] == ["plate1/a b", "plate1/c"]


def test_stats(store: NucleiStore, entries: dict[str, Entry]) -> None:
    counts = [e.table.shape[0] for e in entries.values()]
    covered = [np.count_nonzero(e.labels) / e.labels.size for e in entries.values()]
    stats = store.stats()
    assert stats["n_images"] == 3
    assert stats["n_nuclei"] == sum(counts)
    assert stats["mean_nuclei_per_image"] == pytest.approx(np.mean(counts))
    assert stats["median_nuclei_per_image"] == pytest.approx(statistics.median(counts))
    assert stats["mean_covered_fraction"] == pytest.approx(np.mean(covered))
    assert stats["models"] == {"v1.0": 1, "v1.1": 1, "v2.0": 1}


def test_a_damaged_record_hides_only_its_entry(tmp_path: Path) -> None:
    """A record that does not parse (empty, truncated, missing fields) makes that entry invisible and reported,
    never the whole store unreadable."""
    store = Store(tmp_path / "s.zarr", "a")
    for image_id in ("good", "empty", "truncated", "no-id"):
        _write(store, image_id, (32, 32), 2, seed=5, version="v1")
    index = tmp_path / "s.zarr" / "index"
    (index / "empty.json").write_text("")
    (index / "truncated.json").write_text((index / "truncated.json").read_text()[:40])
    record = json.loads((index / "no-id.json").read_text())
    del record["id"]
    (index / "no-id.json").write_text(json.dumps(record))
    query = open_store(tmp_path / "s.zarr")
    assert [i.id for i in query.images()] == ["good"]
    assert "empty" not in query and query.stats()["n_images"] == 1
    assert sorted(Path(p).name for p in store.scan().damaged) == [
        "empty.json", "no-id.json", "truncated.json"]
    with pytest.raises(ValueError, match="source"):
        store.write_entry("bare", np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint16), np.zeros((0, 9)),
                          {"status": "complete"})  # a record without provenance is never written


def test_arrays_equal_what_was_written(store: NucleiStore, entries: dict[str, Entry]) -> None:
    for image_id, entry in entries.items():
        np.testing.assert_array_equal(store.labels(image_id), entry.labels)
        np.testing.assert_array_equal(store.mask(image_id), (entry.labels > 0).astype(np.uint8))
        stored = store.image(image_id)
        np.testing.assert_array_equal(stored.reshape(entry.image.shape), entry.image)
        assert stored.dtype == entry.image.dtype
        assert store.metadata(image_id)["n_nuclei"] == entry.record["n_nuclei"]


def test_measurements_columns(store: NucleiStore, entries: dict[str, Entry]) -> None:
    columns = store.measurements("plate1/a b")
    assert list(columns) == list(COLUMN_NAMES)
    table = entries["plate1/a b"].table
    for i, name in enumerate(COLUMN_NAMES):
        assert columns[name].ndim == 1
        np.testing.assert_array_equal(columns[name], table[:, i])


def test_overlay_is_rgb_uint8(store: NucleiStore) -> None:
    for image_id, (shape, *_rest) in SPECS.items():  # colour and 16-bit grey images
        picture = store.overlay(image_id)
        assert picture.shape == (*shape, 3) and picture.dtype == np.uint8


# --- export ----------------------------------------------------------------------------------------------


def _read_png(path: Path) -> np.ndarray:
    decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert decoded is not None, path
    return decoded


def test_export_labels_masks_overlay(store: NucleiStore, entries: dict[str, Entry], tmp_path: Path) -> None:
    labels = store.export(tmp_path / "labels", "labels")
    assert sorted(labels) == sorted(tmp_path / "labels" / f"{i}.png" for i in SPECS)
    assert (tmp_path / "labels" / "plate1" / "a b.png").is_file()
    assert not (tmp_path / "labels" / "ghost.png").exists()
    masks = store.export(tmp_path / "masks", "masks")
    overlays = store.export(tmp_path / "overlay", "overlay")
    for image_id, entry in entries.items():
        decoded = _read_png(tmp_path / "labels" / f"{image_id}.png")
        assert decoded.dtype == np.uint16
        np.testing.assert_array_equal(decoded, entry.labels)
        mask = _read_png(tmp_path / "masks" / f"{image_id}.png")
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, np.where(entry.labels > 0, 255, 0).astype(np.uint8))
        rgb = _read_png(tmp_path / "overlay" / f"{image_id}.png")
        assert rgb.shape == (*entry.image.shape[:2], 3)
        np.testing.assert_array_equal(rgb[..., ::-1], store.overlay(image_id))
    assert len(masks) == len(overlays) == 3


def test_export_rejects_labels_above_uint16(tmp_path: Path) -> None:
    store = Store(tmp_path / "big.zarr", "a")
    labels = np.zeros((16, 16), np.uint32)
    labels[4:8, 4:8] = 70000
    image = np.zeros((16, 16), np.uint8)
    table = measure(labels, image)
    store.write_entry("big", image, labels, table, _record("big", labels, table, "v1"))
    with pytest.raises(StoreError, match="'big'.*65535"):
        open_store(tmp_path / "big.zarr").export(tmp_path / "out", "labels")
    assert open_store(tmp_path / "big.zarr").export(tmp_path / "out", "masks")  # masks are fine


def test_export_never_writes_outside_out_dir(tmp_path: Path) -> None:
    path = tmp_path / "evil.zarr"
    Store(path, "a")
    (path / "index").mkdir()
    labels = np.zeros((8, 8), np.uint16)
    record = {**_record("x", labels, np.zeros((0, 9)), "v1"), "id": "../evil"}
    (path / "index" / "x.json").write_text(json.dumps(record))
    open_store(path).export(tmp_path / "out", "labels")  # the bad record hides its own entry, not the export
    assert not (tmp_path / "evil.png").exists() and not any((tmp_path / "out").rglob("*.png"))
    assert Store(path, "r").scan().records == {}
    assert "invalid id '../evil'" in Store(path, "r").scan().strays[str(path / "index" / "x.json")]


# --- visibility and errors -------------------------------------------------------------------------------


def test_half_written_entry_is_invisible(store: NucleiStore, built: tuple[Path, dict[str, Entry]]) -> None:
    assert (built[0] / "images" / "ghost").is_dir()  # the arrays are there ...
    assert "ghost" not in store and "ghost" not in store.ids()  # ... but without a record nothing shows
    assert all(i.id != "ghost" for i in store.images())
    with pytest.raises(StoreError, match="'ghost'"):
        store.labels("ghost")


def test_new_entries_show_up_without_reopening(tmp_path: Path) -> None:
    writer = Store(tmp_path / "live.zarr", "a")
    reader = open_store(tmp_path / "live.zarr")
    assert len(reader) == 0 and reader.stats()["n_images"] == 0
    _write(writer, "late", (32, 32), 2, 4, "v1")
    assert reader.ids() == ["late"]


def test_unknown_and_invalid_ids(store: NucleiStore) -> None:
    for call in (store.labels, store.mask, store.image, store.measurements, store.metadata, store.overlay):
        with pytest.raises(StoreError, match="'nope'"):
            call("nope")
    with pytest.raises(StoreError, match="invalid image id"):
        store.labels("../evil")
    with pytest.raises(StoreError, match="invalid image id"):
        store.metadata("/abs")


def test_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a nuclei store"):
        open_store(tmp_path / "plain")
    with pytest.raises(StoreError, match="not a nuclei store"):
        open_store(tmp_path / "missing")


def test_other_format_version(tmp_path: Path) -> None:
    path = tmp_path / "future.zarr"
    Store(path, "a")
    zarr.open_group(str(path), mode="a", zarr_format=3).attrs["nuclei"] = {"store_format_version": 999}
    with pytest.raises(StoreError, match="999"):
        open_store(path)


# --- CLI -------------------------------------------------------------------------------------------------


@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        built: tuple[Path, dict[str, Entry]]) -> Any:
    """Run `nuclei query STORE ...`; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(nuclei.cli.main, "COMMANDS", [add_query])

    def run(*argv: str, store: Path | None = None) -> tuple[int, str, str]:
        code = nuclei.cli.main.main(["query", str(store or built[0]), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_cli_list(cli: Any, entries: dict[str, Entry]) -> None:
    code, out, _ = cli("list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["id", "nuclei", "covered", "%", "shape", "model"]
    assert [line.split()[0] for line in lines[1:]] == ["a1", "plate1/a", "plate1/c"]
    assert "48x64" in lines[2] and "v2.0" in lines[2]
    column = lines[0].index("shape")  # aligned: every shape starts under its header
    assert [line[column:column + 5] for line in lines[1:]] == ["64x80", "48x64", "40x56"]
    code, out, _ = cli("list", "--pattern", "plate1/*", "--model", "v1", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["id"] for r in rows] == ["plate1/c"]
    assert rows[0]["n_nuclei"] == entries["plate1/c"].record["n_nuclei"]
    code, out, _ = cli("list", "--min-nuclei", "100000")
    assert code == 0 and out.strip() == "no images"


def test_cli_show(cli: Any, entries: dict[str, Entry]) -> None:
    entry = entries["plate1/c"]
    code, out, _ = cli("show", "plate1/c")
    assert code == 0
    assert "model.version: v1.1" in out and f"n_nuclei: {entry.table.shape[0]}" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"{entry.table.shape[0]} nuclei; ") and "more columns with --json" in last
    assert "std_intensity_raw" not in out.split("\n\n", 1)[1]  # a terminal-sized table; --json has it all
    assert "mean_intensity_raw" in out
    code, out, _ = cli("show", "plate1/c", "--json")
    data = json.loads(out)
    assert code == 0 and data["metadata"]["id"] == "plate1/c"
    assert len(data["measurements"]) == entry.table.shape[0]
    assert data["measurements"][0]["label"] == 1
    assert data["measurements"][0]["area_px"] == int(entry.table[0, 1])
    assert data["measurements"][0]["area_um2"] is None  # no pixel size: unknown, not made up
    assert "std_intensity_raw" in data["measurements"][0]


def test_cli_show_truncates_to_20_rows(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "many.zarr"
    labels = np.zeros((30, 60), np.uint16)
    for i in range(25):
        labels[1 + (i // 10) * 10:(i // 10) * 10 + 8, 1 + (i % 10) * 6:(i % 10) * 6 + 5] = i + 1
    image = np.full((30, 60), 100, np.uint8)
    table = measure(labels, image)
    Store(path, "a").write_entry("many", image, labels, table, _record("many", labels, table, "v1"))
    code, out, _ = cli("show", "many", store=path)
    table = out.split("\n\n", 1)[1].splitlines()
    assert code == 0 and len(table) == 1 + 20 + 1 and table[-1].startswith("25 nuclei (first 20")
    code, out, _ = cli("show", "many", "--json", store=path)
    assert len(json.loads(out)["measurements"]) == 25


def test_cli_stats(cli: Any, store: NucleiStore) -> None:
    code, out, _ = cli("stats")
    assert code == 0 and "images: 3" in out and f"nuclei: {store.stats()['n_nuclei']}" in out
    assert "v1.0 (1)" in out
    code, out, _ = cli("stats", "--json")
    assert code == 0 and json.loads(out) == store.stats()


def test_cli_export(cli: Any, tmp_path: Path) -> None:
    code, out, _ = cli("export", str(tmp_path / "one"))
    assert code == 0 and out.strip() == f"wrote 3 PNGs (labels) to {tmp_path / 'one'}"
    assert (tmp_path / "one" / "plate1" / "a b.png").is_file()
    code, out, _ = cli("export", str(tmp_path / "two"), "--masks", "--overlay")
    assert code == 0 and len(out.splitlines()) == 2
    assert (tmp_path / "two" / "masks" / "a1.png").is_file()
    assert (tmp_path / "two" / "overlay" / "plate1" / "c.png").is_file()
    assert not (tmp_path / "two" / "labels").exists()


def test_cli_errors(cli: Any, tmp_path: Path) -> None:
    code, _, err = cli("show", "nope")
    assert code == 2 and err.startswith("nuclei: error:") and "'nope'" in err
    code, _, err = cli("show", "../evil")
    assert code == 2 and "invalid image id" in err
    code, _, err = cli("list", store=tmp_path / "missing")
    assert code == 2 and "not a nuclei store" in err


def test_an_index_with_only_a_record_being_written_lists_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.zarr", mode="a")
    (tmp_path / "s.zarr" / "index").mkdir()
    (tmp_path / "s.zarr" / "index" / "img.json.0123.tmp").write_text("{")  # a commit in progress
    assert store.records() == {} and store.ids() == []


def test_the_export_reads_an_older_entrys_columns_under_their_new_names(tmp_path: Path) -> None:
    """Entries written before the columns carried units (area, centroid_y, ..., mean_intensity on 0..1)."""
    from nuclei.store.tables import nucleus_rows

    path = tmp_path / "old.zarr"
    store = Store(path, "a")
    entry = _write(store, "a", (32, 32), 2, seed=5, version="v1")
    old = ["label", "area", "centroid_y", "centroid_x", "bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x",
           "mean_intensity"]
    table = np.column_stack([entry.table[:, list(COLUMN_NAMES).index(n if n == "label" else f"{n}_px")]
                             if n != "mean_intensity" else np.full(len(entry.table), 0.5) for n in old])
    array = zarr.open_array(path / "images" / "a" / "measurements", mode="w", shape=table.shape, dtype="f8")
    array[...] = table
    array.attrs["columns"] = old
    rows = list(nucleus_rows(Store(path)))
    assert [r["area_px"] for r in rows] == [int(v) for v in entry.table[:, 1]]
    assert all(r["mean_intensity_raw"] is None and "mean_intensity" not in r for r in rows)

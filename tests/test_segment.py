"""The `segment` flow on a real LocalCluster (2 worker processes), a real store on disk, real ONNX Runtime."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr_models.v05.image import Image as OmeImage

from flows.segment import segment
from nuclei.core.normalize import normalized
from nuclei.errors import ModelError
from nuclei.inference.engine import Engine
from nuclei.inference.sizing import nuclei_of
from nuclei.io.images import read_image, read_raw, write_png
from nuclei.io.synthetic import make_sample
from nuclei.modeldir import load_model_dir
from nuclei.store.backend import Store
from nuclei.store.query import NucleiStore
from nuclei.training.fit import predict_keras


def _write_inputs(root: Path) -> dict[str, Path]:
    """Mixed sizes and kinds: RGB PNG, RGBA PNG, 16-bit grey TIFF, and one in a sub-folder."""
    paths = {}
    for i, shape in enumerate([(96, 128), (64, 64), (130, 97)]):
        image, _ = make_sample(shape, n_nuclei=6, seed=100 + i)
        paths[f"rgb{i}"] = root / f"rgb{i}.png"
        write_png(paths[f"rgb{i}"], image)
    image, _ = make_sample((80, 72), n_nuclei=5, seed=7)
    paths["plate/rgba"] = root / "plate" / "rgba.png"
    write_png(paths["plate/rgba"], np.dstack([image, np.full((80, 72), 255, np.uint8)]))
    paths["grey16"] = root / "grey16.tif"
    tifffile.imwrite(paths["grey16"], image[..., 1].astype(np.uint16) * 257)
    return paths


def _run(inputs: Path, store: Path, model: Path, **kw: object) -> dict:
    return segment(inputs=[str(inputs)], store=str(store), model=str(model), n_workers=2,
                   images_per_task=2, **kw)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, trained_model: Path) -> tuple[Path, Path, dict, dict]:
    root = tmp_path_factory.mktemp("segment")
    inputs, store = root / "inputs", root / "results.zarr"
    paths = _write_inputs(inputs)
    summary = _run(inputs, store, trained_model)
    return inputs, store, paths, summary


def test_every_image_lands_with_the_keras_mask(first_run: tuple, trained_model: Path) -> None:
    inputs, store_path, paths, summary = first_run
    assert (summary["found"], summary["done"], summary["failed"]) == (5, 5, 0)
    store = Store(store_path)
    assert sorted(store.ids()) == sorted(paths)
    keras_model = keras.saving.load_model(trained_model / "model.keras", compile=False)
    model_dir = load_model_dir(trained_model)
    engine = Engine(model_dir, providers=("CPUExecutionProvider",))
    for image_id, path in paths.items():
        raw = read_raw(path)
        image = normalized(raw, model_dir.normalization)  # what the engine feeds the network
        # Keras's probabilities through the engine's own post-processing (thresholds, then debris specks dropped)
        expected = nuclei_of(engine, raw, predict_keras(keras_model, image, 8)) > 0
        mask = store.read_mask(image_id)
        assert mask.shape == expected.shape
        assert np.mean(mask.astype(bool) != expected) < 1e-3, image_id
        record = store.record(image_id)
        assert record is not None and record.model.version == model_dir.version
        assert record.providers == ["CPUExecutionProvider"]
        assert record.n_nuclei == int(store.read_labels(image_id).max())


def test_second_run_skips_everything_and_new_images_are_the_only_work(first_run: tuple, trained_model: Path) -> None:
    inputs, store, _, _ = first_run
    again = _run(inputs, store, trained_model)
    assert (again["done"], again["skipped"], again["failed"]) == (0, 5, 0)
    for name in ("new_a", "new_b"):
        write_png(inputs / f"{name}.png", make_sample((64, 96), seed=hash(name) % 1000)[0])
    third = _run(inputs, store, trained_model)
    assert (third["done"], third["skipped"]) == (2, 5)
    assert {"new_a", "new_b"} <= set(Store(store).ids())


def test_store_is_valid_ome_zarr_05(first_run: tuple) -> None:
    _, store_path, paths, _ = first_run
    store = Store(store_path)
    for image_id in paths:
        group = zarr.open_group(store_path / "images" / store.record(image_id).key, mode="r")
        OmeImage.from_zarr(group)  # raises on any spec violation, labels included


def test_bad_files_are_reported_and_the_rest_complete(tmp_path: Path, trained_model: Path) -> None:
    inputs = tmp_path / "in"
    image, _ = make_sample((64, 64), seed=3)
    write_png(inputs / "good.png", image)
    (inputs / "empty.png").write_bytes(b"")
    (inputs / "text.png").write_text("not an image")
    (inputs / "truncated.png").write_bytes((inputs / "good.png").read_bytes()[:100])
    (inputs / "folder.png").mkdir()
    summary = _run(inputs, tmp_path / "s.zarr", trained_model)
    assert summary["done"] == 1 and summary["failed"] == 4
    reasons = {Path(f["file"]).name: f["reason"] for f in summary["failures"]}
    assert "empty" in reasons["empty.png"]
    assert "directory" in reasons["folder.png"]
    assert set(reasons) == {"empty.png", "text.png", "truncated.png", "folder.png"}
    assert Store(tmp_path / "s.zarr").ids() == ["good"]


def test_cli_exits_non_zero_when_an_image_failed(tmp_path: Path, trained_model: Path) -> None:
    from nuclei.cli.main import main

    inputs = tmp_path / "in"
    write_png(inputs / "good.png", make_sample((64, 64), seed=4)[0])
    (inputs / "bad.png").write_text("nope")
    args = ["segment", str(inputs), "--model", str(trained_model), "--store", str(tmp_path / "s.zarr"),
            "--workers", "1"]
    assert main(args) == 1
    (inputs / "bad.png").unlink()
    assert main(args) == 0


def test_tiled_equals_untiled(trained_model: Path) -> None:
    model = load_model_dir(trained_model)
    image = read_image(_write_one(trained_model.parent / "big.png", (300, 420)))
    whole = Engine(model, ("CPUExecutionProvider",), tile_size=1024).predict(image)
    engine = Engine(model, ("CPUExecutionProvider",), tile_size=160)
    assert engine.overlap * 2 < 160 < max(image.shape)
    tiled = engine.predict(image)
    assert tiled.shape == whole.shape
    assert np.abs(tiled - whole).max() < 1e-5


def test_test_time_flips_average_the_mirror_images(trained_model: Path) -> None:
    """--tta is the mean of the model on the image and its three mirror images, each flipped back; it is
    part of the output key, so a store re-segments entries made without it."""
    model = load_model_dir(trained_model)
    image = read_image(_write_one(trained_model.parent / "tta.png", (96, 128)))
    plain = Engine(model, ("CPUExecutionProvider",), int8=False)
    flipped = Engine(model, ("CPUExecutionProvider",), int8=False, tta=True)
    expected = np.mean([np.flip(plain.predict(np.flip(image, axes).copy()), axes)
                        for axes in [(), (0,), (1,), (0, 1)]], axis=0)
    assert np.abs(flipped.predict(image) - expected).max() < 1e-5
    assert np.abs(flipped.predict(image) - plain.predict(image)).max() > 1e-4  # a real change, not a no-op
    assert flipped.output_key != plain.output_key


def _write_one(path: Path, shape: tuple[int, int]) -> Path:
    write_png(path, make_sample(shape, n_nuclei=40, seed=11)[0])
    return path


def test_bad_model_and_parameters_fail_before_any_work(tmp_path: Path, trained_model: Path) -> None:
    inputs = tmp_path / "in"
    write_png(inputs / "a.png", make_sample((64, 64))[0])
    with pytest.raises(ModelError, match="does not exist"):
        _run(inputs, tmp_path / "s.zarr", tmp_path / "missing-model")
    broken = tmp_path / "broken"
    shutil.copytree(trained_model, broken)
    (broken / "model.onnx").write_text("not onnx")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        _run(inputs, tmp_path / "s.zarr", broken)
    with pytest.raises(ValueError, match="tile_size"):
        _run(inputs, tmp_path / "s.zarr", trained_model, tile_size=-16)
    assert not (tmp_path / "s.zarr" / "index").exists()


def test_query_a_store_written_by_the_flow(first_run: tuple, tmp_path: Path) -> None:
    from nuclei.store.query import open_store

    _, store_path, paths, _ = first_run
    store = open_store(store_path)
    assert set(paths) <= set(store.ids())
    info = {i.id: i for i in store.images(pattern="plate/*")}
    assert list(info) == ["plate/rgba"] and info["plate/rgba"].shape == (80, 72)
    table = store.measurements("rgb0")
    assert len(table["area_px"]) == store.metadata("rgb0")["n_nuclei"] == int(store.labels("rgb0").max())
    written = store.export(tmp_path / "labels", "labels")
    assert (tmp_path / "labels" / "plate" / "rgba.png").is_file() and len(written) == len(store)


def test_queries_during_a_run_see_only_complete_entries(tmp_path: Path, trained_model: Path) -> None:
    """A reader polling the store while the flow writes never meets a record whose arrays are incomplete."""
    import threading

    from nuclei.store.query import open_store

    inputs = tmp_path / "in"
    for i in range(12):
        write_png(inputs / f"img{i:02d}.png", make_sample((96, 96), seed=200 + i)[0])
    store_path = tmp_path / "live.zarr"
    Store(store_path, "a")  # exists before the run, so the reader can open it at once
    run = threading.Thread(target=_run, args=(inputs, store_path, trained_model))
    run.start()
    seen: set[str] = set()
    while run.is_alive() or len(seen) < 12:
        store = open_store(store_path)
        for image_id in store.ids():
            labels, mask = store.labels(image_id), store.mask(image_id)  # complete, or not listed at all
            assert labels.shape == mask.shape == (96, 96)
            assert np.array_equal(labels > 0, mask > 0)
            seen.add(image_id)
        if not run.is_alive() and len(seen) < 12:
            break
        time.sleep(0.05)  # poll, do not spin: the workers being watched need the cores
    run.join()
    assert len(seen) == 12


def test_measurements_and_summary_tables_of_a_flow_written_store(first_run: tuple, tmp_path: Path) -> None:
    import csv

    from nuclei.cli.main import main

    _, store_path, _, summary = first_run
    out = tmp_path / "nuclei.csv"
    assert main(["query", str(store_path), "export", "--measurements", str(out), "--summary",
                 str(tmp_path / "images.csv")]) == 0
    with open(out) as handle:
        rows = list(csv.DictReader(handle))
    store = Store(store_path)
    assert len(rows) == sum(r.n_nuclei for r in store.records().values())  # other tests add to this store
    for image_id in store.ids():
        labels = store.read_labels(image_id)
        areas = np.bincount(labels.ravel())[1:]
        mine = [r for r in rows if r["image_id"] == image_id]
        assert [int(r["area_px"]) for r in mine] == [int(a) for a in areas if a]  # one row per nucleus
        assert all(0 < float(r["solidity"]) <= 1
                   and float(r["major_axis_length_px"]) >= float(r["minor_axis_length_px"]) for r in mine)
        shown = NucleiStore(store_path).measurements(image_id)  # the export is what the query API reads
        assert [float(r["mean_intensity_raw"]) for r in mine] == pytest.approx(list(shown["mean_intensity_raw"]))
        assert all(r["area_um2"] == "" for r in mine)  # no pixel size known: no micrometres made up
    with open(tmp_path / "images.csv") as handle:
        assert sorted(r["image_id"] for r in csv.DictReader(handle)) == sorted(store.ids())
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    assert main(["query", str(store_path), "export", "--measurements", str(tmp_path / "n.parquet")]) == 0
    assert pq.read_table(tmp_path / "n.parquet").num_rows == len(rows)

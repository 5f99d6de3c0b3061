"""A store never holds a wrong answer: damaged entries are found, hidden and rewritten; stale ones re-run;
another file's entry is never overwritten. Real stores on disk, real ONNX Runtime (in-process runs) with the
shipped model: the fast tier, no training first."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import tifffile

from nuclei.cli.main import main
from nuclei.inference.run import segment
from nuclei.io.images import write_png
from nuclei.io.synthetic import make_sample
from nuclei.store.backend import Store
from tests.conftest import chunk_files


def _inputs(folder: Path, n: int = 4) -> Path:
    for i in range(n):
        write_png(folder / f"img{i}.png", make_sample((96, 96), n_nuclei=8, seed=40 + i)[0])
    return folder


def _content(store_path: Path) -> dict[str, tuple[bytes, bytes]]:
    store = Store(store_path)
    return {i: (store.read_labels(i).tobytes(), store.read_measurements(i)[1].tobytes()) for i in store.ids()}


def test_check_finds_each_kind_of_damage_and_repair_then_rerun_equals_a_clean_run(
    tmp_path: Path, shipped_model: Path
) -> None:
    inputs = _inputs(tmp_path / "in")
    clean, damaged = tmp_path / "clean.zarr", tmp_path / "damaged.zarr"
    segment([inputs], clean, model=shipped_model)
    segment([inputs], damaged, model=shipped_model)
    assert main(["check", str(damaged)]) == 0

    key = {i: Store(damaged).record(i).key for i in ("img0", "img1")}  # type: ignore[union-attr]
    _delete_a_chunk(damaged / "images" / key["img0"] / "labels" / "nuclei" / "s0")
    _flip_a_byte(damaged / "images" / key["img1"] / "s0")
    (damaged / "index" / "img2.json").write_text("")
    record = json.loads((damaged / "index" / "img3.json").read_text())
    del record["id"]
    (damaged / "index" / "img3.json").write_text(json.dumps(record))

    from nuclei.store.check import check

    report = check(damaged)
    assert sorted(report.damaged) == ["img0", "img1"]
    assert sorted(Path(p).name for p in report.unreadable_records) == ["img2.json", "img3.json"]
    assert main(["check", str(damaged)]) == 1
    assert main(["check", str(damaged), "--repair"]) == 0
    assert Store(damaged).ids() == []  # every damaged entry hidden: nothing wrong is visible
    summary = segment([inputs], damaged, model=shipped_model)
    assert summary["done"] == 4 and summary["failed"] == 0
    assert main(["check", str(damaged)]) == 0
    assert _content(damaged) == _content(clean)


def _delete_a_chunk(array_dir: Path) -> None:
    chunk_files(array_dir)[0].unlink()


def _flip_a_byte(array_dir: Path) -> None:
    chunk = chunk_files(array_dir)[0]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))


def test_changed_settings_or_content_are_segmented_again(tmp_path: Path, shipped_model: Path) -> None:
    inputs = _inputs(tmp_path / "in", n=2)
    store = tmp_path / "s.zarr"
    assert segment([inputs], store, model=shipped_model)["done"] == 2
    assert segment([inputs], store, model=shipped_model)["done"] == 0  # unchanged: skipped
    edited = tmp_path / "edited-model"
    shutil.copytree(shipped_model, edited)
    thresholds = json.loads((edited / "thresholds.json").read_text())
    (edited / "thresholds.json").write_text(json.dumps({**thresholds, "min_size": thresholds["min_size"] + 300}))
    assert segment([inputs], store, model=edited)["done"] == 2  # other thresholds: other labels
    assert segment([inputs], store, model=edited, diameter=40)["done"] == 2  # rescaled: other labels
    tiff = inputs / "plain.tif"  # uncompressed: new content of the very same size
    tifffile.imwrite(tiff, make_sample((96, 96), n_nuclei=8, seed=7)[0][..., 0])
    assert segment([inputs], store, model=edited, diameter=40)["done"] == 1
    before = tiff.stat()
    tifffile.imwrite(tiff, make_sample((96, 96), n_nuclei=3, seed=99)[0][..., 0])
    os.utime(tiff, ns=(before.st_atime_ns, before.st_mtime_ns))  # ... and the same mtime
    assert tiff.stat().st_size == before.st_size
    again = segment([inputs], store, model=edited, diameter=40)
    assert again["done"] == 1 and again["skipped"] == 2


def test_another_file_with_the_same_id_never_overwrites_an_entry(tmp_path: Path, shipped_model: Path) -> None:
    a = _inputs(tmp_path / "a", n=1)
    b = tmp_path / "b"  # another file of the same name (the same content at a new path is a moved folder)
    write_png(b / "img0.png", make_sample((96, 96), n_nuclei=8, seed=99)[0])
    store = tmp_path / "s.zarr"
    segment([a], store, model=shipped_model)
    before = _content(store)
    summary = segment([b], store, model=shipped_model)
    assert summary["failed"] == 1 and "comes from" in summary["failures"][0]["reason"]
    assert _content(store) == before and Store(store).record("img0").source == str(a / "img0.png")  # type: ignore[union-attr]
    assert segment([b], store, model=shipped_model, overwrite=True)["done"] == 1  # asked for: replaced

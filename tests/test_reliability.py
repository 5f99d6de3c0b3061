"""Reliability with real processes: a worker killed, the whole run killed, two runs on one store, hostile input,
bad parameters and models, and the safety rules. RELIABILITY.md lists each case with its test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import tifffile
from distributed import Client, LocalCluster
from onnx import TensorProto, helper

from flows.segment import segment
from nuclei.errors import ModelError, StoreError
from nuclei.io.images import write_png
from nuclei.io.synthetic import make_sample
from nuclei.store.backend import Store
from tests.conftest import REPO

pytestmark = pytest.mark.timeout(300)

NUCLEI = str(Path(sys.executable).with_name("nuclei"))
N_IMAGES = 16


def _write_images(folder: Path, n: int = N_IMAGES, shape: tuple[int, int] = (256, 256)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"img{i:02d}.png")
        write_png(paths[-1], make_sample(shape, n_nuclei=20, seed=500 + i)[0])
    return paths


def _contents(store_path: Path) -> dict[str, tuple[bytes, bytes, str]]:
    """Everything that must be equal between two stores: labels, measurements and source hash per id."""
    store = Store(store_path)
    out = {}
    for image_id, record in store.records().items():
        _, table = store.read_measurements(image_id)
        out[image_id] = (store.read_labels(image_id).tobytes(), table.tobytes(), record.source_sha256)
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_images(tmp_path_factory.mktemp("reliability") / "in")[0].parent


@pytest.fixture(scope="module")
def reference(inputs: Path, shipped_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The store of an undisturbed run, to compare every disturbed run against."""
    store = tmp_path_factory.mktemp("reference") / "ref.zarr"
    summary = segment(inputs=[str(inputs)], store=str(store), model=str(shipped_model), n_workers=2,
                      images_per_task=2)
    assert summary["done"] == N_IMAGES
    return _contents(store)


def _wait_records(store: Path, at_least: int, proc: subprocess.Popen | None = None, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = len(list((store / "index").glob("*.json"))) if (store / "index").is_dir() else 0
        if n >= at_least:
            return n
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.02)
    raise TimeoutError(f"fewer than {at_least} entries in {store} after {timeout} s")


# 1. A worker dies ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # worker processes, or a Prefect flow
def test_a_killed_worker_loses_nothing(inputs: Path, shipped_model: Path, reference: dict, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        killed: list[int] = []

        def kill_one_worker() -> None:
            killed.append(_wait_records(store, 2))
            os.kill(pids[0], signal.SIGKILL)

        killer = threading.Thread(target=kill_one_worker)
        killer.start()
        summary = segment(inputs=[str(inputs)], store=str(store), model=str(shipped_model),
                          dask_address=cluster.scheduler_address, images_per_task=1)
        killer.join()
    assert killed and killed[0] < N_IMAGES, "the worker must die mid-run"
    # A re-run task finds entries its killed first attempt had already committed: skipped, not done twice.
    assert summary["done"] + summary["skipped"] == N_IMAGES and summary["failed"] == 0
    assert _contents(store) == reference


# 2. The whole run dies ----------------------------------------------------------------------------------------


@pytest.mark.slow  # worker processes, or a Prefect flow
def test_a_killed_run_leaves_only_complete_entries_and_the_rerun_finishes(
    inputs: Path, shipped_model: Path, reference: dict, tmp_path: Path
) -> None:
    store = tmp_path / "s.zarr"
    proc = subprocess.Popen(
        [NUCLEI, "segment", str(inputs), "--store", str(store), "--model", str(shipped_model), "--workers", "2",
         "--images-per-task", "1"],
        env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    _wait_records(store, 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its Prefect server and its Dask workers, mid-run
    proc.wait(30)

    survived = _contents(store)  # every visible entry is whole and right
    assert 3 <= len(survived) < N_IMAGES
    assert all(reference[i] == c for i, c in survived.items())

    summary = segment(inputs=[str(inputs)], store=str(store), model=str(shipped_model), n_workers=2)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (N_IMAGES - len(survived), len(survived), 0)
    assert _contents(store) == reference


def test_a_write_that_fails_fails_its_image_only_and_the_rerun_writes_it(
    inputs: Path, shipped_model: Path, reference: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that refuses one entry fails that image (named, with the reason; not remembered as a bad file),
    every other entry is written and whole, and the next run writes the one that failed."""
    from nuclei.inference.run import segment as segment_here

    victim = sorted(reference)[3]
    write_entry = Store.write_entry

    def refuse_one(self: Store, image_id: str, *args: object, **kwargs: object) -> object:
        if image_id == victim:
            raise OSError(28, "No space left on device")
        return write_entry(self, image_id, *args, **kwargs)

    store = tmp_path / "s.zarr"
    with monkeypatch.context() as patched:
        patched.setattr(Store, "write_entry", refuse_one)
        summary = segment_here([str(inputs)], str(store), model=str(shipped_model), images_per_task=8)
    assert (summary["done"], summary["failed"]) == (N_IMAGES - 1, 1)
    assert victim in summary["failures"][0]["file"] and "No space left" in summary["failures"][0]["reason"]
    assert _contents(store) == {i: c for i, c in reference.items() if i != victim}
    again = segment_here([str(inputs)], str(store), model=str(shipped_model))
    assert (again["done"], again["skipped"], again["failed"]) == (1, N_IMAGES - 1, 0)
    assert _contents(store) == reference


# 3. Two runs on one store at once -----------------------------------------------------------------------------


@pytest.mark.slow  # worker processes, or a Prefect flow
def test_two_concurrent_runs_on_one_store(inputs: Path, shipped_model: Path, reference: dict, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    files = sorted(inputs.glob("*.png"))
    halves = {"a": files[:10], "b": files[6:]}  # 4 images in both
    procs = {
        name: subprocess.Popen(
            [NUCLEI, "segment", *map(str, part), "--store", str(store), "--model", str(shipped_model),
             "--workers", "1", "--images-per-task", "1", "--json"],
            env={**os.environ, "PREFECT_HOME": str(tmp_path / f"prefect-{name}")},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name, part in halves.items()
    }
    summaries = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        summaries[name] = json.loads(out[out.index("{"):])
    for name, summary in summaries.items():  # each run's summary is true for its own inputs
        assert summary["failed"] == 0 and summary["done"] + summary["skipped"] == len(halves[name])
    assert summaries["a"]["done"] + summaries["b"]["done"] == N_IMAGES  # each image written exactly once
    assert _contents(store) == reference


# 5. Hostile and broken input ----------------------------------------------------------------------------------


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG signature and IHDR claiming width x height, with a few bytes of data: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = b"IDAT" + zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
                     + struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat)))


@pytest.mark.slow  # worker processes, or a Prefect flow
def test_hostile_inputs_are_segmented_or_reported_and_the_run_goes_on(shipped_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    good = make_sample((96, 96), n_nuclei=6, seed=1)[0]
    folder.mkdir()
    (folder / "empty.png").write_bytes(b"")
    write_png(folder / "whole.png", good)
    (folder / "truncated.png").write_bytes((folder / "whole.png").read_bytes()[:200])
    (folder / "text.png").write_text("this is not an image\n")
    write_png(folder / "one_pixel.png", good[:1, :1])
    tifffile.imwrite(folder / "grey16.tif", good[..., 0].astype(np.uint16) * 257)
    write_png(folder / "rgba.png", np.dstack([good, np.full(good.shape[:2], 255, np.uint8)]))
    write_png(folder / "grey.png", good[..., 0])
    _png_header_only(folder / "bomb.png", 20000, 20000)
    write_png(folder / "noyau à Zürich 1.png", good)
    (folder / "loop.png").symlink_to(folder / "loop.png")
    write_png(folder / "locked.png", good)
    (folder / "locked.png").chmod(0)
    (folder / "folder.png").mkdir()

    summary = segment(inputs=[str(folder)], store=str(tmp_path / "s.zarr"), model=str(shipped_model),
                      n_workers=2, images_per_task=3)
    reasons = {Path(f["file"]).name: f["reason"] for f in summary["failures"]}
    expected_failures = {"empty.png": "empty", "truncated.png": "", "text.png": "", "bomb.png": "pixels",
                         "loop.png": "link", "folder.png": "directory"}
    if os.geteuid() != 0:  # root reads any file, so only an ordinary user sees the permission error
        expected_failures["locked.png"] = "ermission"
    for name, fragment in expected_failures.items():
        assert name in reasons, f"{name} not reported: {summary['failures']}"
        assert fragment.lower() in reasons[name].lower(), (name, reasons[name])
        assert "KilledWorker" not in reasons[name]  # reported by the reader, not by a crashed worker
    ids = set(Store(tmp_path / "s.zarr").ids())
    segmented = {"whole", "one_pixel", "grey16", "rgba", "grey", "noyau à Zürich 1"}
    assert segmented <= ids
    assert summary["done"] == len(ids) and summary["done"] + summary["failed"] == summary["found"]


def test_a_glob_that_matches_a_broken_link_reports_it_and_finds_the_rest(tmp_path: Path) -> None:
    """A glob's matches are stat-ed one by one: a dangling link among them is that file's problem (it stopped the
    whole discovery with FileNotFoundError), and the images beside it keep their ids."""
    from nuclei.io.discovery import discover

    folder = tmp_path / "in"
    (folder / "plate 1").mkdir(parents=True)
    write_png(folder / "plate 1" / "a.b.png", make_sample((32, 32), n_nuclei=2, seed=1)[0])
    (folder / "plate 1" / "gone.png").symlink_to(folder / "nowhere.png")
    found = discover([str(folder / "**" / "*.png")])
    assert [item.id for item in found.items] == ["plate 1/a.b"]
    assert found.items[0].url == str(folder / "plate 1" / "a.b.png")
    assert [(Path(p.path).name, "cannot open" in p.reason) for p in found.problems] == [("gone.png", True)]


# 6. Bad parameters and bad models -----------------------------------------------------------------------------


def _onnx_nchw_float16(path: Path) -> None:
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT16, ["n", 3, "h", "w"])
    y = helper.make_tensor_value_info("mask", TensorProto.FLOAT16, ["n", 3, "h", "w"])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["mask"])], "nchw", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


@pytest.mark.slow  # worker processes, or a Prefect flow
def test_bad_parameters_and_models_fail_before_any_work(shipped_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    _write_images(folder, n=1, shape=(64, 64))
    store = tmp_path / "s.zarr"

    def run(model: Path, **kw: object) -> None:
        segment(inputs=[str(folder)], store=str(kw.pop("store", store)), model=str(model), n_workers=1, **kw)

    with pytest.raises(ModelError, match="does not exist"):
        run(tmp_path / "no-such-model")
    broken = tmp_path / "broken"
    shutil.copytree(shipped_model, broken)
    for int8 in ("model.int8.onnx", "int8.json"):  # the float32 file is the one that runs
        (broken / int8).unlink(missing_ok=True)
    (broken / "model.onnx").write_text("not onnx")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        run(broken)
    _onnx_nchw_float16(broken / "model.onnx")
    with pytest.raises(ModelError, match="NHWC float32"):
        run(broken)
    (tmp_path / "a-file.zarr").write_text("")
    with pytest.raises(StoreError, match="a-file.zarr"):
        run(shipped_model, store=tmp_path / "a-file.zarr")
    with pytest.raises(ValueError, match="tile_size"):
        run(shipped_model, tile_size=-16)
    assert not store.exists() or not (store / "index").exists()  # nothing was written


# 7. Safety ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../escape", "a/../../b", "/etc/passwd", ".", "..", "a/./b", ""])
def test_ids_cannot_escape_the_store(tmp_path: Path, bad: str) -> None:
    store = Store(tmp_path / "s.zarr", mode="a")
    with pytest.raises(StoreError):
        store.write_entry(bad, np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint32), np.zeros((0, 9)), {})
    assert not any(p.name == "escape" for p in tmp_path.rglob("*"))


def test_no_unsafe_loading_anywhere_in_the_code() -> None:
    """Keras loads with safe_mode; nothing unpickles input or store data (no pickle, no allow_pickle)."""
    sources = {p: p.read_text() for d in ("nuclei", "flows") for p in (REPO / d).rglob("*.py")}
    for path, text in sources.items():
        assert "safe_mode=False" not in text, path
        assert "allow_pickle=True" not in text, path
        assert "import pickle" not in text and "pickle.load" not in text, path
        assert "load_model(" not in text or "safe_mode=True" in text, path


def test_services_the_project_starts_listen_on_localhost_and_the_image_is_not_root() -> None:
    from nuclei.inference.cluster import dask_client

    with dask_client(n_workers=1) as client:
        addresses = [client.scheduler.address, *client.scheduler_info()["workers"]]
        assert all(a.startswith("tcp://127.0.0.1:") for a in addresses), addresses
        assert client.dashboard_link.startswith("http://127.0.0.1:")
    assert "server start --host 127.0.0.1" in (REPO / "Makefile").read_text()  # `make server`
    users = [line.split()[1] for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("USER ")]
    assert users[-1] == "nuclei" and "useradd" in (REPO / "Dockerfile").read_text()

"""Whole slides: lazy tiled input, blocks as tasks, nuclei joined across block borders, streamed output, resume.

"Blocks equal whole" is the test that matters: a slide that also fits in memory, segmented as awkward blocks,
gives the nuclei the whole-image path gives, nucleus for nucleus.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

import nuclei
from nuclei.config import SegmentConfig
from nuclei.core.blocks import Box, core_ids, match, neighbour_pairs, number, plan_blocks
from nuclei.core.metrics import matching
from nuclei.io.images import read_raw
from nuclei.io.lazy import LazyPlane, SlideSource, plane_pixels, source_identity
from nuclei.io.planes import PlaneChoice
from nuclei.store.backend import Store

from .conftest import SAMPLES, Flushes

FIELD = SAMPLES / "images" / "IXMtest_A02_s1_w1051DAA7C-7042-435F-99F0-1E847D9B42CB.png"  # BBBC039, 16-bit


def _mosaic() -> np.ndarray:
    """A 1000 x 1300 16-bit mosaic of one real field and its mirror images (nuclei cross every block border)."""
    field = read_raw(FIELD)
    top = np.concatenate([field, field[:, ::-1]], axis=1)
    return np.concatenate([top, top[::-1]], axis=0)[:1000, :1300]


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("slide")
    tifffile.imwrite(folder / "mosaic.ome.tif", _mosaic(), tile=(256, 256), compression="zlib", ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65})
    return folder


# --- block geometry and the join, pure numpy ---------------------------------------------------------------

@pytest.mark.parametrize("height,width,size", [(1000, 1300, 400), (333, 517, 112), (64, 64, 400)])
def test_block_cores_tile_the_slide_once(height: int, width: int, size: int) -> None:
    blocks = plan_blocks(height, width, size, margin=32, context=48, multiple=16)
    covered = np.zeros((height, width), np.int32)
    for block in blocks:
        covered[block.core.y0:block.core.y1, block.core.x0:block.core.x1] += 1
        assert block.core.y0 % 16 == 0 and block.window.y0 % 16 == 0 and block.window.x0 % 16 == 0
        assert block.reach.intersection(block.window) == block.reach
    assert (covered == 1).all()


def test_a_nucleus_cut_by_four_cores_gets_one_id_and_touching_nuclei_stay_apart() -> None:
    slide = np.zeros((64, 64), np.int32)
    slide[28:36, 28:36] = 1  # across the corner of four 32 px cores
    slide[10:20, 26:32], slide[10:20, 32:38] = 2, 3  # two nuclei touching along a core border
    blocks = plan_blocks(64, 64, 32, margin=16, context=0, multiple=16)
    labels = []
    for block in blocks:  # each block labels its reach on its own: ids of its own
        own = slide[block.reach.y0:block.reach.y1, block.reach.x0:block.reach.x1]
        labels.append(np.where(own > 0, own + 10 * block.index, 0))
    matches = {(a, b): match(labels[a], blocks[a], labels[b], blocks[b]) for a, b in neighbour_pairs(blocks)}
    luts = number([core_ids(lab, blk) for lab, blk in zip(labels, blocks, strict=True)], matches)
    out = np.zeros_like(slide)
    for block, lab, lut in zip(blocks, labels, luts, strict=True):
        out[block.core.y0:block.core.y1, block.core.x0:block.core.x1] = lut[lab[block.core.within(block.reach)]]
    assert len(np.unique(out[slide == 1])) == 1
    assert out[slide == 2].max() == out[slide == 2].min() != out[slide == 3].min() == out[slide == 3].max()
    assert sorted(np.unique(out)) == [0, 1, 2, 3]  # 1..N over the slide


def test_box_slices() -> None:
    outer, inner = Box(10, 50, 20, 60), Box(15, 25, 30, 40)
    assert inner.within(outer) == (slice(5, 15), slice(10, 20))
    assert Box(0, 5, 0, 5).intersection(Box(5, 9, 0, 5)) is None


# --- lazy input --------------------------------------------------------------------------------------------

def test_lazy_tiff_reads_windows_pixel_size_and_identity(slide: Path) -> None:
    path = str(slide / "mosaic.ome.tif")
    mosaic = _mosaic()
    assert plane_pixels(path) == mosaic.size
    with LazyPlane(SlideSource(path)) as plane:
        assert (plane.height, plane.width, plane.dtype) == (1000, 1300, np.uint16)
        assert plane.lab.pixel_size_um == pytest.approx(0.65)
        np.testing.assert_array_equal(plane.read(Box(100, 333, 250, 777)), mosaic[100:333, 250:777])
        np.testing.assert_array_equal(plane.strided(7), mosaic[::7, ::7])
    digest, how = source_identity(path, (slide / "mosaic.ome.tif").stat().st_size)
    assert how == "content" and len(digest) == 64


def test_lazy_reads_a_channel_of_an_ome_zarr_image(tmp_path: Path) -> None:
    data = np.arange(2 * 40 * 50, dtype=np.uint16).reshape(2, 40, 50)
    group = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w", zarr_format=3)
    group.create_array("0", data=data, chunks=(1, 16, 16))
    group.attrs["ome"] = {"version": "0.5", "omero": {"channels": [{"label": "DAPI"}, {"label": "GFP"}]},
                          "multiscales": [{"axes": [{"name": "c", "type": "channel"},
                                                    {"name": "y", "type": "space", "unit": "micrometer"},
                                                    {"name": "x", "type": "space", "unit": "micrometer"}],
                                           "datasets": [{"path": "0", "coordinateTransformations": [
                                               {"type": "scale", "scale": [1.0, 0.3, 0.3]}]}]}]}
    with LazyPlane(SlideSource(str(tmp_path / "img.ome.zarr"), PlaneChoice(channel="GFP"))) as plane:
        assert plane.lab.channel == 1 and plane.lab.pixel_size_um == pytest.approx(0.3)
        np.testing.assert_array_equal(plane.read(Box(5, 30, 7, 44)), data[1, 5:30, 7:44])
    with pytest.raises(nuclei.errors.InputError, match="--channel"):
        LazyPlane(SlideSource(str(tmp_path / "img.ome.zarr")))


# --- the whole path ----------------------------------------------------------------------------------------

def test_blocks_equal_whole_image_nucleus_for_nucleus(slide: Path, tmp_path: Path) -> None:
    whole = nuclei.segment([str(slide)], store=tmp_path / "whole.zarr")  # fits: decoded whole, as always
    blocks = nuclei.segment([str(slide)], store=tmp_path / "blocks.zarr", slide_pixels=1, block_size=400)
    assert whole["done"] == blocks["done"] == 1, blocks["failures"]
    a = nuclei.open_store(tmp_path / "whole.zarr")
    b = nuclei.open_store(tmp_path / "blocks.zarr")
    ours, theirs = b.labels("mosaic.ome"), a.labels("mosaic.ome")
    found = matching(theirs, ours, thresh=0.9)
    assert found.tp >= 0.99 * theirs.max() and found.fp <= 0.01 * theirs.max(), found
    assert ours.max() == len(np.unique(ours)) - 1  # ids 1..N over the slide
    table = b.measurements("mosaic.ome")
    assert len(table["label"]) == ours.max() == b.images()[0].n_nuclei
    np.testing.assert_array_equal(np.sort(np.asarray(table["label"])), np.arange(1, ours.max() + 1))
    areas = np.bincount(ours.ravel())[1:]
    np.testing.assert_array_equal(np.asarray(table["area_px"])[np.argsort(table["label"])], areas)
    entry = zarr.open_group(str(tmp_path / "blocks.zarr" / "images" / "mosaic.ome"), mode="r")
    assert entry["labels/nuclei/s0"].chunks == (400, 400)  # block cores are whole chunks: no two tasks share one
    assert entry["labels/nuclei/s1"].shape == (500, 650) and "s2" not in entry  # halved until <= 1024 px
    np.testing.assert_array_equal(entry["labels/nuclei/s1"][...], ours[::2, ::2])


def test_a_killed_slide_run_resumes_by_block_and_equals_a_clean_run(slide: Path, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nuclei.inference.slide")
    store = tmp_path / "killed.zarr"
    code = (f"import nuclei; nuclei.segment([{str(slide)!r}], store={str(store)!r}, slide_pixels=1, "
            "block_size=400, n_workers=None)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scratch = store / "blocks" / "mosaic.ome"
    deadline = time.monotonic() + 120
    while len(list(scratch.glob("*.npy.zst"))) < 3 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done_before = {p.name for p in scratch.glob("*.npy.zst")}
    assert 3 <= len(done_before) < 12, "the run should be killed part way (12 blocks)"
    assert nuclei.open_store(store).images() == []  # nothing visible: the record comes last
    resumed = nuclei.segment([str(slide)], store=store, slide_pixels=1, block_size=400)
    assert resumed["done"] == 1 and not (store / "blocks" / "mosaic.ome").exists()
    assert f"resuming: {len(done_before)} of 12 blocks done" in caplog.text
    nuclei.segment([str(slide)], store=tmp_path / "clean.zarr", slide_pixels=1, block_size=400)
    np.testing.assert_array_equal(nuclei.open_store(store).labels("mosaic.ome"),
                                  nuclei.open_store(tmp_path / "clean.zarr").labels("mosaic.ome"))
    again = nuclei.segment([str(slide)], store=store, slide_pixels=1, block_size=400)
    assert again["skipped"] == 1 and again["done"] == 0


def test_an_ome_zarr_input_is_a_slide_whatever_its_size(tmp_path: Path) -> None:
    """Another tool's OME-Zarr output, given as an input: read a window at a time, identified by its metadata."""
    image = tmp_path / "in" / "plate.ome.zarr"
    group = zarr.open_group(str(image), mode="w", zarr_format=3)
    group.create_array("0", data=_mosaic()[None, :500, :700], chunks=(1, 256, 256))
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.65, 0.65]}]}]}]}
    first = nuclei.segment([str(image)], store=tmp_path / "s.zarr", block_size=256)
    assert first["done"] == 1, first["failures"]
    record = Store(str(tmp_path / "s.zarr")).record("plate.ome")
    assert record is not None and record.n_nuclei > 50 and record.pixel_size_um == pytest.approx(0.65)
    assert record.model_extra and record.model_extra["slide"]["source_hash"] == "metadata"
    again = nuclei.segment([str(image)], store=tmp_path / "s.zarr", block_size=256)
    assert again["skipped"] == 1


def test_a_slide_run_reports_progress_block_by_block(slide: Path, tmp_path: Path) -> None:
    """The Prefect progress artifact (`on_batch`) moves as a slide's blocks are labelled, not once at its end."""
    from nuclei.inference.run import plan, run

    work = plan(SegmentConfig(inputs=[str(slide)], store=str(tmp_path / "s.zarr"), slide_pixels=1, block_size=400))
    seen: list[tuple[float, int]] = []
    assert run(work, on_batch=lambda done, total: seen.append((done, total)))[0].status == "done"
    shares = [done for done, _ in seen]
    assert all(total == 1 for _, total in seen) and shares == sorted(shares) and shares[-1] == 1.0
    assert len([s for s in shares if 0 < s < 1]) >= 4  # the slide has 12 blocks


def test_a_stop_request_interrupts_a_slide_and_keeps_its_finished_blocks(slide: Path, tmp_path: Path) -> None:
    from nuclei.errors import Interrupted
    from nuclei.inference.run import plan, run

    work = plan(SegmentConfig(inputs=[str(slide)], store=str(tmp_path / "s.zarr"), slide_pixels=1, block_size=400))
    assert work.slides and not work.batches
    stop = threading.Event()
    scratch = tmp_path / "s.zarr" / "blocks" / "mosaic.ome"
    watcher = threading.Thread(target=lambda: _set_when(stop, lambda: len(list(scratch.glob("*.npy.zst"))) >= 2))
    watcher.start()
    with pytest.raises(Interrupted):
        run(work, stop=stop)
    watcher.join()
    assert 2 <= len(list(scratch.glob("*.npy.zst"))) < 12
    assert nuclei.open_store(tmp_path / "s.zarr").images() == []


def test_a_slide_stopped_while_its_cluster_starts_ends_as_stopped_not_failed(
        slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker process hit by the Ctrl-C before it set its signals aside fails the cluster's start: once a stop
    was asked for, that is the run stopping (exit 130), for slides as for batches; without one it is the error."""
    import contextlib
    from collections.abc import Iterator

    from nuclei.errors import Interrupted
    from nuclei.inference import execution
    from nuclei.inference.run import plan, run

    stop = threading.Event()

    @contextlib.contextmanager
    def fails_to_start(*args: object) -> Iterator[object]:
        raise OSError("a worker process died while the cluster started")
        yield  # a context manager's shape

    monkeypatch.setattr(execution, "dask_client", fails_to_start)
    work = plan(SegmentConfig(inputs=[str(slide)], store=str(tmp_path / "s.zarr"), slide_pixels=1, block_size=400,
                              n_workers=2))
    assert work.slides and not work.batches
    with pytest.raises(OSError, match="a worker process died"):  # no stop asked for: a failure, said as one
        run(work, stop=stop)
    stop.set()
    with pytest.raises(Interrupted) as stopped:
        run(work, stop=stop)
    assert isinstance(stopped.value.__cause__, OSError)
    assert nuclei.open_store(tmp_path / "s.zarr").images() == []


@pytest.mark.slow
def test_a_slide_on_a_local_cluster_equals_one_in_this_process(slide: Path, tmp_path: Path) -> None:
    """Blocks as Dask tasks on worker processes (the executor's other backend) give the in-process labels."""
    on_threads = nuclei.segment([str(slide)], store=tmp_path / "t.zarr", slide_pixels=1, block_size=400)
    on_dask = nuclei.segment([str(slide)], store=tmp_path / "d.zarr", slide_pixels=1, block_size=400, n_workers=1)
    assert on_threads["done"] == on_dask["done"] == 1, (on_threads, on_dask)
    np.testing.assert_array_equal(nuclei.open_store(tmp_path / "d.zarr").labels("mosaic.ome"),
                                  nuclei.open_store(tmp_path / "t.zarr").labels("mosaic.ome"))


def _set_when(event: threading.Event, condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    event.set()


def test_check_verifies_a_slide_entry_block_by_block(slide: Path, tmp_path: Path) -> None:
    from nuclei.store.check import check

    store = tmp_path / "s.zarr"
    assert nuclei.segment([str(slide)], store=store, slide_pixels=1, block_size=512)["done"] == 1
    assert check(store).ok
    labels = zarr.open_array(str(store / "images" / "mosaic.ome" / "labels" / "nuclei" / "s0"), mode="a")
    labels[600:610, 600:610] = 1  # a changed chunk: the block's hash no longer matches
    report = check(store)
    assert list(report.damaged) == ["mosaic.ome"] and "block [512, 1000, 512, 1024]" in report.damaged["mosaic.ome"]


def test_slide_exports_read_a_window_at_a_time_and_equal_whole_image_ones(slide: Path, tmp_path: Path) -> None:
    """QuPath/ImageJ outlines of a slide come a window of labels at a time (each nucleus once, whole, where its
    box starts), the same polygons as from the whole label image; its overlay is drawn from a pyramid level."""
    import json

    import roifile

    from nuclei.cli.main import main
    from nuclei.core.outlines import polygons
    from nuclei.store.rois import entry_outlines

    store = tmp_path / "s.zarr"
    assert nuclei.segment([str(slide)], store=store, slide_pixels=1, block_size=512)["done"] == 1
    entry = Store(str(store)).open_entry("mosaic.ome")
    whole = polygons(entry.labels())
    windowed = dict(entry_outlines(entry, window=256))  # 4 x 6 windows: many nuclei reach past one
    assert len(windowed) == len(whole) > 100 and set(windowed) == set(whole)
    assert all(np.array_equal(windowed[label], xy) for label, xy in whole.items())

    assert main(["query", str(store), "export", str(tmp_path / "rois"), "--rois", "qupath"]) == 0
    features = json.loads((tmp_path / "rois" / "mosaic.ome.geojson").read_text())["features"]
    assert len(features) == len(whole)
    assert main(["query", str(store), "export", str(tmp_path / "fiji"), "--rois", "imagej"]) == 0
    assert len(roifile.roiread(tmp_path / "fiji" / "mosaic.ome.zip")) == len(whole)

    picture = nuclei.open_store(store).overlay("mosaic.ome", max_side=700)
    assert picture.shape == (500, 650, 3) and picture.dtype == np.uint8  # level 1 of 1000 x 1300


def test_a_folder_of_jpeg_tiled_svs_slides_is_found_and_segmented(tmp_path: Path) -> None:
    """Aperio's .svs (a TIFF with JPEG tiles) in a folder: found (a folder of them was found empty), decoded
    through imagecodecs, and segmented as a slide in blocks like any tiled TIFF."""
    folder = tmp_path / "scans"
    folder.mkdir()
    eight_bit = (_mosaic() / 16).clip(0, 255).astype(np.uint8)  # JPEG tiles are 8-bit, as scanners write them
    tifffile.imwrite(folder / "scan.svs", eight_bit, tile=(256, 256), compression="jpeg")
    summary = nuclei.segment([str(folder)], store=tmp_path / "s.zarr", slide_pixels=1, block_size=512)
    assert summary["done"] == 1, summary["failures"]
    record = Store(str(tmp_path / "s.zarr")).record("scan")
    assert record is not None and record.model_extra and "slide" in record.model_extra and record.n_nuclei > 100


def test_a_slide_entry_is_on_disk_before_its_record(slide: Path, tmp_path: Path, flushes: Flushes) -> None:
    """After a power cut a slide's record must never point at chunks still in the page cache: every file and
    folder of the entry is flushed (fsynced each, or by one syncfs) before the record is renamed into place,
    and so is each finished block a re-run skips, before its own rename."""
    store = tmp_path / "s.zarr"
    assert nuclei.segment([str(slide)], store=store, slide_pixels=1, block_size=512)["done"] == 1
    entry = store / "images" / "mosaic.ome"
    [(renamed_at, source)] = flushes.renamed(lambda target: target == str(store / "index" / "mosaic.ome.json"))
    before = flushes.durable(stop=renamed_at)
    assert {str(p) for p in entry.rglob("*")} <= before and str(entry) in before and source in before
    blocks = flushes.renamed(lambda target: target.endswith(".npy.zst"))
    assert len(blocks) >= 6  # the blocks, as written
    assert all(block in flushes.durable(stop=at) for at, block in blocks)
    assert flushes.kinds() == {flushes.mode}


def test_a_big_slide_is_identified_by_its_size_head_and_tail(slide: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nuclei.io.lazy as lazy

    path = slide / "mosaic.ome.tif"
    monkeypatch.setattr(lazy, "FULL_HASH_MAX_BYTES", 1000)  # as if it were over a gigabyte
    monkeypatch.setattr(lazy, "_HEAD_TAIL", 4096)
    digest, how = source_identity(str(path), path.stat().st_size)
    assert how == "size+head+tail" and digest == source_identity(str(path), path.stat().st_size)[0]


def test_measurements_move_to_slide_coordinates() -> None:
    from nuclei.core.blocks import to_slide_coordinates

    columns = ("label", "area_px", "centroid_y_px", "centroid_x_um", "bbox_min_y_px", "bbox_max_x_px", "extent")
    table = np.array([[1.0, 10.0, 2.0, 0.5, 1.0, 4.0, 0.8]])
    moved = to_slide_coordinates(table, columns, Box(100, 200, 300, 400), pixel_size_um=0.5)
    np.testing.assert_allclose(moved, [[1.0, 10.0, 102.0, 150.5, 101.0, 304.0, 0.8]])

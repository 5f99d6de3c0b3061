"""`nuclei view` and nuclei.viewer: a real store (the shipped model on vendored samples) shown in napari.

Layers are checked on a headless `ViewerModel` (no Qt); one test opens a real Qt viewer offscreen, in a
subprocess, through the command's own code path (napari.run included).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

pytest.importorskip("napari")

from napari.components import ViewerModel  # noqa: E402

from nuclei.cli import view  # noqa: E402
from nuclei.errors import NucleiError  # noqa: E402
from nuclei.store import backend, layout  # noqa: E402
from nuclei.store.query import NucleiStore  # noqa: E402
from nuclei.viewer import add_store_layers  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "nuclei" / "assets" / "sample" / "images"
RGB = "2b50b1e3fa5c5aa39bc84ebfaea9961b7199c4d2488ae0b48d0b3459807d59d2.png"  # 256 x 256 RGB uint8
PYRAMID = "6d327ab4f0e3604fa6e9b8041c7e6db86ab809890d886c691f6e59c9168b7fbe.png"  # 256 x 320 RGB uint8
GREY16 = "IXMtest_A02_s1_w1051DAA7C-7042-435F-99F0-1E847D9B42CB.png"  # 520 x 696, 12-bit values in uint16
PIXEL_UM = 0.65


def _segment(folder: Path, store: Path, name: str, sample: str, **options: Any) -> None:
    from nuclei.inference.run import segment

    shutil.copy(SAMPLES / sample, folder / f"{name}.png")
    summary = segment([folder / f"{name}.png"], store, **options)  # the shipped model, in this process
    assert summary["done"] == 1, summary


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Entries 'rgb' (no pixel size), 'grey16' (0.65 um pixels) and 'pyramid' (three levels: the pyramid
    threshold lowered so that a small image gets the levels a whole-slide image would)."""
    root = tmp_path_factory.mktemp("viewer")
    path = root / "results.zarr"
    _segment(root, path, "rgb", RGB)
    _segment(root, path, "grey16", GREY16, pixel_size=PIXEL_UM)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(layout, "PYRAMID_MIN_SIZE", 100)
        _segment(root, path, "pyramid", PYRAMID)
    return path


def _layers(store: Path, ids: list[str] | None = None) -> tuple[ViewerModel, list[Any]]:
    viewer = ViewerModel()
    return viewer, add_store_layers(viewer, store, ids)


def _assert_lined_up(image: Any, labels: Any) -> None:
    """Same pixel grid: shape, scale and translate, so each label sits on its nucleus."""
    image_shape = image.data.shape[:2] if image.rgb else image.data.shape
    assert labels.data.shape == image_shape
    np.testing.assert_array_equal(labels.scale, image.scale)
    np.testing.assert_array_equal(labels.translate, image.translate)


def test_an_rgb_entry_is_one_colour_layer_under_its_visible_labels(store: Path) -> None:
    viewer, (image, labels) = _layers(store, ["rgb"])
    read = NucleiStore(store)
    assert (image.name, labels.name) == ("rgb", "rgb nuclei")
    assert image.rgb and image.data.shape == (256, 256, 3) and image.data.dtype == np.uint8
    np.testing.assert_array_equal(image.data, read.image("rgb"))
    assert labels.visible and not image.multiscale
    np.testing.assert_array_equal(labels.data, read.labels("rgb"))
    _assert_lined_up(image, labels)
    np.testing.assert_array_equal(image.scale, [1.0, 1.0])  # no pixel size: pixels, no unit made up
    assert not viewer.canvas.grid.enabled  # one entry: nothing to tile
    window = zarr.open_group(store / "images" / "rgb", mode="r").attrs["ome"]["omero"]["channels"][0]["window"]
    assert tuple(image.contrast_limits) == pytest.approx((window["start"], window["end"]))  # the store's window


def test_a_16_bit_grey_entry_is_greyscale_in_micrometres(store: Path) -> None:
    _, (image, labels) = _layers(store, ["grey16"])
    read = NucleiStore(store)
    assert not image.rgb and image.data.shape == (520, 696) and image.data.dtype == np.uint16
    assert image.colormap.name == "gray"
    np.testing.assert_array_equal(image.data, read.image("grey16")[..., 0])
    lo, hi = image.contrast_limits
    assert lo >= 100 and hi <= 4095  # 12-bit values: the data's range, not uint16's (a black picture)
    window = zarr.open_group(store / "images" / "grey16", mode="r").attrs["ome"]["omero"]["channels"][0]["window"]
    assert (lo, hi) == pytest.approx((window["start"], window["end"]))  # the store's rendering window: not dim
    np.testing.assert_array_equal(labels.data, read.labels("grey16"))
    _assert_lined_up(image, labels)
    np.testing.assert_allclose(image.scale, [PIXEL_UM, PIXEL_UM])
    assert [str(u) for u in image.units] == ["micrometer", "micrometer"] == [str(u) for u in labels.units]


def _status_features(labels: Any, world_position: tuple[float, float]) -> dict[str, float]:
    """What napari's status bar shows for a point: 'value; name: x, name: y, ...' parsed back."""
    status = labels.get_status(world_position, world=True)["value"]
    _, _, shown = status.partition("; ")
    return {key: float(value) for key, value in (item.split(": ") for item in shown.split(", "))}


@pytest.mark.parametrize("image_id", ["grey16", "rgb"])
def test_napari_shows_each_nucleus_its_own_measurements(store: Path, image_id: str) -> None:
    """features hold one row per nucleus; napari finds the row of a label value through the `index` column
    (without it, row i would be taken for label i, row 0 for the background: every nucleus its neighbour's)."""
    _, (_, labels) = _layers(store, [image_id])
    table = NucleiStore(store).measurements(image_id)
    assert list(labels.features.columns) == ["index", *table]
    np.testing.assert_array_equal(labels.features["index"], table["label"].astype(int))
    np.testing.assert_array_equal(labels.features["area_px"], table["area_px"])
    label_image = NucleiStore(store).labels(image_id)
    for value in (1, int(table["label"].max()), int(table["label"][len(table["label"]) // 2])):
        ys, xs = np.nonzero(label_image == value)
        shown = _status_features(labels, (ys[0] * labels.scale[0], xs[0] * labels.scale[1]))
        assert shown["label"] == value
        assert shown["area_px"] == ys.size  # the nucleus under the pointer, not a neighbour


def test_a_pyramid_is_one_lazy_multiscale_layer_per_array(store: Path) -> None:
    _, (image, labels) = _layers(store, ["pyramid"])
    assert image.multiscale and labels.multiscale and image.rgb
    assert [level.shape for level in image.data] == [(256, 320, 3), (128, 160, 3), (64, 80, 3)]
    assert [level.shape for level in labels.data] == [(256, 320), (128, 160), (64, 80)]
    assert type(image.data[0]).__module__.startswith("dask")  # napari reads only the tiles it shows
    np.testing.assert_array_equal(np.asarray(labels.data[0]), NucleiStore(store).labels("pyramid"))
    np.testing.assert_array_equal(np.asarray(image.data[0]), NucleiStore(store).image("pyramid"))
    _assert_lined_up(image, labels)


def test_every_entry_by_default_each_in_its_grid_tile(store: Path) -> None:
    viewer, layers = _layers(store)
    assert [layer.name for layer in layers] == ["grey16", "grey16 nuclei", "pyramid", "pyramid nuclei",
                                                "rgb", "rgb nuclei"]
    assert viewer.canvas.grid.enabled and viewer.canvas.grid.stride == 2
    positions = [viewer.canvas.grid.position(i, viewer.layers) for i in range(len(layers))]
    assert positions[0] == positions[1] != positions[2] == positions[3] != positions[4] == positions[5]
    fitted = (*viewer.camera.center, viewer.camera.zoom)
    viewer.reset_view()
    assert (*viewer.camera.center, viewer.camera.zoom) == pytest.approx(fitted)  # the grid fits at start


def test_the_default_is_capped_and_says_so(store: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    import nuclei.viewer

    monkeypatch.setattr(nuclei.viewer, "DEFAULT_MAX_ENTRIES", 2)
    with caplog.at_level(logging.WARNING, logger="nuclei.viewer"):
        _, layers = _layers(store)
    assert [layer.name for layer in layers] == ["grey16", "grey16 nuclei", "pyramid", "pyramid nuclei"]
    assert "holds 3 images: showing the first 2" in caplog.text


def test_an_unknown_id_is_named_with_the_store_and_adds_nothing(store: Path) -> None:
    viewer = ViewerModel()
    with pytest.raises(NucleiError, match=r"'nope'.*'../x'") as caught:
        add_store_layers(viewer, NucleiStore(store), ["rgb", "nope", "../x"])
    assert str(store) in str(caught.value)
    assert len(viewer.layers) == 0


def test_without_napari_the_command_says_what_to_install(monkeypatch: pytest.MonkeyPatch, store: Path) -> None:
    monkeypatch.setitem(sys.modules, "napari", None)  # `import napari` now raises ImportError
    with pytest.raises(NucleiError, match=r"pip install 'nuclei\[viewer\]'"):
        view.run(argparse.Namespace(store=str(store), ids=[]))


def _view_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nuclei")
    view.add(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["view", *argv])


def test_the_command_builds_its_viewer_then_hands_over(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's own path (arguments, store, ids, layers, then the event loop), with a headless ViewerModel
    standing in for napari.Viewer; a wrong id fails before any window opens."""
    import napari

    made: list[ViewerModel] = []

    def headless(title: str, show: bool) -> ViewerModel:
        made.append(ViewerModel(title=title))
        return made[-1]

    monkeypatch.setattr(napari, "Viewer", headless)
    started: list[Any] = []
    args = _view_args(str(store), "rgb", "grey16")
    assert args.handler(args, start=started.append) == 0
    assert started == made and made[0].title == f"nuclei: {store}"
    assert [layer.name for layer in made[0].layers] == ["rgb", "rgb nuclei", "grey16", "grey16 nuclei"]
    assert made[0].canvas.grid.enabled
    with pytest.raises(NucleiError, match="'nope'"):
        view.run(_view_args(str(store), "nope"), start=started.append)
    assert len(made) == 1 and len(started) == 1


def test_an_empty_store_says_so(tmp_path: Path) -> None:
    backend.Store(tmp_path / "empty.zarr", "a")
    with pytest.raises(NucleiError, match="no complete entries to show"):
        add_store_layers(ViewerModel(), tmp_path / "empty.zarr")


# A real Qt viewer, offscreen, in its own process (a QApplication outlives a test otherwise). It always builds a
# napari.Viewer; drawing layers needs OpenGL, which Qt's offscreen platform lacks (Xvfb or a display has it), so
# `nuclei view` itself runs only where a context can be made: its handler as the command runs it, napari.run()
# included, with a timer that reports the layers and closes the window.
_REAL_VIEWER = """
import argparse, json, sys
import napari
from napari.qt import get_qapp
from qtpy.QtCore import QTimer
from qtpy.QtGui import QOpenGLContext
from nuclei.cli import view

bare = napari.Viewer(show=False)
print(json.dumps({"built": type(bare).__name__}))
bare.close()
if not QOpenGLContext().create():
    print(json.dumps({"opengl": False}))
    sys.exit(0)

def report_and_close():
    viewer = napari.current_viewer()
    print(json.dumps({"title": viewer.title, "layers": [[layer.name, list(layer.data.shape), layer.visible]
                                                        for layer in viewer.layers]}))
    viewer.close()

get_qapp()
QTimer.singleShot(500, report_and_close)
parser = argparse.ArgumentParser(prog="nuclei")
view.add(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(["view", sys.argv[1], "rgb", "grey16"])
sys.exit(args.handler(args))
"""


def test_nuclei_view_in_a_real_napari_window_offscreen(store: Path, tmp_path: Path) -> None:
    pytest.importorskip("qtpy.QtCore", reason="napari without a Qt binding (napari[pyqt5]) has no windows")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", _REAL_VIEWER, str(store)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert reports[0] == {"built": "Viewer"}
    if reports[-1] == {"opengl": False}:
        pytest.skip("a napari.Viewer opens offscreen, but drawing layers needs OpenGL (run under Xvfb)")
    assert reports[-1] == {"title": f"nuclei: {store}", "layers": [
        ["rgb", [256, 256, 3], True], ["rgb nuclei", [256, 256], True],
        ["grey16", [520, 696], True], ["grey16 nuclei", [520, 696], True]]}

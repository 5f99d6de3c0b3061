"""The lab's loop in napari (issue 38): the plugin's real widgets in a real napari viewer, and the ranking of what
to label next.

napari draws layers with OpenGL, which Qt's offscreen platform lacks: without a display these tests start their
own Xvfb (Debian: xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxkbcommon-x11-0 libxcb-render-util0
libxcb-image0 libgl1 libegl1) and skip, saying so, where there is none. Fine-tunes run 1-2 epochs of one step
(FINETUNE_CHANGES patched), as tests/test_finetune.py keeps its run short with a small budget.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nuclei.core.metrics import average_precision
from nuclei.inference.sizing import label_image
from nuclei.inference.suggest import images_of, rank
from nuclei.io.datasets import load_dataset
from nuclei.io.images import read_labels, read_raw
from nuclei.napari import loop
from tests.conftest import SAMPLES

GREY = ["2b50b1e3fa5c5aa39bc84ebfaea9961b7199c4d2488ae0b48d0b3459807d59d2",  # 256 x 256, fluorescence as RGB
        "7ba20aa731cc21af74a8d940254176cbad1bdc44f240b550341c6d9c27509daa",
        "8bef203fce625e4d8c89dca728158be4662dfdfdcd4dc73a6aa39a908c1631bc"]
WAIT_MS = 240_000


# -- the ranking (no Qt) ---------------------------------------------------------------------------------------

def test_the_ranking_puts_the_images_the_model_gets_wrong_first() -> None:
    """On the 12 vendored samples, flip disagreement ranks by the model's real error: the first image is the
    worst or second-worst segmented, and the order runs against AP@0.5 (Spearman below -0.5)."""
    from scipy.stats import spearmanr

    engine = loop.engine_for(loop.model_choices()["nuclei-generalist"])
    ranked = rank(engine, images_of(SAMPLES / "images"))
    assert len(ranked) == 12
    assert [c.flip_disagreement for c in ranked] == sorted((c.flip_disagreement for c in ranked), reverse=True)
    aps = [average_precision(read_labels(SAMPLES / "labels" / Path(c.source).name),
                             label_image(engine, read_raw(c.source))[0]) for c in ranked]
    assert aps[0] <= sorted(aps)[1]  # among the two worst segmented of 12 (0.585 against 0.583 at worst)
    assert spearmanr([c.flip_disagreement for c in ranked], aps).statistic < -0.5
    assert all(0 <= c.flip_disagreement <= 1 and 0 < c.confidence <= 1 and c.n_nuclei > 0 for c in ranked)


def test_nuclei_suggest_ranks_a_store_and_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nuclei.cli.main import main
    from nuclei.inference.run import segment

    folder = tmp_path / "in"
    folder.mkdir()
    for name in GREY[:2]:
        shutil.copy(SAMPLES / "images" / f"{name}.png", folder / f"{name[:6]}.png")
    assert segment([folder], tmp_path / "s.zarr")["done"] == 2
    assert main(["suggest", str(tmp_path / "s.zarr"), "--n", "1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert len(shown) == 1 and shown[0]["id"] in ("2b50b1", "7ba20a") and shown[0]["source"].endswith(shown[0]["id"])
    assert main(["suggest", str(folder)]) == 0
    assert "2 of 2 images, the least sure first" in capsys.readouterr().out


# -- keeping a pair (no Qt) --------------------------------------------------------------------------------------

def test_a_kept_pair_is_what_finetune_reads_and_replacing_it_keeps_one(tmp_path: Path) -> None:
    raw = read_raw(SAMPLES / "images" / f"{GREY[0]}.png")
    labels = read_labels(SAMPLES / "labels" / f"{GREY[0]}.png").astype(np.int32)  # napari's Labels dtype
    assert loop.keep_pair(tmp_path, "field 1", raw, labels) == 1
    assert loop.keep_pair(tmp_path, "field 1", raw, np.where(labels == 1, 0, labels)) == 1  # a correction
    grey16 = np.full((40, 50), 3000, np.float32)  # float pixels: TIFF keeps them exactly
    big_ids = np.zeros((40, 50), np.int64)
    big_ids[2:6, 2:6], big_ids[10:15, 10:15] = 70000, 70001  # past uint16
    assert loop.keep_pair(tmp_path, "float", grey16, big_ids) == 2
    dataset = load_dataset(tmp_path, progress=False)
    kept = {s.id: s for s in dataset.samples}
    assert set(kept) == {"field_1", "float"}
    np.testing.assert_array_equal(kept["field_1"].raw, raw)
    np.testing.assert_array_equal(kept["field_1"].labels, np.where(labels == 1, 0, labels))
    assert kept["field_1"].labels.dtype == np.uint16 and kept["float"].labels.dtype == np.uint32
    np.testing.assert_array_equal(kept["float"].raw, grey16)
    np.testing.assert_array_equal(kept["float"].labels, big_ids)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temporary file left
    with pytest.raises(Exception, match="labels are 10x10"):
        loop.keep_pair(tmp_path, "bad", raw, np.zeros((10, 10), np.uint16))
    assert loop.count_pairs(tmp_path) == 2


# -- the widgets in a real viewer --------------------------------------------------------------------------------

@pytest.fixture(scope="session")  # session, and asked for before make_napari_viewer: set up before the QApplication
def display(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A display with OpenGL for napari's canvas: the one there is, else an Xvfb of our own, else a skip."""
    pytest.importorskip("napari")
    pytest.importorskip("pytestqt", reason="pytest-qt (the dev extra) gives napari's make_napari_viewer fixture")
    runtime = tmp_path_factory.mktemp("xdg")
    runtime.chmod(0o700)
    saved = {k: os.environ.get(k) for k in ("DISPLAY", "QT_QPA_PLATFORM", "XDG_RUNTIME_DIR")}
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    server = None
    if not os.environ.get("DISPLAY") or os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        if shutil.which("Xvfb") is None:
            pytest.skip("napari's canvas needs OpenGL: no display and no Xvfb (apt-get install xvfb "
                        "libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxkbcommon-x11-0 libxcb-render-util0 "
                        "libxcb-image0 libgl1 libegl1)")
        # -terminate: the server ends when its last client (this process's QApplication, at exit) disconnects;
        # stopping it while Qt still holds the connection would abort the test process.
        server = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0", "1280x1024x24", "-nolisten", "tcp",
                                   "-terminate"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert server.stdout is not None
        os.environ["DISPLAY"] = f":{server.stdout.readline().decode().strip()}"
        os.environ.pop("QT_QPA_PLATFORM", None)
    try:
        yield
    finally:
        if server is not None and not _qt_connected():
            server.terminate()  # no client ever came: -terminate would never end it
            server.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _qt_connected() -> bool:
    from qtpy.QtWidgets import QApplication

    return QApplication.instance() is not None


@pytest.fixture
def viewer(display: None, make_napari_viewer: Any) -> Any:
    from qtpy.QtWidgets import QApplication

    if QApplication.platformName() == "offscreen":
        pytest.skip("a QApplication was made offscreen earlier in this process: napari's canvas needs OpenGL")
    return make_napari_viewer()


# Two epochs of one step, no int8 variant: every step of the fine-tune runs, in seconds instead of minutes.
SHORT = {"steps_per_epoch": 1, "epochs": 2, "quantize_int8": False}


def _wait(qtbot: Any, widget: Any) -> None:
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def _open(viewer: Any, name: str) -> Any:
    return viewer.add_image(read_raw(SAMPLES / "images" / f"{name}.png"), name=name[:6], rgb=True)


def _labelled_folder(tmp_path: Path) -> Path:
    """Two of the samples' pairs, as a lab's earlier corrections."""
    folder = tmp_path / "labelled"
    for part in ("images", "labels"):
        (folder / part).mkdir(parents=True)
        for name in GREY[1:]:
            shutil.copy(SAMPLES / part / f"{name}.png", folder / part / f"{name[:6]}.png")
    return folder


@pytest.mark.slow
def test_segment_correct_keep_finetune_and_segment_again(viewer: Any, qtbot: Any, tmp_path: Path) -> None:
    from napari.layers import Labels

    from nuclei.napari.widgets import LabLoopWidget

    loop_widget = LabLoopWidget(viewer)
    viewer.window.add_dock_widget(loop_widget, name="nuclei")
    image = _open(viewer, GREY[0])
    segment = loop_widget.segment
    assert segment.image.value == image.name  # the layer just opened (selected) is the one to segment
    segment.model.value = "nuclei-generalist"
    segment.start()
    _wait(qtbot, segment)
    nuclei = viewer.layers[f"{image.name} nuclei"]
    assert isinstance(nuclei, Labels) and segment.error is None
    assert nuclei.data.shape == (256, 256) and int(nuclei.data.max()) >= 5
    assert list(nuclei.features["label"].astype(int)) == sorted(np.unique(nuclei.data[nuclei.data > 0]))
    assert "area_px" in nuclei.features and segment.status.value.endswith("(nuclei-generalist@" +
                                                                        segment.last.model.split("@")[1] + ")")

    edited = nuclei.data.copy()  # a correction: one nucleus removed, one painted in
    edited[edited == 1] = 0
    edited[2:9, 2:9] = edited.max() + 1
    nuclei.data = edited
    keep = loop_widget.keep
    folder = _labelled_folder(tmp_path)
    keep.labels_layer.value, keep.folder.value = nuclei.name, folder
    assert keep.image.value == image.name
    assert keep.keep() == 3 and "holds 3 pair(s)" in keep.status.value
    np.testing.assert_array_equal(read_labels(folder / "labels" / f"{image.name}.png"), edited)

    tune = loop_widget.finetune
    tune.folder.value, tune.out.value, tune.model_name.value = folder, tmp_path / "models", "lab"
    tune.minutes.value, tune.recipe = 0.1, SHORT
    tune.start()
    _wait(qtbot, tune)
    assert tune.error is None, tune.error
    model = tmp_path / "models" / "lab"
    assert tune.result is not None and tune.result.model_dir == model and (model / "model.onnx").is_file()
    epochs = tune.fitting.epochs
    seen = [int(e["epoch"]) for e in epochs.figures]  # 2 asked; a 30 s budget may stop at 1 on a busy CPU
    assert seen in ([1], [1, 2]) and "val_loss" in epochs.last
    assert "val loss" in epochs.line() and "best" in epochs.line()  # what the status line showed while fitting
    verdict = json.loads((model / "finetune" / "comparison.json").read_text())["verdict"]
    assert verdict in tune.comparison.value and "| nuclei-generalist |" in tune.comparison.value
    assert "comparison: lab" in viewer.layers

    assert "lab" in segment.model.choices  # the new model is selectable in Segment at once
    segment.model.value = "lab"
    segment.start()
    _wait(qtbot, segment)
    assert segment.error is None and segment.last.model.startswith("lab@")
    assert viewer.layers[f"{image.name} nuclei"].metadata["nuclei"]["model"].startswith("lab@")


@pytest.mark.slow
def test_cancelling_a_finetune_leaves_no_model_folder(viewer: Any, qtbot: Any, tmp_path: Path) -> None:
    from nuclei.napari.widgets import FinetuneWidget

    tune = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(tune)
    folder = _labelled_folder(tmp_path)
    tune.folder.value, tune.out.value, tune.model_name.value = folder, tmp_path / "models", "lab"
    tune.minutes.value, tune.recipe = 5.0, {**SHORT, "epochs": 1000}  # only the cancel ends it early
    tune.start()
    qtbot.waitUntil(lambda: tune.fitting is not None and len(tune.fitting.epochs.figures) >= 1, timeout=WAIT_MS)
    tune.cancel_button.changed.emit(True)  # the button's click
    _wait(qtbot, tune)
    assert tune.status.value == "cancelled: nothing written" and tune.result is None
    assert not (tmp_path / "models" / "lab").exists()
    assert not list((tmp_path / "models").iterdir())  # nor a partial folder


def test_label_next_ranks_a_folder_and_opens_the_least_sure_image(viewer: Any, qtbot: Any, tmp_path: Path) -> None:
    from nuclei.napari.widgets import SuggestWidget

    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for name in ("1a11552569160f0b1ea10bedbd628ce6c14f29edec5092034c2309c556df833e", *GREY[:2]):
        shutil.copy(SAMPLES / "images" / f"{name}.png", folder / f"{name[:6]}.png")
    suggest = SuggestWidget(viewer)
    viewer.window.add_dock_widget(suggest)
    suggest.source.value = folder
    suggest.start()
    _wait(qtbot, suggest)
    assert suggest.error is None and [c.id for c in suggest.candidates][0] == "1a1155"  # the worst segmented
    top = suggest.candidates[0].flip_disagreement
    assert suggest.ranking.value.splitlines()[0].startswith(f" 1. 1a1155  disagreement {top:.3f}")
    suggest.open_button.changed.emit(True)
    assert viewer.layers[-1].name == "1a1155" and viewer.layers[-1].data.shape == (1024, 1024, 3)


def test_the_plugin_is_in_napari_s_plugins_menu() -> None:
    npe2 = pytest.importorskip("npe2", reason="napari is not installed (pip install 'nuclei[viewer]')")
    PluginManager = npe2.PluginManager  # noqa: N806

    manager = PluginManager.instance()
    manager.discover()
    manifest = manager.get_manifest("nuclei")
    assert {w.display_name for w in manifest.contributions.widgets or []} == {
        "Lab loop", "Segment", "Correct and keep", "Fine-tune", "What to label next"}

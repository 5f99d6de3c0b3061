"""Reliability round 4 (issue 36): each hostile case ends correct or as a named one-line failure with a non-zero
exit. Real files on disk, the `nuclei` command itself (in this process, or in its own process where a signal or
a pipe is the case), the shipped model; seconds per test but the two that train."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nuclei.cli.main import main
from nuclei.errors import ModelError
from nuclei.io.images import write_png
from nuclei.modeldir import SHIPPED_MODELS
from tests.conftest import REPO, SAMPLES, chunk_files

SMALL_MODEL = SHIPPED_MODELS / "dsb2018-unet"  # a whole model directory, 9 MB: what "a previous model" is here


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links as their target) with its sha256: a folder's content, to compare."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            found[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _fake_model(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_format_version": 1, "name": path.name}))
    (path / "model.onnx").write_bytes(b"another model's weights")
    return path


# --- 1: a model name is one new folder under --out; publishing replaces only its own previous model ------------

BAD_NAMES = {
    ".": "the output folder itself",
    "..": "its parent",
    "": "is empty",
    ".hidden": "is hidden",
    "a/b": "path separator",
    "../escape": "path separator",
    "/tmp/absolute": "path separator",
    "link": "symbolic link",
    "notes": "not a model directory",
    "afile": "is a file",
}


@pytest.mark.parametrize("command", ["finetune", "train"])
def test_a_model_name_that_is_a_path_is_refused_before_any_work(
        command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from nuclei.training import finetune, steps

    monkeypatch.setattr(finetune, "load_datasets", lambda *a, **k: pytest.fail("no image may be read"))
    monkeypatch.setattr(steps, "load", lambda *a, **k: pytest.fail("no image may be read"))
    out = tmp_path / "models"
    _fake_model(out / "other")
    (tmp_path / "elsewhere").mkdir()
    (out / "link").symlink_to(tmp_path / "elsewhere")
    (out / "notes").mkdir()
    (out / "notes" / "plate1.txt").write_text("a lab's notes, not a model")
    (out / "afile").write_text("a file")
    before, outside = _tree(out), _tree(tmp_path / "elsewhere")
    for name, reason in BAD_NAMES.items():
        code = main([command, str(SAMPLES), "--name", name, "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith("nuclei: error: "), (name, err)
        assert f"model name {name!r}" in err and reason in err, (name, err)
        assert _tree(out) == before and _tree(tmp_path / "elsewhere") == outside  # nothing moved, nothing made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "models"]


def test_publishing_replaces_only_its_own_previous_model_and_only_with_a_whole_one(tmp_path: Path) -> None:
    from nuclei.config import TrainConfig
    from nuclei.training.steps import publish

    out = tmp_path / "models"
    _fake_model(out / "lab")
    _fake_model(out / "other")
    config = TrainConfig(data_dir=str(SAMPLES), out_dir=str(out), name="lab")
    staging = out / ".lab.partial"
    shutil.copytree(SMALL_MODEL, staging)
    (staging / "model.onnx").unlink()  # not whole: the previous model stays
    before = _tree(out)
    with pytest.raises(ModelError, match="model.onnx: missing"):
        publish(staging, config)
    assert _tree(out) == before
    shutil.copy(SMALL_MODEL / "model.onnx", staging / "model.onnx")
    other = _tree(out / "other")
    assert publish(staging, config) == out / "lab"
    assert sorted(p.name for p in out.iterdir()) == ["lab", "other"]  # no .lab.old, no .lab.partial left
    assert _tree(out / "lab") == _tree(SMALL_MODEL) and _tree(out / "other") == other


# --- 2: label images in any encoding: a binary mask is a mask whatever its bit depth ---------------------------


def _separate_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """A 128x128 grey field of 16 round nuclei well apart (soft edges, camera noise), and their instance labels."""
    from scipy import ndimage

    yy, xx = np.mgrid[:128, :128]
    labels = np.zeros((128, 128), np.uint16)
    for index, (y, x) in enumerate(((y, x) for y in range(16, 128, 32) for x in range(16, 128, 32)), start=1):
        labels[(yy - y) ** 2 + (xx - x) ** 2 <= 8**2] = index
    field = ndimage.gaussian_filter(140.0 * (labels > 0), 1.0) + 20 + np.random.default_rng(0).normal(0, 4, (128, 128))
    return np.clip(field, 0, 255).astype(np.uint8), labels


def _mask_files(folder: Path, labels: np.ndarray) -> dict[str, Path]:
    """The same binary mask in each encoding a lab's tools save."""
    import tifffile

    mask = labels > 0
    encodings: dict[str, np.ndarray] = {
        "8-bit 0/255": mask.astype(np.uint8) * 255, "16-bit 0/1": mask.astype(np.uint16),
        "16-bit 0/65535": mask.astype(np.uint16) * 65535, "32-bit 0/1": mask.astype(np.uint32),
        "32-bit float 0/255": mask.astype(np.float32) * 255, "1-bit": mask,
    }
    files = {}
    for number, (encoding, array) in enumerate(encodings.items()):
        path = folder / f"m{number}" / "labels" / ("x.png" if array.dtype in (np.uint8, np.uint16) else "x.tif")
        path.parent.mkdir(parents=True)
        if path.suffix == ".png":
            write_png(path, array)
        else:
            tifffile.imwrite(path, array)
        files[encoding] = path
    return files


def test_binary_masks_in_any_encoding_are_told_apart_from_instance_labels(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nuclei.io.datasets import load_dataset

    image, labels = _separate_nuclei()
    write_png(tmp_path / "in" / "x.png", image)
    assert main(["segment", str(tmp_path / "in"), "--store", str(tmp_path / "s.zarr")]) == 0
    capsys.readouterr()
    scores = {}
    for encoding, mask in _mask_files(tmp_path / "truth", labels).items():
        truth = mask.parent.parent
        write_png(truth / "images" / "x.png", image)
        assert load_dataset(truth, progress=False).samples[0].labels.max() == 16, encoding  # training, fine-tuning
        assert main(["evaluate", str(truth), "--store", str(tmp_path / "s.zarr"), "--out", str(truth / "r"),
                     "--json"]) == 0
        scores[encoding] = json.loads(capsys.readouterr().out)["overall"]["ap50"]
    assert scores["8-bit 0/255"] > 0.9, scores  # 16-bit masks scored 0.000: one nucleus per image
    assert len(set(scores.values())) == 1, scores
    write_png(tmp_path / "inst" / "labels" / "x.png", labels)  # instance labels keep their ids
    write_png(tmp_path / "inst" / "images" / "x.png", image)
    assert np.array_equal(load_dataset(tmp_path / "inst", progress=False).samples[0].labels, labels)


# --- 3: Ctrl-C during a fine-tune or a training over an existing model: stopped, nothing published -------------


@pytest.mark.slow
@pytest.mark.parametrize(("command", "signum"), [("finetune", signal.SIGINT), ("train", signal.SIGINT),
                                                 ("finetune", signal.SIGTERM)])
def test_ctrl_c_while_training_publishes_nothing_and_keeps_the_previous_model(command: str, signum: int,
                                                                              tmp_path: Path) -> None:
    out = tmp_path / "models"
    shutil.copytree(SMALL_MODEL, out / "lab")
    previous = _tree(out / "lab")
    args = {"finetune": ["--minutes", "5", "--hold-back", "0"],
            "train": ["--epochs", "1000", "--depth", "2", "--base-filters", "4", "--crop-size", "64"]}[command]
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "nuclei.cli.main", command, str(SAMPLES), "--name", "lab",
                                "--out", str(out), *args], cwd=REPO, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / ".lab.partial" / "history.csv").exists():  # fitting has begun
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
            time.sleep(0.2)
        time.sleep(2)
        os.killpg(process.pid, signum)  # as Ctrl-C sends SIGINT: to the terminal's whole process group
        stopped = time.monotonic()
        err = process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, err
    assert time.monotonic() - stopped < 60
    assert err.strip().splitlines()[-1] == f"nuclei: interrupted: nothing was published; {out / 'lab'} is as it was"
    assert "Traceback" not in err, err
    assert sorted(p.name for p in out.iterdir()) == ["lab"]  # the partial folder removed, nothing set aside
    assert _tree(out / "lab") == previous


# --- 9: fine-tuning's and training's user errors are one line, before the work they would waste ----------------


def test_finetune_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    one = tmp_path / "one"
    first = sorted((SAMPLES / "images").iterdir())[0]
    for folder in ("images", "labels"):
        (one / folder).mkdir(parents=True)
        shutil.copy(SAMPLES / folder / first.name, one / folder / first.name)
    out = tmp_path / "models"
    cases = {("finetune", str(one)): "1 labelled image(s); fine-tuning needs at least 2",
             ("train", str(one)): "1 training and 0 validation images: need both",
             ("finetune", str(SAMPLES), "--minutes", "0"): "--minutes: 0 is no time budget",
             ("finetune", str(SAMPLES), "--minutes", "-5"): "--minutes: -5 is no time budget",
             ("finetune", str(SAMPLES), "--minutes", "nan"): "--minutes: nan is no time budget",
             ("finetune", str(SAMPLES), "--hold-back", "1"): "--hold-back: 1 is not a share"}
    for args, message in cases.items():
        code = main([*args, "--name", "lab", "--out", str(out)])
        err = capsys.readouterr().err.splitlines()  # after the loading bar, if images were read
        assert code == 2 and err[-1].startswith("nuclei: error: ") and message in err[-1], (args, err)
        assert not any("Traceback" in line or line.startswith("nuclei:") for line in err[:-1]), (args, err)
    assert not out.exists() or not any(out.iterdir())


# --- 10: thread counts from the environment: OpenMP's nested form read, garbage one line naming the variable ---


def test_thread_variables_are_read_as_openmp_does_and_garbage_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from nuclei.inference.engine import default_threads

    write_png(tmp_path / "in" / "x.png", _separate_nuclei()[0])
    store = tmp_path / "s.zarr"
    monkeypatch.delenv("NUCLEI_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")  # valid nested OpenMP: 4 threads at the outer level
    assert default_threads() == 4
    assert main(["segment", str(tmp_path / "in"), "--store", str(store)]) == 0
    capsys.readouterr()
    for variable, value in (("OMP_NUM_THREADS", "4,x"), ("OMP_NUM_THREADS", "garbage"), ("NUCLEI_THREADS", "abc"),
                            ("NUCLEI_THREADS", "0")):
        monkeypatch.setenv(variable, value)
        for args in (["segment", str(tmp_path / "in"), "--store", str(tmp_path / "new.zarr")],
                     ["train", str(SAMPLES), "--name", "lab", "--out", str(tmp_path / "models")]):
            code = main(args)
            err = capsys.readouterr().err
            assert code == 2 and err.count("\n") == 1, (variable, value, args, err)
            assert err.startswith(f"nuclei: error: {variable}={value!r}: not a number of threads"), err
        monkeypatch.delenv(variable)
    assert not (tmp_path / "new.zarr").exists() and not (tmp_path / "models").exists()


# --- 12: a reader that goes away (`nuclei query S stats | head -2`) ends the command quietly ------------------


def test_a_closed_pipe_ends_queries_quietly(tmp_path: Path) -> None:
    import nuclei

    for seed in range(3):
        write_png(tmp_path / "in" / f"x{seed}.png", np.roll(_separate_nuclei()[0], 7 * seed, axis=1))
    nuclei.segment([tmp_path / "in"], tmp_path / "s.zarr")
    command = Path(sys.executable).with_name("nuclei")  # the installed entry point
    for query in (["stats"], ["list"], ["show", "x1"], ["list", "--json"]):
        process = subprocess.Popen([str(command), "query", str(tmp_path / "s.zarr"), *query],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert process.stdout is not None
        process.stdout.close()  # the reader is gone before the command writes: as `| head` after its lines
        err = process.communicate(timeout=60)[1]
        assert process.returncode in (0, 141) and err == "", (query, process.returncode, err)
    piped = subprocess.run(["bash", "-c", f"set -o pipefail; {command} query {tmp_path / 's.zarr'} list | head -1"],
                           capture_output=True, text=True, timeout=60)
    assert piped.returncode in (0, 141) and piped.stderr == "" and piped.stdout.count("\n") == 1, piped


# --- 11: a slide with a corrupt tile fails in one line (the reason in the summary), no traceback ---------------


def test_a_slide_with_a_corrupt_tile_fails_in_one_line(tmp_path: Path) -> None:
    import tifffile

    field = np.tile(_separate_nuclei()[0], (4, 6))  # 512 x 768: six 256-px tiles
    slide = tmp_path / "in" / "slide.tif"
    slide.parent.mkdir()
    tifffile.imwrite(slide, field, tile=(256, 256), compression="zlib")
    with tifffile.TiffFile(slide) as tiff:
        offset, size = tiff.pages[0].dataoffsets[4], tiff.pages[0].databytecounts[4]
    data = bytearray(slide.read_bytes())
    data[offset:offset + size] = bytes(range(256)) * (size // 256) + b"\0" * (size % 256)  # a middle tile
    slide.write_bytes(bytes(data))
    run = subprocess.run([str(Path(sys.executable).with_name("nuclei")), "segment", str(slide.parent), "--store",
                          str(tmp_path / "s.zarr"), "--slide-pixels", "1", "--block-size", "256"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr and run.stderr.count("\n") <= 1, run.stderr
    assert f"failed: {slide}: " in run.stdout and "1 failed of 1 found" in run.stdout, run.stdout


# --- 4 and 8: the index is the records: copies, strays and hand-edited ids are never served, check names them ----


def test_the_index_serves_only_records_named_for_their_ids(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import csv

    for seed in range(3):
        write_png(tmp_path / "in" / f"x{seed}.png", np.roll(_separate_nuclei()[0], 7 * seed, axis=1))
    store = tmp_path / "s.zarr"
    assert main(["segment", str(tmp_path / "in"), "--store", str(store)]) == 0
    index = store / "index"
    x0 = json.loads((index / "x0.json").read_text())
    (index / "x0.sync-conflict-20260101-120000-ABCDEFG.json").write_text(json.dumps({**x0, "n_nuclei": 24}))
    (index / "notes.txt").write_text("someone's notes")
    x1 = json.loads((index / "x1.json").read_text())
    (index / "x1.json").write_text(json.dumps({**x1, "id": "../../outside"}))  # hand-edited
    capsys.readouterr()

    assert main(["query", str(store), "list", "--json"]) == 0
    assert {row["id"]: row["n_nuclei"] for row in json.loads(capsys.readouterr().out)} == {
        "x0": x0["n_nuclei"], "x2": json.loads((index / "x2.json").read_text())["n_nuclei"]}
    assert main(["query", str(store), "stats"]) == 0
    assert "images: 2" in capsys.readouterr().out
    assert main(["query", str(store), "export", "--summary", str(tmp_path / "summary.csv")]) == 0
    with open(tmp_path / "summary.csv") as handle:
        rows = {row["image_id"]: row for row in csv.DictReader(handle)}
    assert sorted(rows) == ["x0", "x2"] and int(rows["x0"]["n_nuclei"]) == x0["n_nuclei"]
    assert main(["query", str(store), "export", str(tmp_path / "out"), "--labels"]) == 0  # goes on past x1
    assert sorted(p.name for p in (tmp_path / "out").rglob("*.png")) == ["x0.png", "x2.png"]
    assert main(["query", str(store), "show", "x1"]) == 2  # its record hides it: no entry of that name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out", "s.zarr", "summary.csv"]  # none outside
    capsys.readouterr()

    assert main(["check", str(store), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert sorted(Path(p).name for p in report["stray_files"]) == [
        "notes.txt", "x0.sync-conflict-20260101-120000-ABCDEFG.json", "x1.json"]
    assert "invalid id '../../outside'" in report["stray_files"][str(index / "x1.json")]
    assert main(["check", str(store), "--repair"]) == 0
    assert sorted(p.name for p in (store / "aside" / "index").iterdir()) == [
        "notes.txt", "x0.sync-conflict-20260101-120000-ABCDEFG.json", "x1.json"]  # kept for their owner
    assert sorted(p.name for p in index.iterdir()) == ["x0.json", "x2.json"]
    assert main(["check", str(store)]) == 0
    capsys.readouterr()
    assert main(["segment", str(tmp_path / "in"), "--store", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["done"] == 1  # x1 written again, under its own name
    assert main(["check", str(store)]) == 0


# --- 2: `check` reads content, not shapes: every array of an entry, every pyramid level, the tables ------------


def _damage(array: Path, how: str) -> None:
    """Lose one chunk of a stored array, or change one of its values (a chunk that decodes, with other content)."""
    import zarr

    if how == "lost":
        chunk_files(array)[0].unlink()
        return
    stored = zarr.open_array(str(array), mode="r+")
    corner = (0,) * (stored.ndim - 2) + (stored.shape[-2] // 3, stored.shape[-1] // 3)
    stored[corner] = stored[corner] + 1


def test_check_reads_every_array_of_an_entry_not_its_shape(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import tifffile

    from nuclei.store.backend import Store

    field = np.tile(_separate_nuclei()[0], (9, 9))[:1100, :1090]  # pyramid levels s0, s1 (a side over 1024)
    write_png(tmp_path / "in" / "big.png", field)
    tifffile.imwrite(tmp_path / "in" / "slide.tif", field, tile=(256, 256), compression="zlib")
    clean = tmp_path / "clean.zarr"
    assert main(["segment", str(tmp_path / "in"), "--store", str(clean), "--slide-pixels", "1000000",
                 "--block-size", "512"]) == 0
    assert "slide" in json.loads((clean / "index" / "slide.json").read_text())  # one plain entry, one slide
    assert main(["check", str(clean)]) == 0
    capsys.readouterr()
    arrays = ["measurements", "s1", "labels/nuclei/s1", "labels/mask/s1", "labels/mask/s0"]
    cases = [(entry, array, how) for entry in ("big", "slide") for array in arrays for how in ("lost", "changed")]
    for number, (entry, array, how) in enumerate(cases):
        store = tmp_path / f"s{number}.zarr"
        shutil.copytree(clean, store)
        _damage(store / "images" / entry / array, how)
        assert main(["check", str(store), "--json"]) == 1, (entry, array, how)
        damaged = json.loads(capsys.readouterr().out)["damaged"]
        assert list(damaged) == [entry], (entry, array, how, damaged)
        assert main(["check", str(store), "--repair"]) == 0
        assert Store(store).ids() == sorted({"big", "slide"} - {entry}), (entry, array, how)
        capsys.readouterr()
        shutil.rmtree(store)

    # Records written before these hashes check as before; their tables are read for their labels 1..N.
    old = tmp_path / "old.zarr"
    shutil.copytree(clean, old)
    for entry in ("big", "slide"):
        path = old / "index" / f"{entry}.json"
        record = json.loads(path.read_text())
        record["arrays_sha256"] = {k: v for k, v in record["arrays_sha256"].items() if k in ("image", "labels")}
        for sums in record.get("slide", {}).get("blocks_sha256", []):
            del sums["mask"]
        path.write_text(json.dumps(record))
    assert main(["check", str(old)]) == 0
    capsys.readouterr()
    for entry in ("big", "slide"):
        _damage(old / "images" / entry / "measurements", "lost")
    assert main(["check", str(old), "--json"]) == 1
    damaged = json.loads(capsys.readouterr().out)["damaged"]
    assert sorted(damaged) == ["big", "slide"] and all("label column" in why for why in damaged.values()), damaged


# --- 3: a slide's identity covers its pixels: a source rewritten between a kill and the re-run starts over -------


def _ome_zarr(path: Path, cyx: np.ndarray) -> None:
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("0", data=cyx, chunks=(1, 256, 256))
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}]}]}


def test_a_slide_rewritten_between_a_kill_and_its_rerun_is_never_resumed_with_old_blocks(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import zarr

    from nuclei.io.lazy import source_identity
    from nuclei.store.backend import Store

    field = np.tile(_separate_nuclei()[0], (4, 8))  # 512 x 1024: eight 256-px blocks
    image = tmp_path / "in" / "plate.ome.zarr"
    _ome_zarr(image, field[None])
    store = tmp_path / "s.zarr"
    # A model whose scaling does not depend on the pixels (dtype range): only the blocks' own hashes can tell
    # (the default model's local maps change with the pixels, and so start the slide over before them).
    model = ["--model", str(REPO / "nuclei" / "assets" / "models" / "dsb2018-unet"), "--stained-model", "none"]
    child = subprocess.Popen([str(Path(sys.executable).with_name("nuclei")), "segment", str(image), "--store",
                              str(store), "--block-size", "256", *model], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    scratch = store / "blocks" / "plate.ome"
    deadline = time.monotonic() + 120
    while len(list(scratch.glob("*.npy.zst"))) < 2 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert 2 <= len(list(scratch.glob("*.npy.zst"))) < 8, "the run should be killed part way (8 blocks)"

    # Other pixels, the same metadata: the nuclei moved by 16 px (the same values, so the same intensity range).
    before = source_identity(str(image), 0)
    zarr.open_array(str(image / "0"), mode="r+")[...] = np.roll(field, (16, 16), axis=(0, 1))[None]
    assert source_identity(str(image), 0) == before  # what the metadata says has not changed
    caplog.set_level(logging.INFO, logger="nuclei.inference.slide")
    assert main(["segment", str(image), "--store", str(store), "--block-size", "256", *model]) == 0
    said = [r.getMessage() for r in caplog.records if "starting the slide over" in r.getMessage()]
    assert len(said) == 1 and "the source's pixels under" in said[0], caplog.text
    assert "resuming" not in caplog.text
    assert main(["segment", str(image), "--store", str(tmp_path / "clean.zarr"), "--block-size", "256",
                 *model]) == 0
    np.testing.assert_array_equal(Store(store).read_labels("plate.ome"),
                                  Store(tmp_path / "clean.zarr").read_labels("plate.ome"))
    np.testing.assert_array_equal(Store(store).read_measurements("plate.ome")[1],
                                  Store(tmp_path / "clean.zarr").read_measurements("plate.ome")[1])
    assert main(["check", str(store)]) == 0


# --- 7: declared sizes are claims: a slide declaring too many pixels is refused; Ctrl-C stops a slide in seconds --


def test_a_slide_declaring_more_pixels_than_the_ceiling_is_refused_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import tifffile
    import zarr

    bomb = tmp_path / "in" / "bomb.ome.zarr"  # metadata only: 140000 x 140000 px declared, no chunk exists
    group = zarr.open_group(str(bomb), mode="w", zarr_format=3)
    group.create_array("0", shape=(1, 140000, 140000), dtype=np.uint8, chunks=(1, 4096, 4096), fill_value=0)
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}]}]}
    store = tmp_path / "s.zarr"
    started = time.monotonic()
    command = [str(Path(sys.executable).with_name("nuclei")), "segment", str(bomb), "--store", str(store)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert (f"failed: {bomb}: declares 140000x140000 = 19,600 Mpixel, above max_slide_pixels=17,180 Mpixel "
            "(raise --max-slide-pixels if the slide is genuine)") in run.stdout, run.stdout
    assert time.monotonic() - started < 60 and not (store / "blocks").exists()
    assert not list((store / "images").glob("*/"))

    slide = tmp_path / "in2" / "slide.tif"  # a real tiled TIFF, over a ceiling set on purpose
    slide.parent.mkdir()
    tifffile.imwrite(slide, np.tile(_separate_nuclei()[0], (8, 8)), tile=(256, 256), compression="zlib")
    assert main(["segment", str(slide), "--store", str(store), "--slide-pixels", "1",
                 "--max-slide-pixels", "1000000"]) == 1
    assert "declares 1024x1024 = 1 Mpixel, above max_slide_pixels=1 Mpixel" in capsys.readouterr().out
    assert main(["segment", str(slide), "--store", str(store), "--slide-pixels", "1", "--block-size", "512",
                 "--max-slide-pixels", "1048576"]) == 0  # at the ceiling: segmented
    assert not (store / "blocks").exists() or not any((store / "blocks").iterdir())


def test_a_slide_whose_bytes_cannot_hold_its_declared_pixels_is_refused_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import tifffile
    import zarr

    from nuclei.io.lazy import stored_bytes

    bomb = tmp_path / "in" / "bomb.tif"  # the file: 100000 x 100000 px of uint8, every tile but one empty
    bomb.parent.mkdir()
    tiles = (np.zeros((512, 512), np.uint8) if i == 0 else None for i in range(196 * 196))
    tifffile.imwrite(bomb, tiles, shape=(100000, 100000), dtype=np.uint8, tile=(512, 512), compression="zlib",
                     bigtiff=True)
    assert bomb.stat().st_size < 1e6 and 100000 * 100000 < 2**34  # 0.46 MB, within max_slide_pixels
    store = tmp_path / "s.zarr"
    started = time.monotonic()
    assert main(["segment", str(bomb), "--store", str(store)]) == 1
    out = capsys.readouterr().out
    failed = [line.strip() for line in out.splitlines() if str(bomb) in line]  # one line, as tifffile sizes it
    assert len(failed) == 1 and re.fullmatch(
        rf"failed: {re.escape(str(bomb))}: declares 100000x100000 px, 10,000 MB of pixels, in 0\.4\d MB stored "
        r"\(2\d,\d{3}x, above max_compression=5,000x: real slides compress 2-200x; raise --max-compression if "
        r"the slide is genuine\)", failed[0]), out
    assert time.monotonic() - started < 30 and not (store / "blocks").exists()

    empty = tmp_path / "in2" / "empty.ome.zarr"  # OME-Zarr: 100000 x 100000 declared, within the ceiling, no chunk
    group = zarr.open_group(str(empty), mode="w", zarr_format=3)
    group.create_array("0", shape=(1, 100000, 100000), dtype=np.uint8, chunks=(1, 4096, 4096), fill_value=0)
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}]}]}
    assert main(["segment", str(empty), "--store", str(store)]) == 1
    assert f"failed: {empty}: declares 100000x100000 px, 10,000 MB of pixels, in 0.00 MB stored (" in \
        capsys.readouterr().out
    assert not (store / "blocks").exists()

    slide = tmp_path / "in3" / "scan.svs"  # a real JPEG-tiled slide (10x smaller than its pixels): segmented
    slide.parent.mkdir()
    tifffile.imwrite(slide, np.tile(_separate_nuclei()[0], (4, 4)), tile=(256, 256), compression="jpeg")
    assert main(["segment", str(slide), "--store", str(store), "--slide-pixels", "1", "--block-size", "512",
                 "--max-compression", "2"]) == 1  # a ceiling set on purpose names the option
    assert "above max_compression=2x: real slides compress 2-200x; raise --max-compression" in capsys.readouterr().out
    assert main(["segment", str(slide), "--store", str(store), "--slide-pixels", "1", "--block-size", "512"]) == 0

    chunked = tmp_path / "chunked.zarr"  # the walk of an OME-Zarr's files stops once enough bytes are seen
    zarr.create_array(str(chunked), data=np.arange(256 * 256, dtype=np.uint16).reshape(256, 256), chunks=(16, 16))
    assert stored_bytes(str(chunked), enough=1) < stored_bytes(str(chunked), enough=1 << 40)


def test_ctrl_c_stops_a_slide_within_ten_seconds_mid_block(tmp_path: Path) -> None:
    import tifffile

    slide = tmp_path / "in" / "slide.tif"  # one 4096-px block: a model run of half a minute on one thread
    slide.parent.mkdir()
    tifffile.imwrite(slide, np.tile(_separate_nuclei()[0], (32, 32)), tile=(512, 512), compression="zlib")
    store = tmp_path / "s.zarr"
    process = subprocess.Popen([str(Path(sys.executable).with_name("nuclei")), "segment", str(slide), "--store",
                                str(store), "--slide-pixels", "1"], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (store / "blocks" / "slide" / "manifest.json").exists():  # the block is being labelled
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
            time.sleep(0.05)
        time.sleep(2)
        os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C: the terminal's whole process group
        stopped = time.monotonic()
        err = process.communicate(timeout=60)[1]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert time.monotonic() - stopped < 10, err
    assert process.returncode == 130 and "Traceback" not in err and "terminate called" not in err, err
    assert err.strip().splitlines()[-1].startswith("nuclei: interrupted: the entries written to"), err
    assert not list((store / "blocks" / "slide").glob("*.npy.zst"))  # the block cut short is not done
    assert not list((store / "index").glob("*.json"))

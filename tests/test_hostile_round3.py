"""Reliability round 3 (issue 28): each hostile case ends correct or as a named one-line failure with a non-zero
exit. Small synthetic images and the shipped default model: seconds per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import nuclei
from nuclei.cli.main import main
from nuclei.errors import InputError
from nuclei.io.images import write_png
from nuclei.io.synthetic import make_sample


def _image(path: Path, seed: int = 1, shape: tuple[int, int] = (64, 64)) -> Path:
    write_png(path, make_sample(shape, n_nuclei=4, seed=seed)[0])
    return path


# --- 2: evaluate scores the entry made from the truth image, never a namesake --------------------------------


def test_evaluate_scores_the_entry_made_from_the_same_file_not_a_namesake(tmp_path: Path) -> None:
    from nuclei.evaluation import evaluate_against

    image, labels = make_sample((96, 96), n_nuclei=6, seed=7)
    write_png(tmp_path / "in" / "p1" / "x.png", make_sample((96, 96), n_nuclei=6, seed=8)[0])  # another plate
    write_png(tmp_path / "in" / "p2" / "x.png", image)
    write_png(tmp_path / "truth" / "images" / "x.png", image)
    write_png(tmp_path / "truth" / "labels" / "x.png", labels)
    nuclei.segment([tmp_path / "in"], tmp_path / "s.zarr")
    report, _ = evaluate_against(tmp_path / "truth", tmp_path / "r", store=tmp_path / "s.zarr", progress=False)
    assert report.overall()["ap50"] > 0.5  # p1/x, the namesake, scored 0.000 before
    # Truth content in neither entry: two namesakes are an error naming both, not a guess.
    write_png(tmp_path / "truth" / "images" / "x.png", make_sample((96, 96), n_nuclei=6, seed=9)[0])
    with pytest.raises(InputError, match=r"2 entries named 'x' \(p1/x, p2/x\)"):
        evaluate_against(tmp_path / "truth", tmp_path / "r", store=tmp_path / "s.zarr", progress=False)


# --- 3: a file's own pixel size wins over --pixel-size; the conflict is reported -------------------------------


def test_a_files_own_pixel_size_wins_over_the_option_and_the_conflict_is_reported(tmp_path: Path) -> None:
    import tifffile

    grey = make_sample((64, 64), n_nuclei=4, seed=3)[0][..., 1]
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "ome.ome.tif", grey, ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    _image(tmp_path / "in" / "plain.png")
    summary = nuclei.segment([tmp_path / "in"], tmp_path / "s.zarr", pixel_size=0.25)
    store = nuclei.open_store(tmp_path / "s.zarr")
    sizes = {i: store.metadata(i)["pixel_size_um"] for i in ("ome.ome", "plain")}
    assert sizes == {"ome.ome": 0.5, "plain": 0.25}
    assert [Path(n["file"]).name for n in summary["notes"]] == ["ome.ome.tif"]
    assert "not --pixel-size 0.25" in summary["notes"][0]["reason"]


# --- 5: two runs with other settings at once: the later writer knows --------------------------------------------


def test_of_two_runs_with_other_settings_at_once_the_later_writer_fails_those_images(tmp_path: Path) -> None:
    from nuclei.config import SegmentConfig
    from nuclei.inference.run import plan, run, summarize

    for seed in range(3):
        _image(tmp_path / "in" / f"img{seed}.png", seed=seed)
    first, second = (plan(SegmentConfig(inputs=[str(tmp_path / "in")], store=str(tmp_path / "s.zarr"),
                                        diameter=d)) for d in (20.0, 40.0))  # both planned on an empty store
    assert summarize(first, run(first))["done"] == 3
    late = summarize(second, run(second))
    assert late["done"] == 0 and late["failed"] == 3, late
    assert all("another run wrote this entry while this one ran" in f["reason"] for f in late["failures"])
    store = nuclei.open_store(tmp_path / "s.zarr")
    assert {store.metadata(i)["diameter"] for i in store.ids()} == {20.0}  # one whole run's entries
    assert not (tmp_path / "s.zarr" / "failed").exists() or not any((tmp_path / "s.zarr" / "failed").iterdir())
    again = nuclei.segment([tmp_path / "in"], tmp_path / "s.zarr", diameter=40.0)  # alone: replaces them
    assert again["done"] == 3 and again["failed"] == 0
    # Two runs of other folders holding the same ids, at once: neither replaces the other's file silently.
    _image(tmp_path / "other" / "img0.png", seed=7)
    first, second = (plan(SegmentConfig(inputs=[str(tmp_path / folder)], store=str(tmp_path / "t.zarr")))
                     for folder in ("in", "other"))
    assert summarize(first, run(first))["done"] == 3
    late = summarize(second, run(second))
    assert late["failed"] == 1 and "from another file" in late["failures"][0]["reason"], late
    assert nuclei.open_store(tmp_path / "t.zarr").metadata("img0")["source"] == str(tmp_path / "in" / "img0.png")


def test_two_cli_runs_with_other_settings_at_once_never_both_claim_the_store(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    for seed in range(12):
        _image(tmp_path / "in" / f"img{seed:02d}.png", seed=seed)
    runs = [subprocess.Popen([sys.executable, "-m", "nuclei.cli.main", "segment", str(tmp_path / "in"), "--store",
                              str(tmp_path / "s.zarr"), "--diameter", d, "--json", "--images-per-task", "2"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for d in ("20", "40")]
    done = {d: json.loads(r.communicate(timeout=120)[0]) for d, r in zip((20.0, 40.0), runs, strict=True)}
    store = nuclei.open_store(tmp_path / "s.zarr")
    held = [store.metadata(i)["diameter"] for i in store.ids()]
    assert len(held) == 12
    for diameter, summary in done.items():  # no run counts an entry the other run's settings hold
        assert held.count(diameter) <= summary["done"], (done, held)
        assert summary["done"] + summary["failed"] == 12


def _open_at_once(url: str, barrier: object, outcomes: object) -> None:
    from nuclei.inference.run import open_for_writing

    barrier.wait()  # type: ignore[attr-defined]
    try:
        open_for_writing(url)
        outcomes.put("ok")  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - the outcome is what the test compares
        outcomes.put(f"{type(exc).__name__}: {exc}")  # type: ignore[attr-defined]


def test_runs_that_create_one_new_store_at_once_all_open_it(tmp_path: Path) -> None:
    import multiprocessing

    import nuclei.inference.run  # noqa: F401 - imported before the fork, so each process starts at once

    fork = multiprocessing.get_context("fork")
    outcomes = fork.Queue()
    for round_ in range(6):  # before: 32 of 160 opens failed (ContainsGroupError, a half-made root refused)
        barrier = fork.Barrier(4)
        url = str(tmp_path / f"s{round_}.zarr")
        processes = [fork.Process(target=_open_at_once, args=(url, barrier, outcomes)) for _ in range(4)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)
        assert [outcomes.get(timeout=5) for _ in processes] == ["ok"] * 4


# --- 7 and 14: a cluster address that is no scheduler, or garbage: one line, exit 2, no store ------------------


def test_a_port_that_is_not_a_dask_scheduler_fails_in_seconds_and_creates_no_store(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import http.server
    import threading
    import time

    from nuclei.inference import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 2)
    _image(tmp_path / "in" / "a.png")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        code = main(["segment", str(tmp_path / "in"), "--store", str(tmp_path / "s.zarr"), "--dask-address",
                     f"tcp://127.0.0.1:{server.server_address[1]}"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "is not a Dask scheduler" in err, err
        assert time.monotonic() - started < 20
    finally:
        server.shutdown()
    monkeypatch.setenv("NUCLEI_DASK_ADDRESS", "garbage")
    assert main(["segment", str(tmp_path / "in"), "--store", str(tmp_path / "s.zarr")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'garbage' is not a Dask scheduler address" in err, err
    assert not (tmp_path / "s.zarr").exists()


# --- 10 and 14: a store that cannot be written fails before any image is read ---------------------------------


def test_a_store_that_cannot_be_written_fails_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import fsspec.implementations.local as local

    from nuclei.inference import run

    _image(tmp_path / "in" / "a.png")
    assert main(["segment", str(tmp_path / "in"), "--store", str(tmp_path / "s.zarr")]) == 0
    _image(tmp_path / "in" / "b.png", seed=2)
    monkeypatch.setattr(run, "segment_batch", lambda *a, **k: pytest.fail("no image may be read"))
    for path in (tmp_path / "s.zarr", tmp_path / "s.zarr" / "images", tmp_path / "s.zarr" / "index"):
        path.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: the file system's refusal, as a read-only mount gives it

        def refuse(self: object, path: str, *args: object, **kwargs: object) -> None:
            raise OSError(30, "Read-only file system", path)

        monkeypatch.setattr(local.LocalFileSystem, "pipe_file", refuse)
    code = main(["segment", str(tmp_path / "in"), "--store", str(tmp_path / "s.zarr")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot write to this store" in err, err
    monkeypatch.undo()
    for path in (tmp_path / "s.zarr", tmp_path / "s.zarr" / "images", tmp_path / "s.zarr" / "index"):
        path.chmod(0o755)


def test_a_new_store_under_a_folder_that_cannot_be_written_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    _image(tmp_path / "in" / "a.png")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    if os.geteuid() == 0:  # root writes where a mode forbids it: take a folder the kernel refuses (sysfs)
        locked = Path("/sys")
        try:
            (locked / "nuclei-test.zarr").mkdir()
        except OSError:
            pass
        else:
            (locked / "nuclei-test.zarr").rmdir()
            pytest.skip("no folder that root cannot write")
    code = main(["segment", str(tmp_path / "in"), "--store", str(locked / "nuclei-test.zarr")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot write to this store" in err, err
    assert not (locked / "nuclei-test.zarr").exists()


# --- 12: a moved input folder: counted once, the same content recognised, the way out offered ------------------


def test_a_moved_input_folder_is_recognised_and_changed_files_are_counted_once(tmp_path: Path) -> None:
    for seed in range(3):
        _image(tmp_path / "old" / f"img{seed}.png", seed=seed)
    assert nuclei.segment([tmp_path / "old"], tmp_path / "s.zarr")["done"] == 3
    shutil.move(tmp_path / "old", tmp_path / "new")
    moved = nuclei.segment([tmp_path / "new"], tmp_path / "s.zarr")
    assert (moved["found"], moved["done"], moved["skipped"], moved["failed"]) == (3, 0, 3, 0), moved
    _image(tmp_path / "other" / "img0.png", seed=9)  # other content under a held id
    clash = nuclei.segment([tmp_path / "other"], tmp_path / "s.zarr")
    assert (clash["found"], clash["failed"]) == (1, 1), clash  # "2 found" before: the clash counted twice
    assert "(use another store, or --overwrite to replace it)" in clash["failures"][0]["reason"]


# --- 6: file names never become spreadsheet formulas, terminal commands or Markdown/HTML ------------------------


def test_file_names_are_text_in_csv_cells_terminals_and_the_summary_artifact(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import csv

    from flows.segment import summary_markdown
    from nuclei.cli.segment import summary_text

    names = ["=cmd|' -C calc'!A0", "=HYPERLINK(\"evil.example\",\"y\")", "esc\x1b[2J\x1b[31mred"]
    for seed, name in enumerate(names):
        _image(tmp_path / "in" / f"{name}.png", seed=seed)
    for bad in ("bad`<img src=x onerror=alert(1)>.png", "empty\x1b[2J.png"):
        (tmp_path / "in" / bad).write_bytes(b"")  # fails: empty
    summary = nuclei.segment([tmp_path / "in"], tmp_path / "s.zarr")
    assert (summary["done"], summary["failed"]) == (3, 2)
    assert "\x1b" not in summary_text(summary) and "\\x1b" in summary_text(summary)
    missing = str(tmp_path / "gone\x1bc.png")  # ESC c resets a terminal; here in a one-line error
    assert main(["segment", missing, "--store", str(tmp_path / "t.zarr")]) == 2
    assert "gone\\x1bc.png: input does not exist" in capsys.readouterr().err
    markdown = summary_markdown(summary)
    failed = next(line for line in markdown.splitlines() if "img src" in line)
    assert failed.startswith("- ``") and failed.count("``") == 2 and "<img" in failed.split("``")[1]  # in code
    store = tmp_path / "s.zarr"
    for argv in (["list"], ["show", names[2]], ["export", "--measurements", str(tmp_path / "n.csv"),
                                                "--summary", str(tmp_path / "i.csv")]):
        assert main(["query", str(store), *argv]) == 0
        assert "\x1b" not in capsys.readouterr().out
    for table in ("n.csv", "i.csv"):
        with open(tmp_path / table, newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            assert not row["image_id"].startswith(("=", "+", "-", "@")), row["image_id"]
    assert {r["image_id"] for r in rows} == {"'" + names[0], "'" + names[1], names[2]}  # i.csv: every image


# --- 9: the pixel limit holds after rescaling, for a given diameter and a measured one -------------------------


def test_the_pixel_limit_holds_after_rescaling(tmp_path: Path) -> None:
    import subprocess
    import sys

    _image(tmp_path / "in" / "strip.png", shape=(16, 256))  # x12.5 for --diameter 2: 200x3200 = 0.64 Mpixel
    summary = nuclei.segment([tmp_path / "in"], tmp_path / "s.zarr", diameter=2.0, max_pixels=200_000)
    assert summary["failed"] == 1 and "above max_pixels=0.2 Mpixel" in summary["failures"][0]["reason"]
    assert "give the nuclei's real diameter" in summary["failures"][0]["reason"]
    # auto: small nuclei measured on the first pass would rescale this 96x96 image x6 or so
    write_png(tmp_path / "tiny" / "small.png", make_sample((96, 96), n_nuclei=40, touching_pairs=0, seed=4,
                                                           radius=(2.0, 2.5))[0])
    done = subprocess.run([sys.executable, "-m", "nuclei.cli.main", "segment", str(tmp_path / "tiny"), "--store",
                           str(tmp_path / "t.zarr"), "--diameter", "auto", "--max-pixels", str(96 * 96 * 4)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "above max_pixels" in done.stdout, done.stdout
    assert "Traceback" not in done.stderr, done.stderr  # a failed image is its summary line; tracebacks with -v


# --- 8: float images with NaN or Inf are segmented (and said so), never a traceback ------------------------------


def test_float_images_with_nan_or_inf_are_segmented_and_the_replacement_is_noted(tmp_path: Path) -> None:
    import tifffile

    grey = make_sample((64, 64), n_nuclei=4, seed=1)[0][..., 1].astype(np.float32)
    (tmp_path / "in").mkdir()
    with_nan, with_inf, all_nan = grey.copy(), grey.copy(), np.full_like(grey, np.nan)
    with_nan[:8, :8] = np.nan
    with_inf[10, 10], with_inf[11, 11] = np.inf, -np.inf
    for name, image in (("nan", with_nan), ("inf", with_inf), ("all_nan", all_nan), ("clean", grey)):
        tifffile.imwrite(tmp_path / "in" / f"{name}.tif", image)
    summary = nuclei.segment([tmp_path / "in"], tmp_path / "s.zarr")
    assert (summary["done"], summary["failed"]) == (3, 1), summary
    assert "no finite pixel value" in summary["failures"][0]["reason"]
    notes = {Path(n["file"]).stem: n["reason"] for n in summary["notes"]}
    assert notes.keys() == {"nan", "inf"} and notes["nan"].startswith("64 NaN or infinite pixel(s)")
    store = nuclei.open_store(tmp_path / "s.zarr")
    counts = {i: store.metadata(i)["n_nuclei"] for i in ("nan", "inf", "clean")}
    assert counts["inf"] == counts["clean"] and counts["nan"] > 0, counts


# --- 14: '::' in names -----------------------------------------------------------------------------------------


def test_double_colons_in_names_are_read_as_paths_or_refused_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _image(tmp_path / "in::x" / "a.png")
    _image(tmp_path / "b::c.png", seed=2)
    summary = nuclei.segment([tmp_path / "in::x", tmp_path / "b::c.png"], tmp_path / "s.zarr")
    assert (summary["done"], summary["failed"]) == (2, 0), summary  # fsspec found no such file before
    code = main(["segment", str(tmp_path / "in::x"), "--store", str(tmp_path / "s::t.zarr")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "'::' in a local store path" in err, err
    assert not list(tmp_path.glob("s::t*")) and not (tmp_path / "s").exists()


# --- 11: nothing is skipped in silence: other formats, empty globs, several series, unlistable folders ----------


def test_unreadable_formats_empty_globs_and_multi_series_tiffs_are_reported(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import tifffile

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.czi", "b.nd2", "c.webp", "d.gif"):
        (folder / name).write_bytes(b"not read")
    (folder / "notes.txt").write_text("not an image: left alone")
    grey = make_sample((64, 64), n_nuclei=4, seed=1)[0][..., 1]
    tifffile.imwrite(folder / "two.tif", grey)
    tifffile.imwrite(folder / "two.tif", grey[:32], append=True)  # a second series
    code = main(["segment", str(folder), str(tmp_path / "none" / "*.png"), "--store", str(tmp_path / "s.zarr")])
    out = capsys.readouterr().out
    assert code == 1 and out.startswith("0 segmented, 0 skipped (unchanged), 6 failed of 6 found"), out
    for text in ("a.czi: not a format nuclei reads", "d.gif: not a format nuclei reads",
                 "none/*.png: matches no file", "two.tif: holds 2 images (TIFF series"):
        assert text in out, out
    assert "notes.txt" not in out


def test_a_folder_too_deep_to_list_is_reported_not_skipped(tmp_path: Path) -> None:
    import os

    from nuclei.io.discovery import discover

    _image(tmp_path / "in" / "shallow.png")
    fd = os.open(tmp_path / "in", os.O_RDONLY)
    try:
        for _ in range(17):  # 17 x 256 bytes: past PATH_MAX (4096)
            os.mkdir("d" * 255, dir_fd=fd)
            deeper = os.open("d" * 255, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = deeper
        os.close(os.open("deep.png", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    finally:
        os.close(fd)
    found = discover([str(tmp_path / "in")])
    assert [i.id for i in found.items] == ["shallow"]
    assert [p.reason for p in found.problems] == ["cannot list this folder (File name too long)"]


# --- 14: what the README promises as one line (exit 2) is one line, before any store is created -----------------


def _model_copy(tmp_path: Path, name: str) -> Path:
    from nuclei.modeldir import default_model_path

    model = tmp_path / name
    shutil.copytree(default_model_path(), model)  # type: ignore[arg-type]
    (model / "model.int8.onnx").unlink(missing_ok=True)
    return model


def _identity_onnx(path: Path, ir_version: int = 9) -> None:
    """An ONNX model with the right input but three output channels where config.json says two."""
    import onnx
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", "h", "w", 3])
    mask = helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["n", "h", "w", 3])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["mask"])], "wrong", [image], [mask])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=ir_version),
              path)


def _one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("nuclei: error: "), (code, err)
    return err


def test_broken_model_directories_are_one_line_before_the_store(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import json

    _image(tmp_path / "in" / "a.png")
    no_pad, bad_norm, wrong_output, future = (_model_copy(tmp_path, n) for n in ("no_pad", "bad_norm",
                                                                                 "wrong_output", "future"))
    config = json.loads((no_pad / "config.json").read_text())
    (no_pad / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "pad_multiple"}))
    (bad_norm / "config.json").write_text(json.dumps({**config, "normalization": {"low": "x", "high": 200}}))
    _identity_onnx(wrong_output / "model.onnx")
    _identity_onnx(future / "model.onnx", ir_version=99)  # ONNX Runtime's refusal spans several lines
    for model, expected in ((no_pad, "missing 'pad_multiple'"), (bad_norm, "'normalization' is not usable"),
                            (wrong_output, "gives output of shape (16, 16, 3)"),
                            (future, "not a loadable ONNX model")):
        err = _one_line(["segment", str(tmp_path / "in"), "--store", str(tmp_path / "s.zarr"), "--model",
                         str(model)], capsys)
        assert expected in err and str(model) in err, err
        assert not (tmp_path / "s.zarr").exists()


def test_a_broken_stained_model_the_user_names_is_one_line_before_the_store(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped stained-tissue model starts its session with the first colour image; one the user names is
    still run once before any work, as the main model is."""
    _image(tmp_path / "in" / "a.png")
    wrong_output = _model_copy(tmp_path, "wrong_output")
    _identity_onnx(wrong_output / "model.onnx")
    err = _one_line(["segment", str(tmp_path / "in"), "--store", str(tmp_path / "s.zarr"), "--stained-model",
                     str(wrong_output)], capsys)
    assert "gives output of shape (16, 16, 3)" in err and str(wrong_output) in err, err
    assert not (tmp_path / "s.zarr").exists()


def test_exports_to_a_path_that_is_a_file_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _image(tmp_path / "in" / "a.png")
    nuclei.segment([tmp_path / "in"], tmp_path / "s.zarr")
    (tmp_path / "afile").write_text("in the way")
    err = _one_line(["query", str(tmp_path / "s.zarr"), "export", str(tmp_path / "afile")], capsys)
    assert "afile: is a file, where a folder must go" in err
    err = _one_line(["query", str(tmp_path / "s.zarr"), "export", "--measurements",
                     str(tmp_path / "afile" / "n.csv")], capsys)
    assert "afile" in err and "is a file" in err


def test_an_unreachable_prefect_server_or_home_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import socket
    import time

    _image(tmp_path / "in" / "a.png")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{port}/api")
    started = time.monotonic()
    err = _one_line(["segment", str(tmp_path / "in"), "--store", str(tmp_path / "s.zarr")], capsys)
    assert "cannot reach the Prefect server" in err and time.monotonic() - started < 15
    monkeypatch.delenv("PREFECT_API_URL")
    home = tmp_path / "home"
    home.mkdir(mode=0o555)
    if os.geteuid() == 0:  # root writes where a mode forbids it: a folder the kernel refuses (sysfs)
        home = Path("/sys/nuclei-prefect-home")
    monkeypatch.setenv("PREFECT_HOME", str(home / ".prefect"))
    err = _one_line(["segment", str(tmp_path / "in"), "--store", str(tmp_path / "s.zarr"), "--prefect"], capsys)
    assert "set PREFECT_HOME to a writable folder" in err
    assert not (tmp_path / "s.zarr").exists()

"""A store never holds a wrong answer, and a run never hangs or lies: paths, parameters, clusters, one bad name
in a batch, and the README's own example. Real files, real Dask, real ONNX Runtime."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nuclei.cli.main import main
from nuclei.config import SegmentConfig
from nuclei.inference.preflight import preflight
from nuclei.io.discovery import discover
from nuclei.io.images import write_png
from nuclei.io.synthetic import make_sample
from tests.conftest import REPO


def _image(path: Path, seed: int = 1) -> Path:
    write_png(path, make_sample((64, 64), n_nuclei=4, seed=seed)[0])
    return path


def test_relative_paths_become_absolute_before_any_worker_sees_them(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _image(tmp_path / "in" / "a.png")
    config = preflight(SegmentConfig(inputs=["in"], store="stores/remote.zarr"))
    assert config.store == str(tmp_path / "stores" / "remote.zarr") and config.inputs == [str(tmp_path / "in")]
    assert discover(config.inputs).items[0].url == str(tmp_path / "in" / "a.png")


def test_existing_names_are_never_globs_links_are_reported_duplicates_collapse(tmp_path: Path) -> None:
    folder = tmp_path / "plate[1]"
    _image(folder / "a.png")
    assert [i.id for i in discover([str(folder)]).items] == ["a"]  # not "0 found"
    assert [i.id for i in discover([str(folder / "a.png")]).items] == ["a"]
    found = discover([str(folder), str(folder)])  # the same folder twice: once, no "duplicate" failures
    assert len(found.items) == 1 and not found.problems
    (folder / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    _image(tmp_path / "elsewhere" / "b.png")
    found = discover([str(folder)])
    assert [p.reason for p in found.problems] == [
        "is a symlinked folder: not followed (give it as an input to include it)"]


@pytest.mark.parametrize("argv,expected", [
    (["--tile-size", "0"], "tile_size"),
    (["--tile-size", "-16"], "tile_size"),
    (["--tile-size", "100"], "multiple of"),
    (["--images-per-task", "0"], "images_per_task"),
    (["--workers", "-1"], "n_workers"),
])
def test_bad_parameters_are_one_line_errors_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            argv: list[str], expected: str) -> None:
    _image(tmp_path / "in" / "a.png")
    code = main(["segment", str(tmp_path / "in"), "--store", str(tmp_path / "s.zarr"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "s.zarr").exists()


def test_a_malformed_thresholds_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nuclei.modeldir import default_model_path

    model = tmp_path / "model"
    shutil.copytree(default_model_path(), model)  # type: ignore[arg-type]
    (model / "thresholds.json").write_text(json.dumps({"foreground": "high", "min_size": 24}))
    _image(tmp_path / "in" / "a.png")
    assert main(["segment", str(tmp_path / "in"), "--store", str(tmp_path / "s.zarr"), "--model", str(model)]) == 2
    err = capsys.readouterr().err
    assert str(model / "thresholds.json") in err and err.count("\n") == 1


@pytest.mark.slow
def test_a_dead_cluster_address_fails_in_seconds_with_one_line(tmp_path: Path) -> None:
    _image(tmp_path / "in" / "a.png")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "nuclei.cli.main", "segment", str(tmp_path / "in"), "--store",
                           str(tmp_path / "s.zarr"), "--dask-address", "tcp://127.0.0.1:9"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and time.monotonic() - started < 60
    assert done.stderr.strip().splitlines()[-1].startswith("nuclei: error: cannot reach the Dask scheduler")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.slow
def test_a_scheduler_without_workers_fails_instead_of_hanging(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from distributed import LocalCluster

    from nuclei.errors import ClusterError
    from nuclei.inference import cluster
    from nuclei.inference.run import segment

    monkeypatch.setattr(cluster, "WORKERS_TIMEOUT_S", 3)
    _image(tmp_path / "in" / "a.png")
    with (LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None) as empty,
          pytest.raises(ClusterError, match="has no workers")):
        segment([tmp_path / "in"], tmp_path / "s.zarr", dask_address=empty.scheduler_address)


def test_one_bad_name_fails_that_file_only(tmp_path: Path, shipped_model: Path) -> None:
    from nuclei.inference.run import segment

    inputs = tmp_path / "in"
    _image(inputs / "good.png")
    _image(inputs / "back\\slash.png", seed=2)
    _image(inputs / ("n" * 60 + "é" * 60 + ".png"), seed=3)  # percent-encoded: ~780 bytes, too long a name
    _image(inputs / "also good.png", seed=4)
    summary = segment([inputs], tmp_path / "s.zarr", model=shipped_model, images_per_task=4)
    reasons = {Path(f["file"]).name: f["reason"] for f in summary["failures"]}
    assert summary["done"] == 2 and set(reasons) == {"back\\slash.png", "n" * 60 + "é" * 60 + ".png"}
    assert "invalid image id" in reasons["back\\slash.png"]
    assert "too long" in reasons["n" * 60 + "é" * 60 + ".png"]


@pytest.mark.slow
def test_the_readme_python_example_runs_as_written(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)  # type: ignore[union-attr]
    script = tmp_path / "example.py"
    script.write_text(code.replace("nuclei/assets/sample/images", str(REPO / "nuclei" / "assets" / "sample" /
                                                                       "images")))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "results.zarr").is_dir()

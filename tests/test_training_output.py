"""Training talks like the rest of nuclei (issue 38): one bar per fitting stage with the validation figures, no
TensorFlow start-up lines and no Keras line per epoch unless -v; the same figures reach the Prefect artifacts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nuclei.training.progress import Epochs
from tests.conftest import SAMPLES

NUCLEI = [sys.executable, "-m", "nuclei.cli.main"]
TINY = ["--epochs", "2", "--crop-size", "64", "--batch-size", "4", "--steps-per-epoch", "1", "--depth", "3",
        "--base-filters", "8", "--min-ap50", "0"]
LIBRARY_LINES = re.compile(r"absl|oneDNN|cuda drivers|cudart|port\.cc|TF_ENABLE_ONEDNN_OPTS", re.IGNORECASE)
KERAS_EPOCH_LINES = re.compile(r"^Epoch \d+/\d+|\d+/\d+ - \d+m?s - .*loss", re.MULTILINE)


def _nuclei(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "TF_CPP_MIN_LOG_LEVEL")}
    return subprocess.run([*NUCLEI, *args], capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def test_nuclei_train_shows_a_bar_with_the_validation_figures_and_no_library_lines(tmp_path: Path) -> None:
    done = _nuclei("train", str(SAMPLES), "--out", str(tmp_path), "--name", "quiet", *TINY, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str(tmp_path / "quiet")
    assert not LIBRARY_LINES.search(done.stderr), done.stderr[-3000:]
    assert not KERAS_EPOCH_LINES.search(done.stdout + done.stderr), done.stdout + done.stderr
    bar = [part for part in re.split(r"[\r\n]", done.stderr) if part.startswith("fitting quiet:")]
    assert bar, done.stderr[-3000:]
    assert "2/2" in bar[-1] and re.search(r"val loss \d\.\d{4}, best \d\.\d{4} \(epoch [12]\)", bar[-1]), bar[-1]


def test_with_v_the_libraries_speak(tmp_path: Path) -> None:
    done = _nuclei("-v", "train", str(SAMPLES), "--out", str(tmp_path), "--name", "loud", *TINY, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert LIBRARY_LINES.search(done.stderr), done.stderr[-3000:]  # TensorFlow's own start-up lines
    assert re.search(r"nuclei\.training\.fit: loud epoch 2: .*val_loss", done.stderr), done.stderr[-3000:]


def test_the_train_flow_leaves_the_epochs_as_artifacts(trained_model: Path) -> None:
    """The session's trained model came through the `train` flow: its fitting progress and epoch table."""
    from prefect.artifacts import Artifact

    table = Artifact.get("train-epochs")
    assert table is not None and table.data is not None
    assert "| epoch | loss | val loss |" in str(table.data) and "best (kept)" in str(table.data)
    progress = Artifact.get("train-fitting")
    assert progress is not None and float(str(progress.data)) == pytest.approx(100.0)
    assert "val loss" in str(progress.description) and "best" in str(progress.description)


def test_epochs_tell_the_best_so_far_and_how_far_fitting_is() -> None:
    epochs = Epochs(total=4)
    assert epochs.line() == "starting" and epochs.fraction() == 0.0
    epochs.add({"epoch": 1.0, "loss": 1.9, "val_loss": 1.5, "seconds": 3.0})
    epochs.add({"epoch": 2.0, "loss": 1.7, "val_loss": 1.6, "seconds": 6.0})
    assert epochs.line() == "epoch 2/4: val loss 1.6000, best 1.5000 (epoch 1)"
    assert epochs.line(epoch=False) == "val loss 1.6000, best 1.5000 (epoch 1)"
    assert epochs.fraction() == 0.5
    rows = epochs.markdown().splitlines()
    assert rows[2].startswith("| 1 | 1.9000 | 1.5000 | 3 | best (kept)") and "best" not in rows[3]
    budgeted = Epochs()
    budgeted.take({"budget_s": 60.0})  # a fine-tune says its fitting budget first
    budgeted.take({"epoch": 1.0, "val_loss": 0.4, "seconds": 15.0})
    assert budgeted.fraction() == 0.25 and budgeted.line().startswith("epoch 1: ")

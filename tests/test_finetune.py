"""`nuclei finetune`: the shipped model fine-tuned for real (TensorFlow, tf2onnx, ONNX Runtime) on the vendored
samples within a small time budget, published as a complete model directory and compared on held-back images."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from nuclei.training.finetune import Comparison, hold_back, split_for_finetune, training_precision
from tests.conftest import SAMPLES

pytestmark = pytest.mark.slow


def test_a_fine_tune_within_its_budget_gives_a_model_that_segment_takes(tmp_path: Path) -> None:
    """`nuclei finetune` as a lab runs it: its fitting bar (no total: the time budget ends fitting first) with
    the validation figures, no TensorFlow start-up lines, no Keras line per epoch."""
    from nuclei.cli.main import main
    from tests.test_training_output import KERAS_EPOCH_LINES, LIBRARY_LINES, NUCLEI

    data = tmp_path / "labelled"
    shutil.copytree(SAMPLES, data)
    out = tmp_path / "models"
    done = subprocess.run([*NUCLEI, "finetune", str(data), "--name", "lab", "--out", str(out), "--minutes", "0.5"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not LIBRARY_LINES.search(done.stderr) and not KERAS_EPOCH_LINES.search(done.stdout + done.stderr), \
        done.stdout + done.stderr
    bar = [part for part in re.split(r"[\r\n]", done.stderr) if part.startswith("fitting lab:")]
    assert bar and re.search(r"\d+epoch .*val loss \d\.\d{4}, best", bar[-1]), done.stderr[-3000:]
    assert "fine-tuned from nuclei-generalist" in done.stdout
    model = out / "lab"
    for name in ("model.onnx", "model.keras", "config.json", "thresholds.json", "metrics.json", "MODEL_CARD.md",
                 "finetune/comparison.md", "finetune/comparison.png", "finetune/comparison.json"):
        assert (model / name).is_file(), name
    config = json.loads((model / "config.json").read_text())
    assert config["init_from"].endswith("nuclei-generalist") and config["minutes"] == pytest.approx(0.5)
    assert config["precision"] == training_precision()  # bfloat16 where the CPU has it natively
    comparison = json.loads((model / "finetune" / "comparison.json").read_text())
    assert comparison["n_images"] == 4 and set(comparison) >= {"nuclei-generalist", "lab"}
    card = (model / "MODEL_CARD.md").read_text()
    assert "| nuclei-generalist |" in card and comparison["verdict"] in card
    assert comparison["verdict"] in (model / "finetune" / "comparison.md").read_text()
    store = tmp_path / "s.zarr"
    images = SAMPLES / "images"
    assert main(["segment", str(images), "--store", str(store), "--model", str(model)]) == 0


def test_held_back_images_are_seeded_and_never_trained_on() -> None:
    from nuclei.io.datasets import load_dataset

    samples = load_dataset(SAMPLES, progress=False).samples
    kept, held = hold_back(samples, 0.3, seed=1)
    assert len(held) == 4 and len(kept) == 8
    assert [s.id for s in hold_back(samples, 0.3, seed=1)[1]] == [s.id for s in held]
    split = split_for_finetune(kept, held, 0.2, seed=1)
    trained = {s.id for s in split.train} | {s.id for s in split.val}
    assert trained.isdisjoint(s.id for s in held) and split.held_out == {"held back": held}
    assert hold_back(samples, 0.0, seed=1) == (samples, [])


def test_the_comparison_ends_in_a_verdict_a_lab_can_act_on() -> None:
    """Better, worse or no clear difference on the held-back images: a small gain on a few images is noise."""
    def verdict(base: float, tuned: float) -> str:
        return Comparison(5, {"ap50": base}, {"ap50": tuned}).verdict("nuclei-stained", "lab")

    assert verdict(0.68, 0.83).startswith("lab is better (+0.150 AP@0.5 on 5 held-back image(s))")
    assert verdict(0.68, 0.59).startswith("lab is worse (-0.090") and "keep nuclei-stained" in verdict(0.68, 0.59)
    assert verdict(0.86, 0.865).startswith("no clear difference (+0.005")

"""Fine-tuning a shipped model on a lab's own few labelled images, within a time budget (as Cellpose 2.0 made
it a workflow): hold back part of the images, train from the shipped weights, choose the thresholds again,
then compare the starting model and the fine-tuned one on the held-back images (a table and a picture).

    nuclei finetune my_labelled/ --name lab-unet --minutes 15
    nuclei segment new_images/ --store results.zarr --model models/lab-unet

The result is a complete model directory (ONNX, int8 when it holds, thresholds, metrics, a model card stub).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from nuclei.config import FinetuneConfig, TrainConfig
from nuclei.core.metrics import average_precision
from nuclei.core.modality import is_stained_brightfield
from nuclei.core.postprocess import instances
from nuclei.errors import InputError, RequestError
from nuclei.evaluation import Report, score_samples
from nuclei.inference.engine import Engine
from nuclei.io.datasets import Dataset, Sample, load_datasets
from nuclei.modeldir import (
    SHIPPED_MODELS,
    STAINED_MODEL_NAME,
    default_model_path,
    load_model_dir,
    model_destination,
    write_json,
)
from nuclei.plots import image_grid, overlay
from nuclei.training import steps
from nuclei.training.steps import Split

log = logging.getLogger(__name__)

# What changes from the starting model's own training recipe: a short, gentle run on the lab's crops, validated
# at their own scale, on all of them (the starting model's data set filters name its data, not the lab's), as
# they are (no microscope faults: the lab's images are the microscope, and the budget goes to them).
FINETUNE_CHANGES: dict[str, Any] = {
    "learning_rate": 1e-4, "steps_per_epoch": 8, "epochs": 1000, "patience": 1000, "held_out": [], "include": [],
    "validation_zooms": [1.0], "microscope": 0.0,
    "held_out_in_validation": True, "balance_categories": False, "dataset_weights": {}, "max_images": None,
    "quantize_int8": True, "min_ap50": 0.0,
}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Of the budget, what fitting may use: loading, export, thresholds, int8 and the comparison take the rest.
FIT_SHARE = 0.7
PICTURE_IMAGES = 4
# AP@0.5 differences smaller than this on a few held-back images are noise, not a verdict.
CLEAR_GAIN = 0.02


@dataclass(frozen=True)
class Comparison:
    """The starting model and the fine-tuned one on the same held-back images."""

    n_images: int
    base: dict[str, float]
    finetuned: dict[str, float]

    def verdict(self, base_name: str, name: str) -> str:
        """One line a lab acts on: whether the fine-tuned model found the held-back nuclei better."""
        gain = self.finetuned["ap50"] - self.base["ap50"]
        on = f"{gain:+.3f} AP@0.5 on {self.n_images} held-back image(s)"
        if gain >= CLEAR_GAIN:
            return f"{name} is better ({on}): segment with it"
        if gain <= -CLEAR_GAIN:
            return (f"{name} is worse ({on}): keep {base_name}, or label more images of the kind it gets wrong "
                    "and fine-tune again")
        return f"no clear difference ({on}): label more images, or keep {base_name}"

    def table(self, base_name: str, name: str) -> str:
        rows = [("model", "AP@0.5", "DSB score", "nuclei found", "nuclei labelled")]
        for label, scores in ((base_name, self.base), (name, self.finetuned)):
            rows.append((label, f"{scores['ap50']:.3f}", f"{scores['dsb_score']:.3f}",
                         f"{scores['n_pred'] * self.n_images:.0f}", f"{scores['n_true'] * self.n_images:.0f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(lines)


# What a caller (the napari plugin, the Prefect flow) is told as fine-tuning goes: the stage ("fitting",
# "exporting", "comparing", "publishing") and, while fitting, each epoch's figures (`epoch`, `loss`, `val_loss`,
# `seconds` since fitting began, ...), after a first one with the fitting budget (`budget_s`): what
# `nuclei.training.progress.Epochs.take` reads.
Progress = Callable[[str, dict[str, float]], None]


class Watch(keras.callbacks.Callback):
    """``stop`` acted on after the batch in hand (Interrupted: the partial directory goes), not only once the time
    budget has run out."""

    def __init__(self, stop: threading.Event | None) -> None:
        super().__init__()
        self.stop = stop

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        steps.stop_requested(self.stop)

    def on_test_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        steps.stop_requested(self.stop)


@dataclass(frozen=True)
class FinetuneResult:
    model_dir: Path
    base: Path
    comparison: Comparison | None
    seconds: float


def starting_model(samples: list[Sample]) -> Path:
    """The shipped model a lab's images start from: the stained-tissue model when most images are colour
    brightfield, else the default one. The stained-tissue model ships as ONNX only; its weights are loaded back
    from there (`from_onnx`)."""
    stained = sum(is_stained_brightfield(s.raw) for s in samples)
    if stained > len(samples) / 2 and (tissue := SHIPPED_MODELS / STAINED_MODEL_NAME).is_dir():
        log.info("%d of %d images are colour brightfield (stained tissue): starting from %s", stained,
                 len(samples), STAINED_MODEL_NAME)
        return tissue
    found = default_model_path()
    if found is None or not (found / "model.keras").is_file():
        raise RequestError(f"no model with Keras weights to start from ({found}); pass --base MODEL_DIR")
    return found


def hold_back(samples: list[Sample], share: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(kept for training, held back for the comparison): a seeded share of the images, at least one when
    there are three or more and ``share`` > 0."""
    if share <= 0 or len(samples) < 3:
        return list(samples), []
    order = np.random.default_rng(seed).permutation(len(samples))
    n_back = min(len(samples) - 2, max(1, round(share * len(samples))))
    back = set(order[:n_back].tolist())
    return [s for i, s in enumerate(samples) if i not in back], [s for i, s in enumerate(samples) if i in back]


def training_precision() -> str:
    """mixed_bfloat16 where the CPU computes bfloat16 natively (AVX-512 BF16 or AMX: 0.56x float32's time a step
    here, benchmarks/bf16_training.py, so more steps fit the budget), else float32 (emulated bfloat16 is slow)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "mixed_bfloat16" if any(flag in flags.split() for flag in BF16_FLAGS) else "float32"


def fitting_minutes(minutes: float) -> float:
    """Of a fine-tune's budget, the minutes fitting may take (FIT_SHARE, at least half a minute)."""
    return max(0.5, FIT_SHARE * minutes)


def finetune_config(base: Path, data: list[str], name: str, out: str, minutes: float, seed: int) -> TrainConfig:
    """The starting model's own recipe (architecture, normalisation, augmentation), changed for a short
    fine-tune within ``minutes`` from its weights."""
    recipe = {k: v for k, v in json.loads((base / "config.json").read_text()).items() if k in TrainConfig.model_fields}
    # Models from before these were recorded scaled by the dtype's range and saw no per-nucleus brightness.
    recipe.setdefault("normalization", {"kind": "dtype_range"})
    recipe.setdefault("nucleus_brightness", 0.0)
    changes = {"data_dir": data, "name": name, "out_dir": out, "init_from": str(base), "seed": seed,
               "minutes": fitting_minutes(minutes), "precision": training_precision()}
    return TrainConfig(**{**recipe, **changes, **FINETUNE_CHANGES})


# Below this many kept images every one of them trains: a validation image or two would only add noise.
MIN_FOR_VALIDATION = 8


def split_for_finetune(kept: list[Sample], held: list[Sample], val_fraction: float, seed: int) -> Split:
    """Training and validation images among the kept ones (validation steers which weights are kept and
    the thresholds; with fewer than MIN_FOR_VALIDATION images all of them do both), the held-back images as a
    group."""
    if len(kept) >= MIN_FOR_VALIDATION:
        order = np.random.default_rng(seed + 1).permutation(len(kept))
        n_val = max(1, round(val_fraction * len(kept)))
        val = [kept[i] for i in order[:n_val]]
        train = [kept[i] for i in order[n_val:]]
    else:
        train = val = list(kept)
    return Split(train=train, val=val, held_out={"held back": held} if held else {})


def finetune(
    settings: FinetuneConfig,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
    bar: bool = True,
) -> FinetuneResult:
    """Fine-tune ``settings.base`` (default: the shipped model for these images) on its labelled folders; returns
    the published model directory and, when images were held back, the comparison on them. With ``stop`` set (by
    the caller's signal handler, or a viewer's cancel button from another thread; looked at after every batch)
    it raises Interrupted: nothing published, the partial directory removed. ``progress``: see `Progress`; ``bar``:
    the fitting bar on stderr (off where the caller shows the progress itself)."""
    say = progress or (lambda stage, figures: None)
    started = time.perf_counter()
    check_request(settings)
    name, out, minutes, seed = settings.name, settings.out_dir, settings.minutes, settings.seed
    dirs = [settings.data_dir] if isinstance(settings.data_dir, str) else list(settings.data_dir)
    dataset = load_datasets(dirs)
    samples = dataset.subset("train") + dataset.subset("test")
    if len(samples) < 2:
        raise InputError(", ".join(dirs), f"{len(samples)} labelled image(s); fine-tuning needs at least 2")
    start = model_path(settings.base) if settings.base else starting_model(samples)
    kept, held = hold_back(samples, settings.held_back, seed)
    config = finetune_config(start, dirs, name, out, minutes, seed)
    split = split_for_finetune(kept, held, config.val_fraction, seed)
    log.info("fine-tuning %s on %d images (%d validate), %d held back, %.1f min for fitting", start,
             len(split.train), len(split.val), len(held), config.minutes)
    staging = steps.staging_dir(config)
    with steps.removed_on_failure(staging):
        steps.describe(config, _as_dataset(dataset, samples), split, staging)
        say("fitting", {"budget_s": 60.0 * fitting_minutes(minutes)})
        model = steps.train_model(config, split, staging, [Watch(stop)], bar,
                                  on_epoch=lambda epochs: say("fitting", epochs.last))
        steps.stop_requested(stop)
        say("exporting", {})
        steps.export(model, config, staging)
        _, report, _ = steps.evaluate(staging, split)
        steps.quantize(staging, split, report, calibration=len(split.train))
        comparison = None
        if held:
            say("comparing", {})
            steps.stop_requested(stop)
            comparison, found = compare(start, staging, held)
            write_comparison(comparison, start, name, held, found, staging / "finetune")
        write_model_card(staging, config, start, split, comparison, time.perf_counter() - started)
        steps.stop_requested(stop)
        say("publishing", {})
        model_dir = steps.publish(staging, config)
    return FinetuneResult(model_dir, start, comparison, time.perf_counter() - started)


def check_request(settings: FinetuneConfig) -> None:
    """The user's choices, before any image is read: a model name that is one new folder under ``out_dir``, a
    time budget that is some time, a share of images to hold back. Raises NucleiError naming the value."""
    minutes, held_back = settings.minutes, settings.held_back
    model_destination(settings.out_dir, settings.name)
    if not math.isfinite(minutes) or minutes <= 0:
        raise InputError("--minutes", f"{minutes:g} is no time budget; give the minutes fine-tuning may take, "
                         "e.g. 15")
    if not 0 <= held_back < 1:
        raise InputError("--hold-back", f"{held_back:g} is not a share of the images (0 to below 1)")


def _as_dataset(dataset: Dataset, samples: list[Sample]) -> Dataset:
    dataset.samples = samples
    return dataset


def _engine(model_dir: Path) -> Engine:
    return Engine(load_model_dir(model_dir), providers=("CPUExecutionProvider",))


def _scores(engine: Engine, samples: list[Sample]) -> tuple[Report, dict[str, np.ndarray]]:
    return score_samples(samples, lambda i: instances(engine.predict(samples[i].raw), engine.thresholds),
                         progress=False)


# Both models' nuclei on the held-back images: {model name: {image id: labels}}.
Found = dict[str, dict[str, np.ndarray]]


def compare(start: Path, tuned: Path, held: list[Sample]) -> tuple[Comparison, Found]:
    """Both models on the held-back images, each with its own thresholds, int8 where it ships it (as a run on
    this CPU gets them); their nuclei come back too, for the picture."""
    base_report, base_found = _scores(_engine(start), held)
    tuned_report, tuned_found = _scores(_engine(tuned), held)
    comparison = Comparison(len(held), base_report.overall(), tuned_report.overall())
    return comparison, {"base": base_found, "tuned": tuned_found}


def write_comparison(comparison: Comparison, start: Path, name: str, held: list[Sample], found: Found,
                     folder: Path) -> None:
    """comparison.{md,json,png} in ``folder``: the table, and outlines of both models' nuclei on the first
    held-back images (missed labelled nuclei in red)."""
    folder.mkdir(exist_ok=True)
    base_name = start.name
    table = comparison.table(base_name, name)
    (folder / "comparison.md").write_text(
        f"# {name} against {base_name}\n\nOn the {comparison.n_images} held-back image(s), never trained on:\n\n"
        f"{table}\n\n{comparison.verdict(base_name, name)}\n")
    write_json(folder / "comparison.json", {"n_images": comparison.n_images, "base": str(start),
                                            base_name: comparison.base, name: comparison.finetuned,
                                            "verdict": comparison.verdict(base_name, name),
                                            "held_back_ids": [s.id for s in held]})
    panels = []
    for s in held[:PICTURE_IMAGES]:
        for model, labels in ((base_name, found["base"][s.id]), (name, found["tuned"][s.id])):
            title = f"{s.id[:20]}: {model}, AP@0.5 {average_precision(s.labels, labels):.2f}"
            panels.append((title, overlay(s.image, labels, s.labels)))
    image_grid(panels, folder / "comparison.png", columns=2)


def write_model_card(model_dir: Path, config: TrainConfig, start: Path, split: Split,
                     comparison: Comparison | None, seconds: float) -> None:
    """A model card stub: where the model came from, on what, and how it compares; the lab completes it."""
    lines = [
        f"# {config.name}", "",
        f"- **What**: `{start.name}` fine-tuned with `nuclei finetune` on {len(split.train) + len(split.val)} "
        f"labelled image(s) from {', '.join(config.data_dirs)} ({len(split.val)} of them chose the weights kept "
        f"and the thresholds); {seconds / 60:.1f} min on this machine.",
        f"- **Inputs**: {config.normalization.describe()} (as `{start.name}`).",
        f"- **Recipe**: `config.json` (learning rate {config.learning_rate:g}, {config.crop_size}x"
        f"{config.crop_size} crops, {config.precision}, at most {config.minutes:.1f} min of fitting), from "
        f"`{start}`.",
    ]
    if comparison is not None:
        lines += ["", f"## On {comparison.n_images} held-back image(s)", "",
                  comparison.table(start.name, config.name), "", comparison.verdict(start.name, config.name), "",
                  "![comparison](finetune/comparison.png)"]
    lines += ["", "## To fill in", "", "- Modality, stain, magnification and pixel size of the images.",
              "- Who labelled them, and how.", "- Known weak spots."]
    (model_dir / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")


def model_path(name_or_path: str) -> Path:
    """A shipped model by name (`nuclei-generalist`) or a model directory path."""
    shipped = SHIPPED_MODELS / name_or_path
    return shipped if shipped.is_dir() else Path(name_or_path)

"""The steps of a training run, each a plain function the `train` flow wires as a task.

load -> split -> fit -> export (+ parity) -> evaluate (choose thresholds) -> publish the model directory.
The directory is built under a temporary name and renamed into place at the end, so a crash never leaves a
half-written model where a segmentation run would pick it up.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.metadata
import logging
import platform
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from nuclei.config import MODEL_FORMAT_VERSION, ONNX_OPSET, TrainConfig
from nuclei.core.measure import median_diameter
from nuclei.core.normalize import normalized
from nuclei.core.postprocess import Thresholds, instances
from nuclei.errors import Interrupted, RequestError
from nuclei.evaluation import Report, choose_thresholds, score_samples, write_report
from nuclei.inference.engine import Engine
from nuclei.io.datasets import Dataset, Sample, load_datasets, matches_group, split_indices
from nuclei.modeldir import load_model_dir, model_destination, write_json
from nuclei.plots import read_history, training_curves
from nuclei.training.export import export_onnx, parity_check
from nuclei.training.fit import OnEpoch, fit
from nuclei.training.model import as_float32, build_model, receptive_field

log = logging.getLogger(__name__)

VERSIONED = ("nuclei", "numpy", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime-gpu", "scikit-image")


@dataclass
class Split:
    """Training and validation images, and the held-out groups (never trained on, scored per group)."""

    train: list[Sample]
    val: list[Sample]
    held_out: dict[str, list[Sample]] = field(default_factory=dict)


def load(config: TrainConfig) -> Dataset:
    dataset = load_datasets(config.data_dirs, on_error=config.on_error)
    if config.max_images:
        dataset.samples = dataset.samples[: config.max_images]
    return dataset


def split(dataset: Dataset, config: TrainConfig) -> Split:
    """Per data set, a seeded 80:20 split of its training subset (a seed layout's test/ folder is never trained
    on); with ``include``, only the images of those groups stay in either part; then every image of a held-out
    group leaves the training part (and, with ``held_out_in_validation=False``, the validation part too).
    Otherwise validation images stay validation images, so one data set's split is the same whether or not
    others are trained beside it."""
    data = Split([], [])
    for name in dict.fromkeys(s.dataset for s in dataset.samples):
        pool = [s for s in dataset.subset("train") if s.dataset == name]
        if len(pool) < 2:
            data.train.extend(pool)
            continue
        train_idx, val_idx = split_indices(len(pool), config.val_fraction, config.seed)
        data.train.extend(pool[i] for i in train_idx)
        data.val.extend(pool[i] for i in val_idx)
    if config.include:  # after the split, so a specialist's images split exactly as its parent's did
        wanted = {id(s) for s in dataset.samples if any(matches_group(s, rule) for rule in config.include)}
        if not wanted:
            raise RequestError(f"include rules {config.include} match no image")
        data.train = [s for s in data.train if id(s) in wanted]
        data.val = [s for s in data.val if id(s) in wanted]
    for rule in config.held_out:
        data.held_out[rule] = [s for s in dataset.samples if matches_group(s, rule)]
        if not data.held_out[rule]:
            raise RequestError(f"held_out rule {rule!r} matches no image")
    held = {id(s) for group in data.held_out.values() for s in group}
    data.train = [s for s in data.train if id(s) not in held]
    if not config.held_out_in_validation:
        data.val = [s for s in data.val if id(s) not in held]
    if not data.train or not data.val:
        raise RequestError(f"{len(data.train)} training and {len(data.val)} validation images: need both")
    return data


def nucleus_diameter(samples: list[Sample]) -> float:
    """Median equivalent diameter (px) of the nuclei in these images: the scale the model learnt."""
    return median_diameter(s.labels for s in samples)


def staging_dir(config: TrainConfig) -> Path:
    """OUT/.NAME.partial, emptied: where the model directory is built (the name checked first)."""
    model_destination(config.out_dir, config.name)
    path = Path(config.out_dir) / f".{config.name}.partial"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def stop_requested(stop: threading.Event | None) -> None:
    """Raises Interrupted when ``stop`` is set: between steps, so nothing is published after Ctrl-C or SIGTERM
    even where a library swallowed the signal's exception."""
    if stop is not None and stop.is_set():
        raise Interrupted("stopped on request")


@contextlib.contextmanager
def removed_on_failure(staging: Path) -> Iterator[None]:
    """The partial model directory goes when its run does not publish it (an error, Ctrl-C, SIGTERM)."""
    try:
        yield
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def describe(config: TrainConfig, dataset: Dataset, data: Split, model_dir: Path) -> None:
    """config.json (what inference needs), data.json (fingerprint and split) and versions.json."""
    write_json(model_dir / "config.json", {
        **config.model_dump(),
        "model_format_version": MODEL_FORMAT_VERSION,
        "channels": config.channels,
        "pad_multiple": config.pad_multiple,
        "receptive_field": receptive_field(config),
        "onnx_opset": ONNX_OPSET,
        "input": f"image: NHWC float32, {config.normalization.describe()}",
        "nucleus_diameter": round(nucleus_diameter(data.train), 2),
        "output": "mask: NHWC float32 sigmoid probabilities, one channel per entry of `channels`",
    })
    write_json(model_dir / "data.json", {
        "root": str(dataset.root), "roots": [str(r) for r in dataset.roots], "layout": dataset.layout,
        "fingerprint": dataset.fingerprint(), "n_images": len(dataset.samples),
        "skipped": [str(e) for e in dataset.skipped],
        "train_ids": [s.id for s in data.train], "val_ids": [s.id for s in data.val],
        "held_out_ids": {rule: [s.id for s in group] for rule, group in data.held_out.items()},
    })
    write_json(model_dir / "versions.json", {"python": platform.python_version(), **_versions()})


def _versions() -> dict[str, str]:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def train_model(config: TrainConfig, data: Split, model_dir: Path,
                callbacks: Sequence[keras.callbacks.Callback] = (), bar: bool = True,
                on_epoch: OnEpoch | None = None) -> keras.Model:
    """Build and fit (``callbacks``, ``bar`` and ``on_epoch``: see `fit.fit`); writes history.csv, curves.png,
    checkpoint.keras and model.keras."""
    model = build_model(config)
    started = time.perf_counter()
    fit(model, data.train, data.val, config, model_dir, callbacks, bar, on_epoch)
    log.info("training took %.0f s (%s)", time.perf_counter() - started, config.precision)
    model = as_float32(model, config)
    if config.init_from:
        chain_history(Path(config.init_from) / "history.csv", model_dir / "history.csv")
    training_curves(read_history(model_dir / "history.csv"), model_dir / "curves.png")
    model.save(model_dir / "model.keras")
    (model_dir / "checkpoint.keras").unlink(missing_ok=True)  # model.keras holds the restored best weights
    return model


def chain_history(previous: Path, current: Path) -> None:
    """Put the earlier stages' epochs before this fine-tuning run's, with a `stage` column, so history.csv and
    curves.png tell the whole training of the model. Epochs count on across stages."""
    if not previous.is_file():
        return
    earlier, latest = read_history(previous), read_history(current)
    if not earlier or not latest:
        return
    n_earlier = len(earlier["epoch"])
    earlier.setdefault("stage", [1.0] * n_earlier)
    latest["stage"] = [max(earlier["stage"]) + 1] * len(latest["epoch"])
    latest["epoch"] = [n_earlier + e for e in latest["epoch"]]
    columns = ["epoch", "stage", *sorted((set(earlier) | set(latest)) - {"epoch", "stage"})]
    with open(current, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for history in (earlier, latest):
            for i in range(len(history["epoch"])):
                writer.writerow([_cell(history, c, i) for c in columns])


def _cell(history: dict[str, list[float]], column: str, row: int) -> str:
    if column not in history:
        return ""
    value = history[column][row]
    return str(int(value)) if column in ("epoch", "stage") else repr(value)


def export(model: keras.Model, config: TrainConfig, model_dir: Path) -> float:
    """model.onnx plus the parity check against Keras (raises if they differ)."""
    onnx_path = export_onnx(model, model_dir / "model.onnx")
    return parity_check(model, onnx_path, config.pad_multiple)


def evaluate(model_dir: Path, data: Split) -> tuple[Thresholds, Report, dict[str, Report]]:
    """Run the exported ONNX model on the validation images, pick thresholds, score them and each held-out group,
    write the report. Thresholds maximise the mean over data sets (not over images), so the largest set does
    not choose them alone; held-out groups play no part in choosing anything."""
    val = data.val
    write_json(model_dir / "thresholds.json", Thresholds().as_dict())
    engine = Engine(load_model_dir(model_dir), providers=("CPUExecutionProvider",), int8=False)
    probs = [engine.predict(s.raw) for s in val]
    thresholds, _ = choose_thresholds(probs, [s.labels for s in val], groups=[s.dataset for s in val])
    write_json(model_dir / "thresholds.json", thresholds.as_dict())
    report, preds = score_samples(val, lambda i: instances(probs[i], thresholds))
    by_id = {s.id: s for s in val}
    write_report(report, model_dir / "evaluation", images=lambda i: (by_id[i].image, by_id[i].labels, preds[i]))
    held_out = {
        rule: score_samples(group, lambda i, g=group: instances(engine.predict(g[i].raw), thresholds),  # type: ignore[misc]
                            progress=False)[0]
        for rule, group in data.held_out.items()
    }
    write_json(model_dir / "metrics.json", {
        "split": "validation", "thresholds": thresholds.as_dict(), **report.as_dict(),
        "held_out": {rule: r.as_dict() for rule, r in held_out.items()},
    })
    return thresholds, report, held_out


def quality_problem(report: Report, config: TrainConfig) -> str | None:
    """Why a trained model is no model (blank validation labels, or AP@0.5 under the config's floor), or None."""
    overall = report.overall()
    if overall["n_true"] == 0:
        return "the validation labels hold no nucleus (blank or unreadable labels?)"
    if overall["ap50"] < config.min_ap50:
        return (f"the model finds almost no nuclei: validation AP@0.5 {overall['ap50']:.3f} < {config.min_ap50} "
                "(check the labels, train longer, or lower the learning rate)")
    return None


def quantize(model_dir: Path, data: Split, float_report: Report, calibration: int = 128) -> dict[str, object]:
    """model.int8.onnx, calibrated on training images; kept only if its validation DSB score is within
    DSB_TOLERANCE of float32's. The verdict and both scores go into int8.json. 128 calibration images: with 64
    the generalist's stage 5 missed the tolerance by 0.0004 (DSB 0.6390 vs 0.6444), with 128 it is 0.0033 off."""
    from nuclei.training.quantize import DSB_TOLERANCE, quantize_int8

    multiple = int(load_model_dir(model_dir).pad_multiple)
    norm = load_model_dir(model_dir).normalization
    rng = np.random.default_rng(0)  # calibrate on a mix of every data set, not the first one's images
    picks = rng.choice(len(data.train), min(calibration, len(data.train)), replace=False)
    path = quantize_int8(model_dir, [normalized(data.train[i].raw, norm) for i in picks], multiple)
    model = load_model_dir(model_dir)
    engine = Engine(model, providers=("CPUExecutionProvider",))
    assert engine.precision == "int8"
    report, _ = score_samples(data.val, lambda i: instances(engine.predict(data.val[i].raw), model.thresholds),
                              progress=False)
    int8_dsb, float_dsb = report.overall()["dsb_score"], float_report.overall()["dsb_score"]
    kept = abs(int8_dsb - float_dsb) <= DSB_TOLERANCE
    if not kept:
        path.unlink()
    verdict = {"kept": kept, "dsb_score": int8_dsb, "float32_dsb_score": float_dsb, "tolerance": DSB_TOLERANCE,
               "calibration_images": min(calibration, len(data.train)), "by_category": report.by_category(),
               "ap50": report.overall()["ap50"]}
    write_json(model_dir / "int8.json", verdict)
    log.info("int8 model: validation DSB %.4f vs float32 %.4f -> %s", int8_dsb, float_dsb,
             "kept" if kept else "dropped")
    return verdict


def publish(staging: Path, config: TrainConfig) -> Path:
    """Move the finished directory into place. Only OUT/NAME is ever replaced, only when it is a model directory
    (`model_destination`), and only now that the new one reads whole; if the new one cannot be moved in, the
    previous one is moved back."""
    final = model_destination(config.out_dir, config.name)
    load_model_dir(staging)  # whole: config, ONNX model, thresholds (raises ModelError naming what is missing)
    if not final.exists():
        staging.rename(final)
        return final
    old = final.with_name(f".{config.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    final.rename(old)
    try:
        staging.rename(final)
    except BaseException:
        old.rename(final)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return final

"""Stained tissue as other labs scan and stain it: stained-tissue models scored on the DSB2018 colour tiles
none of them trained on, as they are, scanned at lower magnification, and stained differently.

    python -m benchmarks stained nuclei/assets/models/dsb2018-unet nuclei/assets/models/nuclei-stained

The tiles are `dsb2018-unet`'s validation split of DSB2018's color_bright images (17 H&E-like tiles, 256x320;
`nuclei-stained` trained on the same split, so neither model saw them). Conditions: the tiles as they are; shrunk
to 0.75x and 0.5x (a 40x scan seen at 30x and 20x: nuclei 10-15 px instead of 20-30, what a 20x slide gives;
labels shrunk by nearest neighbour, nuclei under 4 px dropped); and restained: three fixed changes of the
haematoxylin and eosin densities (more eosin, paler haematoxylin, darker both), stronger than the stain jitter
`nuclei-stained` trained with (0.1). Each model runs as `nuclei segment --model M` does (its own thresholds,
float32 where it ships no int8). Records AP@0.5 and DSB score per model and condition.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from benchmarks import harness

SPLIT_FROM = harness.MODELS / "dsb2018-unet"
# (haematoxylin, eosin, DAB) density gains: other labs' staining, outside the training jitter's 0.9-1.1.
RESTAINS = {"more eosin": (1.0, 1.6, 1.0), "pale haematoxylin": (0.65, 1.0, 1.0), "darker both": (1.35, 1.35, 1.0)}
MIN_AREA = 4


def shrink(sample, factor: float):  # type: ignore[no-untyped-def]
    """The tile as a lower magnification scan gives it."""
    height, width = sample.raw.shape[:2]
    size = (max(16, round(width * factor)), max(16, round(height * factor)))
    raw = cv2.resize(sample.raw, size, interpolation=cv2.INTER_AREA)
    labels = cv2.resize(sample.labels.astype(np.int32), size, interpolation=cv2.INTER_NEAREST)
    areas = np.bincount(labels.ravel())
    labels[areas[labels] < MIN_AREA] = 0  # specks a nucleus leaves after shrinking are not nuclei to find
    return replace(sample, raw=raw, labels=labels.astype(np.uint16))


def restain(sample, gains: tuple[float, float, float]):  # type: ignore[no-untyped-def]
    """The same tissue with other stain densities (colour deconvolution, scikit-image's H&E-DAB matrices)."""
    from skimage.color import hed_from_rgb, rgb_from_hed

    rgb = np.clip(sample.raw[..., :3].astype(np.float32) / 255, 1e-3, 1.0)
    density = (-np.log(rgb) @ hed_from_rgb) * np.asarray(gains, np.float32)
    raw = np.clip(np.exp(-(density @ rgb_from_hed)) * 255, 0, 255).round().astype(np.uint8)
    return replace(sample, raw=raw)


def main(argv: list[str] | None = None) -> None:
    from nuclei.core.postprocess import instances
    from nuclei.evaluation import score_samples
    from nuclei.inference.engine import Engine
    from nuclei.io.datasets import load_dataset
    from nuclei.modeldir import load_model_dir

    parser = argparse.ArgumentParser(prog="python -m benchmarks stained", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model directories to compare")
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    record = harness.Record("stained", args)

    unseen = set(json.loads((SPLIT_FROM / "data.json").read_text())["val_ids"])
    tiles = [s for s in load_dataset(harness.DEV, progress=False).samples
             if s.id in unseen and s.category == "color_bright"]
    conditions = {"as they are": tiles, "0.75x (30x scan)": [shrink(s, 0.75) for s in tiles],
                  "0.5x (20x scan)": [shrink(s, 0.5) for s in tiles],
                  **{name: [restain(s, gains) for s in tiles] for name, gains in RESTAINS.items()}}
    results: dict[str, dict[str, dict[str, float]]] = {}
    for path in args.models:
        engine = Engine(load_model_dir(path), providers=("CPUExecutionProvider",))
        name = Path(path).name
        for condition, samples in conditions.items():
            report, _ = score_samples(samples, lambda i, s=samples, e=engine: instances(
                e.predict(s[i].raw), e.for_image(s[i].raw).thresholds), progress=False)
            results.setdefault(condition, {})[name] = report.overall()
    names = [Path(p).name for p in args.models]
    record.figure("results", results)
    record.table(["condition", *names], [[c, *(f"{row[n]['ap50']:.3f} / {row[n]['dsb_score']:.3f}" for n in names)]
                                         for c, row in results.items()],
                 title=f"{len(tiles)} stained tiles no model trained on; AP@0.5 / DSB score")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    record.write()

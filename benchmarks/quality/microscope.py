"""What a microscope does to a field, and whether a model still finds the field's nuclei (issue 35): real fields
from BBBC039 wells no model trained on (rows A-C), changed as labs' images are, for two models side by side.

    python -m benchmarks microscope NEW_MODEL OLD_MODEL [--fields 12]

For each field:
- glow: a smooth glow added (a ramp and a broad blob: the background rises about 3-4x across the field) and its
  three brightest nuclei pushed 8x, clipped at the camera's 4095: the share of the field's own nuclei (those
  the model finds in the field as it is) found again at IoU 0.5;
- specks: 40 bright specks of 3-8 px on the background: how many become nuclei;
- mosaic: 9 fields in a 3 x 3 mosaic, at 1, 1/2 or 1/4 of their brightness (neighbours differ), segmented as
  one image (the same maps a slide's blocks get): AP@0.5 per field against its labels, beside the same fields
  alone at their brightness, and beside the mosaic at one brightness (what seams alone cost).
Records one table; the figures are medians / means over fields.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmarks import harness

if TYPE_CHECKING:
    from nuclei.inference.engine import Engine
    from nuclei.io.datasets import Sample

CAMERA_TOP = 4095
GAINS = [1.0, 0.25, 0.5, 0.25, 1.0, 0.5, 0.5, 1.0, 0.25]


def glowing(field: np.ndarray, labels: np.ndarray) -> np.ndarray:
    background = float(np.median(field[labels == 0]))
    height, width = field.shape
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = (xx / width + yy / height) / 2
    blob = np.exp(-((yy - height / 3) ** 2 + (xx - width / 2) ** 2) / (2 * (width / 4) ** 2))
    changed = field.astype(np.float64) + background * (3.0 * ramp + 1.5 * blob)
    ids = np.unique(labels[labels > 0])
    for i in ids[np.argsort([field[labels == i].mean() for i in ids])[-3:]]:
        inside = labels == i
        changed[inside] = background + (changed[inside] - background) * 8
    return np.clip(changed, 0, CAMERA_TOP).astype(np.uint16)


def specked(field: np.ndarray, own: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage as ndi

    background = float(np.median(field[labels == 0]))
    contrast = float(np.median(field[labels > 0])) - background
    free = ~ndi.binary_dilation((own > 0) | (labels > 0), iterations=12)
    ys, xs = np.nonzero(free)
    out = field.astype(np.float64)
    yy, xx = np.mgrid[0 : field.shape[0], 0 : field.shape[1]]
    for pick in rng.choice(ys.size, 40, replace=False):
        radius = rng.uniform(1.5, 4.0)
        out[(yy - ys[pick]) ** 2 + (xx - xs[pick]) ** 2 <= radius**2] += contrast * rng.uniform(1.0, 3.0)
    return np.clip(out, 0, CAMERA_TOP).astype(np.uint16)


def mosaic(parts: list[np.ndarray]) -> np.ndarray:
    height, width = parts[0].shape
    out = np.zeros((3 * height, 3 * width), parts[0].dtype)
    for n, part in enumerate(parts):
        r, c = divmod(n, 3)
        out[r * height : (r + 1) * height, c * width : (c + 1) * width] = part
    return out


def windows(image: np.ndarray, height: int, width: int) -> list[np.ndarray]:
    return [image[r * height : (r + 1) * height, c * width : (c + 1) * width] for r in range(3) for c in range(3)]


def main(argv: list[str] | None = None) -> None:
    from dataclasses import replace

    from nuclei.inference.engine import Engine
    from nuclei.io.datasets import load_dataset, matches_group
    from nuclei.modeldir import load_model_dir

    parser = argparse.ArgumentParser(prog="python -m benchmarks microscope", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model directories")
    parser.add_argument("--fields", type=int, default=18, help="held-out fields (a multiple of 9 for mosaics)")
    parser.add_argument("--min-diameter", type=float, action="append", default=[], metavar="PX",
                        help="also each model with `nuclei segment --min-diameter PX` (repeatable)")
    parser.add_argument("--keep-debris", action="store_true",
                        help="also each model with debris kept (`nuclei segment --no-drop-debris`)")
    args = parser.parse_args(argv)
    record = harness.Record("microscope", args)
    samples = [s for s in load_dataset(harness.BBBC039, progress=False).samples
               if matches_group(s, "bbbc039:id=_[A-C]\\d\\d_")][: args.fields]
    rows = []
    for path in args.models:
        engine = Engine(load_model_dir(path), providers=("CPUExecutionProvider",))
        rows.append([Path(path).name, *_figures(engine, samples)])
        if args.keep_debris:
            rows.append([f"{Path(path).name}, debris kept", *_figures(replace(engine, drop_debris=False), samples)])
        for px in args.min_diameter:
            rows.append([f"{Path(path).name}, --min-diameter {px:g}",
                         *_figures(replace(engine, min_diameter=px), samples)])
    record.table(["model", "glow: own nuclei kept", "worst", "specks -> nuclei / 40", "alone AP@0.5",
                  "4x mosaic AP@0.5", "1x mosaic AP@0.5", "worst field drop"], rows,
                 ["", ".3f", ".3f", ".1f", ".3f", ".3f", ".3f", ".3f"],
                 title=f"{len(samples)} held-out BBBC039 fields")
    record.write()


def _figures(engine: Engine, samples: list[Sample]) -> list[float]:
    """One row: glow kept (mean, worst), specks become nuclei, fields alone, the 4x and the even mosaic, and the
    worst field's drop in the mosaic."""
    from nuclei.core.metrics import average_precision, matching
    from nuclei.inference.sizing import nuclei_of

    def segment(image: np.ndarray) -> np.ndarray:  # as `nuclei segment` labels an image (debris dropped or not)
        return nuclei_of(engine, image, engine.predict(image))

    rng = np.random.default_rng(0)
    kept, specks, alone = [], [], []
    for s in samples:
        own = segment(s.raw)
        kept.append(matching(own, segment(glowing(s.raw, s.labels)), 0.5).tp / max(1, int(own.max())))
        specks.append(matching(own, segment(specked(s.raw, own, s.labels, rng)), 0.5).fp)
    together, uniform = [], []
    height, width = samples[0].raw.shape
    for start in range(0, len(samples) - 8, 9):
        group = samples[start : start + 9]
        parts = [np.rint(s.raw * g).astype(np.uint16) for s, g in zip(group, GAINS, strict=True)]
        alone += [average_precision(s.labels, segment(p), 0.5) for s, p in zip(group, parts, strict=True)]
        together += [average_precision(s.labels, w, 0.5)
                     for s, w in zip(group, windows(segment(mosaic(parts)), height, width), strict=True)]
        uniform += [average_precision(s.labels, w, 0.5) for s, w in
                    zip(group, windows(segment(mosaic([s.raw for s in group])), height, width), strict=True)]
    return [float(v) for v in (np.mean(kept), np.min(kept), np.mean(specks), np.mean(alone), np.mean(together),
                               np.mean(uniform), np.max(np.array(alone) - np.array(together)))]

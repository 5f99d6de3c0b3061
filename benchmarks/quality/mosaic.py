"""A mosaic of real fields segmented as one image scores as the same fields segmented one by one (issue 30):
the normalisation window no longer depends on how much empty background an image has.

    python -m benchmarks mosaic                       # 24 BBBC039 fields, 16 px gaps, default model
    python -m benchmarks mosaic --model MODEL_DIR --fields 12 --gap 64

The fields are BBBC039 images (16-bit, 12-bit values) laid row by row on a canvas of the fields' own
5th-percentile value; each field is scored in its own window against its labels (AP@0.5, nuclei cut by the
window edge included as found). Records AP@0.5 field by field and as one mosaic, and the difference; with
`--percentile` the same for the 1st..99.8th percentile window (the previous normalisation) on the same weights.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from benchmarks import harness


def main(argv: list[str] | None = None) -> None:
    from nuclei.core.metrics import average_precision
    from nuclei.core.postprocess import instances
    from nuclei.inference.engine import Engine
    from nuclei.io.datasets import load_dataset
    from nuclei.modeldir import load_model_dir, resolve_model

    parser = argparse.ArgumentParser(prog="python -m benchmarks mosaic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (default: the shipped default model)")
    parser.add_argument("--fields", type=int, default=24)
    parser.add_argument("--columns", type=int, default=4)
    parser.add_argument("--gap", type=int, default=16)
    parser.add_argument("--percentile", action="store_true", help="also the 1st..99.8th percentile window")
    args = parser.parse_args(argv)
    record = harness.Record("mosaic", args)

    model = load_model_dir(args.model) if args.model else resolve_model(None)
    samples = load_dataset(harness.BBBC039, progress=False).samples[: args.fields]
    height, width = samples[0].raw.shape[:2]
    rows = -(-len(samples) // args.columns)
    level = np.percentile(np.concatenate([s.raw.ravel() for s in samples]), 5)
    mosaic = np.full((rows * (height + args.gap), args.columns * (width + args.gap)), level, samples[0].raw.dtype)
    corners = [(r * (height + args.gap), c * (width + args.gap)) for r in range(rows) for c in range(args.columns)]
    for s, (y, x) in zip(samples, corners, strict=False):
        mosaic[y : y + height, x : x + width] = s.raw
    windows = {"model's": model}
    if args.percentile:
        windows["percentile"] = replace(model, config={**model.config, "normalization": {"kind": "percentile"}})
    rows = []
    for name, chosen in windows.items():
        engine = Engine(chosen, providers=("CPUExecutionProvider",))
        alone = [average_precision(s.labels, instances(engine.predict(s.raw), engine.thresholds)) for s in samples]
        labels = instances(engine.predict(mosaic), engine.thresholds)
        inside = [average_precision(s.labels, labels[y : y + height, x : x + width])
                  for s, (y, x) in zip(samples, corners, strict=False)]
        rows.append([f"{name} ({chosen.normalization.kind})", np.mean(alone), np.mean(inside),
                     np.mean(inside) - np.mean(alone)])
    record.table(["window", "AP@0.5 field by field", "as one mosaic", "difference"], rows,
                 ["", ".3f", ".3f", "+.3f"], title=f"{len(samples)} fields of {height}x{width} on a "
                 f"{mosaic.shape[0]}x{mosaic.shape[1]} mosaic ({mosaic.size / 1e6:.1f} Mpx), {args.gap} px gaps")
    record.write()

"""Would a wider U-Net still train in one session? Seconds per training batch of wider networks against the
shipped width (16 base filters), measured in the same run.

    .venv/bin/python benchmarks/training_cost.py                    # widths 16, 24, 32; 6 timed batches each
    .venv/bin/python benchmarks/training_cost.py --widths 16 32 --batches 4

Each width is the train flow's model and loss (`build_model`, `compile_model`) taking `train_on_batch` steps on
one batch of 16 192x192 crops with their targets, as the generalist recipe's stages 2-4 do (needs
nuclei[train]). Widths are interleaved batch by batch so all see the same machine load; the ratio is the median
seconds per batch over the baseline's. The recipe's hours scale by about that ratio (data loading is the same
for all widths and small beside the step).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

from nuclei.config import TrainConfig
from nuclei.training.fit import compile_model
from nuclei.training.model import build_model

BASELINE = 16
RECIPE_HOURS = 4.58  # the shipped generalist's four stages on this kind of 2-core machine (its model card)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 24, 32])
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--crop", type=int, default=192)
    args = parser.parse_args()
    widths = sorted({BASELINE, *args.widths})

    rng = np.random.default_rng(0)
    images = rng.random((16, args.crop, args.crop, 3), dtype=np.float32)
    # targets: foreground, core, then the per-pixel loss weight (`make_targets`' layout)
    targets = np.concatenate(
        [(rng.random((16, args.crop, args.crop, 2)) > 0.7), np.ones((16, args.crop, args.crop, 1))], axis=-1
    ).astype(np.float32)

    models = {}
    for width in widths:
        config = TrainConfig(data_dir="unused", base_filters=width)
        model = build_model(config)
        compile_model(model, config)
        model.train_on_batch(images, targets)  # build the graph before timing
        models[width] = model

    seconds: dict[int, list[float]] = {w: [] for w in widths}
    for _ in range(args.batches):
        for width, model in models.items():
            started = time.perf_counter()
            model.train_on_batch(images, targets)
            seconds[width].append(time.perf_counter() - started)

    base = statistics.median(seconds[BASELINE])
    print(f"{'base filters':>12} {'parameters':>11} {'s / batch':>10} {'ratio':>6} {'recipe hours':>13}")
    for width in widths:
        median = statistics.median(seconds[width])
        ratio = median / base
        print(
            f"{width:>12} {models[width].count_params():>11,} {median:>10.2f} {ratio:>6.2f}"
            f" {RECIPE_HOURS * ratio:>13.1f}"
        )


if __name__ == "__main__":
    main()

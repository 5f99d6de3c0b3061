"""Would a wider U-Net still train in one session? Seconds per training batch of wider networks against the
shipped width (16 base filters), measured in the same run.

    python -m benchmarks training_cost                    # widths 16, 24, 32; 6 timed batches each
    python -m benchmarks training_cost --widths 16 32 --batches 4

Each width is the train flow's model and loss (`build_model`, `compile_model`) taking `train_on_batch` steps on
one batch of 16 192x192 crops with their targets, as the generalist recipe's stages 2-4 do (needs
nuclei[train]). Widths are interleaved batch by batch so all see the same machine load; the ratio is the median
seconds per batch over the baseline's. The recipe's hours scale by about that ratio (data loading is the same
for all widths and small beside the step).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from benchmarks import harness
from nuclei.config import TrainConfig
from nuclei.training.fit import compile_model
from nuclei.training.model import build_model

BASELINE = 16
RECIPE_HOURS = 4.58  # the shipped generalist's four stages on this kind of 2-core machine (its model card)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks training_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 24, 32])
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--crop", type=int, default=192)
    args = parser.parse_args(argv)
    record = harness.Record("training_cost", args)
    widths = sorted({BASELINE, *args.widths})
    images, targets = harness.training_batch(args.crop)
    models = {}
    for width in widths:
        config = TrainConfig(data_dir="unused", base_filters=width)
        models[width] = build_model(config)
        compile_model(models[width], config)
    found = harness.interleave({str(w): harness.timed(lambda m=m: m.train_on_batch(images, targets))
                                for w, m in models.items()}, args.batches, baseline=str(BASELINE), warmup=True)
    record.table(["base filters", "parameters", "s / batch", "ratio", "the four-stage recipe, hours"],
                 [[w, models[w].count_params(), found.median(str(w)), found.ratio(str(w)),
                   RECIPE_HOURS * found.ratio(str(w))] for w in widths],
                 ["d", ",d", ".2f", ".2f", ".1f"], title=f"one batch of 16 {args.crop}x{args.crop} crops, "
                 f"{args.batches} interleaved batches each; recipe hours: {RECIPE_HOURS} h times the ratio")
    record.write()

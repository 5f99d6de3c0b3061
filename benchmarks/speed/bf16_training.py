"""Is Keras mixed precision (`mixed_bfloat16`) faster than float32 for a training step on this CPU? This
machine's CPU has AVX-512 BF16; fine-tuning time is what a lab waits for.

    python -m benchmarks bf16_training                    # 8 timed batches each, interleaved
    python -m benchmarks bf16_training --batches 12 --crop 256

The shipped recipe's model and loss (`build_model`, `compile_model`) take `train_on_batch` steps on one batch of
16 192x192 crops, as stages 2-5 and `nuclei finetune` do; float32 and mixed_bfloat16 models alternate batch by
batch so both see the same machine load. Records the median seconds per batch and the ratio bf16 / float32
(the median over batch pairs; below 1: bf16 is faster). Needs nuclei[train].
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras

from benchmarks import harness
from nuclei.config import TrainConfig
from nuclei.training.fit import compile_model
from nuclei.training.model import build_model


def _model(policy: str) -> keras.Model:
    keras.mixed_precision.set_global_policy(policy)
    config = TrainConfig(data_dir="unused")
    model = build_model(config)
    compile_model(model, config)
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks bf16_training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--crop", type=int, default=192)
    args = parser.parse_args(argv)
    record = harness.Record("bf16_training", args)
    images, targets = harness.training_batch(args.crop)
    models = {policy: _model(policy) for policy in ("float32", "mixed_bfloat16")}
    keras.mixed_precision.set_global_policy("float32")
    found = harness.interleave({p: harness.timed(lambda m=m: m.train_on_batch(images, targets))
                                for p, m in models.items()}, args.batches, baseline="float32", warmup=True)
    record.figure("bf16_ratio", round(found.ratio("mixed_bfloat16"), 2))
    record.table(["policy", "s / batch", "ratio", "batches' ratios"],
                 [[p, found.median(p), found.ratio(p), found.spread(p)] for p in found.names], ["", ".2f", ".2f", ""],
                 title=f"one batch of 16 {args.crop}x{args.crop} crops, {args.batches} interleaved "
                 "batches each after one to build the graph")
    record.write()


"""Is Keras mixed precision (`mixed_bfloat16`) faster than float32 for a training step on this CPU? This
machine's CPU has AVX-512 BF16; fine-tuning time is what a lab waits for.

    .venv/bin/python benchmarks/bf16_training.py                    # 8 timed batches each, interleaved
    .venv/bin/python benchmarks/bf16_training.py --batches 12 --crop 256

The shipped recipe's model and loss (`build_model`, `compile_model`) take `train_on_batch` steps on one batch of
16 192x192 crops, as stages 2-5 and `nuclei finetune` do; float32 and mixed_bfloat16 models alternate batch by
batch so both see the same machine load. Prints the median seconds per batch and the ratio bf16 / float32
(below 1: bf16 is faster). Needs nuclei[train].
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np

from nuclei.config import TrainConfig
from nuclei.training.fit import compile_model
from nuclei.training.model import build_model


def _model(policy: str) -> keras.Model:
    keras.mixed_precision.set_global_policy(policy)
    config = TrainConfig(data_dir="unused")
    model = build_model(config)
    compile_model(model, config)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--crop", type=int, default=192)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.random((16, args.crop, args.crop, 3), dtype=np.float32)
    targets = np.concatenate(  # foreground, core, then the per-pixel loss weight (`make_targets`' layout)
        [(rng.random((16, args.crop, args.crop, 2)) > 0.7), np.ones((16, args.crop, args.crop, 1))], axis=-1
    ).astype(np.float32)
    models = {policy: _model(policy) for policy in ("float32", "mixed_bfloat16")}
    keras.mixed_precision.set_global_policy("float32")
    for model in models.values():
        model.train_on_batch(images, targets)  # build the graph before timing
    seconds: dict[str, list[float]] = {p: [] for p in models}
    for _ in range(args.batches):
        for policy, model in models.items():
            started = time.perf_counter()
            model.train_on_batch(images, targets)
            seconds[policy].append(time.perf_counter() - started)
    base = statistics.median(seconds["float32"])
    print(f"{'policy':>15} {'s / batch':>10} {'ratio':>6}")
    for policy, found in seconds.items():
        print(f"{policy:>15} {statistics.median(found):>10.2f} {statistics.median(found) / base:>6.2f}")


if __name__ == "__main__":
    main()

"""What the post-processing rules cost: labelling with the shipped thresholds (core specks ignored, unsure nuclei
dropped) against the rules before them (every core a seed, no confidence cut-off), and against inference.

    .venv/bin/python benchmarks/postprocess.py               # 64 DSB2018 256x256 images, 5 rounds
    .venv/bin/python benchmarks/postprocess.py --images 32 --rounds 3

The probabilities are the shipped model's (int8, as on CPU), computed once; rounds are interleaved so both
variants see the same machine load; ratios are medians over the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import numpy as np
from model_speed import _images  # the sibling script's DSB2018 256x256 images (run as benchmarks/postprocess.py)

from nuclei.core import postprocess
from nuclei.core.thresholds import Thresholds
from nuclei.inference.engine import Engine
from nuclei.modeldir import default_model_path, load_model_dir


def _seconds(probs: list[np.ndarray], thresholds: Thresholds, fraction: float) -> float:
    postprocess.MIN_CORE_FRACTION = fraction
    started = time.perf_counter()
    for prob in probs:
        postprocess.instances(prob, thresholds)
    return (time.perf_counter() - started) / len(probs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    engine = Engine(load_model_dir(default_model_path()), providers=("CPUExecutionProvider",))
    images = _images(args.images)
    engine.predict(images[0])
    started = time.perf_counter()
    probs = [engine.predict(image) for image in images]
    inference = (time.perf_counter() - started) / len(images)
    shipped, fraction = engine.thresholds, postprocess.MIN_CORE_FRACTION
    variants = {"before (all cores seed, no cut-off)": (replace(shipped, confidence=0.0), 0.0),
                "shipped rules": (shipped, fraction)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (thresholds, frac) in variants.items():
            times[name].append(_seconds(probs, thresholds, frac))
    postprocess.MIN_CORE_FRACTION = fraction
    base = statistics.median(times["before (all cores seed, no cut-off)"])
    print(f"{len(probs)} images 256x256, {args.rounds} rounds interleaved; {engine.precision} inference "
          f"{inference * 1000:.1f} ms/image (once)")
    print(f"{'labelling':<38} {'ms/image':>9} {'ratio':>6} {'of inference':>13}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<38} {median * 1000:>9.2f} {median / base:>6.2f} {median / inference:>13.3f}")


if __name__ == "__main__":
    main()

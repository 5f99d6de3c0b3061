"""What the post-processing rules cost: labelling with the shipped thresholds (core specks ignored, unsure nuclei
dropped) against the rules before them (every core a seed, no confidence cut-off), and against inference.

    python -m benchmarks postprocess               # 64 DSB2018 256x256 images, 5 rounds
    python -m benchmarks postprocess --images 32 --rounds 3

The probabilities are the shipped model's (int8, as on CPU), computed once; rounds are interleaved so both
variants see the same machine load; ratios are medians of each round's over the baseline's in the same round.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from benchmarks import harness
from nuclei.core import postprocess
from nuclei.core.thresholds import Thresholds
from nuclei.inference.engine import Engine
from nuclei.modeldir import default_model_path, load_model_dir

BEFORE = "before (all cores seed, no cut-off)"


def seconds_per_image(probs: list[np.ndarray], thresholds: Thresholds, fraction: float) -> float:
    shipped = postprocess.MIN_CORE_FRACTION
    postprocess.MIN_CORE_FRACTION = fraction
    try:
        return harness.timed(lambda: [postprocess.instances(p, thresholds) for p in probs])() / len(probs)
    finally:
        postprocess.MIN_CORE_FRACTION = shipped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks postprocess", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    record = harness.Record("postprocess", args)

    engine = Engine(load_model_dir(default_model_path()), providers=("CPUExecutionProvider",))
    images = harness.dev_images(args.images)
    engine.predict(images[0])
    probs: list[np.ndarray] = []
    inference = harness.timed(lambda: probs.extend(engine.predict(image) for image in images))() / len(images)
    shipped = engine.thresholds
    found = harness.interleave({
        BEFORE: lambda: seconds_per_image(probs, replace(shipped, confidence=0.0), 0.0),
        "shipped rules": lambda: seconds_per_image(probs, shipped, postprocess.MIN_CORE_FRACTION),
    }, args.rounds, baseline=BEFORE)
    record.table(["labelling", "ms / image", "ratio", "rounds' ratios", "of inference"],
                 [[name, found.median(name) * 1000, found.ratio(name), found.spread(name),
                   found.median(name) / inference] for name in found.names], ["", ".2f", ".2f", "", ".3f"],
                 title=f"{len(probs)} DSB2018 256x256 images, {args.rounds} interleaved rounds; {engine.precision} "
                       f"inference {inference * 1000:.1f} ms / image (once)")
    record.write()

"""Per-image inference cost of the shipped models at each precision, against dsb2018-unet float32.

    python -m benchmarks model_speed                 # 64 DSB2018 256x256 images, 5 rounds
    python -m benchmarks model_speed --images 32 --rounds 3

Each variant is an `Engine` (normalisation, padding, one ONNX Runtime session with the default threads) as
`nuclei segment` runs it; post-processing is left out, being the same for all. Rounds are interleaved so every
variant sees the same machine load; the ratio is the median of each round's seconds per image over the
baseline's in the same round (below 1: faster than the baseline).
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks import harness
from nuclei.inference.engine import Engine
from nuclei.modeldir import load_model_dir

BASELINE = "dsb2018-unet float32"


def seconds_per_image(engine: Engine, images: list[np.ndarray]) -> float:
    return harness.timed(lambda: [engine.predict(image) for image in images])() / len(images)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks model_speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    record = harness.Record("model_speed", args)

    images = harness.dev_images(args.images)
    engines = {f"{name} {precision}": Engine(load_model_dir(harness.MODELS / name),
                                             providers=("CPUExecutionProvider",), int8=precision == "int8")
               for name in ("nuclei-generalist", "dsb2018-unet") for precision in ("float32", "int8")}
    for key, engine in list(engines.items()):
        if engine.precision != key.split()[1]:  # the train flow keeps int8 only when it scores as float32 does
            record.note(f"{key.split()[0]} ships no validated {key.split()[1]} model: left out")
            del engines[key]
            continue
        engine.predict(images[0])  # session built and warmed outside the timing
    found = harness.interleave({k: lambda e=e: seconds_per_image(e, images) for k, e in engines.items()},
                               args.rounds, baseline=BASELINE)
    record.table(["model", "precision", "ms / image", f"ratio to {BASELINE}", "rounds' ratios"],
                 [[*key.split(), found.median(key) * 1000, found.ratio(key), found.spread(key)]
                  for key in found.names], ["", "", ".1f", ".2f", ""],
                 title=f"{len(images)} DSB2018 256x256 images, {args.rounds} interleaved rounds, medians")
    record.write()

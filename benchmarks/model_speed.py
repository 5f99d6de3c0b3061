"""Per-image inference cost of the shipped models at each precision, against dsb2018-unet float32.

    .venv/bin/python benchmarks/model_speed.py                 # 64 DSB2018 256x256 images, 5 rounds
    .venv/bin/python benchmarks/model_speed.py --images 32 --rounds 3

Each variant is an `Engine` (normalisation, padding, one ONNX Runtime session with the default threads) as
`nuclei segment` runs it; post-processing is left out, being the same for all. Rounds are interleaved so every
variant sees the same machine load; the ratio is the median seconds per image over the baseline's, measured in
the same run (below 1: faster than the baseline).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import numpy as np

from nuclei.inference.engine import Engine
from nuclei.io.images import read_raw
from nuclei.modeldir import ModelDir, load_model_dir

ASSETS = Path(__file__).resolve().parents[1] / "nuclei" / "assets" / "models"
DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018-dev"
BASELINE = ("dsb2018-unet", "float32")


def _images(limit: int) -> list[np.ndarray]:
    with open(DEV / "manifest.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if (r["height"], r["width"]) == ("256", "256")][:limit]
    return [read_raw(DEV / "images" / f"{r['id']}.png") for r in rows]


def _seconds_per_image(engine: Engine, images: list[np.ndarray]) -> float:
    started = time.perf_counter()
    for image in images:
        engine.predict(image)
    return (time.perf_counter() - started) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    images = _images(args.images)
    models: dict[str, ModelDir] = {name: load_model_dir(ASSETS / name) for name in ("nuclei-generalist",
                                                                                      "dsb2018-unet")}
    engines = {(name, precision): Engine(model, providers=("CPUExecutionProvider",), int8=precision == "int8")
               for name, model in models.items() for precision in ("float32", "int8")}
    for (name, precision), engine in list(engines.items()):
        if engine.precision != precision:  # the train flow keeps int8 only when it scores as float32 does
            print(f"{name} ships no validated {precision} model: left out")
            del engines[(name, precision)]
            continue
        engine.predict(images[0])  # session built and warmed outside the timing
    times: dict[tuple[str, str], list[float]] = {key: [] for key in engines}
    for _ in range(args.rounds):
        for key, engine in engines.items():
            times[key].append(_seconds_per_image(engine, images))
    base = statistics.median(times[BASELINE])
    print(f"{len(images)} images 256x256, {args.rounds} rounds interleaved; medians; ratio against "
          f"{BASELINE[0]} {BASELINE[1]} in this run")
    print(f"{'model':<20} {'precision':<9} {'ms/image':>9} {'ratio':>6}")
    for (name, precision), values in times.items():
        median = statistics.median(values)
        print(f"{name:<20} {precision:<9} {median * 1000:>9.1f} {median / base:>6.2f}")


if __name__ == "__main__":
    main()

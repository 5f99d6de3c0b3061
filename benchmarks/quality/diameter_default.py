"""Should `--diameter auto` be the default? Its gain and its cost on every validation and held-out group.

    python -m benchmarks diameter_default                 # the default model, int8, as on this CPU
    python -m benchmarks diameter_default --model MODEL_DIR --step 2

The groups are the model's validation images per data set and its held-out groups (its data.json). Each image
is segmented with no size given and with `--diameter auto` (a first pass measures the median nucleus; a second
pass at the model's scale only when that is over 2.5x off), alternating image by image so both see the same
machine load. Records AP@0.5 both ways, how many images auto rescaled, and the time ratio auto / none.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks import harness


def main(argv: list[str] | None = None) -> None:
    from nuclei.core.metrics import average_precision
    from nuclei.inference.engine import AUTO, Engine
    from nuclei.inference.sizing import label_image
    from nuclei.io.datasets import load_dataset, matches_group
    from nuclei.modeldir import load_model_dir, resolve_model, resolve_stained_model

    parser = argparse.ArgumentParser(prog="python -m benchmarks diameter_default", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (default: the shipped default model)")
    parser.add_argument("--step", type=int, default=1, help="every STEP-th image of each group")
    args = parser.parse_args(argv)
    record = harness.Record("diameter_default", args)
    model = load_model_dir(args.model) if args.model else resolve_model(None)
    plain = Engine(model, providers=("CPUExecutionProvider",), stained=resolve_stained_model("default", None))
    auto = replace(plain, diameter=AUTO)
    data = json.loads((model.path / "data.json").read_text())
    val = set(data["val_ids"])
    groups: dict[str, list] = {}  # type: ignore[type-arg]
    for root in data["roots"]:
        samples = load_dataset(harness.SHARED / Path(root).name, progress=False).samples
        groups[f"validation/{Path(root).name}"] = [s for s in samples if s.id in val]
        for rule in data.get("held_out_ids", {}):
            if rule.startswith(Path(root).name + ":"):
                groups[f"held out/{rule}"] = [s for s in samples if matches_group(s, rule)]
    rows = []
    for name, samples in groups.items():
        samples = samples[:: args.step]
        ap = {"none": [], "auto": []}  # type: ignore[var-annotated]
        seconds = {"none": 0.0, "auto": 0.0}
        rescaled = 0
        for s in samples:
            for key, engine in (("none", plain), ("auto", auto)):
                started = time.perf_counter()
                labels, used = label_image(engine, s.raw)
                seconds[key] += time.perf_counter() - started
                ap[key].append(average_precision(s.labels, labels))
                rescaled += key == "auto" and used.diameter not in (None, AUTO)
        rows.append([name, len(samples), np.mean(ap["none"]), np.mean(ap["auto"]), rescaled,
                     seconds["auto"] / seconds["none"]])
    record.table(["group", "n", "AP@0.5 none", "auto", "rescaled", "time auto / none"], rows,
                 ["", "d", ".3f", ".3f", "d", ".2f"], title=f"every {args.step}. image of each group, none and auto "
                 "alternating image by image")
    record.write()

"""Quality on images a model never saw: two models scored on the same validation and held-out images.

    python -m benchmarks compare_models models/nuclei-generalist models/dsb2018-unet
    python -m benchmarks compare_models NEW OLD --split-from NEW --out compare.json
    python -m benchmarks compare_models default models/dsb2018-unet   # `nuclei segment`'s default

The images are the first model's (or --split-from's) validation split and held-out groups, per data set, from
its data.json; both models segment them with their own thresholds (int8 where they ship it, as on CPU by
default). Records DSB2018 score and AP@0.5 per data set, category and held-out group, side by side. `default`
is what `nuclei segment` runs with no --model: the shipped model, colour brightfield images by the shipped
stained-tissue model.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmarks import harness

if TYPE_CHECKING:
    from nuclei.inference.engine import Engine
    from nuclei.io.datasets import Sample



def main(argv: list[str] | None = None) -> None:
    from nuclei.evaluation import Report, score_samples
    from nuclei.inference.engine import Engine
    from nuclei.io.datasets import load_dataset, matches_group
    from nuclei.modeldir import default_model_path, load_model_dir, resolve_stained_model

    parser = argparse.ArgumentParser(prog="python -m benchmarks compare_models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model directories to compare")
    parser.add_argument("--split-from", help="model directory whose data.json names the images (default: first)")
    parser.add_argument("--float32", action="store_true", help="float32 even where a model ships int8")
    parser.add_argument("--tta", action="store_true", help="test-time flips (4 passes an image)")
    parser.add_argument("--stained-model", help="send colour brightfield images to this model directory in every "
                        "column ('default': the shipped stained-tissue model), as `nuclei segment` does")
    parser.add_argument("--debris", choices=("drop", "keep", "both"), default="drop",
                        help="drop debris specks as `nuclei segment` does, keep them (`--no-drop-debris`), or "
                        "both: each model twice")
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    record = harness.Record("compare_models", args)

    paths = [str(default_model_path()) if m == "default" else m for m in args.models]
    data = json.loads((Path(args.split_from or paths[0]) / "data.json").read_text())
    roots = [Path(r) for r in data.get("roots") or [data["root"]]]
    val, held = set(data["val_ids"]), data.get("held_out_ids", {})
    samples = {root.name: load_dataset(root if root.is_dir() else harness.SHARED / root.name, progress=False).samples
               for root in roots}
    groups = {f"validation/{name}": [s for s in found if s.id in val] for name, found in samples.items()}
    for rule in held:
        groups[f"held out/{rule}"] = [s for found in samples.values() for s in found if matches_group(s, rule)]

    results: dict[str, dict[str, dict]] = {}
    for name, model_path in zip(args.models, paths, strict=True):
        model = load_model_dir(model_path)
        # `default` routes as `nuclei segment` does; --stained-model routes every column the same way
        choice = args.stained_model or ("default" if name == "default" else "none")
        stained = resolve_stained_model(choice, None)
        engine = Engine(model, ("CPUExecutionProvider",), int8=not args.float32, tta=args.tta, stained=stained)
        label = "default" if name == "default" else model.path.name
        if any(key.startswith(f"{label} (") for key in next(iter(results.values()), {})):
            label = f"{model.path.parent.name}/{label}"  # two versions of one model: tell them apart
        for drop in {"drop": [True], "keep": [False], "both": [False, True]}[args.debris]:
            column = f"{label} ({engine.precision}{'' if drop else ', debris kept'})"
            for group, images in groups.items():
                report: Report = score_samples(images, _segmenter(replace(engine, drop_debris=drop), images),
                                               progress=False)[0]
                results.setdefault(group, {})[column] = report.as_dict()
    record.figure("results", results)
    record.table(*table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    record.write()


def _segmenter(engine: Engine, images: list[Sample]) -> Callable[[int], np.ndarray]:
    from nuclei.inference.sizing import label_image

    return lambda i: label_image(engine, images[i].raw)[0]


def table(results: dict[str, dict[str, dict]]) -> tuple[list[str], list[list], list[str]]:
    """Columns, rows and formats: DSB score, AP@0.5 and images per model, for each group and its categories."""
    models = list(next(iter(results.values())))
    columns = ["images (never trained on)"] + [f"{m} {what}" for m in models for what in ("DSB", "AP@0.5", "n")]
    rows = []
    for group, by_model in results.items():
        lines = {f"**{group}**": {m: r["overall"] for m, r in by_model.items()}}
        for m, r in by_model.items():
            for category, scores in r["by_category"].items():
                lines.setdefault(f"&nbsp;&nbsp;{category}", {})[m] = scores
        for label, scores in lines.items():
            rows.append([label, *[v for m in models for v in ((scores[m]["dsb_score"], scores[m]["ap50"],
                                                               int(scores[m]["n_images"])) if m in scores
                                                              else (None, None, None))]])
    return columns, rows, ["", *[".3f", ".3f", "d"] * len(models)]

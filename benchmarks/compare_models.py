"""Quality on images a model never saw: two models scored on the same validation and held-out images.

    .venv/bin/python benchmarks/compare_models.py models/nuclei-generalist models/dsb2018-unet
    .venv/bin/python benchmarks/compare_models.py NEW OLD --split-from NEW --out compare.json
    .venv/bin/python benchmarks/compare_models.py default models/dsb2018-unet   # `nuclei segment`'s default

The images are the first model's (or --split-from's) validation split and held-out groups, per data set, from
its data.json; both models segment them with their own thresholds (int8 where they ship it, as on CPU by
default). Prints DSB2018 score and AP@0.5 per data set, category and held-out group, side by side. `default`
is what `nuclei segment` runs with no --model: the shipped model, colour brightfield images by the shipped
stained-tissue model.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from nuclei.inference.engine import Engine
    from nuclei.io.datasets import Sample

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    from nuclei.evaluation import Report, score_samples
    from nuclei.inference.engine import Engine
    from nuclei.io.datasets import load_dataset, matches_group
    from nuclei.modeldir import default_model_path, load_model_dir, resolve_stained_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help="model directories to compare")
    parser.add_argument("--split-from", help="model directory whose data.json names the images (default: first)")
    parser.add_argument("--float32", action="store_true", help="float32 even where a model ships int8")
    parser.add_argument("--tta", action="store_true", help="test-time flips (4 passes an image)")
    parser.add_argument("--stained-model", help="send colour brightfield images to this model directory in every "
                        "column ('default': the shipped stained-tissue model), as `nuclei segment` does")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    paths = [str(default_model_path()) if m == "default" else m for m in args.models]
    data = json.loads((Path(args.split_from or paths[0]) / "data.json").read_text())
    roots = [Path(r) for r in data.get("roots") or [data["root"]]]
    val, held = set(data["val_ids"]), data.get("held_out_ids", {})
    samples = {root.name: load_dataset(root if root.is_dir() else SHARED / root.name, progress=False).samples
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
        for group, images in groups.items():
            report: Report = score_samples(images, _segmenter(engine, images), progress=False)[0]
            results.setdefault(group, {})[f"{label} ({engine.precision})"] = report.as_dict()
    print_table(results)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


def _segmenter(engine: Engine, images: list[Sample]) -> Callable[[int], np.ndarray]:
    from nuclei.inference.sizing import label_image

    return lambda i: label_image(engine, images[i].raw)[0]


def print_table(results: dict[str, dict[str, dict]]) -> None:
    models = list(next(iter(results.values())))
    print(f"{'images':58}" + "".join(f"{m[:26]:>28}" for m in models))
    print(f"{'':58}" + "".join(f"{'DSB   AP@0.5   n':>28}" for _ in models))
    for group, by_model in results.items():
        rows = {"overall": {m: r["overall"] for m, r in by_model.items()}}
        for m, r in by_model.items():
            for category, scores in r["by_category"].items():
                rows.setdefault(f"  {category}", {})[m] = scores
        for name, scores in rows.items():
            label = group if name == "overall" else name
            cells = "".join(
                f"{scores[m]['dsb_score']:>12.3f}{scores[m]['ap50']:>9.3f}{int(scores[m]['n_images']):>7d}"
                if m in scores else f"{'':>28}" for m in models)
            print(f"{label[:58]:58}{cells}")


if __name__ == "__main__":
    main()

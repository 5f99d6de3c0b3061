"""Does `--diameter` help on big nuclei? S-BSST265's 63x images (never trained on) with and without it.

    python -m benchmarks diameter                                  # the default model, int8
    python -m benchmarks diameter --model models/my-unet --factors 0.75 1 1.5

The images are the model's S-BSST265 validation and held-out images at 63x (nuclei 40-190 px across). Each is
segmented as it is, with `--diameter auto` (measured per image), and with `--diameter` set to its preparation
type's median nucleus diameter (what a user would measure on a few nuclei of one experiment, from the ground truth
here) times each factor: 1 is the honest estimate, the others show how forgiving a rough guess is. Records
DSB2018 score and AP@0.5 per preparation.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from benchmarks import harness
from nuclei.core.measure import median_diameter
from nuclei.evaluation import score_samples
from nuclei.inference.engine import Engine
from nuclei.inference.sizing import label_image
from nuclei.io.datasets import Sample, load_dataset
from nuclei.modeldir import default_model_path, load_model_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks diameter", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--factors", type=float, nargs="+", default=[1.0])
    args = parser.parse_args(argv)
    record = harness.Record("diameter", args)

    model = load_model_dir(args.model)
    data = json.loads((model.path / "data.json").read_text())
    unseen = set(data["val_ids"]) | {i for ids in data.get("held_out_ids", {}).values() for i in ids}
    dataset = load_dataset(harness.SHARED / "s-bsst265", progress=False)
    by_preparation: dict[str, list[Sample]] = defaultdict(list)
    for sample in dataset.samples:
        if sample.id in unseen and sample.meta.get("magnification") == "63x":
            by_preparation[sample.meta["preparation"]].append(sample)

    rows = []
    for preparation, samples in sorted(by_preparation.items()):
        measured = median_diameter(s.labels for s in samples)
        for diameter in [None, "auto", *(measured * f for f in args.factors)]:
            engine = Engine(model, ("CPUExecutionProvider",), diameter=diameter)  # type: ignore[arg-type]
            report = score_samples(samples, lambda i, e=engine, s=samples: label_image(e, s[i].raw)[0],
                                   progress=False)[0].as_dict()["overall"]
            shown = "none" if diameter is None else diameter if isinstance(diameter, str) else f"{diameter:.0f} px"
            zoom = "per img" if diameter == "auto" else f"{engine.zoom:.2f}"
            rows.append([preparation, len(samples), shown, zoom, report["dsb_score"], report["ap50"]])
    record.table(["63x preparation", "n", "diameter", "zoom", "DSB", "AP@0.5"], rows,
                 ["", "d", "", "", ".3f", ".3f"], title=f"model {model.version}, trained at a nucleus diameter of "
                 f"{model.nucleus_diameter:.1f} px; int8")
    record.write()

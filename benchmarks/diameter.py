"""Does `--diameter` help on big nuclei? S-BSST265's 63x images (never trained on) with and without it.

    .venv/bin/python benchmarks/diameter.py                                  # the default model, int8
    .venv/bin/python benchmarks/diameter.py --model models/my-unet --factors 0.75 1 1.5

The images are the model's S-BSST265 validation and held-out images at 63x (nuclei 40-190 px across). Each is
segmented as it is, with `--diameter auto` (measured per image), and with `--diameter` set to its preparation
type's median nucleus diameter (what a user would measure on a few nuclei of one experiment, from the ground truth
here) times each factor: 1 is the honest estimate, the others show how forgiving a rough guess is. Prints
DSB2018 score and AP@0.5 per preparation.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from nuclei.core.measure import median_diameter
from nuclei.evaluation import score_samples
from nuclei.inference.engine import Engine
from nuclei.inference.sizing import label_image
from nuclei.io.datasets import Sample, load_dataset
from nuclei.modeldir import default_model_path, load_model_dir

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--factors", type=float, nargs="+", default=[1.0])
    args = parser.parse_args()

    model = load_model_dir(args.model)
    data = json.loads((model.path / "data.json").read_text())
    unseen = set(data["val_ids"]) | {i for ids in data.get("held_out_ids", {}).values() for i in ids}
    dataset = load_dataset(SHARED / "s-bsst265", progress=False)
    by_preparation: dict[str, list[Sample]] = defaultdict(list)
    for sample in dataset.samples:
        if sample.id in unseen and sample.meta.get("magnification") == "63x":
            by_preparation[sample.meta["preparation"]].append(sample)

    print(f"model {model.version}, trained at a nucleus diameter of {model.nucleus_diameter:.1f} px; int8")
    print(f"{'preparation':<22} {'n':>3} {'diameter':>9} {'zoom':>7} {'DSB':>7} {'AP@0.5':>7}")
    for preparation, samples in sorted(by_preparation.items()):
        measured = median_diameter(s.labels for s in samples)
        for diameter in [None, "auto", *(measured * f for f in args.factors)]:
            engine = Engine(model, ("CPUExecutionProvider",), diameter=diameter)  # type: ignore[arg-type]
            report = score_samples(samples, lambda i, e=engine, s=samples: label_image(e, s[i].raw)[0],
                                   progress=False)[0].as_dict()["overall"]
            shown = "none" if diameter is None else diameter if isinstance(diameter, str) else f"{diameter:.0f} px"
            zoom = "per img" if diameter == "auto" else f"{engine.zoom:.2f}"
            print(f"{preparation:<22} {len(samples):>3} {shown:>9} {zoom:>7} {report['dsb_score']:>7.3f} "
                  f"{report['ap50']:>7.3f}")


if __name__ == "__main__":
    main()

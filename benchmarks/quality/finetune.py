"""What a lab gets from `nuclei finetune`: the shipped model fine-tuned on N labelled images of an experiment it
never trained on, scored against the default model on that experiment's other images.

    python -m benchmarks finetune bbbc039-wells-a-c --n 10 --minutes 15
    python -m benchmarks finetune he-tissue --n 5 --minutes 15
    python -m benchmarks finetune bm-cytospins --n 5 --precision float32
    python -m benchmarks finetune bm-cytospins --n 5 --swap     # the other fold of the same draw
    python -m benchmarks finetune he-tissue --n 5 --minutes 4 --as-lab 20x-pale   # another lab's scans

Groups (../shared/data): `bbbc039-wells-a-c` (33 U2OS Hoechst fields held out of the generalist's training),
`bm-cytospins` (S-BSST265's 10 bone-marrow cytospins, held out, nuclei ~100 px), `he-tissue` (DSB2018's 105
colour-stained tissue tiles, which a default run sends to the stained-tissue model, and which a fine-tune starts
from; only the tiles it never trained on are scored). The N images are a seeded draw; everything is trained on
them (no hold-back), and both models segment the group's other images as `nuclei segment` does on this CPU (int8
where kept; the default with its stained-tissue routing). Records AP@0.5, DSB score and nucleus counts, the wall
time of the fine-tune, and the gain.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import harness

GROUPS = {
    "bbbc039-wells-a-c": ("bbbc039", "bbbc039:id=_[A-C]\\d\\d_"),
    "bm-cytospins": ("s-bsst265", "s-bsst265:preparation=^BM cytospin$"),
    "he-tissue": ("dsb2018-dev", "dsb2018-dev:category=^color_bright$"),
}
# The stained-tissue model trained on 80% of DSB2018's colour tiles: score only the tiles it validated on, so that
# neither the default nor the fine-tuned model has seen an image it is scored on.
SCORE_ONLY_UNSEEN_BY = {"he-tissue": "dsb2018-unet"}
# Stained tiles as another lab would bring them (benchmarks/quality/stained.py's changes, to every tile, trained on and
# scored alike): (zoom, haematoxylin/eosin/DAB density gains). 20x-pale: a 20x scan with paler haematoxylin.
LAB_CONDITIONS = {"20x-pale": (0.5, (0.65, 1.0, 1.0)), "20x": (0.5, (1.0, 1.0, 1.0))}


def _write(samples: list, folder: Path, changed: bool = False) -> None:  # type: ignore[type-arg]
    """images/ (the files as they are, or as changed: RGB PNGs) and labels/ (uint16 PNG instance labels): the
    paired layout."""
    import cv2

    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True)
    for s in samples:
        if changed:
            cv2.imwrite(str(folder / "images" / f"{s.image_path.stem}.png"), cv2.cvtColor(s.raw, cv2.COLOR_RGB2BGR))
        else:
            shutil.copy(s.image_path, folder / "images" / s.image_path.name)
        cv2.imwrite(str(folder / "labels" / f"{s.image_path.stem}.png"), s.labels.astype(np.uint16))


def main(argv: list[str] | None = None) -> None:
    from nuclei.config import FinetuneConfig
    from nuclei.core.postprocess import instances
    from nuclei.evaluation import score_samples
    from nuclei.inference.engine import Engine
    from nuclei.io.datasets import load_dataset, matches_group
    from nuclei.modeldir import load_model_dir, resolve_model, resolve_stained_model
    from nuclei.training import finetune as ft

    parser = argparse.ArgumentParser(prog="python -m benchmarks finetune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("group", choices=sorted(GROUPS))
    parser.add_argument("--n", type=int, default=10, help="labelled images to fine-tune on")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--precision", choices=["float32", "mixed_bfloat16"], help="override the fine-tune's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--swap", action="store_true", help="train on the images not drawn, score on the N drawn: "
                        "with N half the group, the other fold of a two-fold cross-validation")
    parser.add_argument("--as-lab", choices=sorted(LAB_CONDITIONS), help="he-tissue: every tile as another lab "
                        "scans and stains it (trained on and scored alike)")
    args = parser.parse_args(argv)
    record = harness.Record(f"finetune-{args.group}" + (f"-{args.as_lab}" if args.as_lab else "")
                            + ("-swap" if args.swap else ""), args)

    folder, rule = GROUPS[args.group]
    group = [s for s in load_dataset(harness.SHARED / folder, progress=False).samples if matches_group(s, rule)]
    picks = set(np.random.default_rng(args.seed).permutation(len(group))[: args.n].tolist())
    train = [s for i, s in enumerate(group) if i in picks]
    rest = [s for i, s in enumerate(group) if i not in picks]
    if args.swap:
        train, rest = rest, train
    if args.group in SCORE_ONLY_UNSEEN_BY:
        from nuclei.modeldir import SHIPPED_MODELS

        data = json.loads((SHIPPED_MODELS / SCORE_ONLY_UNSEEN_BY[args.group] / "data.json").read_text())
        rest = [s for s in rest if s.id in set(data["val_ids"])]
    if args.as_lab:
        from benchmarks.quality.stained import restain, shrink  # the same changes it scores models on

        zoom, gains = LAB_CONDITIONS[args.as_lab]
        train, rest = ([restain(shrink(s, zoom), gains) for s in part] for part in (train, rest))
    if args.precision:
        ft.FINETUNE_CHANGES["precision"] = args.precision
    with tempfile.TemporaryDirectory() as tmp:
        labelled = Path(tmp) / args.group
        _write(train, labelled, changed=bool(args.as_lab))
        started = time.perf_counter()
        result = ft.finetune(FinetuneConfig(data_dir=str(labelled), name=f"ft-{args.group}",
                                            out_dir=str(Path(tmp) / "models"), minutes=args.minutes,
                                            held_back=0.0, seed=args.seed))
        wall = time.perf_counter() - started
        default = Engine(resolve_model(None), providers=("CPUExecutionProvider",),
                         stained=resolve_stained_model("default", None))
        tuned = Engine(load_model_dir(result.model_dir), providers=("CPUExecutionProvider",))
        precision = json.loads((result.model_dir / "config.json").read_text())["precision"]
        rows = {}
        for name, engine in (("default", default), (result.model_dir.name, tuned)):
            report, _ = score_samples(rest, lambda i, e=engine: instances(e.predict(rest[i].raw),
                                                                          e.for_image(rest[i].raw).thresholds),
                                      progress=False)
            rows[name] = report.overall()
    group_name = f"{args.group} as {args.as_lab}" if args.as_lab else args.group
    gain = rows[result.model_dir.name]["ap50"] - rows["default"]["ap50"]
    record.figure("gain_ap50", round(gain, 3))
    record.figure("wall_minutes", round(wall / 60, 1))
    record.table(["model", "AP@0.5", "DSB", "found", "labelled"],
                 [[name, s["ap50"], s["dsb_score"], s["n_pred"] * len(rest), s["n_true"] * len(rest)]
                  for name, s in rows.items()], ["", ".3f", ".3f", ".0f", ".0f"],
                 title=f"{group_name}: fine-tuned on {len(train)} images in {wall / 60:.1f} min ({precision}), "
                       f"scored on the other {len(rest)}; gain {gain:+.3f} AP@0.5")
    record.write()

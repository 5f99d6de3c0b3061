"""Does labelling the images `nuclei suggest` ranks first teach the model more than labelling random ones?

    python -m benchmarks suggest --n 5 --minutes 4            # four fine-tunes: the selections below
    python -m benchmarks --save-as suggest-draws suggest --draws 3 --selections top-ranked spread
    python -m benchmarks suggest --rank-only                  # the ranking and its pool's AP@0.5 only

A lab's folder, made of the images the shipped model never trained on (../shared/data: BBBC039 wells A-C, the
DSB2018 360x360 fields, S-BSST265's bone-marrow cytospins; the H&E tiles are left out, they go to another model),
is split in two halves by a seeded draw: the pool a lab would label from, and the test half it is scored on. From
the pool, N images are chosen four ways: the N the default model is least sure of (flip disagreement,
`nuclei.inference.suggest.rank`), N spread over the pool's kinds of image (the least sure of each of N clusters,
`suggest.pick`, what `nuclei suggest` lists first), N spread in proportion to the kinds' sizes (`pick(...,
proportional=True)`: the least sure of each kind, a kind getting places as it is a share of the pool) and N drawn
at random. Each set is fine-tuned for the same minutes (as `nuclei finetune` does, nothing held back), and the
models and the default segment the test half.
Records AP@0.5 and DSB score of each, the categories each selection drew, and the differences.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness

GROUPS = {  # the generalist's held-out groups (its data.json), as a mixed lab folder
    "bbbc039": ("bbbc039", "bbbc039:id=_[A-C]\\d\\d_"),
    "dsb2018-360": ("dsb2018-dev", "dsb2018-dev:height=^360$"),
    "bm-cytospins": ("s-bsst265", "s-bsst265:preparation=^BM cytospin$"),
}


def _write(samples: list[Any], folder: Path) -> None:
    """The paired layout: images as the files are, uint16 PNG labels."""
    import shutil

    import cv2

    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True)
    for s in samples:
        shutil.copy(s.image_path, folder / "images" / s.image_path.name)
        cv2.imwrite(str(folder / "labels" / f"{s.image_path.stem}.png"), s.labels.astype(np.uint16))


def _score(engine: Any, samples: list[Any]) -> dict[str, float]:
    """AP@0.5 and DSB score over ``samples``, and AP@0.5 of each group (a mixed folder's mean hides them)."""
    from nuclei.core.postprocess import instances
    from nuclei.evaluation import score_samples

    def labels(i: int) -> np.ndarray:
        return instances(engine.predict(samples[i].raw), engine.for_image(samples[i].raw).thresholds)

    report, _ = score_samples(samples, labels, progress=False)
    groups = {folder: name for name, (folder, _) in GROUPS.items()}  # one group per data set
    return {**report.overall(), **{f"ap50 {groups[d]}": v["ap50"] for d, v in report.by_dataset().items()}}


def main(argv: list[str] | None = None) -> None:
    from nuclei.inference.engine import Engine
    from nuclei.io.datasets import load_dataset, matches_group
    from nuclei.modeldir import resolve_model, resolve_stained_model

    parser = argparse.ArgumentParser(prog="python -m benchmarks suggest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5, help="images labelled (each selection)")
    parser.add_argument("--minutes", type=float, default=4.0, help="each fine-tune's budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=1, help="repeat with seeds seed, seed+1, ...: each draw its "
                        "own pool/test split, ranking, picks and fine-tunes; the differences to random per draw")
    parser.add_argument("--selections", nargs="+", choices=SELECTIONS, default=list(SELECTIONS),
                        help="which selections to fine-tune (random is always one)")
    parser.add_argument("--rank-only", action="store_true", help="rank the pool and stop (no fine-tune)")
    parser.add_argument("--default-only", action="store_true", help="rank, score the default model on the test "
                        "half (per group) and stop")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    record = harness.Record("suggest", args)
    selections = [name for name in SELECTIONS if name in args.selections or name == "random"]

    group: list[Any] = []
    for name, (folder, rule) in GROUPS.items():
        for s in load_dataset(harness.SHARED / folder, progress=False).samples:
            if matches_group(s, rule):
                s.meta = {**s.meta, "group": name}
                group.append(s)
    default = Engine(resolve_model(None), providers=("CPUExecutionProvider",),
                     stained=resolve_stained_model("default", None))
    draws = [_draw(default, group, args, args.seed + k, selections) for k in range(args.draws)]
    results = draws[0] if args.draws == 1 else _summary(draws, selections)
    if args.draws == 1 and results.get("scores"):
        for name in selections[:-1]:
            record.note(f"{name} - random: {results['scores'][name]['ap50'] - results['scores']['random']['ap50']:+.3f}"
                        f" AP@0.5 on {results['test']} test images")
    _finish(results, args.json, record)


SELECTIONS = ("top-ranked", "spread", "proportional", "random")


def _draw(default: Any, group: list[Any], args: argparse.Namespace, seed: int, selections: list[str]
          ) -> dict[str, Any]:
    """One draw: the pool/test split of ``seed``, the ranking, each selection's picks, fine-tunes and scores."""
    from nuclei.inference.suggest import pick, rank

    order = np.random.default_rng(seed).permutation(len(group))
    pool = [group[i] for i in order[: len(group) // 2]]
    test = [group[i] for i in order[len(group) // 2:]]
    started = time.perf_counter()
    by_id = {s.id: s for s in pool}
    ranked = rank(default, [(s.id, str(s.image_path), partial(getattr, s, "raw")) for s in pool])
    print(f"seed {seed}: ranked {len(pool)} pool images in {time.perf_counter() - started:.0f} s; "
          f"test half: {len(test)} images")
    choose = {
        "top-ranked": lambda: [by_id[c.id] for c in ranked[: args.n]],
        "spread": lambda: [by_id[c.id] for c in pick(ranked, args.n, seed=seed)[: args.n]],
        "proportional": lambda: [by_id[c.id] for c in pick(ranked, args.n, seed=seed, proportional=True)[: args.n]],
        "random": lambda: [pool[i] for i in np.random.default_rng(seed + 1).permutation(len(pool))[: args.n]],
    }
    picks = {name: choose[name]() for name in selections}
    for name, chosen in picks.items():
        print(f"{name}: {dict(Counter(s.meta['group'] for s in chosen))}")
    results: dict[str, Any] = {"seed": seed, "pool": len(pool), "test": len(test), "n": args.n,
                               "minutes": args.minutes, "picks": {k: [s.id for s in v] for k, v in picks.items()},
                               "ranking": [c.as_dict() for c in ranked]}
    if args.rank_only:
        return results
    from nuclei.config import FinetuneConfig
    from nuclei.inference.engine import Engine
    from nuclei.modeldir import load_model_dir
    from nuclei.training.finetune import finetune

    rows = {"default": _score(default, test)}
    if not args.default_only:
        with tempfile.TemporaryDirectory() as tmp:
            for name, chosen in picks.items():
                labelled = Path(tmp) / name
                _write(chosen, labelled)
                began = time.perf_counter()
                tuned = finetune(FinetuneConfig(data_dir=str(labelled), name=f"ft-{name}",
                                                out_dir=str(Path(tmp) / "models"), minutes=args.minutes,
                                                held_back=0.0, seed=seed))
                print(f"{name}: fine-tuned in {(time.perf_counter() - began) / 60:.1f} min")
                rows[name] = _score(Engine(load_model_dir(tuned.model_dir), providers=("CPUExecutionProvider",)),
                                    test)
    results["scores"] = rows
    return results


def _summary(draws: list[dict[str, Any]], selections: list[str]) -> dict[str, Any]:
    """Several draws: each selection's AP@0.5 per draw, its mean, and its paired difference to random (mean,
    standard deviation, draws won); the draws themselves without their rankings."""
    scores = {name: [d["scores"][name]["ap50"] for d in draws] for name in ["default", *selections]}
    against = {name: np.array(scores[name]) - np.array(scores["random"]) for name in selections[:-1]}
    return {
        "draws": len(draws), "n": draws[0]["n"], "minutes": draws[0]["minutes"], "test": draws[0]["test"],
        "pool": draws[0]["pool"], "selections": selections,
        "ap50": {name: {"per_draw": v, "mean": float(np.mean(v))} for name, v in scores.items()},
        "minus_random": {name: {"per_draw": d.tolist(), "mean": float(d.mean()),
                                "sd": float(d.std(ddof=1)) if d.size > 1 else 0.0, "won": int((d > 0).sum())}
                         for name, d in against.items()},
        "per_draw": [{k: v for k, v in d.items() if k != "ranking"} for d in draws],
    }


def _finish(results: dict[str, Any], path: Path | None, record: harness.Record) -> None:
    """The figures into the run's record (a table of the scores when there are any), and ``path`` if given."""
    if path is not None:
        path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    record.figure("results", results)
    if "minus_random" in results:
        record.table(["selection", "AP@0.5 per draw", "mean", "minus random: mean", "sd", "draws won"],
                     [[name, " / ".join(f"{v:.3f}" for v in a["per_draw"]), a["mean"],
                       *[results["minus_random"].get(name, {}).get(k, "") for k in ("mean", "sd", "won")]]
                      for name, a in results["ap50"].items()], ["", "", ".3f", "+.3f", ".3f", ""],
                     title=f"{results['n']} images picked from pools of {results['pool']}, scored on "
                           f"{results['test']} test images, {results['draws']} draws")
    elif results.get("scores"):
        record.table(["model", "AP@0.5", "DSB", *(f"AP@0.5 {g}" for g in GROUPS)],
                     [[name, s["ap50"], s["dsb_score"], *(s.get(f"ap50 {g}") for g in GROUPS)]
                      for name, s in results["scores"].items()], ["", ".3f", ".3f", *[".3f"] * len(GROUPS)],
                     title=f"{results['n']} images picked from a pool of {results['pool']}, scored on "
                           f"{results['test']} test images")
    record.write()

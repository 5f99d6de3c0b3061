"""`nuclei evaluate LABELLED_DIR`: score a model, or a store's labels, against ground truth (DSB2018 metric)."""

from __future__ import annotations

import argparse
import json
import sys

from nuclei.cli.options import add_config_options, given
from nuclei.config import SegmentConfig

# How a model segments is `nuclei segment`'s: these options are SegmentConfig's own fields, declared once there.
SEGMENT_SETTINGS = ("stained_model", "int8", "diameter", "tta", "min_diameter", "drop_debris")


def run(args: argparse.Namespace) -> int:
    from nuclei.evaluation import evaluate_against, format_table

    settings = {name: SegmentConfig.model_fields[name].default for name in SEGMENT_SETTINGS}
    settings |= {k: v for k, v in given(args, SegmentConfig).items() if k in SEGMENT_SETTINGS}
    report, paths = evaluate_against(args.truth, args.out, model=args.model, store=args.store, split=args.split,
                                     progress=sys.stderr.isatty(), **settings)
    if args.json:
        print(json.dumps({**report.as_dict(), "files": {k: str(v) for k, v in paths.items()}}, indent=2))
    else:
        print(format_table(report))
        print("\n".join(f"{name}: {path}" for name, path in paths.items()))
    return 0


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("evaluate", help="score a model or a store against ground-truth labels (DSB2018 metric)")
    parser.add_argument("truth", help="labelled folder: stage1_train/, train|test/inputs|masks, or images/+labels/")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="segment with this model directory (default: the shipped model)")
    source.add_argument("--store", help="score the labels already in this store instead")
    parser.add_argument("--split", choices=("all", "validation", "training", "held_out"), default="all",
                        help="only the model's validation, training or held-out images (from its data.json)")
    parser.add_argument("--out", default="evaluation", help="report folder: summary.json, per_image.csv, "
                        "worst_images.png")
    add_config_options(parser, SegmentConfig, skip=[f for f in SegmentConfig.model_fields if f not in SEGMENT_SETTINGS],
                       aliases={"int8": ["--float32"]})
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=run)

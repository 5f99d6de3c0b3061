"""The `nuclei` command: train, segment, query, evaluate, demo.

    nuclei train DATA_DIR --out models --epochs 100
    nuclei segment INPUT... --model MODEL_DIR --store results.zarr
    nuclei query results.zarr list | show ID | stats | export --labels OUT_DIR
    nuclei evaluate LABELLED_DIR --model MODEL_DIR --split validation --out report/
    nuclei evaluate LABELLED_DIR --store results.zarr --out report/
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

from nuclei.errors import NucleiError

Handler = Callable[[argparse.Namespace], int]


def _quiet_environment() -> None:
    """Defaults for an offline, one-machine run (no telemetry; TensorFlow's CUDA chatter off)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _train(args: argparse.Namespace) -> int:
    from flows.train import train

    params = {k: v for k, v in vars(args).items() if k in (*_TRAIN_OPTIONS, *_TRAIN_FLAGS) and v is not None}
    model_dir = train(data_dir=args.data_dir, out_dir=args.out, then=args.then, **params)
    print(model_dir)
    return 0


_TRAIN_OPTIONS = {
    "name": (str, "model directory name under --out"),
    "architecture": (str, "unet or mobilenet_unet"),
    "depth": (int, "U-Net levels"),
    "base_filters": (int, "filters at the first level"),
    "epochs": (int, "at most this many epochs (early stopping may end sooner)"),
    "batch_size": (int, "images per batch"),
    "steps_per_epoch": (int, "batches per epoch"),
    "val_fraction": (float, "share of images kept for validation"),
    "seed": (int, "split and augmentation seed"),
    "patience": (int, "early-stopping patience in epochs"),
    "learning_rate": (float, "Adam learning rate"),
    "crop_size": (int, "training crop size in pixels"),
    "max_images": (int, "use only the first N images"),
    "on_error": (str, "raise or skip bad files"),
    "init_from": (str, "fine-tune: start from this model directory's weights"),
    "contact_weight": (float, "extra loss weight where nuclei touch (e.g. 5): keeps them apart"),
}

# On/off switches, parsed as flags below; like the options above they are train flow parameters.
_TRAIN_FLAGS = ("augment", "quantize_int8", "balance_categories", "instance_channel")


def _add_train(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train a U-Net and export it to ONNX (needs nuclei[train])")
    parser.add_argument("data_dir", help="dataset folder: stage1_train/, train|test/inputs|masks, or images/+labels/")
    parser.add_argument("--out", default="models", help="parent folder of the model directory")
    for name, (kind, text) in _TRAIN_OPTIONS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, help=text)
    parser.add_argument("--no-augment", dest="augment", action="store_false", default=None)
    parser.add_argument("--quantize-int8", dest="quantize_int8", action="store_true", default=None,
                        help="also write model.int8.onnx (faster on CPU), kept only if as good on validation")
    parser.add_argument("--balance-categories", dest="balance_categories", action="store_true", default=None,
                        help="sample rare image types (grey/colour, dark/bright) more often")
    parser.add_argument("--no-instance-channel", dest="instance_channel", action="store_false", default=None,
                        help="predict the mask only (no nucleus cores)")
    parser.add_argument("--then", action="append", type=json.loads, metavar="JSON",
                        help="a further fine-tuning stage from the previous weights: changes to the previous stage's "
                             'parameters, e.g. '
                             '\'{"crop_size": 192, "learning_rate": 3e-4}\' (repeatable)')
    parser.set_defaults(handler=_train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nuclei", description="Batch nuclei segmentation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    for add in _EXTRA_COMMANDS:
        add(sub)
    return parser


def _segment(args: argparse.Namespace) -> int:
    from flows.segment import segment

    summary = segment(inputs=args.inputs, store=args.store, model=args.model, dask_address=args.dask_address,
                      n_workers=args.workers, images_per_task=args.images_per_task, overwrite=args.overwrite,
                      tile_size=args.tile_size, int8=args.int8, diameter=args.diameter, progress=not args.json)
    if args.json:
        print_json(summary)
    return 1 if summary["failed"] else 0


def _add_segment(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("segment", help="segment image folders/globs/URLs into a Zarr store")
    parser.add_argument("inputs", nargs="+", help="folders (recursive), globs or files; local or fsspec URLs")
    parser.add_argument("--store", required=True, help="Zarr store path or URL (created if missing)")
    parser.add_argument("--model", help="model directory (default: the shipped models/dsb2018-unet)")
    parser.add_argument("--dask-address", help="existing Dask scheduler (default: a LocalCluster)")
    parser.add_argument("--workers", type=int, help="LocalCluster worker processes (default: one per core)")
    parser.add_argument("--images-per-task", type=int, default=32)
    parser.add_argument("--tile-size", type=int, default=1024, help="larger images run as overlapping tiles")
    parser.add_argument("--diameter", type=float, help="typical nucleus diameter in pixels: images are rescaled "
                        "so their nuclei match the model's training scale (e.g. 100 for 63x images)")
    parser.add_argument("--overwrite", action="store_true", help="segment again even if unchanged")
    parser.add_argument("--float32", dest="int8", action="store_false",
                        help="on CPU, run the float32 model even where the model ships a validated int8 one")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=_segment)


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nuclei.demo import run_demo

    summary = run_demo(Path(args.out), epochs=args.epochs)
    return 1 if summary["failed"] else 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="train, export, segment and query the bundled sample images")
    parser.add_argument("--out", default="runs/demo", help="where the model, store and overlays go")
    parser.add_argument("--epochs", type=int, default=30)
    parser.set_defaults(handler=_demo)


def _evaluate(args: argparse.Namespace) -> int:
    from nuclei.evaluation import evaluate_against, format_table

    report, paths = evaluate_against(args.truth, args.out, model=args.model, store=args.store, split=args.split,
                                     progress=sys.stderr.isatty(), int8=args.int8, diameter=args.diameter)
    if args.json:
        print(json.dumps({**report.as_dict(), "files": {k: str(v) for k, v in paths.items()}}, indent=2))
    else:
        print(format_table(report))
        print("\n".join(f"{name}: {path}" for name, path in paths.items()))
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("evaluate", help="score a model or a store against ground-truth labels (DSB2018 metric)")
    parser.add_argument("truth", help="labelled folder: stage1_train/, train|test/inputs|masks, or images/+labels/")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="segment with this model directory (default: the shipped model)")
    source.add_argument("--store", help="score the labels already in this store instead")
    parser.add_argument("--split", choices=("all", "validation", "training", "held_out"), default="all",
                        help="only the model's validation, training or held-out images (from its data.json)")
    parser.add_argument("--out", default="evaluation", help="report folder: summary.json, per_image.csv, "
                        "worst_images.png")
    parser.add_argument("--float32", dest="int8", action="store_false",
                        help="score the float32 model even where the model ships an int8 one")
    parser.add_argument("--diameter", type=float, help="typical nucleus diameter in pixels (see segment)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=_evaluate)


def _add_query(sub: argparse._SubParsersAction) -> None:
    from nuclei.query_cli import add_query  # its handlers import the store code only when run

    add_query(sub)


_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_segment, _add_evaluate, _add_demo, _add_query,
]


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_environment()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("distributed", "httpx", "prefect.task_runs"):  # a cluster's chatter hides the summary
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return int(args.handler(args))
    except NucleiError as exc:
        print(f"nuclei: error: {exc}", file=sys.stderr)
        return 2


def print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


if __name__ == "__main__":
    sys.exit(main())

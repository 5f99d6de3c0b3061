"""The `nuclei` command: train, segment, query, evaluate, demo (one module per command).

    nuclei train DATA_DIR --out models --epochs 100
    nuclei segment INPUT... --model MODEL_DIR --store results.zarr
    nuclei query results.zarr list | show ID | stats | export --labels OUT_DIR
    nuclei evaluate LABELLED_DIR --model MODEL_DIR --split validation --out report/
    nuclei evaluate LABELLED_DIR --store results.zarr --out report/
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from nuclei.cli import demo, evaluate, query, segment, train
from nuclei.errors import NucleiError

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    train.add, segment.add, evaluate.add, demo.add, query.add_query,
]


def _quiet_environment() -> None:
    """Defaults for an offline, one-machine run (no telemetry; TensorFlow's CUDA chatter off)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nuclei", description="Batch nuclei segmentation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


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


if __name__ == "__main__":
    sys.exit(main())

"""`nuclei segment INPUT... --store STORE`: the `segment` flow; options are SegmentConfig's fields."""

from __future__ import annotations

import argparse

from nuclei.cli.options import add_config_options, given, print_json
from nuclei.config import SegmentConfig


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("segment", help="segment image folders/globs/URLs into a Zarr store")
    parser.add_argument("inputs", nargs="+", help=SegmentConfig.model_fields["inputs"].description)
    add_config_options(parser, SegmentConfig, skip=("inputs",), aliases={"n_workers": ["--workers"]})
    parser.add_argument("--float32", dest="int8", action="store_false", default=None,
                        help="on CPU, run the float32 model even where the model ships a validated int8 one")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from nuclei.inference.preflight import preflight

    config = preflight(SegmentConfig(**given(args, SegmentConfig)))  # user errors: one line, nothing started

    from flows.segment import segment  # Prefect (and its temporary server) only once the run is sound
    from nuclei.inference.run import summary_text

    summary = segment(**config.model_dump(), progress=not args.json)
    if args.json:
        print_json(summary)
    else:
        print(summary_text(summary))
    return 1 if summary["failed"] else 0

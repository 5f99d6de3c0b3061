"""`nuclei suggest FOLDER_OR_STORE`: which images to label next, the ones the model is least sure of first.

    nuclei suggest unlabelled/ --n 10
    nuclei suggest results.zarr --json > to_label.json      # for labs that correct in QuPath
"""

from __future__ import annotations

import argparse

from nuclei.cli.options import print_json
from nuclei.config import SegmentConfig


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("suggest", help="rank a folder's (or a store's) images by how unsure the model is of "
                            "them: the ones to label next first")
    parser.add_argument("source", metavar="FOLDER_OR_STORE", help="image folder, files' glob, or results store")
    parser.add_argument("--n", type=int, default=10, help="how many to list, a batch to label spread over the "
                        "folder's kinds of image, each the least sure of its kind (default: 10; 0: all, by rank)")
    parser.add_argument("--model", help=SegmentConfig.model_fields["model"].description)
    parser.add_argument("--stained-model", default="default",
                        help=SegmentConfig.model_fields["stained_model"].description)
    parser.add_argument("--diameter", type=float, help="typical nucleus diameter in pixels (images rescaled to "
                        "the model's training scale)")
    parser.add_argument("--json", action="store_true", help="print the ranking as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from nuclei.inference.engine import Engine
    from nuclei.inference.suggest import images_of, pick, rank, table
    from nuclei.modeldir import resolve_model, resolve_stained_model

    engine = Engine(resolve_model(args.model), diameter=args.diameter,
                    stained=resolve_stained_model(args.stained_model, args.model))
    ranked = rank(engine, images_of(args.source))
    shown = pick(ranked, args.n)[: args.n] if args.n > 0 else ranked
    if args.json:
        print_json([candidate.as_dict() for candidate in shown])
    else:
        print(table(shown))
        spread = "spread over the folder's kinds of image (each the least sure of its kind), "
        print(f"{len(shown)} of {len(ranked)} images, {spread if 1 < len(shown) < len(ranked) else ''}the least sure "
              "first (flip disagreement: 1 - IoU of the nuclei found in the image and its mirror images)")
    return 0

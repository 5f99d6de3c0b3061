"""`nuclei export-model [MODEL_DIR] --bioimageio OUT.zip`: a model directory as a bioimage.io model package."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export-model", help="write a model directory as a bioimage.io model package (zip), "
                            "validated and test-run as it is written")
    parser.add_argument("model_dir", metavar="MODEL_DIR", nargs="?", default=None,
                        help="model directory (default: $NUCLEI_MODEL, else the shipped default model)")
    parser.add_argument("--bioimageio", metavar="OUT.zip", required=True,
                        help="write a bioimage.io model package (format 0.5) here; needs the `bioimageio` extra")
    parser.add_argument("--sample", metavar="IMAGE", default=None,
                        help="image for the package's test tensors and cover (default: a shipped grey sample)")
    parser.add_argument("--no-keras", action="store_true",
                        help="leave the Keras weights out (ONNX only: a zip about a third the size)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from nuclei.export.bioimageio import export_bioimageio
    from nuclei.modeldir import resolve_model

    model = resolve_model(args.model_dir)
    out = export_bioimageio(model.path, args.bioimageio, sample=args.sample, keras=not args.no_keras)
    print(out)
    return 0

"""`nuclei finetune LABELLED_DIR --name NAME`: a shipped model fine-tuned on a lab's own labelled images within a
time budget, compared with the model it started from on images held back (needs nuclei[train])."""

from __future__ import annotations

import argparse
from pathlib import Path

from nuclei.cli.train import interrupted, stopped_by_signals
from nuclei.errors import Interrupted


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("finetune", help="fine-tune the shipped model on your own labelled images (minutes; "
                            "needs nuclei[train])", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("data_dir", nargs="+", help="labelled folder(s): images/+labels/, stage1_train/ or "
                        "train|test/inputs|masks (e.g. labels exported by nuclei and corrected in napari or QuPath)")
    parser.add_argument("--name", required=True, help="name of the new model directory")
    parser.add_argument("--out", default="models", help="parent folder of the model directory")
    parser.add_argument("--minutes", type=float, default=15.0, help="time budget for the whole fine-tune")
    parser.add_argument("--base", help="model directory to start from (default: the shipped model for these "
                        "images)")
    parser.add_argument("--hold-back", type=float, default=0.3, help="share of the images kept out of training "
                        "to compare the two models on (0: train on all, no comparison)")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the hold-back and validation choice")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from nuclei.inference.preflight import environment_threads
    from nuclei.training.startup import start_tensorflow

    start_tensorflow(args.verbose)  # before the first import of it: its start-up lines only with -v
    from nuclei.training.finetune import check_request, finetune

    data = args.data_dir[0] if len(args.data_dir) == 1 else args.data_dir
    check_request(args.name, args.out, args.minutes, args.hold_back)  # one line before any image is read
    environment_threads()  # as evaluation and the comparison will read them
    with stopped_by_signals() as stop:
        try:
            result = finetune(data, args.name, out=args.out, minutes=args.minutes, base=args.base,
                              held_back=args.hold_back, seed=args.seed, stop=stop)
        except BaseException as exc:
            if stop.is_set() or isinstance(exc, Interrupted | KeyboardInterrupt):
                return interrupted(Path(args.out) / args.name)
            raise
    print(f"{result.model_dir}: fine-tuned from {result.base.name} in {result.seconds / 60:.1f} min")
    if result.comparison is not None:
        print(f"on {result.comparison.n_images} held-back image(s):")
        print(result.comparison.table(result.base.name, args.name))
        print(result.comparison.verdict(result.base.name, args.name))
        print(f"picture: {result.model_dir / 'finetune' / 'comparison.png'}")
    print(f"segment with it: nuclei segment IMAGES --store results.zarr --model {result.model_dir}")
    return 0

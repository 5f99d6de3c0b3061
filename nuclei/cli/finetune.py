"""`nuclei finetune LABELLED_DIR --name NAME`: a shipped model fine-tuned on a lab's own labelled images within a
time budget, compared with the model it started from on images held back (needs nuclei[train])."""

from __future__ import annotations

import argparse
from pathlib import Path

from nuclei.cli.options import add_config_options, given
from nuclei.cli.train import interrupted, stopped_by_signals
from nuclei.config import FinetuneConfig
from nuclei.errors import Interrupted


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("finetune", help="fine-tune the shipped model on your own labelled images (minutes; "
                            "needs nuclei[train])")
    parser.add_argument("data_dir", nargs="+", help=FinetuneConfig.model_fields["data_dir"].description)
    # one option per FinetuneConfig field; --out and --hold-back: the spellings before the config
    add_config_options(parser, FinetuneConfig, skip=("data_dir",),
                       aliases={"out_dir": ["--out"], "held_back": ["--hold-back"]})
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from nuclei.inference.preflight import environment_threads
    from nuclei.training.startup import start_tensorflow

    start_tensorflow(args.verbose)  # before the first import of it: its start-up lines only with -v
    from nuclei.training.finetune import check_request, finetune

    data = args.data_dir[0] if len(args.data_dir) == 1 else args.data_dir
    settings = FinetuneConfig(**{**given(args, FinetuneConfig), "data_dir": data})
    check_request(settings)  # one line before any image is read
    environment_threads()  # as evaluation and the comparison will read them
    with stopped_by_signals() as stop:
        try:
            result = finetune(settings, stop=stop)
        except BaseException as exc:
            if stop.is_set() or isinstance(exc, Interrupted | KeyboardInterrupt):
                return interrupted(Path(settings.out_dir) / settings.name)
            raise
    print(f"{result.model_dir}: fine-tuned from {result.base.name} in {result.seconds / 60:.1f} min")
    if result.comparison is not None:
        print(f"on {result.comparison.n_images} held-back image(s):")
        print(result.comparison.table(result.base.name, settings.name))
        print(result.comparison.verdict(result.base.name, settings.name))
        print(f"picture: {result.model_dir / 'finetune' / 'comparison.png'}")
    print(f"segment with it: nuclei segment IMAGES --store results.zarr --model {result.model_dir}")
    return 0

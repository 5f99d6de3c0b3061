"""`nuclei train DATA_DIR...`: training from the command line; options are TrainConfig's fields. It runs in this
process (`nuclei.training.run`); with a Prefect server (`PREFECT_API_URL` set, or `--prefect`) it is the `train`
flow, recorded there."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from nuclei.cli.options import add_config_options, given
from nuclei.config import TrainConfig
from nuclei.errors import Interrupted


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train a U-Net and export it to ONNX (needs nuclei[train])")
    parser.add_argument("data_dir", nargs="+", help="dataset folder(s): stage1_train/, train|test/inputs|masks, or "
                        "images/+labels/; several are split 80:20 each and sampled so none drowns the others")
    parser.add_argument("--out", dest="out_dir", help="parent folder of the model directory (default: models)")
    add_config_options(parser, TrainConfig, skip=("data_dir", "out_dir"))
    parser.add_argument("--then", action="append", type=json.loads, metavar="JSON",
                        help="a further fine-tuning stage from the previous weights: changes to the previous stage's "
                             'parameters, e.g. \'{"crop_size": 192, "learning_rate": 3e-4}\' (repeatable)')
    parser.add_argument("--prefect", action="store_true",
                        help="run as a Prefect flow even without PREFECT_API_URL (a temporary local server)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from nuclei.inference.preflight import environment_threads
    from nuclei.training.startup import start_tensorflow

    environment_threads()  # NUCLEI_THREADS / OMP_NUM_THREADS as evaluation will read them, checked before training
    start_tensorflow(args.verbose)  # before the first import of it: its start-up lines only with -v
    params = given(args, TrainConfig)
    data_dir = args.data_dir[0] if len(args.data_dir) == 1 else args.data_dir
    params = {**params, "data_dir": data_dir}
    if not (args.prefect or os.environ.get("PREFECT_API_URL")):
        from nuclei.training.run import make_config
        from nuclei.training.run import train as train_here

        config = make_config(params)  # a bad option or model name: one line before any image is read
        with stopped_by_signals() as stop:
            try:
                print(train_here(params, then=args.then, stop=stop))
            except BaseException as exc:
                if stop.is_set() or isinstance(exc, Interrupted | KeyboardInterrupt):
                    return interrupted(Path(config.out_dir) / config.name)
                raise
        return 0
    from flows.train import train

    state = train(**params, then=args.then, return_state=True)
    if not state.is_completed():
        print(f"nuclei: error: {state.message}", file=sys.stderr)
        return 1
    print(state.result())
    return 0


@contextlib.contextmanager
def stopped_by_signals() -> Iterator[threading.Event]:
    """While training runs in this process, SIGINT (Ctrl-C) and SIGTERM alike stop it: the first sets the event
    and raises Interrupted in the main thread (fitting ends there), later ones only set it, so the partial model
    directory is removed undisturbed. The library checks the event before it publishes, in case a library
    between swallowed the exception. The previous handlers come back after."""
    stop = threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        first = not stop.is_set()
        stop.set()
        if first:
            raise Interrupted(f"stopped by {signal.Signals(signum).name}")

    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def interrupted(model_dir: Path) -> int:
    """The one line of a training or fine-tune stopped on request, and its exit status (130)."""
    print(f"nuclei: interrupted: nothing was published; {model_dir} is as it was", file=sys.stderr)
    return 130

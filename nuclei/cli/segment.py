"""`nuclei segment INPUT... --store STORE`: options are SegmentConfig's fields.

With a Prefect server (`PREFECT_API_URL` set, or `--prefect`) the run is the `segment` flow, recorded there
with its progress and summary artifacts. Without one, the CLI runs the same steps directly: no temporary
Prefect server to start (about 11 s, and a run that cannot start when the machine is busy), nothing to
report to that would vanish at exit. Ctrl-C or SIGTERM stops the work within seconds; every entry already
written is complete (an entry becomes visible only with its record), and a re-run finishes the rest.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

from nuclei.cli.options import add_config_options, given, print_json
from nuclei.config import SegmentConfig
from nuclei.store.record import RunSummary


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("segment", help="segment image folders/globs/URLs into a Zarr store")
    parser.add_argument("inputs", nargs="+", help=SegmentConfig.model_fields["inputs"].description)
    add_config_options(parser, SegmentConfig, skip=("inputs",), aliases={"n_workers": ["--workers"]})
    parser.add_argument("--float32", dest="int8", action="store_false", default=None,
                        help="on CPU, run the float32 model even where the model ships a validated int8 one")
    parser.add_argument("--prefect", action="store_true",
                        help="run as a Prefect flow even without PREFECT_API_URL (a temporary local server)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from nuclei.inference.preflight import preflight

    config = preflight(SegmentConfig(**given(args, SegmentConfig)))  # user errors: one line, nothing started
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    quiet = args.json or not sys.stderr.isatty()  # a progress bar only where a person watches it
    try:
        summary = _with_prefect(config, quiet) if args.prefect or os.environ.get("PREFECT_API_URL") \
            else _direct(config, quiet)
    except KeyboardInterrupt:
        print(f"nuclei: interrupted: the entries written to {config.store} are complete; run the same command "
              "again to finish", file=sys.stderr)
        return 130
    from nuclei.inference.run import summary_text

    if args.json:
        print_json(summary)
    else:
        print(summary_text(summary))
    return 1 if summary["failed"] else 0


_interrupted = threading.Event()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    _interrupted.set()
    _hush_cluster_logs()
    raise KeyboardInterrupt  # SIGTERM stops a run the way Ctrl-C does


def _hush_cluster_logs() -> None:
    """A cluster torn down mid-call logs its own noise (lost keys, a callback's NameError): not the user's news.
    Every logger under distributed/tornado, not only the two parents: distributed's config gives some children
    (distributed.client, tornado.application) levels of their own, which a parent's level does not override."""
    for name in ["distributed", "tornado", *logging.root.manager.loggerDict]:
        if name.partition(".")[0] in ("distributed", "tornado"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _stop_if_interrupted(done: int, total: int) -> None:
    """Raise again after each batch once a signal came: a library's wait may swallow the signal's own
    KeyboardInterrupt (seen once in Dask's client), and the run must stop all the same."""
    if _interrupted.is_set():
        raise KeyboardInterrupt


def _direct(config: SegmentConfig, quiet: bool) -> RunSummary:
    from nuclei.inference.run import plan, summarize
    from nuclei.inference.run import run as run_plan

    work = plan(config)
    return summarize(work, run_plan(work, progress=not quiet, on_batch=_stop_if_interrupted))


def _with_prefect(config: SegmentConfig, quiet: bool) -> RunSummary:
    from flows.segment import segment  # Prefect only when a run is recorded there

    return segment(**config.model_dump(), progress=not quiet)

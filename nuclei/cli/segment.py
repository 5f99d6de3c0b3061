"""`nuclei segment INPUT... --store STORE`: options are SegmentConfig's fields.

With a Prefect server (`PREFECT_API_URL` set, or `--prefect`) the run is the `segment` flow, recorded there
with its progress and summary artifacts. Without one, the CLI runs the same steps directly: no temporary
Prefect server to start (about 11 s, and a run that cannot start when the machine is busy), nothing to
report to that would vanish at exit. Ctrl-C or SIGTERM stops the work within seconds: the handler only sets an
event, the run loop cancels what is queued and closes its cluster in order. Every entry already written is
complete (an entry becomes visible only with its record), and a re-run finishes the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator

from nuclei.cli.options import add_config_options, given, print_json
from nuclei.config import SegmentConfig
from nuclei.core.text import printable
from nuclei.errors import Interrupted, NucleiError
from nuclei.store.record import Failure, RunSummary


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("segment", help="segment image folders/globs/URLs into a Zarr store")
    parser.add_argument("inputs", nargs="+", help=SegmentConfig.model_fields["inputs"].description)
    add_config_options(parser, SegmentConfig, skip=("inputs",),
                       aliases={"n_workers": ["--workers"], "int8": ["--float32"]})
    parser.add_argument("--prefect", action="store_true",
                        help="run as a Prefect flow even without PREFECT_API_URL (a temporary local server)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from nuclei.inference.preflight import preflight

    config = preflight(SegmentConfig(**given(args, SegmentConfig)))  # user errors: one line, nothing started
    quiet = args.json or not sys.stderr.isatty()  # a progress bar only where a person watches it
    try:
        if args.prefect or os.environ.get("PREFECT_API_URL"):
            summary = _with_prefect(config, quiet)
        else:
            stop = threading.Event()
            with _signals_set(stop):
                summary = _direct(config, quiet, stop)
    except (Interrupted, KeyboardInterrupt):
        print(f"nuclei: interrupted: the entries written to {config.store} are complete; run the same command "
              "again to finish", file=sys.stderr)
        return 130
    if args.json:
        print_json(summary)
    else:
        print(summary_text(summary))
    return 1 if summary["failed"] else 0


def summary_text(summary: RunSummary) -> str:
    """The run summary for a terminal: the counts on one line, then each failed, skipped or noted file with its
    reason (file names as text, never as terminal commands)."""
    lines = [
        f"{summary['done']} segmented, {summary['skipped']} skipped (unchanged), {summary['failed']} failed "
        f"of {summary['found']} found; {summary['nuclei']} nuclei; {summary['images_per_second']} images/s "
        f"on {', '.join(summary['providers']) or '-'}; store {printable(summary['store'])}",
    ]
    if not summary["found"]:
        lines.append("  no image files in the inputs (nuclei reads PNG, TIFF, JPEG and BMP)")
    listed: dict[str, list[Failure]] = {
        "failed": summary["failures"],
        "skipped, failed before and unchanged": summary.get("skipped_failed_before", []),
        "note": summary.get("notes", []),
    }
    for label, files in listed.items():
        lines += [f"  {label}: {printable(f['file'])}: {printable(f['reason'])}" for f in files]
    return "\n".join(lines)


@contextlib.contextmanager
def _signals_set(stop: threading.Event) -> Iterator[None]:
    """While a run works here: SIGINT (Ctrl-C) and SIGTERM (a scheduler's stop) set ``stop`` and nothing else.
    The run loop sees it within a fraction of a second, cancels what is queued and closes its cluster in order,
    so nothing is torn down mid-call and no library's noise needs hiding. The previous handlers come back after
    (a second run in the same process starts afresh)."""
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda _signum, _frame: stop.set()) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _direct(config: SegmentConfig, quiet: bool, stop: threading.Event) -> RunSummary:
    from nuclei.inference.run import plan, summarize
    from nuclei.inference.run import run as run_plan

    work = plan(config)
    return summarize(work, run_plan(work, progress=not quiet, stop=stop))


def _with_prefect(config: SegmentConfig, quiet: bool) -> RunSummary:
    """The run as a Prefect flow; Ctrl-C is Python's KeyboardInterrupt there, which Prefect handles itself
    (the flow run ends Crashed), and SIGTERM the same."""
    prefect_reachable()
    from flows.segment import segment  # Prefect only when a run is recorded there

    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return segment(**config.model_dump(), progress=not quiet)
    finally:
        signal.signal(signal.SIGTERM, previous)


PREFECT_TIMEOUT_S = 10


def prefect_reachable() -> None:
    """The Prefect server the run will report to answers (PREFECT_API_URL), or a temporary one can keep its
    database (PREFECT_HOME): a dead URL was 113 lines of traceback, a read-only HOME 102 s and 21 tracebacks.
    Raises NucleiError with what to do."""
    if url := os.environ.get("PREFECT_API_URL"):
        import httpx

        try:
            httpx.get(f"{url.rstrip('/')}/health", timeout=PREFECT_TIMEOUT_S).raise_for_status()
        except httpx.HTTPError as exc:
            raise NucleiError(f"cannot reach the Prefect server at {url} ({exc}): start it (make server), or "
                              "unset PREFECT_API_URL to run without one") from exc
        return
    home = os.path.expanduser(os.environ.get("PREFECT_HOME") or "~/.prefect")
    try:
        os.makedirs(home, exist_ok=True)
        with tempfile.TemporaryFile(dir=home):
            pass
    except OSError as exc:
        raise NucleiError(f"{home}: --prefect keeps a temporary server's database here, and it cannot be written "
                          f"({exc.strerror or exc}): set PREFECT_HOME to a writable folder") from exc

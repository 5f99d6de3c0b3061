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
import select
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

import nuclei
from nuclei.cli import check, demo, evaluate, export_model, finetune, query, segment, suggest, train, view
from nuclei.core.text import printable
from nuclei.errors import NucleiError
from nuclei.inference.cluster import quiet_workers
from nuclei.io.images import quiet_opencv

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    train.add, finetune.add, segment.add, evaluate.add, demo.add, query.add_query, check.add, export_model.add,
    view.add, suggest.add,
]


def prefect_defaults(verbose: bool) -> None:
    """Prefect's settings for an offline, one-machine run, set before Prefect is imported (the one place they
    are set; an explicit setting in the environment wins): no telemetry, a temporary server that may take 90 s
    to start on a busy machine instead of failing the run at 20 s, and Prefect's console at WARNING unless -v
    (the UI still gets every log line)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL", "WARNING")


def prepare_process(verbose: bool) -> None:
    """What the command line changes in its own process, once, before a command runs (a library user's process
    is left as it is): Prefect's defaults, the terminal's logging (warnings and errors; -v: info and the
    libraries' own lines), OpenCV's own log lines off unless -v. TensorFlow is started by the commands that
    train (`nuclei.training.startup`), and a LocalCluster's workers are told by `quiet_workers` in `main`."""
    prefect_defaults(verbose)
    console = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=console, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.root.handlers:  # the terminal shows warnings and errors whatever level a library
        handler.setLevel(console)          # gives its own loggers (distributed sets its own to INFO on import)
    for noisy in ("distributed", "httpx", "prefect.task_runs"):  # a cluster's chatter hides the summary
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        quiet_opencv()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nuclei", description="Batch nuclei segmentation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"nuclei {nuclei.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prepare_process(args.verbose)
    try:
        with quiet_workers(not args.verbose):
            code = int(args.handler(args))
        sys.stdout.flush()  # a reader that has gone (`| head`) shows here, not in the interpreter's last flush
        return code
    except BrokenPipeError as exc:
        if stdout_closed():  # as a tool killed by SIGPIPE ends: quietly, 128 + 13
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        print(f"nuclei: error: {one_line(os_error(exc))}", file=sys.stderr)
        return 2
    except NucleiError as exc:  # one line, also where a library's message had several (ONNX Runtime's)
        print(f"nuclei: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # a bad option value, caught by the stage's config
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
        print(f"nuclei: error: {one_line(problems)}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system refused: a file where a folder must go, no permission, no space
        logging.getLogger(__name__).debug("file system error", exc_info=True)  # the traceback with -v
        print(f"nuclei: error: {one_line(os_error(exc))}", file=sys.stderr)
        return 2


def stdout_closed() -> bool:
    """Whether this process's output has no reader any more (`nuclei query S list | head -2`), as against a
    broken pipe elsewhere (a socket), which is an error to report."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    except (OSError, ValueError):
        return False
    try:  # nothing left to flush: a pipe whose reader has closed it polls as an error
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def one_line(text: str) -> str:
    """An error as one printable line: a library's message may span lines, and a file name may carry terminal
    escape sequences."""
    return printable(" ".join(text.split()))


def os_error(exc: OSError) -> str:
    """One line naming the path and what the file system said, and where a file stands in a folder's way."""
    path = exc.filename if exc.filename is not None else ""
    if isinstance(exc, FileExistsError | NotADirectoryError) and path and os.path.isfile(path):
        return f"{path}: is a file, where a folder must go"
    if isinstance(exc, NotADirectoryError) and path:  # a file somewhere above it
        return f"{path}: a part of this path is a file, where a folder must go"
    return f"{path}: {exc.strerror or exc}" if path else str(exc.strerror or exc)


if __name__ == "__main__":
    sys.exit(main())

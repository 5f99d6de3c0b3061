"""The inference path must run without TensorFlow (it lives in the optional `train` extra)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_segmenting_and_querying_never_import_tensorflow() -> None:
    code = (
        "import sys, flows.segment, nuclei.inference.worker, nuclei.inference.run, nuclei.store.query, nuclei.cli.main;"
        "bad = [m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules];"
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


# Every module of nuclei and flows, by file (finding them by import would run them before the first look).
ROOT = Path(__file__).resolve().parent.parent
OUR_MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for package in ("nuclei", "flows") for path in (ROOT / package).rglob("*.py")
)

# Prints the modules that importing all of ours brings in besides ours, in the order they came.
THEIRS = """
import importlib, json, sys
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
print(json.dumps([m for m in sys.modules if m.split(".")[0] not in ("nuclei", "flows", "__main__")]))
"""

# Imports the libraries first (what they change on import is theirs), looks, imports all of nuclei, looks again.
LOOK = """
import importlib, json, logging, os, signal, sys, threading, warnings
for name in json.loads(open(sys.argv[2]).read()):
    try:
        importlib.import_module(name)
    except BaseException:
        pass
import cv2, matplotlib, PIL.Image

def loggers():
    found = {"": logging.root, **{n: lg for n, lg in logging.root.manager.loggerDict.items()
                                  if isinstance(lg, logging.Logger)}}
    return {n: (lg.level, [id(h) for h in lg.handlers], lg.propagate, lg.disabled) for n, lg in found.items()}

def look():
    return {
        "OpenCV log level": cv2.utils.logging.getLogLevel(),
        "signal handlers": {s.name: repr(signal.getsignal(s)) for s in signal.valid_signals()
                            if isinstance(s, signal.Signals)},
        "blocked signals": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "environment": dict(os.environ),
        "logging disabled": logging.root.manager.disable,
        "warning filters": [repr(f) for f in warnings.filters],
        "plotting backend": matplotlib.get_backend(),
        "Pillow's bomb limit": PIL.Image.MAX_IMAGE_PIXELS,
        "exception hooks": (id(sys.excepthook), id(threading.excepthook)),
    }

before, loggers_before = look(), loggers()
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
after, loggers_after = look(), loggers()
changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
if "environment" in changed:
    b, a = changed["environment"]
    changed["environment"] = {k: (b.get(k), a.get(k)) for k in set(b) | set(a) if b.get(k) != a.get(k)}
changed.update({f"logger {n!r}": (loggers_before.get(n), v) for n, v in loggers_after.items()
                if v != loggers_before.get(n, (logging.NOTSET, [], True, False))})
assert not changed, changed
"""


def test_importing_nuclei_changes_no_global_state(tmp_path: Path) -> None:
    """Importing every module of nuclei and flows changes nothing a host process has set up (a Jupyter kernel,
    napari, a user's script): OpenCV's log level, signal handlers and the signal mask, loggers' levels and
    handlers, the environment, warning filters, the plotting backend, Pillow's bomb limit, exception hooks.
    What the libraries change on their own import is theirs: they are imported before the first look."""
    ours = json.dumps(OUR_MODULES)
    env = {**os.environ, "MPLBACKEND": "svg"}
    listed = subprocess.run([sys.executable, "-c", THEIRS, ours], capture_output=True, text=True, timeout=300,
                            env=env, cwd=ROOT)
    assert listed.returncode == 0, listed.stderr[-2000:]
    theirs = tmp_path / "theirs.json"
    theirs.write_text(listed.stdout.strip().splitlines()[-1])
    result = subprocess.run([sys.executable, "-c", LOOK, ours, str(theirs)], capture_output=True, text=True,
                            timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]

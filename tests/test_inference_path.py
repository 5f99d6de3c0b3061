"""The inference path must run without TensorFlow (it lives in the optional `train` extra)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_segmenting_and_querying_never_import_tensorflow() -> None:
    code = (
        "import sys, flows.segment, nuclei.inference.worker, nuclei.inference.run, nuclei.store.query, nuclei.cli.main;"
        "bad = [m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules];"
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_importing_nuclei_changes_no_global_state() -> None:
    """A Jupyter or napari user's plotting backend, Pillow's bomb limit and warning filters stay theirs."""
    code = (
        "import warnings, matplotlib, PIL.Image;"
        "before = (matplotlib.get_backend(), PIL.Image.MAX_IMAGE_PIXELS);"
        "import nuclei.plots, nuclei.io.images, nuclei.store.backend, nuclei.store.query, nuclei.evaluation;"
        "after = (matplotlib.get_backend(), PIL.Image.MAX_IMAGE_PIXELS);"
        "assert before == after, (before, after);"
        "ours = [f for f in warnings.filters if f[1] is not None and 'index' in f[1].pattern];"  # zarr's index/ note
        "assert not ours, ours"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "MPLBACKEND": "svg"})
    assert result.returncode == 0, result.stderr[-2000:]

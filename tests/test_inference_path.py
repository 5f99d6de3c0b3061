"""The inference path must run without TensorFlow (it lives in the optional `train` extra)."""

from __future__ import annotations

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

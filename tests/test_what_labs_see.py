"""What a lab sees first: the version, the defaults in --help, where the tables and ROIs are, a quiet OpenCV."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

import nuclei
from nuclei.cli.main import build_parser, main

NUCLEI = [sys.executable, "-m", "nuclei.cli.main"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"nuclei {nuclei.__version__}"


def _help(*command: str) -> str:
    done = subprocess.run([*NUCLEI, *command, "--help"], capture_output=True, text=True, timeout=60,
                          env={"COLUMNS": "200", "PATH": ""})
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())


def test_numeric_options_show_their_defaults() -> None:
    from nuclei.config import SegmentConfig

    text = _help("segment")
    for name in ("images_per_task", "tile_size", "batch_size", "max_pixels"):
        default = SegmentConfig.model_fields[name].default
        flag = "--" + name.replace("_", "-")
        assert flag in text and f"(default: {default})" in text.split(flag, 2)[-1][:600], name


def test_query_help_names_the_tables_and_the_rois() -> None:
    text = _help("query")
    assert "--measurements" in text and "--rois" in text and "qupath" in text


def test_every_help_renders() -> None:
    """A "%" in a config field's description once broke `--help` (argparse %-formats help strings)."""
    parser = build_parser()
    for command in parser._subparsers._group_actions[0].choices:  # type: ignore[union-attr]
        _help(command)


def test_opencv_keeps_its_warnings_to_itself(capfd: pytest.CaptureFixture[str]) -> None:
    """Issue 29: "[ WARN:0@14.9] ... PNG input buffer is incomplete" landed inside the progress bar and the
    Prefect logs; the file's failure is reported once, by nuclei, with its name."""
    from nuclei.errors import InputError
    from nuclei.io.images import decode_image

    ok, png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert ok
    with pytest.raises(InputError):
        decode_image(png.tobytes()[:-40], "truncated.png")
    captured = capfd.readouterr()
    assert "WARN" not in captured.err and "libpng" not in captured.err, captured.err

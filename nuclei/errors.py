"""Errors that name the file and the reason, so a user can act on them."""

from __future__ import annotations

from pathlib import Path


class NucleiError(Exception):
    """Base class of every error nuclei raises on purpose."""


class InputError(NucleiError):
    """A file that cannot be used: unreadable, mismatched, unpaired or too large."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ModelError(NucleiError):
    """A model directory or ONNX file that cannot be used."""


class StoreError(NucleiError):
    """A Zarr store that is missing, of another format version, or asked for an unknown id."""


class RequestError(NucleiError, ValueError):
    """A request that cannot be done as asked (a rule that matches no image, too few images to train on, no model
    to start from): one line on the command line; still a ValueError for library callers."""


class ClusterError(NucleiError):
    """A Dask cluster that cannot be reached or has no workers."""


class Interrupted(Exception):  # noqa: N818 - named for what happened, like KeyboardInterrupt
    """A run stopped on request (Ctrl-C, SIGTERM): queued work was cancelled and every entry written is whole.
    Not a NucleiError: the command line reports it apart (exit 130)."""

"""The `nuclei` command (a shell, like flows/): one module per command, wired in `main`."""

from nuclei.cli.main import main

__all__ = ["main"]

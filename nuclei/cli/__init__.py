"""The `nuclei` command (a shell, like flows/): one module per command, wired in `nuclei.cli.main`."""

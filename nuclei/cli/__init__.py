"""The `nuclei` command (a shell, like flows/): one module per command, wired in `nuclei.cli.main`."""

from nuclei.inference.signals import leave_signals_to_the_parent

leave_signals_to_the_parent()  # first: in a LocalCluster worker this command started, Ctrl-C is the parent's

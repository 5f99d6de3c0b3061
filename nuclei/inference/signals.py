"""Who handles Ctrl-C in a run with a LocalCluster: the process that started it, never its workers.

Ctrl-C reaches the whole process group (and a scheduler's SIGTERM may too). The parent sets its stop event,
cancels what is queued and closes the cluster in order; a worker exits when told to, or when its parent dies.
Two steps, both taken by `nuclei.inference.cluster.dask_client` when it starts a LocalCluster, none on import:

- `held_for_new_workers`: the cluster starts with SIGINT and SIGTERM blocked in the starting thread, so the
  threads the cluster creates there, and the worker processes they spawn, begin with both blocked (a blocked
  signal waits; it never interrupts an import half-way). The starting thread's own mask comes back after.
- `WorkerSetup`, a Dask worker plugin: on each worker (those that join later too) SIGINT and SIGTERM are set to
  be ignored, then unblocked (what waited is dropped); with ``quiet_opencv``, OpenCV's own log lines are off.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

PARENTS_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def held_for_new_workers() -> Iterator[None]:
    """Within: SIGINT and SIGTERM blocked in this thread (and so in the threads and processes started from it).
    This process still hears them in its other threads, and here once the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, PARENTS_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class WorkerSetup(WorkerPlugin):
    """What a LocalCluster worker of nuclei's sets up before its first task (see the module's docstring)."""

    name = "nuclei-worker-setup"

    def __init__(self, quiet_opencv: bool = False) -> None:
        self.quiet_opencv = quiet_opencv

    def setup(self, worker: Any) -> None:
        leave_signals_to_the_parent()
        if self.quiet_opencv:
            from nuclei.io.images import quiet_opencv

            quiet_opencv()


def leave_signals_to_the_parent() -> None:
    """In a worker process (its main thread): ignore SIGINT and SIGTERM, then let them through (a Ctrl-C that
    came while they were blocked is dropped)."""
    for sig in PARENTS_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, PARENTS_SIGNALS)

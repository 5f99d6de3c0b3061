"""Who handles Ctrl-C in a run with a LocalCluster: the process that started it, never its workers.

Ctrl-C reaches the whole process group (and a scheduler's SIGTERM may too). The parent sets its stop event,
cancels what is queued and closes the cluster in order; a worker exits when told to, or when its parent dies.
Workers learn they are workers from their environment (`WORKER_MARK` names their parent's pid) when
`nuclei.cli` is imported, which multiprocessing's spawn does first thing: it imports the parent's main module.
Only standard-library imports here, so the window before a new worker sets its signals aside stays small.
"""

from __future__ import annotations

import os
import signal

WORKER_MARK = "NUCLEI_LOCAL_WORKER"


def leave_signals_to_the_parent() -> None:
    """In a LocalCluster worker process the command line started: ignore SIGINT and SIGTERM."""
    if os.environ.get(WORKER_MARK) == str(os.getppid()):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

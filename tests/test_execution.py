"""The executor batches and slide blocks share (`nuclei.inference.execution`): tasks as they finish, a stop request
seen while waiting, queued tasks cancelled, and no import circle between the run, the slides and it."""

from __future__ import annotations

import threading
import time

import pytest

from nuclei.config import SegmentConfig
from nuclei.errors import Interrupted
from nuclei.inference.execution import POLL_S, executor

SETTINGS = SegmentConfig(inputs=["x"], store="s")


def _after(seconds: float, value: int) -> int:
    time.sleep(seconds)
    if value < 0:
        raise ValueError(f"task {value} failed")
    return value


def test_tasks_come_as_they_finish_each_with_its_place_and_its_own_error() -> None:
    with executor(SETTINGS) as tasks:
        assert tasks.in_process and tasks.workers is not None
        seen = {i: future for i, future in tasks.finished(_after, [(0.3, 10), (0.0, -1), (0.1, 30)])}
    assert sorted(seen) == [0, 1, 2]
    assert seen[0].result() == 10 and seen[2].result() == 30
    with pytest.raises(ValueError, match="task -1 failed"):  # the caller decides what a failed task means
        seen[1].result()


def test_each_task_in_this_process_gets_its_share_of_the_threads() -> None:
    with executor(SETTINGS.model_copy(update={"threads": 8})) as tasks:
        workers = tasks.workers or 1
        assert tasks.task_settings(SETTINGS.model_copy(update={"threads": 8})).threads == max(1, 8 // workers)
        assert tasks.task_settings(SETTINGS.model_copy(update={"threads": 8}), tasks=1).threads == 8  # alone: all


def test_a_stop_request_ends_the_wait_calls_on_stop_and_no_queued_task_starts() -> None:
    stop, release = threading.Event(), threading.Event()
    started: list[int] = []
    stopped: list[bool] = []

    def blocked(i: int) -> int:
        started.append(i)
        release.wait(30)
        return i

    threading.Timer(0.3, stop.set).start()
    began = time.monotonic()
    try:
        with pytest.raises(Interrupted), executor(SETTINGS, stop) as tasks:
            list(tasks.finished(blocked, [(i,) for i in range(20)], on_stop=lambda: stopped.append(True)))
        assert time.monotonic() - began < 0.3 + 4 * POLL_S  # looked at within a poll, not after the tasks
        assert stopped == [True]
    finally:
        release.set()
    time.sleep(0.2)
    assert len(started) == (tasks.workers or 1) < 20  # the running ones ended; the queued ones never started


def test_a_ctrl_c_while_the_cluster_starts_stops_before_any_task(monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib
    from collections.abc import Iterator

    from nuclei.inference import execution

    stop = threading.Event()

    @contextlib.contextmanager
    def starts_while_stopped(*args: object) -> Iterator[object]:
        stop.set()  # the Ctrl-C came while the workers started
        yield object()  # no task may reach it

    monkeypatch.setattr(execution, "dask_client", starts_while_stopped)
    with pytest.raises(Interrupted), executor(SETTINGS.model_copy(update={"n_workers": 2}), stop) as tasks:
        pytest.fail(f"no task may be sent to {tasks}")


def test_the_run_the_slides_and_the_executor_import_in_one_direction_only() -> None:
    """slide._mapper imported run.uses_dask inside a function: a circle run -> slide -> run that no contract
    saw. Now the executor sits below both (pyproject's import-linter contract keeps it there)."""
    import grimp

    graph = grimp.build_graph("nuclei")
    for importer, imported in [("nuclei.inference.slide", "nuclei.inference.run"),
                               ("nuclei.inference.execution", "nuclei.inference.run"),
                               ("nuclei.inference.execution", "nuclei.inference.slide"),
                               ("nuclei.inference.execution", "nuclei.inference.worker"),
                               ("nuclei.inference.execution", "nuclei.store")]:
        assert not graph.find_shortest_chains(importer=importer, imported=imported, as_packages=True), importer

"""Where a run's tasks execute, and how a stop request ends them: one executor for image batches and slide blocks.

    with executor(settings, stop) as tasks:
        for index, future in tasks.finished(segment_batch, [(batch, settings, seen) for batch in batches]):
            results = future.result()

No cluster named and no workers asked for (`uses_dask`): the tasks run on a thread per core in this process,
sharing one ONNX Runtime session per model (ONNX Runtime, OpenCV, the watershed and the Zstd codec release the
GIL). Otherwise they are tasks on the run's Dask cluster, requesting a GPU each where its workers declare one.

A stop request (``stop``: a `threading.Event`, set by a signal handler) is looked at while waiting for tasks, at
least every POLL_S: tasks not started are cancelled, running ones may end theirs (on a cluster for DRAIN_S at
most, so that no worker is closed mid-task), the cluster closes in order and `Interrupted` is raised. A cluster
that fails to start or close once a stop was asked for is part of stopping, not a failure of its own.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

from nuclei.config import SegmentConfig
from nuclei.errors import Interrupted
from nuclei.inference.cluster import cluster_address, dask_client, local_cluster_size, task_resources
from nuclei.inference.engine import default_threads

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often a wait for tasks looks at the stop event
DRAIN_S = 5.0  # after a stop, how long running tasks on a cluster may take to end before it closes


def uses_dask(config: SegmentConfig) -> bool:
    """A Dask cluster runs the tasks when one is named (``dask_address`` or $NUCLEI_DASK_ADDRESS) or a
    LocalCluster of ``n_workers`` processes is asked for. Otherwise the run stays in this process, a thread
    per core: threads keep the cores as busy as worker processes would, without their start-up (about 5 s on 2
    cores; see BENCHMARKS.md)."""
    return cluster_address(config.dask_address) is not None or config.n_workers is not None


def expected_workers(config: SegmentConfig) -> int:
    """Tasks the run works on at once: a thread per core in this process, a LocalCluster's size, else 1 (an
    external cluster's size is not known before it is reached)."""
    if not uses_dask(config):
        return local_cluster_size()[0]
    return 1 if cluster_address(config.dask_address) else local_cluster_size(config.n_workers)[0]


def stop_if_asked(stop: threading.Event | None, timeout: float = 0.0) -> None:
    """Raise `Interrupted` once ``stop`` is set, waiting up to ``timeout`` seconds for it."""
    if stop is not None and (stop.wait(timeout) if timeout else stop.is_set()):
        raise Interrupted("stopped on request")


class Executor:
    """The run's threads (``client`` None) or Dask cluster: `finished` runs tasks and yields each as it ends."""

    def __init__(self, stop: threading.Event | None, client: Any = None) -> None:
        self.stop = stop
        self._client = client
        self._resources = task_resources(client) if client is not None else None
        if self._resources:
            log.info("inference tasks request %s per task", self._resources)
        # threads in this process; on a cluster each worker's own (`cluster.dask_client` sets them)
        self.workers = local_cluster_size()[0] if client is None else None
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="nuclei-task") if client is None else None

    @property
    def in_process(self) -> bool:
        return self._client is None

    def at_once(self, tasks: int) -> int:
        """How many of ``tasks`` run at the same time in this process (at most a thread each)."""
        return max(1, min(self.workers or 1, tasks))

    def task_settings(self, settings: SegmentConfig, tasks: int | None = None) -> SegmentConfig:
        """``settings`` as each task gets them: in this process, the ONNX Runtime threads shared by the tasks
        running at once (of ``tasks``, all threads busy if not given); a cluster's workers keep their own."""
        if self.workers is None:
            return settings
        at_once = self.at_once(tasks or self.workers)
        return settings.model_copy(update={"threads": max(1, (settings.threads or default_threads()) // at_once)})

    def stop_if_asked(self) -> None:
        stop_if_asked(self.stop)

    def finished(self, fn: Callable[..., Any], args: Sequence[tuple[Any, ...]],
                 on_stop: Callable[[], None] | None = None) -> Generator[tuple[int, Any], None, None]:
        """(i, the finished future of ``fn(*args[i])``) as each task ends; the caller takes its result or its
        error. A stop request seen while waiting calls ``on_stop`` (e.g. to end model runs in this process) and
        raises `Interrupted`; on any way out, the tasks not yet started are cancelled."""
        if not args:
            return
        futures = self._submit(fn, args)
        position = {future: i for i, future in enumerate(futures)}
        try:
            for ready in self._as_ready(futures, on_stop):
                for future in ready:
                    yield position[future], future
        finally:
            self._cancel([future for future in futures if not future.done()])

    def _submit(self, fn: Callable[..., Any], args: Sequence[tuple[Any, ...]]) -> list[Any]:
        if self._pool is not None:
            return [self._pool.submit(fn, *arg) for arg in args]
        return list(self._client.map(fn, *zip(*args, strict=True), pure=False, resources=self._resources))

    def _as_ready(self, futures: list[Any], on_stop: Callable[[], None] | None) -> Iterator[list[Any]]:
        """Lists of futures as they finish; while waiting, a look at the stop request every POLL_S."""
        if self._pool is None:
            yield from self._as_ready_on_dask(futures, on_stop)
            return
        pending = set(futures)
        while pending:
            self._stop_if_asked(on_stop)
            done, pending = wait(pending, timeout=POLL_S if self.stop is not None else None,
                                 return_when=FIRST_COMPLETED)
            yield list(done)

    def _as_ready_on_dask(self, futures: list[Any], on_stop: Callable[[], None] | None) -> Iterator[list[Any]]:
        from distributed import as_completed

        done = as_completed(futures)
        while not done.is_empty():
            self._stop_if_asked(on_stop)
            if self.stop is not None and not done.has_ready():
                self.stop.wait(POLL_S)  # as_completed takes no timeout: wait on the stop event, then look again
                continue
            yield list(done.next_batch(block=True))

    def _stop_if_asked(self, on_stop: Callable[[], None] | None) -> None:
        if self.stop is not None and self.stop.is_set():
            if on_stop is not None:
                on_stop()
            stop_if_asked(self.stop)

    def _cancel(self, futures: list[Any]) -> None:
        if self._client is not None:
            self._client.cancel(futures)
            return
        for future in futures:
            future.cancel()

    def close(self) -> None:
        """Threads: queued tasks never start; running ones end theirs (Python waits for them before it exits).
        A cluster: after a stop request, running tasks get DRAIN_S to end before the caller closes it."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        elif self.stop is not None and self.stop.is_set():
            _let_running_tasks_end(self._client)


@contextlib.contextmanager
def executor(settings: SegmentConfig, stop: threading.Event | None = None) -> Iterator[Executor]:
    """The run's executor: threads in this process, or a client of the cluster ``settings`` name or ask for
    (`uses_dask`), started here and closed in order on the way out."""
    if not uses_dask(settings):
        tasks = Executor(stop)
        try:
            yield tasks
        finally:
            tasks.close()
        return
    with _stopping_is_not_failing(stop), dask_client(settings.dask_address, settings.n_workers) as client:
        stop_if_asked(stop)  # a Ctrl-C while the cluster started
        tasks = Executor(stop, client)
        try:
            yield tasks
        finally:
            tasks.close()


@contextlib.contextmanager
def _stopping_is_not_failing(stop: threading.Event | None) -> Iterator[None]:
    """Once a stop was asked for, a cluster that fails to start or close (a worker process lost to the same
    Ctrl-C or SIGTERM) is part of stopping, not an error of its own."""
    try:
        yield
    except Exception as exc:
        if stop is not None and stop.is_set():
            raise Interrupted("stopped on request") from exc
        raise


def _let_running_tasks_end(client: Any, timeout: float = DRAIN_S) -> None:
    """Wait (a little) until no worker executes a task: a worker closed mid-task warns of the task it cancels.
    A cancelled task that already runs has no future left to wait on, so the workers are asked, every POLL_S/2."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not any(client.run(_executing).values()):
                return
        except Exception:  # noqa: BLE001 - a worker already gone: nothing left to wait for
            return
        time.sleep(POLL_S / 2)


def _executing(dask_worker: Any) -> int:
    """Tasks this worker is executing now (run on each worker by `client.run`)."""
    return len(dask_worker.state.executing)

"""The Dask cluster a segmentation run uses when it has one: an existing one by address, or a LocalCluster of
``--workers N`` processes (a run given neither stays in its process, `nuclei.inference.execution.uses_dask`).

On a small machine, ONNX Runtime runs best as several single-threaded workers (2 x 1 beats 1 x 2 on 2 cores);
each worker's session gets cores // workers threads. The dashboard listens on 127.0.0.1 only.

On a shared cluster, GPU workers declare a resource (`dask worker ADDRESS --resources GPU=1`); inference tasks
then request one GPU each, so they run only there, one per GPU.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from nuclei.errors import ClusterError

if TYPE_CHECKING:  # distributed costs about a second to import: small in-process runs never need it
    from distributed import Client

log = logging.getLogger(__name__)

DASK_ADDRESS_ENV = "NUCLEI_DASK_ADDRESS"
GPU_RESOURCE = "GPU"


def task_resources(client: Client) -> dict[str, float] | None:
    """{"GPU": 1} when some worker of the cluster declares a GPU resource, else no restriction."""
    workers: dict[str, Any] = client.scheduler_info(n_workers=-1).get("workers", {})
    if any(w.get("resources", {}).get(GPU_RESOURCE, 0) >= 1 for w in workers.values()):
        return {GPU_RESOURCE: 1}
    return None


def local_cluster_size(n_workers: int | None = None) -> tuple[int, int]:
    """(workers, threads per worker's ONNX session) for this machine."""
    cores = len(os.sched_getaffinity(0))
    workers = n_workers or cores
    return workers, max(1, cores // workers)


def cluster_address(address: str | None) -> str | None:
    """The cluster a run uses: the given address, else $NUCLEI_DASK_ADDRESS, else None (no cluster named)."""
    return address or os.environ.get(DASK_ADDRESS_ENV) or None


_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("nuclei_quiet_workers", default=False)


@contextlib.contextmanager
def quiet_workers(quiet: bool = True) -> Iterator[None]:
    """Within: the LocalClusters `dask_client` starts without being told ``quiet`` are quiet or not as said here
    (the CLI without -v: its own summary says what failed, and a worker's log line would land over it)."""
    token = _QUIET.set(quiet)
    try:
        yield
    finally:
        _QUIET.reset(token)


CONNECT_TIMEOUT_S = 10  # a dead address fails in this long, with one line
WORKERS_TIMEOUT_S = 60  # a scheduler without workers fails in this long instead of hanging


def probe_scheduler(address: str) -> None:
    """Ask ``address`` who it is, within CONNECT_TIMEOUT_S: a Dask client given a port that accepts TCP but is
    no scheduler (an HTTP server, the dashboard's port by mistake) waits for ever, and a malformed address is a
    traceback. Runs in its own thread and event loop, so it works under a caller's running loop too.
    Raises ClusterError naming the address and the reason."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nuclei-probe") as pool:
        try:
            found = pool.submit(asyncio.run, _identity(address)).result()
        except ValueError as exc:  # no port, unknown scheme
            raise ClusterError(f"{address!r} is not a Dask scheduler address ({exc}); expected tcp://HOST:PORT") \
                from exc
        except _NoAnswer as exc:
            raise ClusterError(f"{address} accepts connections but is not a Dask scheduler ({exc}): is it the "
                               "dashboard's port? The scheduler's is usually 8786") from exc
        except OSError as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {address} within {CONNECT_TIMEOUT_S} s "
                               f"({exc or type(exc).__name__})") from exc
    if not isinstance(found, dict) or found.get("type") != "Scheduler":
        kind = found.get("type") if isinstance(found, dict) else type(found).__name__
        raise ClusterError(f"{address} is a Dask {kind}, not a scheduler: give the scheduler's address")


class _NoAnswer(Exception):
    """Connected, but no scheduler's answer: silence, or the connection closed."""


async def _identity(address: str) -> object:
    from distributed.comm import connect

    try:
        comm = await asyncio.wait_for(connect(address, timeout=CONNECT_TIMEOUT_S), 2 * CONNECT_TIMEOUT_S)
    except OSError as exc:  # TimeoutError included: refused, unreachable, or no Dask handshake
        if await _accepts_tcp(address):
            raise _NoAnswer("no Dask handshake") from exc
        raise
    try:
        await comm.write({"op": "identity"})
        return await asyncio.wait_for(comm.read(), CONNECT_TIMEOUT_S)
    except TimeoutError as exc:
        raise _NoAnswer(f"no answer within {CONNECT_TIMEOUT_S} s") from exc
    except OSError as exc:  # distributed's CommClosedError
        raise _NoAnswer(f"it closed the connection: {exc}") from exc
    finally:
        comm.abort()


async def _accepts_tcp(address: str) -> bool:
    """Something listens at ``address`` (a TCP connection opens), whatever it speaks."""
    from distributed.comm.addressing import get_address_host_port

    try:
        host, port = get_address_host_port(address)
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
    except (OSError, ValueError):
        return False
    writer.close()
    return True


@contextlib.contextmanager
def _connect(address: str) -> Iterator[Client]:
    from distributed import Client

    probe_scheduler(address)
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {address} within {CONNECT_TIMEOUT_S} s ({exc})") \
            from exc
    with client:
        try:
            client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
        except TimeoutError as exc:
            raise ClusterError(f"the Dask scheduler at {address} has no workers (waited {WORKERS_TIMEOUT_S} s)") \
                from exc
        yield client


@contextlib.contextmanager
def dask_client(address: str | None = None, n_workers: int | None = None, quiet: bool | None = None
                ) -> Iterator[Client]:
    """A client for ``address`` (or $NUCLEI_DASK_ADDRESS), else for a new LocalCluster of worker processes whose
    signals are the parent's (`nuclei.inference.signals`). ``quiet`` (default: as `quiet_workers` says, else
    False): the workers log CRITICAL only, and OpenCV in them logs nothing; otherwise WARNING and up."""
    address = cluster_address(address)
    if address:
        with _connect(address) as client:
            log.info("using the Dask cluster at %s", address)
            yield client
        return
    from distributed import Client, LocalCluster

    from nuclei.inference.signals import WorkerSetup, held_for_new_workers

    quiet = _QUIET.get() if quiet is None else quiet
    workers, threads = local_cluster_size(n_workers)
    env = {"NUCLEI_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    # Quiet: on Ctrl-C a worker's heartbeat can race the scheduler's close and print an ERROR traceback over the
    # run's last line. Failed images are in the run's summary either way.
    with held_for_new_workers():
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", env=env,
                               silence_logs=logging.CRITICAL if quiet else logging.WARNING)
    with cluster, Client(cluster) as client:
        client.register_plugin(WorkerSetup(quiet_opencv=quiet))
        log.info("LocalCluster: %d workers x 1 task, %d ONNX thread(s) each; dashboard %s",
                 workers, threads, client.dashboard_link)
        yield client

"""The segment flow on an existing Dask cluster (by address), with a GPU worker declaring a `GPU` resource."""

from __future__ import annotations

from pathlib import Path

import pytest
from distributed import Client, Nanny, Scheduler, SpecCluster, get_task_stream

from flows.segment import segment
from nuclei.io.images import write_png
from nuclei.io.synthetic import make_sample
from nuclei.store.backend import Store


def _cluster(gpu_worker: bool) -> SpecCluster:
    """Two worker processes; one of them declares a GPU (as `dask worker ... --resources GPU=1` would)."""
    worker = {"cls": Nanny, "options": {"nthreads": 1, "host": "127.0.0.1"}}
    gpu = {"cls": Nanny, "options": {"nthreads": 1, "host": "127.0.0.1", "resources": {"GPU": 1}}}
    return SpecCluster(
        workers={"cpu": worker, "gpu": gpu if gpu_worker else worker},
        scheduler={"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": ":0"}},
    )


def _inputs(root: Path, n: int) -> Path:
    for i in range(n):
        image, _ = make_sample((64, 64), n_nuclei=4, seed=300 + i)
        write_png(root / f"img{i}.png", image)
    return root


@pytest.mark.slow  # a scheduler and worker processes
@pytest.mark.parametrize("gpu_worker", [True, False])
def test_existing_cluster_by_address_and_gpu_resource(
    tmp_path: Path, shipped_model: Path, gpu_worker: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = _inputs(tmp_path / "in", 6)
    with _cluster(gpu_worker) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        declared = {a for a, w in client.scheduler_info()["workers"].items() if w["resources"]}
        monkeypatch.setenv("NUCLEI_DASK_ADDRESS", cluster.scheduler_address)  # as a lab would set it
        with get_task_stream(client) as tasks:
            summary = segment(inputs=[str(inputs)], store=str(tmp_path / "out.zarr"), model=str(shipped_model),
                              images_per_task=1)
        stream = [t for t in tasks.data if "segment_batch" in str(t["key"])]
    assert summary["done"] == 6 and summary["failed"] == 0
    assert len(Store(tmp_path / "out.zarr").ids()) == 6
    workers = {t["worker"] for t in stream}
    if gpu_worker:
        assert workers == declared and len(declared) == 1  # every inference task ran on the GPU worker
    else:
        assert len(stream) == 6  # no GPU anywhere: tasks are unrestricted


def _worker_state() -> tuple[str, str, int, bool]:
    """In a worker: SIGINT's and SIGTERM's handlers, OpenCV's log level, whether SIGINT is still blocked."""
    import signal

    import cv2

    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    return (repr(signal.getsignal(signal.SIGINT)), repr(signal.getsignal(signal.SIGTERM)),
            cv2.utils.logging.getLogLevel(), blocked)


@pytest.mark.parametrize("quiet", [True, False])
def test_local_workers_leave_signals_to_the_parent_and_are_as_quiet_as_told(quiet: bool) -> None:
    """Issue 37: nothing is set on import any more. The LocalCluster `dask_client` starts has its workers ignore
    SIGINT and SIGTERM (a worker plugin, after they started with both blocked) and, told ``quiet``, silence
    OpenCV; the parent's own handlers and signal mask are as they were."""
    import signal

    import cv2

    from nuclei.inference.cluster import dask_client, quiet_workers

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with quiet_workers(quiet), dask_client(n_workers=1) as client:
        found = list(client.run(_worker_state).values())
    (sigint, sigterm, opencv, blocked), = found
    assert sigint == sigterm == repr(signal.SIG_IGN) and not blocked  # unblocked once ignored
    assert (opencv == cv2.utils.logging.LOG_LEVEL_SILENT) is quiet
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask

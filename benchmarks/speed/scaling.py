"""Scaling: the segment flow on 1 and 2 Dask workers over 100, 400 and 1,600 images.

    python -m benchmarks scaling                 # 256x256 images of the DSB2018 development set
    python -m benchmarks scaling --counts 100 400 --workers 1 2

Time per image should stay flat as the count grows, and each worker's peak memory (its process's max RSS,
read from the worker after the run) should not grow with the number of images. Each configuration gets a fresh
LocalCluster (so peaks are its own) and a fresh store; the development set is repeated under new names to
reach 1,600 images. Records ratios against the first count's run of the same worker count.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from nuclei.modeldir import default_model_path


def input_folder(root: Path, sources: list[Path], n: int) -> Path:
    folder = root / f"in{n}"
    folder.mkdir()
    for i in range(n):
        os.symlink(sources[i % len(sources)], folder / f"{i:05d}.png")
    return folder


def run(folder: Path, store: Path, model: str, workers: int) -> tuple[float, list[float]]:
    from distributed import Client, LocalCluster

    from flows.segment import segment

    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0", env={"NUCLEI_THREADS": str(threads)}) as cluster, \
            Client(cluster) as client:
        started = time.perf_counter()
        summary = segment(inputs=[str(folder)], store=str(store), model=model, dask_address=cluster.scheduler_address)
        elapsed = time.perf_counter() - started
        assert summary["failed"] == 0, summary["failures"][:3]
        peaks = sorted(client.run(harness.peak_rss_mb).values())
    return elapsed, peaks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 400, 1600])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    record = harness.Record("scaling", args)
    sources = harness.dev_paths("256x256")
    root = Path(tempfile.mkdtemp(prefix="nuclei-scaling-"))
    rows = []
    try:
        folders = {n: input_folder(root, sources, n) for n in args.counts}
        run(folders[args.counts[0]], root / "warmup.zarr", args.model, 1)  # Prefect server, imports, page cache
        for workers in args.workers:
            base: tuple[float, float] | None = None
            for n in args.counts:
                elapsed, peaks = run(folders[n], root / f"w{workers}-{n}.zarr", args.model, workers)
                per_image, peak = elapsed / n * 1000, max(peaks)
                base = base or (per_image, peak)
                rows.append([workers, n, elapsed, per_image, per_image / base[0], peak, peak / base[1]])
                print(rows[-1], flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    first = f"vs {args.counts[0]} images"
    record.table(["workers", "images", "seconds", "ms/image", first, "peak MB/worker", first], rows,
                 ["d", ",d", ".1f", ".1f", ".2f", ".0f", ".2f"],
                 title="a fresh LocalCluster and store per configuration; peak: each worker's max RSS")
    record.write()

"""Scaling: the segment flow on 1 and 2 Dask workers over 100, 400 and 1,600 images.

    .venv/bin/python benchmarks/scaling.py                 # 256x256 images of the DSB2018 development set
    .venv/bin/python benchmarks/scaling.py --counts 100 400 --workers 1 2

Time per image should stay flat as the count grows, and each worker's peak memory (its process's max RSS,
read from the worker after the run) should not grow with the number of images. Each configuration gets a fresh
LocalCluster (so peaks are its own) and a fresh store; the development set is repeated under new names to
reach 1,600 images. Prints ratios against the 100-image run of the same worker count.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from nuclei.modeldir import default_model_path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018-dev"


def images_256() -> list[Path]:
    with open(DEV / "manifest.csv") as handle:
        return [DEV / "images" / f"{r['id']}.png" for r in csv.DictReader(handle)
                if (r["height"], r["width"]) == ("256", "256")]


def input_folder(root: Path, sources: list[Path], n: int) -> Path:
    folder = root / f"in{n}"
    folder.mkdir()
    for i in range(n):
        os.symlink(sources[i % len(sources)], folder / f"{i:05d}.png")
    return folder


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


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
        peaks = sorted(client.run(peak_rss_mb).values())
    return elapsed, peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 400, 1600])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    if not DEV.is_dir():
        raise SystemExit(f"{DEV} is absent: this benchmark needs the DSB2018 development set")
    sources = images_256()
    root = Path(tempfile.mkdtemp(prefix="nuclei-scaling-"))
    try:
        folders = {n: input_folder(root, sources, n) for n in args.counts}
        run(folders[args.counts[0]], root / "warmup.zarr", args.model, 1)  # Prefect server, imports, page cache
        print(f"{'workers':>7} {'images':>7} {'seconds':>8} {'ms/image':>9} {'vs first':>9} "
              f"{'peak MB/worker':>15} {'vs first':>9}")
        for workers in args.workers:
            base: tuple[float, float] | None = None
            for n in args.counts:
                elapsed, peaks = run(folders[n], root / f"w{workers}-{n}.zarr", args.model, workers)
                per_image, peak = elapsed / n * 1000, max(peaks)
                base = base or (per_image, peak)
                print(f"{workers:>7} {n:>7} {elapsed:>8.1f} {per_image:>9.1f} {per_image / base[0]:>9.2f} "
                      f"{peak:>15.0f} {peak / base[1]:>9.2f}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

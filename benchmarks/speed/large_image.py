"""Large images: an 8192 x 8192 image segmented by tiles (peak memory, time) and the seam check.

    python -m benchmarks large_image               # 8192 x 8192, tiles of 1024
    python -m benchmarks large_image --size 4096

The image is a mosaic of the development set's 256 x 256 images (real nuclei at a realistic density). It is
segmented by the real flow on one Dask worker process, whose peak RSS is read from the worker afterwards;
the baseline is the same worker's peak after one 256 x 256 image. The seam check segments a 2048 x 2048
mosaic twice, in tiles of 512 and whole, and compares probabilities and labels.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import harness
from nuclei.modeldir import default_model_path


def mosaic(size: int) -> np.ndarray:
    from nuclei.io.images import read_raw

    tiles = [read_raw(p) for p in harness.dev_paths("256x256")]
    tiles = [t[..., :3] if t.ndim == 3 else np.dstack([t] * 3) for t in tiles]
    n = size // 256
    rows = [np.concatenate([tiles[(r * n + c) % len(tiles)] for c in range(n)], axis=1) for r in range(n)]
    return np.concatenate(rows, axis=0)


def segment_on_one_worker(path: Path, store: Path, model: str, tile_size: int) -> tuple[float, float, dict]:
    from distributed import Client, LocalCluster

    from flows.segment import segment

    threads = harness.cores()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0",
                      env={"NUCLEI_THREADS": str(threads)}, memory_limit=0) as cluster, Client(cluster) as client:
        started = time.perf_counter()
        summary = segment(inputs=[str(path)], store=str(store), model=model, tile_size=tile_size,
                          dask_address=cluster.scheduler_address)
        elapsed = time.perf_counter() - started
        peak = max(client.run(harness.peak_rss_mb).values())
    assert summary["failed"] == 0, summary["failures"]
    return elapsed, peak, summary


def seams(model: str) -> tuple[float, bool]:
    from nuclei.core.postprocess import instances
    from nuclei.inference.engine import Engine
    from nuclei.io.images import to_float_rgb
    from nuclei.modeldir import load_model_dir

    model_dir = load_model_dir(model)
    image = to_float_rgb(mosaic(2048))
    tiled = Engine(model_dir, ("CPUExecutionProvider",), tile_size=512).predict(image)
    whole = Engine(model_dir, ("CPUExecutionProvider",), tile_size=2048).predict(image)
    same = np.array_equal(instances(tiled, model_dir.thresholds), instances(whole, model_dir.thresholds))
    return float(np.abs(tiled - whole).max()), same


def main(argv: list[str] | None = None) -> None:
    import cv2

    parser = argparse.ArgumentParser(prog="python -m benchmarks large_image", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--tile-size", type=int, default=1024)
    args = parser.parse_args(argv)
    record = harness.Record("large_image", args)
    root = Path(tempfile.mkdtemp(prefix="nuclei-large-"))
    try:
        small, large = root / "small.png", root / "large.png"
        cv2.imwrite(str(small), mosaic(256)[..., ::-1])
        cv2.imwrite(str(large), mosaic(args.size)[..., ::-1])
        _, base_peak, _ = segment_on_one_worker(small, root / "small.zarr", args.model, args.tile_size)
        elapsed, peak, summary = segment_on_one_worker(large, root / "large.zarr", args.model, args.tile_size)
        mpix = args.size**2 / 1e6
        diff, same = seams(args.model)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    record.table(["image", "seconds", "Mpixel/s", "nuclei", "worker peak RSS MB", "vs one 256 x 256 image"],
                 [[f"{args.size} x {args.size} ({mpix:.0f} Mpixel), tiles of {args.tile_size}", elapsed,
                   mpix / elapsed, summary["nuclei"], peak, peak / base_peak]],
                 ["", ".1f", ".2f", ",d", ".0f", ".1f"], title="one Dask worker process; target peak < 2048 MB")
    record.note(f"seams (2048 x 2048, tiles of 512 against whole): max probability difference {diff:.2e}, labels "
                f"{'identical' if same else 'DIFFER'}")
    record.write()

"""Query speed on a store of many entries: list, summary table, one image's labels.

    .venv/bin/python benchmarks/query.py --entries 2000

Builds a store of N synthetic 256x256 entries (real Zarr writes), then times the queries. The ratios compare
listing and summarising (records only) with reading every image's labels, the naive way, measured in the run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nuclei.core.measure import measure
from nuclei.io.synthetic import make_sample
from nuclei.store.backend import Store
from nuclei.store.query import open_store


def build(path: Path, n: int) -> None:
    store = Store(path, "a")
    templates = [make_sample((256, 256), n_nuclei=20, seed=s) for s in range(16)]
    for i in tqdm(range(n), desc="writing entries", unit="entry"):
        image, labels = templates[i % len(templates)]
        table = measure(labels, image.astype(np.float32) / 255)
        record = {"source": f"plate{i // 96}/img{i:05d}.png", "source_sha256": f"{i:064x}", "shape": [256, 256],
                  "n_nuclei": int(table.shape[0]), "covered_fraction": float(np.mean(labels > 0)),
                  "mean_area": float(table[:, 1].mean()), "model": {"version": "bench@0"}, "status": "complete"}
        store.write_entry(f"plate{i // 96}/img{i:05d}", image, labels, table, record)


def timed(fn, repeat: int = 3) -> float:  # noqa: ANN001 - any callable
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nuclei-query-") as tmp:
        path = Path(tmp) / "bench.zarr"
        build(path, args.entries)
        store = open_store(path)
        ids = store.ids()
        t_list = timed(lambda: store.images())
        t_summary = timed(lambda: store.summary())
        rng = np.random.default_rng(0)
        reads = []
        for image_id in rng.choice(ids, 50, replace=False):
            started = time.perf_counter()
            store.labels(str(image_id))
            reads.append(time.perf_counter() - started)
        t_read = statistics.median(reads)
        print(f"{len(ids)} entries")
        print(f"list:                 {t_list * 1000:8.1f} ms")
        print(f"summary table:        {t_summary * 1000:8.1f} ms")
        print(f"one image's labels:   {t_read * 1000:8.2f} ms (median of 50)")
        print(f"summary vs reading every labels array (estimated {t_read * len(ids):.1f} s): "
              f"{t_read * len(ids) / t_summary:.0f}x faster")


if __name__ == "__main__":
    main()

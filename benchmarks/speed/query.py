"""Query speed on a store of many entries: list, summary table, one image's labels.

    python -m benchmarks query --entries 2000

Builds a store of N synthetic 256x256 entries (real Zarr writes), then times the queries (best of 3 interleaved
rounds; one image's labels: the median of 50 reads). The ratios compare listing and summarising (records only)
with reading every image's labels, the naive way (50 reads' median times N), measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks import harness
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
                  "mean_area": float(table[:, 1].mean()), "model": {"version": "bench@0"}, "thresholds": {},
                  "status": "complete"}
        store.write_entry(f"plate{i // 96}/img{i:05d}", image, labels, table, record)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks query", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=2000)
    args = parser.parse_args(argv)
    record = harness.Record("query", args)
    with tempfile.TemporaryDirectory(prefix="nuclei-query-") as tmp:
        path = Path(tmp) / "bench.zarr"
        build(path, args.entries)
        store = open_store(path)
        ids = store.ids()
        found = harness.interleave({"list (index records only)": harness.timed(store.images),
                                    "summary table": harness.timed(store.summary)}, rounds=3)
        rng = np.random.default_rng(0)
        read = statistics.median(harness.timed(lambda i=str(i): store.labels(i))()
                                 for i in rng.choice(ids, 50, replace=False))
    every = read * len(ids)
    rows = [[name, found.best(name) * 1000, every / found.best(name)] for name in found.names]
    rows.append(["one image's labels (median of 50)", read * 1000, None])
    record.figure("summary_vs_every_labels", round(every / found.best("summary table")))
    record.table(["query", "ms", "x faster than reading every labels array"], rows, ["", ".1f", ".0f"],
                 title=f"{len(ids)} entries; reading every labels array estimated at {every:.1f} s")
    record.write()

"""Whole-process cost of `nuclei segment` against a bare ONNX Runtime loop over the same files, same precision.

    .venv/bin/python benchmarks/startup.py                      # 1, 10 and 334 images of 256x256, 3 rounds
    .venv/bin/python benchmarks/startup.py --counts 1 10 --rounds 5
    .venv/bin/python benchmarks/startup.py --counts 334 --workers 2   # also a LocalCluster of 2 processes

Each measurement is a fresh process (start-up, imports and all), rounds interleaved so both see the same machine
load; a fresh store each time. Prints median wall and CPU seconds of each and their ratios. The bare loop reads
each file, scales it to float32, pads it and runs one int8 (or float32) InferenceSession: no post-processing,
measurements or store, so the ratio is what nuclei's whole run costs over the network alone.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018-dev"

LOOP = """
import sys, glob, cv2, numpy as np, onnxruntime as ort
model, folder = sys.argv[1], sys.argv[2]
options = ort.SessionOptions()
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
for path in sorted(glob.glob(folder + "/*.png")):
    image = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    h, w = image.shape[:2]
    padded = np.pad(image, ((0, -h % 16), (0, -w % 16), (0, 0)), mode="symmetric")
    session.run(None, {name: padded[None]})
"""


def _measure(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{argv[:3]} failed:\n{done.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    from nuclei.modeldir import default_model_path, load_model_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 10, 334])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--float32", action="store_true")
    parser.add_argument("--workers", type=int, help="also time `nuclei segment --workers N` (a Dask LocalCluster)")
    parser.add_argument("--also", type=Path, help="also time another checkout of nuclei (e.g. `git worktree add "
                        "/tmp/before HEAD~3`), interleaved: before/after in one run")
    args = parser.parse_args()

    model = load_model_dir(args.model)
    onnx = model.onnx_path if args.float32 or not model.int8_sha256 else model.int8_path
    with open(DEV / "manifest.csv") as handle:
        ids = [r["id"] for r in csv.DictReader(handle) if (r["height"], r["width"]) == ("256", "256")]
    nuclei = [sys.executable, "-m", "nuclei.cli.main", "segment", "--model", args.model]
    if args.float32:
        nuclei.append("--float32")
    print(f"model {model.version} ({onnx.name}); rounds {args.rounds}; medians of whole processes")
    print(f"{'images':>7} {'nuclei wall':>12} {'loop wall':>10} {'ratio':>6} {'nuclei CPU':>11} {'loop CPU':>9} "
          f"{'ratio':>6}" + (f" {'--workers ' + str(args.workers) + ' wall':>17} {'ratio':>6}" if args.workers else "")
          + (f" {'--also wall':>12} {'ratio':>6}" if args.also else ""))
    other = {**os.environ, "PYTHONPATH": str(args.also)} if args.also else None
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.counts:
            folder = Path(tmp) / f"in{count}"
            folder.mkdir()
            for image_id in ids[:count]:
                shutil.copy(DEV / "images" / f"{image_id}.png", folder)
            ours, loop, cluster, theirs = [], [], [], []
            for round_ in range(args.rounds):
                store = Path(tmp) / f"s{count}-{round_}.zarr"
                ours.append(_measure([*nuclei, str(folder), "--store", str(store)]))
                loop.append(_measure([sys.executable, "-c", LOOP, str(onnx), str(folder)]))
                if other:
                    store = Path(tmp) / f"a{count}-{round_}.zarr"
                    theirs.append(_measure([*nuclei, str(folder), "--store", str(store)], other))
                if args.workers:
                    store = Path(tmp) / f"c{count}-{round_}.zarr"
                    cluster.append(_measure([*nuclei, str(folder), "--store", str(store), "--workers",
                                             str(args.workers)]))
            wall = statistics.median(w for w, _ in ours), statistics.median(w for w, _ in loop)
            cpu = statistics.median(c for _, c in ours), statistics.median(c for _, c in loop)
            on_cluster = statistics.median(w for w, _ in cluster) if cluster else 0.0
            also = statistics.median(w for w, _ in theirs) if theirs else 0.0
            print(f"{count:>7} {wall[0]:>11.2f}s {wall[1]:>9.2f}s {wall[0] / wall[1]:>6.2f} {cpu[0]:>10.2f}s "
                  f"{cpu[1]:>8.2f}s {cpu[0] / cpu[1]:>6.2f}"
                  + (f" {on_cluster:>16.2f}s {on_cluster / wall[1]:>6.2f}" if cluster else "")
                  + (f" {also:>11.2f}s {also / wall[1]:>6.2f}" if theirs else ""))


if __name__ == "__main__":
    main()

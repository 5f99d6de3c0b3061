"""Whole-process cost of `nuclei segment` against a bare ONNX Runtime loop over the same files, same precision.

    python -m benchmarks startup                      # 1, 10 and 334 images of 256x256, 3 rounds
    python -m benchmarks startup --counts 1 10 --rounds 5
    python -m benchmarks startup --counts 334 --workers 2   # also a LocalCluster of 2 processes
    python -m benchmarks startup --also /tmp/before   # also another checkout (`git worktree add /tmp/before HEAD~3`)

Each measurement is a fresh process (start-up, imports and all), rounds interleaved so both see the same machine
load; a fresh store each time. Records median wall and CPU seconds of each and their ratios to the loop (the
median of each round's ratio). The bare loop reads each file, scales it to float32, pads it and runs one int8
(or float32) InferenceSession: no post-processing, measurements or store, so the ratio is what nuclei's whole run
costs over the network alone.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import harness

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


def process(argv: list[str], cwd: Path | None = None) -> dict[str, float]:
    """Wall and CPU (user + system) seconds of one child process, started in ``cwd`` (`python -m` imports the
    nuclei found there first, before PYTHONPATH and the installed one)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{argv[:3]} failed:\n{done.stderr[-2000:]}")
    return {"wall": wall, "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}


def main(argv: list[str] | None = None) -> None:
    from nuclei.modeldir import default_model_path, load_model_dir

    parser = argparse.ArgumentParser(prog="python -m benchmarks startup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 10, 334])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--float32", action="store_true")
    parser.add_argument("--workers", type=int, help="also time `nuclei segment --workers N` (a Dask LocalCluster)")
    parser.add_argument("--also", type=Path, help="also time another checkout of nuclei, interleaved")
    args = parser.parse_args(argv)
    record = harness.Record("startup", args)

    model = load_model_dir(args.model)
    onnx = model.onnx_path if args.float32 or not model.int8_sha256 else model.int8_path
    ids = harness.dev_ids("256x256")
    nuclei = [sys.executable, "-m", "nuclei.cli.main", "segment", "--model", args.model,
              *(["--float32"] if args.float32 else [])]
    stores = itertools.count()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:

        def segment(folder: Path, extra: list[str], checkout: Path = harness.REPO) -> Callable[[], dict[str, float]]:
            return lambda: process([*nuclei, str(folder), "--store", f"{tmp}/s{next(stores)}.zarr", *extra],
                                   checkout)

        def loop(folder: Path) -> Callable[[], dict[str, float]]:
            return lambda: process([sys.executable, "-c", LOOP, str(onnx), str(folder)])

        for count in args.counts:
            folder = Path(tmp) / f"in{count}"
            folder.mkdir()
            for image_id in ids[:count]:
                shutil.copy(harness.DEV / "images" / f"{image_id}.png", folder)
            variants = {"nuclei segment": segment(folder, []), "bare loop": loop(folder)}
            if args.also:
                variants["--also checkout"] = segment(folder, [], args.also.resolve())
            if args.workers:
                variants[f"--workers {args.workers}"] = segment(folder, ["--workers", str(args.workers)])
            found = harness.interleave(variants, args.rounds, baseline="bare loop")
            wall, cpu = found.ratio("nuclei segment", "wall"), found.ratio("nuclei segment", "cpu")
            record.figure(f"wall_{count}", round(found.median("nuclei segment", "wall"), 2))
            record.figure(f"wall_ratio_{count}", round(wall, 2))
            extra = [[found.median(v, "wall"), found.ratio(v, "wall")] for v in list(variants)[2:]]
            rows.append([count, found.median("nuclei segment", "wall"), found.median("bare loop", "wall"), wall,
                         found.median("nuclei segment", "cpu"), found.median("bare loop", "cpu"), cpu,
                         *itertools.chain.from_iterable(extra)])
    columns = ["images", "`nuclei segment` wall s", "bare loop wall s", "ratio", "`nuclei segment` CPU s",
               "bare loop CPU s", "ratio"]
    for name in list(variants)[2:]:
        columns += [f"{name} wall s", "ratio"]
    record.table(columns, rows, ["d", ".2f", ".2f", ".2f", ".2f", ".2f", ".2f"] + [".2f", ".2f"] * (len(variants) - 2),
                 title=f"{model.version} ({onnx.name}), 256x256 DSB2018 images; medians of {args.rounds} interleaved "
                       "rounds of whole processes; ratios against the bare loop of the same round")
    record.write()

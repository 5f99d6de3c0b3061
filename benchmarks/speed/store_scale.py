"""Stores that grow: planning a re-run, `query list/stats`, `check` and the summary export against the entry count.

    python -m benchmarks store_scale --entries 1000 10000 100000 --check-up-to 10000

One real 64 x 64 entry is segmented by `nuclei.segment` (the shipped model); its record is then cloned under N ids
with the store's own record type (`EntryRecord.model_copy`: new id, key, source and commit token), each entry's
folder a link to the real entry's, so the store stays valid for `nuclei check`. The input folder holds one tiny
file per entry, a copy of the real entry's image with the size and mtime its record says: a re-run plan sees
every image unchanged (and hashes each, as `is_current` does). Each operation runs in its own process on a warm
page cache; its seconds (from its call, after imports) and its peak resident memory are measured there. With
``--compare`` each operation also runs with the index catalog bypassed (`nuclei.store.catalog.ENABLED`), in
the same run: the records read one by one, as before the catalog. The growth exponent is the log-log slope of
seconds against entries (1: linear).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks import harness

OPERATIONS = ("plan", "list", "stats", "check", "export_summary")
MTIME_NS = 1_700_000_000 * 10**9  # every input file's mtime, as its record says
PER_FOLDER = 1000  # input files per folder (plate folders of a lab's run)
SETTLED_S = 3.5  # above `catalog.SETTLED_S`: a record file that young is read, not cached


def _ids(n: int) -> list[str]:
    return [f"p{i // PER_FOLDER:04d}/img{i:07d}" for i in range(n)]


def build(root: Path, n: int) -> tuple[Path, Path]:
    """A store of ``n`` entries and the folder of their unchanged inputs under ``root``; returns both."""
    import numpy as np

    from nuclei.inference.run import segment
    from nuclei.io.images import write_png
    from nuclei.io.synthetic import make_sample
    from nuclei.store.backend import Store
    from nuclei.store.index import id_to_key

    store_path, inputs, seed_dir = root / "store.zarr", root / "inputs", root / "seed"
    seed_dir.mkdir(parents=True)
    image, _ = make_sample((64, 64), n_nuclei=4, seed=0)
    write_png(seed_dir / "seed.png", np.asarray(image))
    segment([str(seed_dir)], str(store_path), threads=1)
    store = Store(store_path, "a")
    template = store.record("seed")
    assert template is not None, "the real entry was not written"
    blob = (seed_dir / "seed.png").read_bytes()
    index, images = store_path / "index", store_path / "images"
    for image_id in _ids(n):
        source = inputs / f"{image_id}.png"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(blob)
        os.utime(source, ns=(MTIME_NS, MTIME_NS))
        key = id_to_key(image_id)
        record = template.model_copy(update={"id": image_id, "key": key, "source": str(source),
                                             "source_mtime": MTIME_NS / 1e9, "commit": uuid.uuid4().hex})
        os.symlink("seed", images / key)  # the real entry's arrays, read through its own key
        (index / f"{key}.json").write_bytes(json.dumps(record.as_dict(), sort_keys=True, default=str).encode())
    store.hide("seed")  # its input is not in the folder: every record left is an input's
    return store_path, inputs


def measure(operation: str, store: str, inputs: str, catalog: bool) -> dict[str, float]:
    """Run one operation here (a child process): its seconds and this process's peak RSS in MB."""
    import resource

    from nuclei.store import catalog as catalog_module

    catalog_module.ENABLED = catalog
    from nuclei.cli.main import main as cli
    from nuclei.config import SegmentConfig
    from nuclei.inference.run import plan

    out = Path(tempfile.mkdtemp(prefix="nuclei-scale-export-"))
    commands = {"list": ["query", store, "list"], "stats": ["query", store, "stats"], "check": ["check", store],
                "export_summary": ["query", store, "export", "--summary", str(out / "images.csv")]}
    started = time.perf_counter()
    if operation == "plan":
        found = plan(SegmentConfig.model_validate({"inputs": [inputs], "store": store, "threads": 1}))
        if found.items or len(found.unchanged) != found.n_found:
            raise SystemExit(f"plan: {len(found.items)} images to do, expected every one unchanged")
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            code = cli(commands[operation])
        if code != 0:
            raise SystemExit(f"{operation}: exit {code}")
    seconds = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _child(operation: str, store: Path, inputs: Path, catalog: bool, timeout: float) -> dict[str, float] | None:
    """`measure` in its own process; None when it ran past ``timeout``."""
    command = [sys.executable, "-m", "benchmarks.speed.store_scale", "--measure", operation, "--store", str(store),
               "--inputs", str(inputs), *([] if catalog else ["--no-catalog"])]
    try:
        done = subprocess.run(command, cwd=harness.REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        raise SystemExit(f"{operation} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


Found = dict[tuple[str, str], dict[int, dict[str, float]]]  # (operation, variant) -> entries -> measures


def _add(found: Found, operation: str, variant: str, n: int, got: dict[str, float]) -> None:
    found.setdefault((operation, variant), {})[n] = got
    print(f"{operation:34s} {variant:18s} {n:>8,d}: {got['seconds']:8.2f} s {got['peak_mb']:7.0f} MB", file=sys.stderr)


def curve(record: harness.Record, found: Found, variants: list[str]) -> None:
    """The curve (one row per operation and entry count, the variants side by side, their ratio measured in the
    same run) and each operation's growth exponent."""
    operations = list(dict.fromkeys(operation for operation, _ in found))
    columns = ["operation", "entries"]
    for variant in variants:
        columns += [f"s ({variant})", f"peak MB ({variant})"]
    columns += ["catalog / one by one"] if len(variants) == 2 else []
    rows, growth = [], []
    for operation in operations:
        for n in sorted({n for (op, _), by_n in found.items() if op == operation for n in by_n}):
            got = [found.get((operation, v), {}).get(n) for v in variants]
            row: list[Any] = [operation, n]
            for one in got:
                row += [one["seconds"], one["peak_mb"]] if one else [None, None]
            if len(variants) == 2:
                row.append(got[0]["seconds"] / got[1]["seconds"] if got[0] and got[1] else None)
            rows.append(row)
        for variant in variants:
            points = sorted(found.get((operation, variant), {}).items())
            if len(points) < 2:
                continue
            exponent = slope([(n, got["seconds"]) for n, got in points])
            growth.append([operation, variant, f"{points[0][0]:,d}-{points[-1][0]:,d}", exponent,
                           slope([(n, got["peak_mb"]) for n, got in points])])
            record.figure(f"{operation}.{variant}.exponent", None if exponent is None else round(exponent, 2))
    formats = ["", ",d", *[".2f", ".0f"] * len(variants), *([".2f"] if len(variants) == 2 else [])]
    record.table(columns, rows, formats, title="Each operation in its own process (seconds of its call, peak RSS of "
                 "the process), warm page cache")
    record.table(["operation", "index read", "entries", "growth exponent (s)", "growth exponent (peak MB)"],
                 growth, ["", "", "", ".2f", ".2f"], title="Log-log slope against the entry count (1: linear)")
    for variant in variants:
        for n, measured in found.get(("plan", variant), {}).items():
            record.figure(f"plan_seconds_{n}.{variant}", round(measured["seconds"], 2))


def slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(seconds) on log(entries): 1 is linear, 2 quadratic."""
    if len(points) < 2:
        return None
    xs, ys = [math.log(n) for n, _ in points], [math.log(max(s, 1e-6)) for _, s in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks store_scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--check-up-to", type=int, default=10000,
                        help="run `nuclei check` (which reads every entry's arrays) only up to this many entries")
    parser.add_argument("--compare", action="store_true", help="also measure each operation without the catalog")
    parser.add_argument("--timeout", type=float, default=120, help="seconds before one measure is given up")
    parser.add_argument("--measure", choices=OPERATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--no-catalog", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.store, args.inputs, not args.no_catalog)))
        return
    run_suite(args)


def run_suite(args: argparse.Namespace) -> None:
    record = harness.Record("store_scale", args)
    variants = ["catalog", "records one by one"] if args.compare else ["catalog"]
    found: Found = {}
    for n in sorted(args.entries):
        with tempfile.TemporaryDirectory(prefix="nuclei-scale-") as tmp:
            started = time.perf_counter()
            store, inputs = build(Path(tmp), n)
            built = time.perf_counter() - started
            print(f"{n} entries built in {built:.0f} s", file=sys.stderr)
            record.note(f"{n} entries: store and inputs built in {built:.0f} s")
            time.sleep(SETTLED_S)  # records younger than this are read from their files, never cached
            got = _child("stats", store, inputs, True, args.timeout)  # the first scan reads and keeps every record
            if got is not None:
                _add(found, "stats, first (builds the catalog)", "catalog", n, got)
            for operation in OPERATIONS:
                if operation == "check" and n > args.check_up_to:
                    continue
                for variant in variants:
                    got = _child(operation, store, inputs, variant == "catalog", args.timeout)
                    if got is None:
                        record.note(f"{operation} ({variant}) at {n} entries: over {args.timeout:.0f} s, given up")
                        continue
                    _add(found, operation, variant, n, got)
    curve(record, found, variants)
    record.write()


if __name__ == "__main__":
    main()

"""What making entries durable costs: an entry's files flushed to disk (files and folders, then the record) by
an fsync of each path and by one syncfs per flush (`nuclei.store.durable`, the default where the file system
allows it), against the same writes with only the record flushed, measured in the same run.

    python -m benchmarks fsync_cost --entries 60 --rounds 5 [--dir /path/on/the/disk/of/interest]
    python -m benchmarks fsync_cost --run 30 --rounds 3     # also whole runs: nuclei.segment()

Each entry is a real 256x256 RGB sample's files (`nuclei.store.layout.entry_files`: image, two label images,
measurements, 12 files in 8 folders) plus its record (`durable.write_atomically`, flushed in every variant).
Rounds interleave the variants so all see the same disk and machine load; a ratio is the median over rounds of
a variant's seconds per entry over the first one's. With ``--run N``, whole in-process runs of the shipped
model on N 256x256 samples are timed the same way (as shipped, with NUCLEI_SYNC=fsync, and with nothing
flushed), so the cost is also seen against everything else a run does. The cost depends on the disk (a laptop
SSD, a network file system and tmpfs differ by orders of magnitude): run it on the disk the store will live on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks import harness
from nuclei.core.measure import COLUMN_NAMES, measure
from nuclei.io.synthetic import make_sample
from nuclei.store import durable
from nuclei.store.durable import SYNC_ENV, write_atomically, write_files
from nuclei.store.layout import entry_files
from nuclei.store.record import EntryRecord


def _entry() -> tuple[dict[str, bytes], bytes]:
    image, labels = make_sample((256, 256), n_nuclei=20, seed=1)
    table = measure(labels, image)
    record = EntryRecord(id="x", source="x.png", source_sha256="0" * 64, shape=(256, 256), channels=3,
                         n_nuclei=int(table.shape[0]), covered_fraction=float((labels > 0).mean()), mean_area=1.0,
                         model={"version": "bench@0"}, thresholds={})
    return entry_files(record, image, labels, table, COLUMN_NAMES), json.dumps(record.as_dict()).encode()


def _seconds_per_entry(root: Path, n: int, files: dict[str, bytes], blob: bytes, sync: str) -> float:
    """Seconds per entry written with ``sync``: "record" (arrays not flushed), "fsync" (each path) or "auto"."""
    folder = Path(tempfile.mkdtemp(dir=root))
    (folder / "images").mkdir()
    with _sync(sync):
        started = time.perf_counter()
        for i in range(n):
            write_files(str(folder / "images" / f"e{i}"), files, fsync=sync != "record")
            write_atomically(str(folder / "index" / f"e{i}.json"), blob)
        seconds = (time.perf_counter() - started) / n
    shutil.rmtree(folder)
    return seconds


@contextlib.contextmanager
def _sync(how: str) -> Iterator[None]:
    """NUCLEI_SYNC=fsync for "fsync", as shipped otherwise."""
    before = os.environ.pop(SYNC_ENV, None)
    if how == "fsync":
        os.environ[SYNC_ENV] = "fsync"
    try:
        yield
    finally:
        os.environ.pop(SYNC_ENV, None)
        if before is not None:
            os.environ[SYNC_ENV] = before


def _run_seconds(root: Path, inputs: Path, sync: str) -> float:
    """Seconds of one in-process `nuclei.segment()` over ``inputs`` into a new store, flushed as ``sync`` says
    ("none": nothing, records neither; "fsync"; "auto": as shipped)."""
    from nuclei.inference.run import segment
    from nuclei.store import durable

    store = Path(tempfile.mkdtemp(dir=root)) / "s.zarr"
    real = durable.make_durable
    if sync == "none":
        durable.make_durable = lambda paths: None  # type: ignore[assignment]  # every flush: records too
    try:
        with _sync(sync):
            started = time.perf_counter()
            summary = segment([inputs], store)
            seconds = time.perf_counter() - started
    finally:
        durable.make_durable = real
    assert summary["failed"] == 0, summary
    shutil.rmtree(store.parent)
    return seconds


def _whole_runs(root: Path, n: int, rounds: int) -> harness.Comparison:
    from nuclei.io.images import write_png

    inputs = Path(tempfile.mkdtemp(dir=root))
    for i in range(n):
        write_png(inputs / f"img{i:03d}.png", make_sample((256, 256), n_nuclei=20, seed=i)[0])
    _run_seconds(root, inputs, "auto")  # warm: model files and imports in the page cache
    found = harness.interleave({"nothing flushed": lambda: _run_seconds(root, inputs, "none"),
                                "fsync of each path": lambda: _run_seconds(root, inputs, "fsync"),
                                "as shipped": lambda: _run_seconds(root, inputs, "auto")}, rounds)
    shutil.rmtree(inputs)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks fsync_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=60, help="entries written per variant and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path("."), help="a folder on the disk to measure")
    parser.add_argument("--run", type=int, default=0, metavar="N", help="also time whole runs on N images")
    args = parser.parse_args(argv)
    record = harness.Record("fsync_cost", args)
    files, blob = _entry()
    found = harness.interleave({
        "record flushed, arrays not": lambda: _seconds_per_entry(args.dir, args.entries, files, blob, "record"),
        "fsync of each file and folder, then the record": lambda: _seconds_per_entry(args.dir, args.entries,
                                                                                     files, blob, "fsync"),
        "as shipped (one syncfs per flush where served)": lambda: _seconds_per_entry(args.dir, args.entries,
                                                                                     files, blob, "auto"),
    }, args.rounds)
    rows = [[name, "per entry", found.median(name) * 1000, found.ratio(name)] for name in found.names]
    if args.run:
        runs = _whole_runs(args.dir, args.run, args.rounds)
        rows += [[name, f"whole run of {args.run} images", runs.median(name) * 1000, runs.ratio(name)]
                 for name in runs.names]
        for name in ("fsync of each path", "as shipped"):
            extra = (runs.median(name) - runs.median("nothing flushed")) / args.run
            record.note(f"whole runs, {name}: {1000 * extra:.1f} ms more per image than nothing flushed")
    served = durable.syncfs_serves(str(args.dir), str(args.dir))
    record.note(f"syncfs {'serves' if served else 'does not serve'} the disk under {args.dir} here"
                + ("" if served else ": 'as shipped' fsyncs each path"))
    record.table(["writes", "unit", "ms", "ratio"], rows, ["", "", ".2f", ".2f"],
                 title=f"one entry: {len(files)} files, {sum(map(len, files.values())) / 1024:.0f} KiB, "
                       f"{args.entries} entries x {args.rounds} interleaved rounds, disk under {args.dir}")
    record.write()

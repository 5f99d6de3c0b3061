"""What making entries durable costs: an entry's files written with fsync (files and folders, then the record)
against the same writes without fsync, measured in the same run.

    python -m benchmarks fsync_cost --entries 60 --rounds 5 [--dir /path/on/the/disk/of/interest]
    python -m benchmarks fsync_cost --run 30 --rounds 3     # also whole runs: nuclei.segment()

Each entry is a real 256x256 RGB sample's files (`nuclei.store.layout.entry_files`: image, two label images,
measurements, about 20 files) plus its record (`durable.write_atomically`, fsynced in both variants, as before).
Rounds interleave the two variants so both see the same disk and machine load; the ratio is the median over
rounds of the seconds per entry with fsync over those without. With ``--run N``, whole in-process runs of the
shipped model on N 256x256 samples are timed the same way (fsync as shipped, and os.fsync made a no-op), so the
cost is also seen against everything else a run does. The cost depends on the disk (a laptop SSD, a network file
system and tmpfs differ by orders of magnitude): run it on the disk the store will live on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from nuclei.core.measure import COLUMN_NAMES, measure
from nuclei.io.synthetic import make_sample
from nuclei.store.durable import write_atomically, write_files
from nuclei.store.layout import entry_files
from nuclei.store.record import EntryRecord


def _entry() -> tuple[dict[str, bytes], bytes]:
    image, labels = make_sample((256, 256), n_nuclei=20, seed=1)
    table = measure(labels, image)
    record = EntryRecord(id="x", source="x.png", source_sha256="0" * 64, shape=(256, 256), channels=3,
                         n_nuclei=int(table.shape[0]), covered_fraction=float((labels > 0).mean()), mean_area=1.0,
                         model={"version": "bench@0"}, thresholds={})
    return entry_files(record, image, labels, table, COLUMN_NAMES), json.dumps(record.as_dict()).encode()


def _seconds_per_entry(root: Path, n: int, files: dict[str, bytes], blob: bytes, fsync: bool) -> float:
    folder = Path(tempfile.mkdtemp(dir=root))
    (folder / "images").mkdir()
    started = time.perf_counter()
    for i in range(n):
        write_files(str(folder / "images" / f"e{i}"), files, fsync=fsync)
        write_atomically(str(folder / "index" / f"e{i}.json"), blob)
    seconds = (time.perf_counter() - started) / n
    shutil.rmtree(folder)
    return seconds


def _run_seconds(root: Path, inputs: Path, fsync: bool) -> float:
    """Seconds of one in-process `nuclei.segment()` over ``inputs`` into a new store."""
    from nuclei.inference.run import segment

    store = Path(tempfile.mkdtemp(dir=root)) / "s.zarr"
    real = os.fsync
    if not fsync:
        os.fsync = lambda fd: None  # type: ignore[assignment]  # every fsync of the store: records too
    try:
        started = time.perf_counter()
        summary = segment([inputs], store)
        seconds = time.perf_counter() - started
    finally:
        os.fsync = real
    assert summary["failed"] == 0, summary
    shutil.rmtree(store.parent)
    return seconds


def _whole_runs(root: Path, n: int, rounds: int) -> harness.Comparison:
    from nuclei.io.images import write_png

    inputs = Path(tempfile.mkdtemp(dir=root))
    for i in range(n):
        write_png(inputs / f"img{i:03d}.png", make_sample((256, 256), n_nuclei=20, seed=i)[0])
    _run_seconds(root, inputs, True)  # warm: model files and imports in the page cache
    found = harness.interleave({"no fsync": lambda: _run_seconds(root, inputs, False),
                                "fsync as shipped": lambda: _run_seconds(root, inputs, True)}, rounds)
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
        "record fsynced, arrays not": lambda: _seconds_per_entry(args.dir, args.entries, files, blob, False),
        "files and folders fsynced, then the record": lambda: _seconds_per_entry(args.dir, args.entries, files,
                                                                                 blob, True),
    }, args.rounds)
    rows = [[name, "per entry", found.median(name) * 1000, found.ratio(name)] for name in found.names]
    if args.run:
        runs = _whole_runs(args.dir, args.run, args.rounds)
        rows += [[name, f"whole run of {args.run} images", runs.median(name) * 1000, runs.ratio(name)]
                 for name in runs.names]
        extra = (runs.median("fsync as shipped") - runs.median("no fsync")) / args.run
        record.note(f"whole runs: {1000 * extra:.1f} ms more per image with fsync")
    record.table(["writes", "unit", "ms", "ratio"], rows, ["", "", ".2f", ".2f"],
                 title=f"one entry: {len(files)} files, {sum(map(len, files.values())) / 1024:.0f} KiB, "
                       f"{args.entries} entries x {args.rounds} interleaved rounds, disk under {args.dir}")
    record.write()

"""A whole slide from real fields: time per megapixel against the small-image path, peak memory per process, and
the slide's nuclei against the same fields segmented one by one.

    python -m benchmarks slide                      # about 100 Mpx, --workers 2
    python -m benchmarks slide --mpx 520 --workers 1 2   # the issue's >= 500 Mpx case (1 GB to build)
    python -m benchmarks slide --pairs 3                 # fields and slide timed 3 times, alternating

The slide is a grid of BBBC039 fields (520 x 696, 16-bit, as the microscope wrote them) with 32 px gaps of
background between them, written as a tiled, zlib-compressed OME-TIFF (the layout slide scanners write). Both
runs are the CLI as a user runs it (`nuclei segment ... --workers N`), whole process, wall clock, so start-up is
in both; the fields run segments the unique fields once each as PNG files. Peak RSS is polled (0.2 s) for the
CLI process and each Dask worker. AP@0.5 compares, cell by cell, the slide's labels with the field's own run
(the fields run is the reference: any block seam, duplicate or lost nucleus shows as a miss).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil  # the dev extra
import tifffile

from benchmarks import harness
from nuclei.io.images import image_size

FIELDS = harness.BBBC039 / "images"
TRUTH = harness.BBBC039 / "labels"
NUCLEI = [sys.executable, "-m", "nuclei.cli.main"]
GAP = 32


def fields() -> list[Path]:
    found = sorted(FIELDS.glob("*.png"))
    if not found:
        sys.exit(f"{FIELDS}: no fields (developer data)")
    return found


def build_slide(paths: list[Path], mpx: float, out: Path) -> list[tuple[int, int, str]]:
    """Write the slide; returns each cell's (y, x, field id)."""
    from nuclei.io.images import read_raw

    images = {p.stem: read_raw(p) for p in paths}
    h, w = next(iter(images.values())).shape
    cells = max(1, round(mpx * 1e6 / ((h + GAP) * (w + GAP))))
    cols = max(1, round(np.sqrt(cells * (h + GAP) / (w + GAP))))
    rows = -(-cells // cols)
    background = int(np.median([np.percentile(i, 5) for i in images.values()]))
    slide = np.full((rows * (h + GAP) + GAP, cols * (w + GAP) + GAP), background, np.uint16)
    layout, ids = [], list(images)
    for index in range(rows * cols):
        y, x = GAP + (index // cols) * (h + GAP), GAP + (index % cols) * (w + GAP)
        slide[y:y + h, x:x + w] = images[ids[index % len(ids)]]
        layout.append((y, x, ids[index % len(ids)]))
    tifffile.imwrite(out, slide, tile=(512, 512), compression="zlib", bigtiff=True, ome=True,
                     metadata={"axes": "YX"})
    return layout


def timed_cli(args: list[str], kill_after: float | None = None, summary: bool = True
              ) -> tuple[float, dict[str, float], dict]:
    """Wall seconds, peak RSS (MB) per process (the CLI and each worker), and the --json summary. With
    ``kill_after`` the CLI and its workers are SIGKILLed after that many seconds (a crash, an OOM kill)."""
    started = time.perf_counter()
    argv = [*NUCLEI, *args, *(["--json"] if summary else [])]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             start_new_session=True)
    peaks: dict[int, tuple[str, float]] = {}
    root = psutil.Process(child.pid)
    while child.poll() is None:
        if kill_after is not None and time.perf_counter() - started > kill_after:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            break
        try:
            for proc in [root, *root.children(recursive=True)]:
                name = "cli" if proc.pid == child.pid else f"worker {proc.pid}"
                rss = proc.memory_info().rss / 2**20
                peaks[proc.pid] = (name, max(rss, peaks.get(proc.pid, ("", 0.0))[1]))
        except psutil.Error:
            pass
        time.sleep(0.2)
    out = child.stdout.read() if child.stdout else ""
    seconds = time.perf_counter() - started
    summary = json.loads(out[out.index("{"):]) if "{" in out else {}
    return seconds, {name: round(mb) for name, mb in peaks.values() if mb > 50}, summary


def kill_and_rerun(work: Path, workers: int, share: float, report: dict, options: list[str]) -> dict:
    """A run of the slide killed (SIGKILL, CLI and workers) at ``share`` of the first run's time, then run
    again: it must finish with the first run's nuclei, and `nuclei check` must find the store whole."""
    store = work / "slide-killed.zarr"
    shutil.rmtree(store, ignore_errors=True)
    command = ["segment", str(work / "slide.ome.tif"), "--store", str(store), "--workers", str(workers), *options]
    after = share * report[f"slide_{workers}w"]["seconds"]
    timed_cli(command, kill_after=after)
    seconds, peaks, summary = timed_cli(command)
    checked = subprocess.run([*NUCLEI, "check", str(store)], capture_output=True, text=True)
    return {"killed_after_s": round(after, 1), "rerun_seconds": round(seconds, 1), "rerun_peak_rss_mb": peaks,
            "nuclei": summary.get("nuclei"), "first_run_nuclei": report[f"slide_{workers}w"]["nuclei"],
            "check_exit": checked.returncode, "check": checked.stdout.strip().splitlines()[-1:]}


def slide_ap(store: Path, field_store: Path, layout: list[tuple[int, int, str]]) -> dict[str, float]:
    """AP@0.5, summed over cells: the slide's nuclei against each field's own run (any seam, duplicate or lost
    nucleus shows), and each of the two against the fields' ground truth (what a lab gets either way)."""
    import zarr

    from nuclei import open_store
    from nuclei.io.images import read_labels

    fields_store = open_store(field_store)
    labels = zarr.open_group(str(store / "images" / "slide.ome"), mode="r")["labels/nuclei/s0"]
    counts = {name: np.zeros(3, np.int64) for name in ("slide_vs_fields", "slide_vs_truth", "fields_vs_truth")}
    runs: dict[str, np.ndarray] = {}
    truths: dict[str, np.ndarray] = {}
    for y, x, field in layout:
        run = runs.setdefault(field, fields_store.labels(field))
        truth = truths.setdefault(field, read_labels(TRUTH / f"{field}.png"))
        ours = np.asarray(labels[y:y + run.shape[0], x:x + run.shape[1]])
        for name, reference, labelled in (("slide_vs_fields", run, ours), ("slide_vs_truth", truth, ours),
                                          ("fields_vs_truth", truth, run)):
            counts[name] += _tp_fp_fn(reference, labelled)
    return {name: round(float(tp / max(1, tp + fp + fn)), 4) for name, (tp, fp, fn) in counts.items()}


def _tp_fp_fn(reference: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    from nuclei.core.metrics import matching

    found = matching(reference, labelled, 0.5)
    return np.array([found.tp, found.fp, found.fn])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks slide", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mpx", type=float, default=100.0, help="slide size in megapixels")
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="LocalCluster sizes to time the slide on")
    parser.add_argument("--slide-pixels", type=int, help="passed on (default: nuclei's, 64 Mpx)")
    parser.add_argument("--block-size", type=int, help="passed on (default: nuclei's)")
    parser.add_argument("--pairs", type=int, default=1, help="time fields and slide this many times, alternating")
    parser.add_argument("--rescore", action="store_true", help="only score what --keep FOLDER holds (no runs)")
    parser.add_argument("--kill-at", type=float, help="also: kill a run of the slide at this share of the first "
                        "run's time, run it again, and check it finished with the first run's nuclei")
    parser.add_argument("--export", action="store_true", help="also: time `nuclei export --measurements` of the "
                        "slide's nuclei to CSV, with its peak RSS")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)
    record = harness.Record("slide", args)
    work = args.keep or Path(tempfile.mkdtemp(prefix="nuclei-slide-"))
    work.mkdir(parents=True, exist_ok=True)
    paths = fields()
    small = work / "fields"
    small.mkdir(exist_ok=True)
    for path in paths:
        if not (small / path.name).exists():
            shutil.copy(path, small / path.name)
    if args.rescore:
        layout = build_slide(paths, args.mpx, work / "rescored.ome.tif")  # the same grid; the file is not used
        print(json.dumps(slide_ap(work / f"slide-{max(args.workers)}.zarr", work / "fields.zarr", layout)))
        return
    layout = build_slide(paths, args.mpx, work / "slide.ome.tif")
    slide_mpx = np.prod(tifffile.TiffFile(work / "slide.ome.tif").series[0].shape) / 1e6
    fields_mpx = sum(int(np.prod(image_size(p.read_bytes(), p))) for p in paths) / 1e6
    report: dict = {"slide_mpx": round(float(slide_mpx), 1), "fields": len(paths), "fields_mpx": round(fields_mpx, 1)}
    seconds, peaks, _ = timed_cli(["segment", str(small), "--store", str(work / "fields.zarr"), "--workers",
                                   str(max(args.workers))])
    report["fields_s_per_mpx"] = round(seconds / fields_mpx, 3)
    report["fields_peak_rss_mb"] = peaks
    print(json.dumps(report), flush=True)  # as measured: a later failure (scoring) loses nothing
    options = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
               if k in ("slide_pixels", "block_size") and v]
    for workers in args.workers:
        store = work / f"slide-{workers}.zarr"
        shutil.rmtree(store, ignore_errors=True)
        seconds, peaks, summary = timed_cli(["segment", str(work / "slide.ome.tif"), "--store", str(store),
                                             "--workers", str(workers), *options])
        report[f"slide_{workers}w"] = {"seconds": round(seconds, 1), "s_per_mpx": round(seconds / slide_mpx, 3),
                                       "ratio_to_fields": round(seconds / slide_mpx / report["fields_s_per_mpx"], 2),
                                       "peak_rss_mb": peaks, "nuclei": summary.get("nuclei"),
                                       "failed": summary.get("failed")}
        print(json.dumps(report[f"slide_{workers}w"]), flush=True)
    first = work / f"slide-{max(args.workers)}.zarr"
    if args.kill_at:
        report["kill_and_rerun"] = kill_and_rerun(work, max(args.workers), args.kill_at, report, options)
        print(json.dumps(report["kill_and_rerun"]), flush=True)
    if args.export:
        seconds, peaks, _ = timed_cli(["query", str(first), "export", "--measurements", str(work / "nuclei.csv")],
                                      summary=False)
        with (work / "nuclei.csv").open() as rows:
            n_rows = sum(1 for _ in rows) - 1
        report["export_csv"] = {"seconds": round(seconds, 1), "peak_rss_mb": peaks, "rows": n_rows,
                                "mb": round((work / "nuclei.csv").stat().st_size / 2**20, 1)}
        print(json.dumps(report["export_csv"]), flush=True)
    ratios = [report[f"slide_{max(args.workers)}w"]["ratio_to_fields"]]
    for _ in range(args.pairs - 1):  # fields, then slide, again: on a shared machine one pair is one sample
        fields_s = timed_cli(["segment", str(small), "--store", str(work / "fields-again.zarr"), "--workers",
                              str(max(args.workers)), "--overwrite"])[0] / fields_mpx
        slide_s = timed_cli(["segment", str(work / "slide.ome.tif"), "--store", str(work / "slide-again.zarr"),
                             "--workers", str(max(args.workers)), "--overwrite", *options])[0] / slide_mpx
        ratios.append(round(slide_s / fields_s, 2))
        print(json.dumps({"fields_s_per_mpx": round(fields_s, 3), "slide_s_per_mpx": round(slide_s, 3),
                          "ratio": ratios[-1]}), flush=True)
    report["ratios"] = {"each_pair": ratios, "median": float(np.median(ratios))}
    report["quality"] = slide_ap(work / f"slide-{max(args.workers)}.zarr", work / "fields.zarr", layout)
    for key, value in report.items():
        record.figure(key, value)
    record.table(["run", "s/Mpx", "ratio to the fields one by one", "peak RSS MB per process", "nuclei"],
                 [[f"fields one by one ({fields_mpx:.1f} Mpx, baseline)", report["fields_s_per_mpx"], 1.0,
                   _peaks(report["fields_peak_rss_mb"]), None],
                  *([f"the slide ({slide_mpx:.1f} Mpx), --workers {w}", report[f"slide_{w}w"]["s_per_mpx"],
                     report[f"slide_{w}w"]["ratio_to_fields"], _peaks(report[f"slide_{w}w"]["peak_rss_mb"]),
                     report[f"slide_{w}w"]["nuclei"]] for w in args.workers)],
                 ["", ".3f", ".2f", "", ",d"], title=f"whole `nuclei segment` processes; {args.pairs} pair(s), "
                 f"each pair's ratio: {', '.join(map(str, ratios))} (median {report['ratios']['median']:.2f})")
    record.table(["AP@0.5 summed over cells", "value"], [[k, v] for k, v in report["quality"].items()],
                 ["", ".4f"])
    if not args.keep:
        shutil.rmtree(work)
    record.write()


def _peaks(peaks: dict[str, float]) -> str:
    return ", ".join(f"{name} {mb:,.0f}" for name, mb in peaks.items())

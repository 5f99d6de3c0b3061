"""What ONNX Runtime offers on this CPU: graph optimisation levels, thread layouts, int8 quantisation.

    python -m benchmarks ort_options                       # the shipped model, 256x256 DSB images
    python -m benchmarks ort_options --quantized-out runs/int8   # keep the int8 model directory

Every figure is a ratio against the default layout measured in the same run (one session, all cores,
ORT_ENABLE_ALL), each configuration's best of interleaved rounds. Quantisation is kept only if it is faster and
its DSB2018 score on the model's validation split is within 0.005 of float32.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks import harness
from nuclei.modeldir import default_model_path

DEV = harness.DEV
BASELINE = "1 session x all cores, ORT_ENABLE_ALL (default)"
LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def load_images(limit: int) -> list[np.ndarray]:
    from nuclei.io.images import read_image

    return harness.dev_images(limit, read=lambda path: read_image(path)[None])


def session(onnx_path: Path, threads: int, level: str = "all") -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = LEVELS[level]
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def seconds_per_image(onnx_path: Path, images: list[np.ndarray], threads: int, level: str = "all") -> float:
    s = session(onnx_path, threads, level)
    name = s.get_inputs()[0].name
    s.run(None, {name: images[0]})
    started = time.perf_counter()
    for image in images:
        s.run(None, {name: image})
    return (time.perf_counter() - started) / len(images)


def _worker(args: tuple[str, int, int]) -> float:
    onnx_path, limit, threads = args
    return seconds_per_image(Path(onnx_path), load_images(limit), threads)


def processes_layout(onnx_path: Path, limit: int, processes: int, threads: int) -> float:
    """Seconds per image when `processes` single sessions of `threads` threads run side by side."""
    with mp.get_context("spawn").Pool(processes) as pool:
        started = time.perf_counter()
        pool.map(_worker, [(str(onnx_path), limit, threads)] * processes)
        return (time.perf_counter() - started) / (limit * processes)


def quantize(model_dir: Path, out_dir: Path, calibration: int) -> Path:
    """A copy of the model directory with model.int8.onnx, quantised as the train flow does."""
    from nuclei.io.images import read_image
    from nuclei.training.quantize import quantize_int8

    shutil.copytree(model_dir, out_dir, dirs_exist_ok=True)
    (out_dir / "model.int8.onnx").unlink(missing_ok=True)
    train_ids = json.loads((model_dir / "data.json").read_text())["train_ids"][:calibration]
    quantize_int8(out_dir, [read_image(DEV / "images" / f"{i}.png") for i in train_ids], multiple=16)
    return out_dir


def dsb_score(model_dir: Path, int8: bool) -> float:
    from nuclei.evaluation import evaluate_against

    with tempfile.TemporaryDirectory() as out:
        report, _ = evaluate_against(DEV, out, model=model_dir, split="validation", progress=False, int8=int8)
    return report.overall()["dsb_score"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks ort_options", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quantized-out", help="keep the int8 model directory here")
    args = parser.parse_args(argv)
    record = harness.Record("ort_options", args)
    model_dir = Path(args.model)
    onnx_path = model_dir / "model.onnx"
    cores = harness.cores()
    images = load_images(args.limit)
    out = Path(args.quantized_out) if args.quantized_out else Path(tempfile.mkdtemp(prefix="nuclei-int8-"))
    quantize(model_dir, out, args.calibration)

    # Interleaved rounds, best of each: a shared machine's noise hits every configuration alike.
    variants = {BASELINE: lambda: seconds_per_image(onnx_path, images, cores, "all")}
    for level in ("disable", "basic", "extended"):
        variants[f"graph optimisation {level}"] = lambda level=level: seconds_per_image(onnx_path, images, cores,
                                                                                        level)
    for processes, threads in ((1, cores), (cores, 1)):
        variants[f"{processes} process(es) x {threads} thread(s)"] = (
            lambda p=processes, t=threads: processes_layout(onnx_path, args.limit, p, t))
    int8 = f"int8 static QDQ (per-channel, {args.calibration} calibration images)"
    variants[int8] = lambda: seconds_per_image(out / "model.int8.onnx", images, cores)
    found = harness.interleave(variants, args.rounds, baseline=BASELINE)
    float_dsb, int8_dsb = dsb_score(out, int8=False), dsb_score(out, int8=True)
    keep = found.best(int8) < found.best(BASELINE) and abs(int8_dsb - float_dsb) <= 0.005
    record.table(["configuration", "images/s", "vs default"],
                 [[name, 1 / found.best(name), 1 / found.best_ratio(name)] for name in found.names],
                 ["", ".1f", ".2f"], title=f"{len(images)} DSB2018 256x256 images, best of {args.rounds} "
                 "interleaved rounds")
    record.note(f"int8 validation DSB {int8_dsb:.4f} against float32 {float_dsb:.4f}: "
                f"{'keep' if keep else 'do not keep'} (kept only if faster and within 0.005)")
    if not args.quantized_out:
        shutil.rmtree(out, ignore_errors=True)
    record.write()

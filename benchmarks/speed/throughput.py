"""Throughput: the `segment` flow against a plain ONNX Runtime loop and a Keras `model.predict` loop.

    python -m benchmarks throughput --model runs/dsb2018-stage1/dsb2018-unet   # a folder with model.keras
    python -m benchmarks throughput                  # every 256x256 image, shipped model (no Keras)
    python -m benchmarks throughput --size mixed --limit 200
    python -m benchmarks throughput --providers CUDAExecutionProvider CPUExecutionProvider  # on a GPU

Records images/s of each and the ratios, measured in the same run (machines here are shared and noisy).
The flow runs twice (a small and the full set) so its fixed start-up cost is shown apart from per-image cost.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from nuclei.modeldir import default_model_path


def time_ort_loop(model: str, images: list, providers: list[str]) -> float:
    """The baseline: one plain InferenceSession (all cores, default options), padded images, one at a time."""
    import numpy as np
    import onnxruntime as ort

    from nuclei.core.tiling import pad_to_multiple

    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    session = ort.InferenceSession(str(Path(model) / "model.onnx"), options, providers=providers)
    name = session.get_inputs()[0].name
    session.run(None, {name: pad_to_multiple(images[0], 16)[None]})  # session start-up is not per-image work
    started = time.perf_counter()
    for image in images:
        session.run(None, {name: np.ascontiguousarray(pad_to_multiple(image, 16)[None])})
    return time.perf_counter() - started


def time_keras_loop(model: str, images: list) -> float | None:
    if not (Path(model) / "model.keras").is_file():
        print(f"no {model}/model.keras (the shipped model has only ONNX): give --model a training output folder")
        return None
    try:
        import keras
    except ImportError:
        return None
    from nuclei.core.tiling import pad_to_multiple

    net = keras.saving.load_model(Path(model) / "model.keras", compile=False)
    net.predict(pad_to_multiple(images[0], 16)[None], verbose=0)
    started = time.perf_counter()
    for image in images:
        net.predict(pad_to_multiple(image, 16)[None], verbose=0)
    return time.perf_counter() - started


def time_flow(model: str, paths: list[Path], workdir: Path, providers: list[str], workers: int | None,
              int8: bool = True) -> float:
    from flows.segment import segment

    inputs = workdir / f"in{len(paths)}"
    inputs.mkdir()
    for p in paths:
        os.symlink(p, inputs / p.name)
    started = time.perf_counter()
    summary = segment(inputs=[str(inputs)], store=str(workdir / f"s{len(paths)}.zarr"), model=model,
                      providers=providers, n_workers=workers, int8=int8)
    elapsed = time.perf_counter() - started
    assert summary["done"] == len(paths), summary
    return elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--limit", type=int, default=10_000, help="at most this many images")
    parser.add_argument("--size", default="256x256", help="HxW of the images to use, or 'mixed'")
    parser.add_argument("--providers", nargs="+", default=["CPUExecutionProvider"])
    parser.add_argument("--workers", type=int, help="flow worker processes (default: one per core)")
    parser.add_argument("--float32", action="store_true", help="the flow runs float32 even if the model has int8")
    parser.add_argument("--no-keras", action="store_true", help="skip the Keras baseline")
    args = parser.parse_args(argv)
    record = harness.Record("throughput", args)
    from nuclei.io.images import read_image

    paths = harness.dev_paths(args.size, args.limit)
    images = [read_image(p) for p in paths]
    n = len(images)
    ort_s = time_ort_loop(args.model, images, args.providers)
    keras_s = None if args.no_keras else time_keras_loop(args.model, images)
    workdir = Path(tempfile.mkdtemp(prefix="nuclei-bench-"))
    try:
        small = max(8, n // 8)
        # warm-up: Prefect's temporary server, imports, caches
        time_flow(args.model, paths[:4], workdir, args.providers, args.workers, not args.float32)
        flow_small = time_flow(args.model, paths[:small], workdir, args.providers, args.workers, not args.float32)
        flow_full = time_flow(args.model, paths, workdir, args.providers, args.workers, not args.float32)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    per_image = (flow_full - flow_small) / (n - small)
    startup = flow_full - per_image * n
    precision = "float32" if args.float32 or not (Path(args.model) / "model.int8.onnx").is_file() else "int8 on CPU"
    ort_per_image = ort_s / n
    columns = ["set", "(b) ORT loop img/s", "(a) flow end to end img/s", "(a) flow per image img/s", "start-up s",
               "a/b per image", "a/b end to end"]
    row = [f"{n} images {args.size}, flow {precision}, {args.providers[0]}", n / ort_s, n / flow_full,
           1 / per_image, startup, ort_per_image / per_image, ort_s / flow_full]
    formats = ["", ".1f", ".1f", ".1f", ".1f", ".2f", ".2f"]
    if keras_s:
        columns[2:2] = ["(c) Keras img/s"]
        row[2:2] = [n / keras_s]
        formats[2:2] = [".1f"]
        columns += ["a/c per image", "a/c end to end"]
        row += [keras_s / n / per_image, keras_s / flow_full]
        formats += [".2f", ".2f"]
    record.figure("per_image_vs_ort", round(ort_per_image / per_image, 2))
    record.table(columns, [row], formats, title=f"{harness.cores()} cores; baselines float32, one run each "
                 "(the flow: a warm-up, 1/8 of the set, the whole set; start-up is the intercept)")
    record.write()

"""Throughput: the `segment` flow against a plain ONNX Runtime loop and a Keras `model.predict` loop.

    .venv/bin/python benchmarks/throughput.py --model runs/dsb2018-stage1/dsb2018-unet   # a folder with model.keras
    .venv/bin/python benchmarks/throughput.py                  # every 256x256 image, shipped model (no Keras)
    .venv/bin/python benchmarks/throughput.py --size mixed --limit 200
    .venv/bin/python benchmarks/throughput.py --providers CUDAExecutionProvider CPUExecutionProvider  # on a GPU

Prints images/s of each and the ratios, measured in the same run (machines here are shared and noisy).
The flow runs twice (a small and the full set) so its fixed start-up cost is shown apart from per-image cost.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import tempfile
import time
from pathlib import Path

from nuclei.modeldir import default_model_path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018-dev"


def pick_images(limit: int, size: str) -> list[Path]:
    with open(DEV / "manifest.csv") as handle:
        rows = list(csv.DictReader(handle))
    if size != "mixed":
        rows = [r for r in rows if f"{r['height']}x{r['width']}" == size]
    return [DEV / "images" / f"{r['id']}.png" for r in rows[:limit]]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--limit", type=int, default=10_000, help="at most this many images")
    parser.add_argument("--size", default="256x256", help="HxW of the images to use, or 'mixed'")
    parser.add_argument("--providers", nargs="+", default=["CPUExecutionProvider"])
    parser.add_argument("--workers", type=int, help="flow worker processes (default: one per core)")
    parser.add_argument("--float32", action="store_true", help="the flow runs float32 even if the model has int8")
    parser.add_argument("--no-keras", action="store_true", help="skip the Keras baseline")
    args = parser.parse_args()
    if not DEV.is_dir():
        raise SystemExit(f"{DEV} is absent: this benchmark needs the DSB2018 development set")
    from nuclei.io.images import read_image

    paths = pick_images(args.limit, args.size)
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
    print(f"{n} images ({args.size}), {len(os.sched_getaffinity(0))} cores, providers {args.providers}; "
          f"flow model: {precision}; baselines: float32")
    print(f"(b) plain ORT loop:      {n / ort_s:8.2f} images/s")
    if keras_s:
        print(f"(c) Keras predict loop:  {n / keras_s:8.2f} images/s")
    print(f"(a) segment flow:        {n / flow_full:8.2f} images/s end to end; per image {1 / per_image:.2f} images/s "
          f"after a fixed start-up of {startup:.1f} s")
    print(f"a/b per-image: {ort_s / n / per_image:.2f}   a/b end to end: {ort_s / flow_full:.2f}")
    if keras_s:
        print(f"a/c per-image: {keras_s / n / per_image:.2f}   a/c end to end: {keras_s / flow_full:.2f}")


if __name__ == "__main__":
    main()

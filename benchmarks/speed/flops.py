"""Compute bound: the model's FLOPs per 256 x 256 image, and the share of this CPU's peak the ORT loop reaches.

    python -m benchmarks flops

FLOPs are counted from the ONNX graph after shape inference at 1 x 256 x 256 x 3: 2 x multiply-adds of every
Conv and ConvTranspose (the rest, BatchNorm folded, ReLU, concat and sigmoid, is under 1%). The CPU's
reachable peak is measured in the same run: float32 matrix multiplication (numpy's BLAS) on all cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import shape_inference

from benchmarks import harness
from nuclei.modeldir import default_model_path


def conv_flops(model_path: Path, size: int = 256) -> float:
    model = onnx.load(str(model_path))
    graph_input = model.graph.input[0]
    for dim, value in zip(graph_input.type.tensor_type.shape.dim, (1, size, size, 3), strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = value
    model = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.output, *model.graph.input]}
    weights = {w.name: list(w.dims) for w in model.graph.initializer}
    total = 0.0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        kernel = weights.get(node.input[1])
        out = shapes.get(node.output[0])
        if not kernel or not out or 0 in out:
            raise SystemExit(f"no shape for {node.name}: count FLOPs with a model exported at a fixed size")
        if node.op_type == "Conv":  # kernel (Cout, Cin/group, kh, kw): every output pixel sums a kernel
            macs = np.prod(out) * np.prod(kernel[1:])
        else:  # ConvTranspose: kernel (Cin, Cout/group, kh, kw): every input pixel scatters a kernel
            macs = np.prod(shapes[node.input[0]]) * np.prod(kernel[1:])
        total += 2.0 * float(macs)
    return total


def matmul_peak(threads: int, n: int = 2048, repeats: int = 10) -> float:
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = a.T.copy()
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2.0 * n**3 * repeats / (time.perf_counter() - started)


def ort_rate(model_path: Path, threads: int, n: int = 60) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 256, 256, 3), dtype=np.float32)
    session.run(None, {"image": x})
    started = time.perf_counter()
    for _ in range(n):
        session.run(None, {"image": x})
    return n / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks flops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(default_model_path()))
    args = parser.parse_args(argv)
    record = harness.Record("flops", args)
    onnx_path = Path(args.model) / "model.onnx"
    cores = harness.cores()
    flops = conv_flops(onnx_path)
    peak = matmul_peak(cores)
    rate = ort_rate(onnx_path, cores)
    record.figure("gflop_per_image", round(flops / 1e9, 2))
    record.table(["what", "GFLOP/s", "share of the matmul peak"],
                 [[f"float32 matmul 2048^2, {cores} cores (the reachable peak, baseline)", peak / 1e9, 1.0],
                  [f"ORT loop, float32, {rate:.1f} images/s", rate * flops / 1e9, rate * flops / peak]],
                 ["", ".1f", ".0%"],
                 title=f"model: {flops / 1e9:.2f} GFLOP per 256 x 256 image (convolutions, 2 x multiply-adds)")
    record.write()

"""Keras -> ONNX with tf2onnx, and the parity check that the ONNX model gives the Keras model's outputs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

from nuclei.config import ONNX_OPSET
from nuclei.core.tiling import pad_to_multiple
from nuclei.errors import ModelError

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
PARITY_SIZES = ((256, 256), (200, 328), (97, 131))  # includes sizes that are not multiples of 16


def export_onnx(model: keras.Model, path: Path, opset: int = ONNX_OPSET) -> Path:
    """Write ``model`` as ONNX: input ``image`` NHWC float32 (dynamic batch, H, W), output ``mask``."""
    spec = [tf.TensorSpec((None, None, None, 3), tf.float32, name="image")]

    @tf.function(input_signature=spec)
    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"mask": model(image, training=False)}

    tf2onnx.convert.from_function(serve, input_signature=spec, opset=opset, output_path=str(path))
    log.info("exported %s (opset %d)", path, opset)
    return path


def parity_check(
    model: keras.Model,
    onnx_path: Path,
    multiple: int,
    sizes: Sequence[tuple[int, int]] = PARITY_SIZES,
    seed: int = 0,
) -> float:
    """Max |ONNX - Keras| over random images of several sizes; raises ModelError above PARITY_TOLERANCE."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst = 0.0
    for height, width in sizes:
        image = pad_to_multiple(rng.random((height, width, 3), dtype=np.float32), multiple)[None]
        expected = np.asarray(model(image, training=False))
        got = session.run(["mask"], {"image": image})[0]
        worst = max(worst, float(np.abs(expected - got).max()))
    if worst > PARITY_TOLERANCE:
        raise ModelError(f"{onnx_path}: ONNX output differs from Keras by {worst:.2e} > {PARITY_TOLERANCE}")
    log.info("ONNX parity: max |onnx - keras| = %.2e over sizes %s", worst, list(sizes))
    return worst

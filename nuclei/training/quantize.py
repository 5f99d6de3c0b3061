"""int8 quantisation of an exported model, kept only when it is as good as float32 on the validation split.

Static QDQ quantisation (per-channel int8 weights, uint8 activations calibrated on training images) runs
about 1.6x faster than float32 with ONNX Runtime on CPUs with AVX-512 VNNI (`python -m benchmarks ort_options`).
Inference picks model.int8.onnx on CPU when the model directory has one (`Engine.precision`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from nuclei.core.tiling import pad_to_multiple
from nuclei.modeldir import INT8_FILE

log = logging.getLogger(__name__)

DSB_TOLERANCE = 0.005  # the int8 model is kept if its validation DSB score is within this of float32's


class _Calibration:
    """ONNX Runtime's calibration reader: one padded image at a time."""

    def __init__(self, images: Sequence[np.ndarray], multiple: int) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = (
            {"image": pad_to_multiple(np.asarray(image, np.float32), multiple)[None]} for image in images
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_int8(model_dir: Path, calibration: Sequence[np.ndarray], multiple: int) -> Path:
    """Write MODEL_DIR/model.int8.onnx from model.onnx, calibrated on ``calibration`` images."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = model_dir / "model.prepared.onnx"
    target = model_dir / INT8_FILE
    try:
        quant_pre_process(str(model_dir / "model.onnx"), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(target), _Calibration(calibration, multiple),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    finally:
        prepared.unlink(missing_ok=True)
    return target

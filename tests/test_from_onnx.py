"""Fine-tuning a model shipped as ONNX only (the stained-tissue model): its weights loaded back into Keras (real
TensorFlow and ONNX Runtime) give the ONNX model's outputs, in training mode too, and stay usable for training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from nuclei.config import TrainConfig
from nuclei.io.datasets import load_dataset
from nuclei.modeldir import SHIPPED_MODELS, STAINED_MODEL_NAME
from nuclei.training.finetune import finetune_config, starting_model
from tests.conftest import SAMPLES

pytestmark = pytest.mark.slow

STAINED = SHIPPED_MODELS / STAINED_MODEL_NAME


def _onnx_output(image: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(STAINED / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: image})[0]


def _config(**changes: object) -> TrainConfig:
    return finetune_config(STAINED, [str(SAMPLES)], "lab", "models", 1.0, 0).model_copy(update=changes)


def test_weights_from_onnx_give_its_outputs_and_train() -> None:
    import keras
    from keras import layers

    from nuclei.training.model import build_model

    image = np.random.default_rng(0).random((2, 96, 128, 3), dtype=np.float32)
    expected = _onnx_output(image)
    model = build_model(_config(precision="float32"))
    assert not (STAINED / "model.keras").exists()  # the weights really came from model.onnx
    np.testing.assert_allclose(model.predict(image, verbose=0), expected, atol=1e-4)
    # Frozen batch norm: training mode computes what inference does, so the first steps start from the model.
    np.testing.assert_allclose(model(image, training=True).numpy(), expected, atol=1e-4)

    norms = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    assert norms and not any(layer.trainable for layer in norms)
    before = [w.copy() for w in norms[0].get_weights()], model.layers[1].get_weights()[0].copy()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    model.fit(image, (expected > 0.5).astype(np.float32), epochs=1, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before[0], norms[0].get_weights(), strict=True))
    assert not np.array_equal(before[1], model.layers[1].get_weights()[0])  # the convolutions learn

    mixed = build_model(_config(precision="mixed_bfloat16"))
    assert not any(layer.trainable for layer in mixed.layers if isinstance(layer, layers.BatchNormalization))
    np.testing.assert_allclose(mixed.predict(image, verbose=0), expected, atol=0.05)  # bfloat16 arithmetic


def test_colour_tissue_starts_from_the_stained_model_with_its_own_recipe(tmp_path: Path) -> None:
    manifest = {row.split(",")[0]: row.split(",")[1] for row in (SAMPLES / "manifest.csv").read_text().splitlines()}
    colour = tmp_path / "colour"
    for sub in ("images", "labels"):
        (colour / sub).mkdir(parents=True)
        for name, category in manifest.items():
            if category == "color_bright":
                shutil.copy(SAMPLES / sub / f"{name}.png", colour / sub)
    samples = load_dataset(colour, progress=False).samples
    assert len(samples) == 3 and starting_model(samples) == STAINED
    grey = load_dataset(SAMPLES, progress=False).samples
    assert starting_model(grey).name == "nuclei-generalist"

    config = _config()
    # the stained model scaled by the dtype's range and never saw per-nucleus brightness: so does its fine-tune
    assert config.normalization.kind == "dtype_range" and config.nucleus_brightness == 0.0
    assert config.include == [] and config.validation_zooms == [1.0]  # the lab's images, not the parent's filter
    recipe = json.loads((STAINED / "config.json").read_text())
    assert recipe["normalization"]["kind"] == "dtype_range" and recipe["stain_jitter"] == config.stain_jitter > 0


def test_an_onnx_file_of_another_architecture_is_refused_by_name(tmp_path: Path) -> None:
    from nuclei.training.from_onnx import load_onnx_weights
    from nuclei.training.model import unet

    with pytest.raises(ValueError, match=r"model\.onnx: kernel"):
        load_onnx_weights(unet(2, 4, 8), STAINED / "model.onnx")
    with pytest.raises(ValueError, match="convolutions, the architecture has"):
        load_onnx_weights(unet(2, 3, 16), STAINED / "model.onnx")

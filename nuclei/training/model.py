"""Keras 3 U-Nets for nuclei: a plain fully convolutional U-Net and the TF tutorial's MobileNetV2 U-Net.

Training-side only (imports Keras); inference runs the exported ONNX model.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
from keras import layers

from nuclei.config import TrainConfig
from nuclei.errors import RequestError
from nuclei.training.from_onnx import load_onnx_weights

ARCHITECTURE_FIELDS = ("architecture", "depth", "base_filters", "instance_channel")


def build_model(config: TrainConfig) -> keras.Model:
    """The architecture the config names, with a sigmoid output of one channel per target, computing in the
    config's ``precision`` (weights are float32 either way; the output layer always computes in float32).

    With ``init_from`` the weights of that model directory's model.keras are the starting point (or, for a
    plain U-Net shipped as ONNX only, its model.onnx: `from_onnx`); its architecture must be the one the config
    names, so that config.json keeps describing the model.
    """
    initial = _initial_model(Path(config.init_from), config) if config.init_from else None
    if initial is not None and config.precision == "float32":
        return initial
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(config.precision)
    try:
        model = _architecture(config)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    if initial is not None:
        model.set_weights(initial.get_weights())
        for layer, source in zip(model.layers, initial.layers, strict=True):
            layer.trainable = source.trainable  # frozen batch norm (`from_onnx`) stays frozen
    return model


def as_float32(model: keras.Model, config: TrainConfig) -> keras.Model:
    """The same weights in a float32 model: what is saved and exported after mixed-precision training."""
    if config.precision == "float32":
        return model
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = _architecture(config)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    copy.set_weights(model.get_weights())
    return copy


def _architecture(config: TrainConfig) -> keras.Model:
    if config.architecture == "mobilenet_unet":
        return mobilenet_unet(len(config.channels), config.encoder_weights)
    return unet(len(config.channels), config.depth, config.base_filters)


def _initial_model(model_dir: Path, config: TrainConfig) -> keras.Model:
    source, exported = model_dir / "model.keras", model_dir / "model.onnx"
    if not source.is_file() and not (exported.is_file() and config.architecture == "unet"):
        raise RequestError(f"{source}: init_from needs a model directory with model.keras (or a U-Net's model.onnx)")
    previous = json.loads((model_dir / "config.json").read_text())
    differ = {k: (previous.get(k), getattr(config, k)) for k in ARCHITECTURE_FIELDS
              if previous.get(k) != getattr(config, k)}
    if differ:
        raise RequestError(f"{model_dir}: architecture differs from the requested one (theirs, ours): {differ}")
    if not source.is_file():
        return load_onnx_weights(unet(len(config.channels), config.depth, config.base_filters), exported)
    return keras.models.load_model(source, compile=False, safe_mode=True)


def _conv_block(x: keras.KerasTensor, filters: int) -> keras.KerasTensor:
    for _ in range(2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
    return x


def unet(channels: int = 2, depth: int = 4, base_filters: int = 16) -> keras.Model:
    """Fully convolutional U-Net: any H, W that is a multiple of 2**depth."""
    inputs = keras.Input((None, None, 3), name="image")
    x, skips = inputs, []
    for level in range(depth):
        x = _conv_block(x, base_filters * 2**level)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    x = _conv_block(x, base_filters * 2**depth)
    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(base_filters * 2**level, 2, strides=2, padding="same")(x)
        x = layers.Concatenate()([x, skips[level]])
        x = _conv_block(x, base_filters * 2**level)
    # float32 output under mixed precision: the loss's logs of bfloat16 probabilities would round badly.
    outputs = layers.Conv2D(channels, 1, activation="sigmoid", name="mask", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"unet_d{depth}_f{base_filters}")


def unet_receptive_field(depth: int) -> int:
    """Receptive field in pixels of `unet` (an upper bound): 3x3 convs, 2x2 pools and 2x2 up-convolutions."""
    strides = [2**level for level in range(depth)]
    encoder = sum(2 * 2 * s + s for s in strides)  # two 3x3 convs, then a 2x2 pool
    bottleneck = 2 * 2 * 2**depth
    decoder = sum(2 * s + 2 * 2 * s for s in strides)  # 2x2 up-convolution, then two 3x3 convs
    return 1 + encoder + bottleneck + decoder


def _upsample(x: keras.KerasTensor, filters: int) -> keras.KerasTensor:
    """pix2pix upsampler: transposed conv, batch norm, ReLU."""
    x = layers.Conv2DTranspose(filters, 3, strides=2, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def mobilenet_unet(channels: int = 2, encoder_weights: str | None = None) -> keras.Model:
    """The TensorFlow segmentation tutorial's model: MobileNetV2 encoder, pix2pix decoder.

    Encoder weights come from a local file or not at all (nothing is downloaded). Its BatchNorm momentum is
    lowered to 0.99: with Keras' 0.999 the running statistics have not moved when early stopping fires and the
    restored model predicts no nucleus at all (measured on DSB2018, see STACK.md).
    """
    base = keras.applications.MobileNetV2(input_shape=(None, None, 3), include_top=False, weights=None)
    if encoder_weights:
        base.load_weights(encoder_weights)
    for layer in base.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = 0.99
    names = ["block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu",
             "block_13_expand_relu", "block_16_project"]
    encoder = keras.Model(base.input, [base.get_layer(n).output for n in names], name="encoder")
    inputs = keras.Input((None, None, 3), name="image")
    *skips, x = encoder(inputs * 2.0 - 1.0)  # MobileNetV2 expects [-1, 1]
    for filters, skip in zip((512, 256, 128, 64), reversed(skips), strict=True):
        x = layers.Concatenate()([_upsample(x, filters), skip])
    x = layers.Conv2DTranspose(channels, 3, strides=2, padding="same")(x)
    outputs = layers.Activation("sigmoid", name="mask", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="mobilenet_unet")


def receptive_field(config: TrainConfig) -> int:
    """Pixels of context one output pixel sees; tiles overlap by half of it."""
    return unet_receptive_field(config.depth) if config.architecture == "unet" else 2 * 32 * 16 + 1

"""Keras weights from a model directory that ships only ONNX: what fine-tuning starts from then.

tf2onnx folds each BatchNormalization into the convolution before it, so an exported U-Net holds a kernel and a
bias per convolution. Loaded back, the bias goes into the BatchNormalization (beta, with mean 0 and variance
1 - epsilon: the identity plus beta), and the BatchNormalization layers are frozen: a frozen Keras 3
BatchNormalization runs in inference mode while the convolutions train, which is how Keras' transfer-learning
guide fine-tunes a model with batch norm, and here also the only mode in which the folded statistics are exact.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import onnx
from keras import layers
from onnx import numpy_helper

# ONNX kernels are (out, in, h, w) for Conv and (in, out, h, w) for ConvTranspose; Keras' are (h, w, in, out)
# and (h, w, out, in): the same transpose serves both.
KERAS_FROM_ONNX = (2, 3, 1, 0)


def onnx_convolutions(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(kernel in Keras' layout, bias) of every Conv and ConvTranspose, in graph order."""
    graph = onnx.load(str(path)).graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        if len(node.input) < 3 or node.input[1] not in weights or node.input[2] not in weights:
            raise ValueError(f"{path}: {node.op_type} {node.name!r} has no constant kernel and bias")
        found.append((weights[node.input[1]].transpose(KERAS_FROM_ONNX), weights[node.input[2]]))
    return found


def load_onnx_weights(model: keras.Model, path: Path) -> keras.Model:
    """Set ``model``'s convolutions (and the BatchNormalization after each bias-free one) from the ONNX file at
    ``path``, exported from the same architecture; freezes those BatchNormalization layers. Raises ValueError
    naming the file when the two do not line up."""
    convolutions = [layer for layer in model.layers if isinstance(layer, layers.Conv2D | layers.Conv2DTranspose)]
    exported = onnx_convolutions(path)
    if len(exported) != len(convolutions):
        raise ValueError(f"{path}: {len(exported)} convolutions, the architecture has {len(convolutions)}")
    following = {id(a): b for a, b in zip(model.layers, model.layers[1:], strict=False)}
    for layer, (kernel, bias) in zip(convolutions, exported, strict=True):
        if tuple(layer.kernel.shape) != kernel.shape:
            raise ValueError(f"{path}: kernel {kernel.shape} where {layer.name} has {tuple(layer.kernel.shape)}")
        if layer.use_bias:
            layer.set_weights([kernel, bias])
            continue
        layer.set_weights([kernel])
        norm = following.get(id(layer))
        if not isinstance(norm, layers.BatchNormalization):
            raise ValueError(f"{path}: {layer.name} has no bias and no BatchNormalization after it to hold one")
        ones = np.ones_like(bias)
        norm.set_weights([ones, bias, np.zeros_like(bias), ones - norm.epsilon])  # gamma, beta, mean, variance
        norm.trainable = False
    return model

"""Keras export of trained heads: their standardisation folded into Dense weights, Dense
layers carrying given weights, and the feature -> probabilities model every head saves as."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .kinds import Head


def fold_standardisation(mean, scale, weight, bias) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) on raw features equal to `weight`, `bias` on standardised ones."""
    kernel = weight / scale
    return kernel.astype(np.float32), (bias - mean @ kernel).astype(np.float32)


def dense(x, kernel: np.ndarray, bias: np.ndarray, activation: str, name: str):
    """A Keras Dense layer with these weights, applied to the tensor `x`."""
    import keras

    layer = keras.layers.Dense(kernel.shape[1], activation=activation, name=name)
    out = layer(x)
    layer.set_weights([kernel, bias])
    return out


def keras_model(head: Head):
    import keras

    inputs = keras.Input((head.mean.shape[0],), name="features")
    return keras.Model(inputs, head.keras_output(inputs), name="head")

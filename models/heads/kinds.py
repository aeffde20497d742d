"""The two kinds of trained head, `LinearHead` and `HiddenHead` (the `Head` union): their
arithmetic on raw features, temperature scaling, and their Keras form (`models.heads.export`).
Only linear heads are trained now; `HiddenHead` loads and serves results saved before."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Union

import numpy as np

from .export import dense, fold_standardisation, keras_model

HIDDEN_UNITS = 64  # the width of the hidden heads saved before issue 14


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


@dataclass
class LinearHead:
    """A trained softmax head: probabilities = softmax(((x - mean) / scale) @ weight + bias)."""

    classes: list[str]
    mean: np.ndarray
    scale: float
    weight: np.ndarray
    bias: np.ndarray
    params: dict = field(default_factory=dict)

    kind = "linear"

    def logits(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.scale) @ self.weight + self.bias

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return softmax(self.logits(features))

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """(kernel, bias) of one Dense layer on raw features equal to this head."""
        return fold_standardisation(self.mean, self.scale, self.weight, self.bias)

    def keras_output(self, pooled):
        """This head's Keras layers applied to the tensor `pooled` (raw features): probabilities."""
        return dense(pooled, *self.folded(), "softmax", "head")

    def to_keras(self):
        """A Keras model: raw features (feature_dim,) -> class probabilities."""
        return keras_model(self)

    def scaled(self, temperature: float) -> "LinearHead":
        """The same head with its logits divided by `temperature`."""
        return dataclasses.replace(self, weight=self.weight / temperature,
                                   bias=self.bias / temperature)

    @classmethod
    def from_keras(cls, model, classes: list[str], params: dict | None = None) -> "LinearHead":
        """The inverse of `to_keras` (the standardisation stays folded into the weights)."""
        kernel, bias = model.get_layer("head").get_weights()
        return cls(list(classes), np.zeros(kernel.shape[0], np.float32), 1.0, kernel, bias,
                   dict(params or {}))


@dataclass
class HiddenHead:
    """A trained head with one hidden layer: probabilities =
    softmax(relu(((x - mean) / scale) @ w1 + b1) @ w2 + b2)."""

    classes: list[str]
    mean: np.ndarray
    scale: float
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    params: dict = field(default_factory=dict)

    kind = "hidden"

    def logits(self, features: np.ndarray) -> np.ndarray:
        return relu(((features - self.mean) / self.scale) @ self.w1 + self.b1) @ self.w2 + self.b2

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return softmax(self.logits(features))

    def keras_output(self, pooled):
        """This head's Keras layers applied to the tensor `pooled` (raw features): probabilities."""
        kernel, bias = fold_standardisation(self.mean, self.scale, self.w1, self.b1)
        hidden = dense(pooled, kernel, bias, "relu", "hidden")
        return dense(hidden, self.w2.astype(np.float32), self.b2.astype(np.float32), "softmax",
                      "head")

    def to_keras(self):
        """A Keras model: raw features (feature_dim,) -> class probabilities."""
        return keras_model(self)

    def scaled(self, temperature: float) -> "HiddenHead":
        """The same head with its logits divided by `temperature`."""
        return dataclasses.replace(self, w2=self.w2 / temperature, b2=self.b2 / temperature)

    @classmethod
    def from_keras(cls, model, classes: list[str], params: dict | None = None) -> "HiddenHead":
        """The inverse of `to_keras` (the standardisation stays folded into the weights)."""
        w1, b1 = model.get_layer("hidden").get_weights()
        w2, b2 = model.get_layer("head").get_weights()
        return cls(list(classes), np.zeros(w1.shape[0], np.float32), 1.0, w1, b1, w2, b2,
                   dict(params or {}))


Head = Union[LinearHead, HiddenHead]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)

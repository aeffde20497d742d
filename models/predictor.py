"""Classify images with a trained result, or with the pretrained ImageNet backbones.

A `Predictor` is built once per process (backbones and heads loaded then, never per call) and
answers in the shape the web API returns:
`{"backbones": {name: [{"label", "score"}, ...]}, "ensemble": {"label", "score", "method", "votes"}}`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from models.ensemble import majority_vote
from models.images import resize_for_model
from models.training import TrainResult, load_result


def _top_k(probs: np.ndarray, labels: Sequence[str], k: int) -> list[dict]:
    order = np.argsort(-probs)[:k]
    return [{"label": labels[i], "score": round(float(probs[i]), 4)} for i in order]


def _answers(per_backbone: dict[str, np.ndarray], labels: Sequence[str], k: int) -> list[dict]:
    """Per-image answers from {backbone: (n, C) probabilities}."""
    names = list(per_backbone)
    predicted, score, votes = majority_vote([per_backbone[n] for n in names])
    answers = []
    for i in range(len(predicted)):
        answers.append({
            "backbones": {n: _top_k(per_backbone[n][i], labels, k) for n in names},
            "ensemble": {
                "label": labels[predicted[i]],
                "score": round(float(score[i]), 4),
                "method": "majority vote",
                "votes": {labels[c]: int(v) for c, v in enumerate(votes[i]) if v},
            },
        })
    return answers


def _pixels(images: Sequence[Image.Image], size: int) -> np.ndarray:
    return np.stack([resize_for_model(im, size) for im in images])


class Predictor:
    """A trained result with its backbones, ready to classify images (thread-safe reads)."""

    def __init__(self, result: TrainResult | str | Path, make_backbone: Callable[[str], object]):
        self.result = result if isinstance(result, TrainResult) else load_result(result)
        self.backbones = {name: make_backbone(name) for name in self.result.heads}

    @property
    def classes(self) -> list[str]:
        return self.result.classes

    def predict(self, images: Sequence[Image.Image], top_k: int = 3) -> list[dict]:
        """One answer per image: each backbone's top-k classes and the ensemble's vote."""
        probs = {}
        for name, backbone in self.backbones.items():
            features = backbone.features(_pixels(images, backbone.input_size))
            probs[name] = self.result.heads[name].predict_proba(features)
        return _answers(probs, self.classes, top_k)


def imagenet_predict(images: Sequence[Image.Image], backbones: dict[str, object],
                     labels: Sequence[str], top_k: int = 3) -> list[dict]:
    """Pretrained mode: top-k ImageNet labels per backbone and their majority vote."""
    probs = {
        name: backbone.imagenet_probabilities(_pixels(images, backbone.input_size))
        for name, backbone in backbones.items()
    }
    return _answers(probs, labels, top_k)


def export_classifier(backbone, head, path: str | Path) -> Path:
    """Save one `.keras` model: any-size RGB image [0, 255] -> class probabilities.

    Resizing and the backbone's preprocessing are inside, so the file needs nothing else
    (load it with `keras.saving.load_model` after `import models.backbones`).
    """
    import keras

    kernel, bias = head.folded()
    inputs = keras.Input((None, None, 3), name="image")
    size = backbone.input_size
    x = keras.layers.Resizing(size, size, interpolation="bilinear", antialias=True)(inputs)
    x = backbone.features_model(x)
    dense = keras.layers.Dense(kernel.shape[1], activation="softmax", name="head")
    model = keras.Model(inputs, dense(x), name=f"transferlab_{backbone.name}")
    dense.set_weights([kernel, bias])
    path = Path(path)
    model.save(path)
    return path

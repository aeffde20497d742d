"""Classify images with a trained result, or with the pretrained ImageNet backbones.

A `Predictor` is built once per process (backbones and heads loaded then, never per call) and
answers in the shape the web API returns:
`{"backbones": {name: [{"label", "score"}, ...]}, "ensemble": {"label", "score", "method", "votes"}}`,
plus "None of these" (`with_ood`) where the iteration has an OOD model (`models.ood`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from models.features import VIEWS, parse_head_input, transform as transform_features
from models.images import resize_for_model
from models.result import ENSEMBLE_NAMES, TrainResult, combine_ensemble, load_result


def _top_k(probs: np.ndarray, labels: Sequence[str], k: int) -> list[dict]:
    order = np.argsort(-probs)[:k]
    return [{"label": labels[i], "score": round(float(probs[i]), 4)} for i in order]


UNKNOWN = "unknown"


def answers(per_backbone: dict[str, np.ndarray], labels: Sequence[str], k: int,
             ensemble: dict | None = None, threshold: float = 0.0) -> list[dict]:
    """Per-image answers from {backbone: (n, C) probabilities}.

    `ensemble` is the report's chosen ensemble ({"key": "vote"|"mean"|"weighted", "weights"});
    without it, majority vote. Below `threshold` the ensemble answers "unknown" and keeps its
    best guess under "best_guess".
    """
    names = list(per_backbone)
    key = (ensemble or {}).get("key", "vote")
    combined = combine_ensemble(key, per_backbone, (ensemble or {}).get("weights"))
    predicted, score, votes = combined.predicted, combined.score, combined.votes
    method = ENSEMBLE_NAMES[key]
    out = []
    for i in range(len(predicted)):
        label = labels[predicted[i]]
        answer = {
            "label": label if score[i] >= threshold else UNKNOWN,
            "score": round(float(score[i]), 4),
            "method": method,
            "votes": {labels[c]: int(v) for c, v in enumerate(votes[i]) if v},
        }
        if answer["label"] == UNKNOWN:
            answer.update(best_guess=label, threshold=threshold)
        out.append({"backbones": {n: _top_k(per_backbone[n][i], labels, k) for n in names},
                        "ensemble": answer})
    return out


def _pixels(images: Sequence[Image.Image], size: int, views: Sequence[str] = ("orig",)) -> np.ndarray:
    """(len(views) * n, S, S, 3): every image under the first view, then the second, ..."""
    return np.stack([resize_for_model(VIEWS[v](im), size) for v in views for im in images])


def result_backbone(result: TrainResult, name: str, make_backbone: Callable[[str], object]):
    """The backbone `result`'s head for `name` was trained on: its fine-tuned network when it
    has one (see `models.finetune`), else `make_backbone(name)`."""
    if name in result.tuned:
        from models.backbones import TunedBackbone

        return TunedBackbone(name, result.tuned[name])
    return make_backbone(name)


class Predictor:
    """A trained result with its backbones, ready to classify images (thread-safe reads)."""

    def __init__(self, result: TrainResult | str | Path, make_backbone: Callable[[str], object]):
        self.result = result if isinstance(result, TrainResult) else load_result(result)
        self.backbones = {name: result_backbone(self.result, name, make_backbone)
                          for name in self.result.heads}

    @property
    def classes(self) -> list[str]:
        return self.result.classes

    def head_inputs(self, images: Sequence[Image.Image]) -> dict[str, np.ndarray]:
        """{backbone: (n, d)}: the mean feature over the views each head was trained on,
        transformed as the head expects (its input, and the space `models.ood` measures)."""
        out = {}
        for name, backbone in self.backbones.items():
            views, transform = parse_head_input(self.result.heads[name].params.get("views", "none"))
            features = backbone.features(_pixels(images, backbone.input_size, views))
            mean = features.reshape(len(views), len(images), -1).mean(axis=0)
            blocks = getattr(backbone, "spec", None) and backbone.spec.blocks
            out[name] = transform_features(mean, transform, blocks)
        return out

    def probabilities(self, images: Sequence[Image.Image]) -> dict[str, np.ndarray]:
        """{backbone: (n, C)}: each head on its input (`head_inputs`)."""
        return self.outputs(images)[0]

    def head_probabilities(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{backbone: (n, C)} from `head_inputs`' {backbone: (n, d)}."""
        return {name: self.result.heads[name].predict_proba(x) for name, x in inputs.items()}

    def outputs(self, images: Sequence[Image.Image]) -> tuple[dict[str, np.ndarray], dict | None]:
        """({backbone: (n, C) probabilities}, the OOD part of the answers or None): one
        forward pass per backbone and view. The second is `OodModel.answer`'s dict, None for
        an iteration saved without an OOD model."""
        x = self.head_inputs(images)
        return self.head_probabilities(x), self.ood_part(x)

    def ood_part(self, inputs: dict[str, np.ndarray]) -> dict | None:
        """The OOD part of the answers for `head_inputs`' {backbone: (n, d)} (`with_ood`'s
        `ood`), or None for an iteration saved without an OOD model."""
        ood = self.result.ood
        return ood.answer(ood.scores(inputs)) if ood is not None else None

    def answer(self, probabilities: dict[str, np.ndarray], top_k: int = 3,
               threshold: float = 0.0, ood: dict | None = None) -> list[dict]:
        """Answers (as `predict` gives them) from `probabilities`' {backbone: (n, C)} and the
        OOD part `outputs` gave (see `with_ood`)."""
        out = answers(probabilities, self.classes, top_k, self.result.report.get("ensemble"),
                      threshold)
        return with_ood(out, ood) if ood is not None else out

    def predict(self, images: Sequence[Image.Image], top_k: int = 3,
                threshold: float = 0.0) -> list[dict]:
        """One answer per image: each backbone's top-k classes and the project's ensemble."""
        probs, ood = self.outputs(images)
        return self.answer(probs, top_k, threshold, ood)


def slice_ood(ood: dict | None, i: int) -> dict | None:
    """Image `i`'s part of `Predictor.outputs`' OOD dict (for answering a batch one by one)."""
    if ood is None:
        return None
    return {"backbones": {n: rows[i:i + 1] for n, rows in ood["backbones"].items()},
            "ensemble": ood["ensemble"][i:i + 1]}


def with_ood(out: list[dict], ood: dict) -> list[dict]:
    """Add "None of these" to answers: `answer["ood"]` = {backbone: {"score", "threshold",
    "unknown"}}, and the ensemble's "ood_score", "ood_threshold", "unknown". An unknown
    image's ensemble label becomes "unknown" (its label kept as "best_guess") whatever the
    softmax says, with "reason": "unlike any class"."""
    for i, answer in enumerate(out):
        answer["ood"] = {n: rows[i] for n, rows in ood["backbones"].items()}
        ens = answer["ensemble"]
        ens.update(ood["ensemble"][i])
        if ens["unknown"]:
            ens.setdefault("best_guess", ens["label"])
            ens["label"] = UNKNOWN
            ens["reason"] = "unlike any class"
    return out


def imagenet_predict(images: Sequence[Image.Image], backbones: dict[str, object],
                     labels: Sequence[str], top_k: int = 3) -> list[dict]:
    """Pretrained mode: top-k ImageNet labels per backbone and their majority vote."""
    probs = {
        name: backbone.imagenet_probabilities(_pixels(images, backbone.input_size))
        for name, backbone in backbones.items()
    }
    return answers(probs, labels, top_k)


def keras_view(x, view: str):
    """The Keras twin of features.VIEWS[view] on a (batch, H, W, 3) tensor (square images)."""
    import keras

    ops = keras.ops
    swap = (0, 2, 1, 3)
    return {
        "orig": lambda t: t,
        "hflip": lambda t: ops.flip(t, axis=2),
        "vflip": lambda t: ops.flip(t, axis=1),
        "rot90": lambda t: ops.flip(ops.transpose(t, swap), axis=1),
        "rot180": lambda t: ops.flip(ops.flip(t, axis=1), axis=2),
        "rot270": lambda t: ops.flip(ops.transpose(t, swap), axis=2),
        "transpose": lambda t: ops.transpose(t, swap),
        "transverse": lambda t: ops.flip(ops.flip(ops.transpose(t, swap), axis=1), axis=2),
    }[view](x)


def export_classifier(backbone, head, path: str | Path) -> Path:
    """Save one `.keras` model: any-size RGB image [0, 255] -> class probabilities.

    Resizing, the backbone's preprocessing and the head's test-time views (averaged features)
    are inside, so the file needs nothing else (load it with `keras.saving.load_model` after
    `import models.backbones`). For a fine-tuned result, pass its tuned network
    (`result_backbone`).
    """
    import keras

    from models.backbones import HeadInput

    inputs = keras.Input((None, None, 3), name="image")
    size = backbone.input_size
    x = keras.layers.Resizing(size, size, interpolation="bilinear", antialias=True)(inputs)
    views, transform = parse_head_input(head.params.get("views", "none"))
    features = [backbone.features_model(keras_view(x, v)) for v in views]
    pooled = features[0] if len(features) == 1 else keras.layers.Average()(features)
    pooled = HeadInput(transform, backbone.spec.blocks)(pooled)
    model = keras.Model(inputs, head.keras_output(pooled), name=f"transferlab_{backbone.name}")
    path = Path(path)
    model.save(path)
    return path

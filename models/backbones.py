"""Frozen ImageNet backbones as Keras models: build, extract features, ImageNet top-k.

Every model here takes RGB pixels in [0, 255] (float or uint8) at the backbone's input size;
each family's own preprocessing runs inside the model as a `Preprocess` layer, so a saved
`.keras` file needs nothing but raw pixels.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from models.registry import BackboneSpec, get_spec
from models.runtime import fastest_forward
from models.weights import resolve

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
import keras  # noqa: E402  (this module is the TensorFlow boundary; importing it is the point)

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def preprocess_pixels(x, mode: str):
    """float32 RGB pixels in [0, 255] as backbone family `mode` expects them (in Keras ops, so
    the exported models of `models.exporting` repeat it without this module's layers)."""
    if mode == "caffe":
        return x[..., ::-1] - keras.ops.convert_to_tensor(_CAFFE_MEAN_BGR, "float32")
    if mode == "tf":
        return x / 127.5 - 1.0
    return (x - 127.0) / 128.0


def head_input(x, transform: str, blocks):
    """`models.features.transform(x, transform, blocks)` in Keras ops (see `HeadInput`)."""
    ops = keras.ops
    top = x[..., :blocks[0]]
    if transform == "raw":
        return top
    top = ops.sqrt(ops.relu(top))
    if transform == "sqrt":
        return top
    parts, start = [top], blocks[0]
    for width in blocks[1:]:
        parts.append(x[..., start:start + width])
        start += width
    unit = [p / ops.maximum(ops.norm(p, axis=-1, keepdims=True), 1e-12) for p in parts]
    return ops.concatenate(unit, axis=-1)


@keras.saving.register_keras_serializable(package="transferlab")
class Preprocess(keras.layers.Layer):
    """Maps RGB pixels in [0, 255] to what a backbone family expects (see BackboneSpec)."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf", "lite"):
            raise ValueError(f"unknown preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, x):
        return preprocess_pixels(keras.ops.cast(x, "float32"), self.mode)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="transferlab")
class HeadInput(keras.layers.Layer):
    """The Keras twin of `models.features.transform(x, transform, blocks)`: a head's input
    from a backbone's feature vector (its parts have widths `blocks`)."""

    def __init__(self, transform: str, blocks, **kwargs):
        super().__init__(**kwargs)
        if transform not in ("raw", "sqrt", "multiscale"):
            raise ValueError(f"unknown feature transform {transform!r}")
        self.transform, self.blocks = transform, tuple(int(b) for b in blocks)

    def call(self, x):
        return head_input(x, self.transform, self.blocks)

    def get_config(self):
        return {**super().get_config(), "transform": self.transform, "blocks": list(self.blocks)}


def _keras_application(spec: BackboneSpec):
    apps = keras.applications
    return {"resnet50": apps.ResNet50, "vgg16": apps.VGG16, "xception": apps.Xception}[spec.name]


def _base_model(spec: BackboneSpec, weights_path: Path | None, include_top: bool):
    """The backbone on preprocessed input: pooled features, or ImageNet softmax with the top."""
    shape = (spec.input_size, spec.input_size, 3)
    weights = str(weights_path) if weights_path else None
    if spec.preprocess == "lite":
        from models.efficientnet_lite import build_efficientnet_lite

        variant = spec.name.split("_")[-1]
        return build_efficientnet_lite(variant, weights, include_top=include_top)
    if include_top:
        return _keras_application(spec)(include_top=True, weights=weights, input_shape=shape)
    return _keras_application(spec)(
        include_top=False, weights=weights, input_shape=shape, pooling="avg"
    )


def with_preprocessing(spec: BackboneSpec, base, name: str):
    """A frozen Keras model named `name`: (S, S, 3) pixels in [0, 255] -> `base` applied to
    them after `spec`'s preprocessing (a `Preprocess` layer, so the saved file needs no code
    of ours beyond `import models.backbones`)."""
    inputs = keras.Input((spec.input_size, spec.input_size, 3), name="pixels")
    outputs = base(Preprocess(spec.preprocess)(inputs))
    model = keras.Model(inputs, outputs, name=name)
    model.trainable = False
    return model


class FeatureModel:
    """A pixels -> features Keras model (`features_model`) with its forward pass: TensorFlow
    until `use_fastest_runtime` is called, then the runtime that call chose."""

    def __init__(self, name: str, spec: BackboneSpec, features_model):
        self.name, self.spec, self.features_model = name, spec, features_model
        self._lock = threading.Lock()
        self._tf_forward = compiled_call(features_model)
        self._forward = None  # the fastest runtime's, once asked for

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    def features(self, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(n, S, S, 3) pixels in [0, 255] -> (n, feature_dim) float32 pooled features.

        The pass runs on TensorFlow, or on the runtime `use_fastest_runtime` chose."""
        return _run(self.features_model, pixels, batch_size, self._forward or self._tf_forward)

    def use_fastest_runtime(self, cache_dir: str | Path | None = None) -> None:
        """Run every later pass on OpenVINO if it reproduces TensorFlow within 1e-4 (checked
        here, once; see `models.runtime`). Converting costs about as much as a few hundred
        passes, so callers ask for it before long runs of images (`worth_converting`) or
        where each image's latency matters (serving). With `cache_dir`, the checked
        conversion is reused from (or kept in) that folder, keyed by `network_identity`."""
        with self._lock:
            if self._forward is None:
                shape = (self.input_size, self.input_size, 3)
                identity = network_identity(self.features_model) if cache_dir else None
                self._forward = fastest_forward(self._tf_forward, shape, self.name,
                                                cache_dir, identity)


class Backbone(FeatureModel):
    """A frozen backbone ready to turn pixels into features (and ImageNet labels).

    `weights` is "imagenet" (resolved as in `models.weights`, may download) or None (random
    weights: for tests and timing only).
    """

    def __init__(self, name: str, weights: str | None = "imagenet", weights_dir=None):
        spec = get_spec(name)
        self.weights = weights
        self.weights_dir = weights_dir
        path = resolve(spec.features_weights, weights_dir) if weights == "imagenet" else None
        super().__init__(name, spec, with_preprocessing(
            spec, _base_model(spec, path, include_top=False), f"{name}_features"))
        self._classifier = None

    def classifier(self):
        """The pixels -> 1000 ImageNet probabilities model (built on first use)."""
        with self._lock:
            if self._classifier is None:
                if self.weights != "imagenet":
                    raise ValueError("ImageNet labels need the pretrained weights")
                top = self.spec.classifier_weights or self.spec.features_weights
                path = resolve(top, self.weights_dir)
                base = _base_model(self.spec, path, include_top=True)
                self._classifier = with_preprocessing(self.spec, base, f"{self.name}_imagenet")
            return self._classifier

    def imagenet_probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """(n, S, S, 3) pixels -> (n, 1000) ImageNet class probabilities."""
        return _run(self.classifier(), pixels, 32)


def network_identity(model) -> str:
    """A digest of everything a Keras model computes with: its architecture (layer classes,
    settings and wiring) and its weights' values, and the Keras version that builds it.

    Keras names layers it was not given a name for with a per-process counter (the second
    `Preprocess` built is `preprocess_1`), so layer names are replaced by their order of
    appearance first: the same network built in any process has the same identity."""
    config = json.loads(model.to_json())
    names: dict[str, str] = {}

    def collect(node):
        if isinstance(node, dict):
            for layer in node.get("layers", []) if isinstance(node.get("layers"), list) else []:
                if isinstance(layer, dict):
                    for name in (layer.get("name"), (layer.get("config") or {}).get("name")):
                        if isinstance(name, str):
                            names.setdefault(name, f"#{len(names)}")
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    def rename(node):
        if isinstance(node, str):
            return names.get(node, node)
        if isinstance(node, dict):
            return {k: rename(v) for k, v in node.items()}
        if isinstance(node, list):
            return [rename(v) for v in node]
        return node

    for root in (config, config.get("config") or {}):  # the model's own name
        if isinstance(root.get("name"), str):
            names.setdefault(root["name"], f"#{len(names)}")
    collect(config)
    digest = hashlib.sha256(keras.__version__.encode())
    digest.update(json.dumps(rename(config), sort_keys=True).encode())
    for weight in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def compiled_call(model):
    """The model's inference call as one TensorFlow graph for any batch size, traced once.

    `predict_on_batch` traces again for each new batch shape (seconds per backbone: re-
    training on 5 new images paid one such trace per backbone). Without XLA: on these 2-core
    machines its compile time (tens of seconds per backbone) outweighs what it saves on a few
    hundred images, and it made Xception slower. Results equal `predict_on_batch`'s.
    """
    import tensorflow as tf

    spec = tf.TensorSpec((None,) + tuple(model.input_shape[1:]), tf.float32)
    return tf.function(lambda x: model(x, training=False), input_signature=[spec])


def _run(model, pixels: np.ndarray, batch_size: int, forward=None) -> np.ndarray:
    if len(pixels) == 0:
        return np.zeros((0,) + tuple(model.output_shape[1:]), np.float32)
    forward = forward or model.predict_on_batch
    outs = [
        np.asarray(forward(pixels[i : i + batch_size].astype(np.float32)))
        for i in range(0, len(pixels), batch_size)
    ]
    return np.concatenate(outs).astype(np.float32)


class TunedBackbone(FeatureModel):
    """A fine-tuned features model (`models.finetune`) with a `Backbone`'s interface for
    prediction and export. It serves predictions only, so it asks for the fastest runtime on
    its first pass."""

    def __init__(self, name: str, features_model):
        super().__init__(name, get_spec(name), features_model)

    def features(self, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
        self.use_fastest_runtime()
        return super().features(pixels, batch_size)


@lru_cache(maxsize=None)
def load_backbone(name: str, weights: str | None = "imagenet", weights_dir=None) -> Backbone:
    """One shared `Backbone` per (name, weights, weights_dir) in this process."""
    return Backbone(name, weights=weights, weights_dir=weights_dir)

"""The self-contained Keras models an export saves: uint8 pixels in, class probabilities out.

Inputs (`model_inputs`): batches of uint8 RGB images, (n, H, W, 3): the picture resized to a
backbone's size with Pillow, as the server does, and for heads with transposing views also the
transposed picture resized. Inside: a bilinear resize to that size (an exact identity when
H = W = size, which is how the bundled predict.py feeds it; other sizes are approximate),
the backbone's preprocessing, the head's views (features averaged over them), its feature
transform, the head (temperature folded into its weights) and, for the ensemble, the
combination `models.result.combine_ensemble` makes. Only stock Keras layers and ops (the
backbone's `Preprocess` and `HeadInput` layers' own functions, applied as ops), so
the `.keras` file loads with `safe_mode=True` and no Transferlab code, and every converter sees
one plain graph.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

OUTPUT_NAME = "probabilities"
TRANSPOSED_VIEWS = frozenset({"rot90", "rot270", "transpose", "transverse"})


def input_name(size: int, transposed: bool) -> str:
    """The name of the input fed with the picture (or its transpose) resized to `size`."""
    return f"image_{size}" + ("_transposed" if transposed else "")


def head_views(head) -> tuple[tuple[str, ...], str]:
    """(views, transform) of a head; refuses what cannot be exported."""
    from models.features import parse_head_input

    views, transform = parse_head_input(head.params.get("views", "none"))
    if "zoom" in views:  # a crop of the decoded picture: not a function of the resized pixels
        raise ValueError("the view 'zoom' cannot be exported")
    return views, transform


def model_inputs(backbones: Mapping[str, object], heads: Mapping[str, object]) -> list[dict]:
    """The inputs a model over these heads takes, in order: [{"name", "size", "transposed"}].

    Pillow's resize rounds to uint8 after its horizontal pass, so resizing a transposed picture
    is not exactly the transpose of the resized picture (±1 on some pixels). The server makes
    the transposing views (rot90, rot270, transpose, transverse) from the transposed picture,
    so an exact export takes that resize as a second input; flips commute with the resize."""
    wanted = []
    for name, head in heads.items():
        size = backbones[name].input_size
        views, _ = head_views(head)
        wanted.append((size, False))
        if TRANSPOSED_VIEWS & set(views):
            wanted.append((size, True))
    return [{"name": input_name(size, t), "size": size, "transposed": t}
            for size, t in dict.fromkeys(sorted(wanted))]


def _resized(image, size: int, name: str):
    """float32 (n, size, size, 3) from a uint8 input. TensorFlow's bilinear resize with half-
    pixel centres: the identity for a size x size input (source pixel = target pixel)."""
    import keras

    pixels = keras.ops.cast(image, "float32")
    return keras.layers.Resizing(size, size, interpolation="bilinear", antialias=False,
                                 name=f"resize_{name}")(pixels)


def _base(features_model):
    """The network inside a `models.backbones.with_preprocessing` model (after `Preprocess`)."""
    from models.backbones import Preprocess

    layers = features_model.layers
    if len(layers) != 3 or not isinstance(layers[1], Preprocess):
        raise ValueError(f"{features_model.name}: not a with_preprocessing model")
    return layers[1].mode, layers[2]


def head_probabilities(backbone, head, pixels: Mapping[bool, object]):
    """The head's probabilities (n, C) as `models.predictor.Predictor.probabilities` makes
    them: the mean feature over the head's views, its transform, the head. `pixels`:
    {transposed: float32 (n, S, S, 3)}, the picture resized and, if needed, its transpose
    resized (then transposed back, so each view is `keras_view` of one of them)."""
    import keras

    from models.backbones import head_input, preprocess_pixels
    from models.predictor import keras_view

    views, transform = head_views(head)
    mode, base = _base(backbone.features_model)
    ops = keras.ops
    # Every view as one batch through the network: one copy of it in the exported graph.
    batch = ops.concatenate([keras_view(pixels[v in TRANSPOSED_VIEWS], v) for v in views], 0)
    features = base(preprocess_pixels(batch, mode))  # (V * n, d), view-major like the server's
    pooled = ops.mean(ops.reshape(features, (len(views), -1, features.shape[-1])), axis=0)
    head_model = head.to_keras()  # renamed: an ensemble holds several heads
    head_model = keras.Model(head_model.inputs[0], head_model.outputs[0],
                             name=f"head_{backbone.name}")
    return head_model(head_input(pooled, transform, backbone.spec.blocks))


def combine(method: str, parts: Sequence, weights: Sequence[float] | None = None):
    """The Keras twin of `models.result.combine_ensemble(...).probs` on (n, C) tensors."""
    import keras

    ops = keras.ops
    stacked = ops.stack(list(parts), axis=0)  # (B, n, C)
    mean = ops.mean(stacked, axis=0)
    if method == "mean":
        return mean
    if method == "weighted":
        w = ops.convert_to_tensor(np.asarray(weights, np.float32).reshape(-1, 1, 1))
        return ops.sum(stacked * w, axis=0)
    if method == "vote":
        # Each backbone's top-1 as a one-hot row: the first maximum, as numpy's argmax picks
        # (not keras.ops.argmax: its TensorFlow form has a Bitcast OpenVINO cannot read).
        is_max = ops.cast(ops.greater_equal(stacked, ops.max(stacked, axis=-1, keepdims=True)),
                          "float32")
        first = is_max * ops.cast(ops.equal(ops.cumsum(is_max, axis=-1), 1.0), "float32")
        votes = ops.sum(first, axis=0)
        return votes / float(len(parts)) + 1e-6 * mean
    raise ValueError(f"unknown ensemble method {method!r}")


def export_model(backbones: Mapping[str, object], heads: Mapping[str, object],
                 method: str | None = None, weights: Mapping[str, float] | None = None):
    """The exported Keras model over `heads` ({backbone: head}; `backbones` {name: backbone}):
    one head's probabilities, or with `method` ("vote", "mean", "weighted" with `weights`
    {backbone: weight}) the ensemble's. Inputs as `model_inputs` lists them (uint8, any
    height and width: resized in-graph unless already the input's size)."""
    import keras

    specs = model_inputs(backbones, heads)
    inputs = {s["name"]: keras.Input((None, None, 3), dtype="uint8", name=s["name"])
              for s in specs}
    pixels = {}
    for s in specs:
        x = _resized(inputs[s["name"]], s["size"], s["name"])
        if s["transposed"]:
            x = keras.ops.transpose(x, (0, 2, 1, 3))
        pixels.setdefault(s["size"], {})[s["transposed"]] = x
    names = list(heads)
    parts = [head_probabilities(backbones[n], heads[n], pixels[backbones[n].input_size])
             for n in names]
    if method is None:
        if len(parts) != 1:
            raise ValueError("several heads need an ensemble method")
        out, title = parts[0], names[0]
    else:
        order = [weights[n] for n in names] if method == "weighted" else None
        out, title = combine(method, parts, order), "ensemble"
    probs = keras.layers.Identity(name=OUTPUT_NAME)(out)
    return keras.Model([inputs[s["name"]] for s in specs], probs, name=f"transferlab_{title}")

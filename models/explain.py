"""Why this answer: where in the image the score came from, and the most similar training images.

`heat_map` gives a small grid (the backbone's last convolution's resolution, e.g. 7 x 7 for
EfficientNet-Lite0) of values in [0, 1] over the image as the model sees it (squashed to a
square, `models.images.resize_for_model`, so the grid stretches over the whole picture):

- "grad-cam" (Selvaraju et al. 2017) for a backbone built here (`models.backbones.Backbone`):
  the last 4-d activation A before the pooled features, weighted per channel by the gradient
  of the class's centred logit (z_c - mean z: softmax ignores a shift, and a saturated
  probability has no gradient) with respect to the pooled feature, through the head's own
  input transform and layers. As pooled = mean(A), that gradient is Grad-CAM's channel weight.
  The gradient is taken at the head's real input (the mean over its views); the map shows the
  unflipped view.
- "occlusion" where Grad-CAM does not apply (a fine-tuned backbone, or a network whose pooled
  features are not the mean of one activation): the drop in the class's probability when each
  grid cell is covered with grey.

`nearest` ranks the training images by cosine similarity in the head's input space (the
embeddings `models.ood` saves with an iteration). TensorFlow is imported only inside the
heat-map functions.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from models.features import parse_head_input
from models.features import transform as transform_features
from models.features import unit_length
from models.images import resize_for_model
from models.ood import Embeddings

OCCLUSION_GRID = 7


def nearest(embeddings: Embeddings, query: np.ndarray, classes: Sequence[str],
            k: int = 3) -> list[dict]:
    """The `k` training images most like `query` (d,) by cosine similarity, most alike first:
    [{"sha256", "label", "similarity"}]."""
    x = unit_length(embeddings.x)
    q = np.asarray(query, np.float64).ravel()
    sims = x @ (q / max(np.linalg.norm(q), 1e-12))
    order = np.argsort(-sims, kind="stable")[:k]
    return [{"sha256": str(embeddings.sha256[i]), "label": classes[int(embeddings.y[i])],
             "similarity": round(float(sims[i]), 4)} for i in order]


def _raw_features(backbone, image: Image.Image, views: Sequence[str]) -> np.ndarray:
    """(1, D) the backbone's features averaged over `views` (before the head's transform)."""
    from models.predictor import _pixels

    return backbone.features(_pixels([image], backbone.input_size, views)).mean(axis=0,
                                                                                keepdims=True)


def _centred_logit_gradient(head, transform: str, blocks, raw: np.ndarray, c: int) -> np.ndarray:
    """d(z_c - mean z)/d raw, (D,): through the head's Keras twin (`keras_output`)."""
    import keras
    import tensorflow as tf

    from models.backbones import HeadInput

    inputs = keras.Input((raw.shape[1],))
    model = keras.Model(inputs, head.keras_output(HeadInput(transform, blocks)(inputs)))
    try:  # the logits: the last Dense layer ("head") before its softmax
        last = model.get_layer("head")
        before = keras.Model(inputs, last.input)

        def logits(x):
            return before(x) @ last.kernel + last.bias
    except ValueError:  # a head without one: log-probabilities (the same up to a shift)
        def logits(x):
            return tf.math.log(tf.maximum(model(x), 1e-30))

    x = tf.constant(raw, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        z = logits(x)
        score = z[:, c] - tf.reduce_mean(z, axis=1)
    # sqrt's gradient is infinite at a feature of 0; such a channel is 0 all over the image
    # (its pooled value is the mean of ReLU outputs), so it contributes nothing either way.
    return np.nan_to_num(tape.gradient(score, x).numpy()[0], nan=0.0, posinf=0.0, neginf=0.0)


def _activation_model(backbone):
    """(pixels -> [last 4-d activation, pooled features]) for a `Backbone` built here, or None
    where its features model is not a preprocessing layer over one functional network."""
    import keras

    from models.backbones import Backbone, Preprocess

    if type(backbone) is not Backbone:
        return None
    bases = [layer for layer in backbone.features_model.layers if isinstance(layer, keras.Model)]
    if len(bases) != 1:
        return None
    base = bases[0]
    spatial = [layer for layer in base.layers
               if not isinstance(layer, keras.layers.InputLayer) and len(layer.output.shape) == 4]
    if not spatial:
        return None
    inner = keras.Model(base.inputs, [spatial[-1].output, base.output])
    preprocess = Preprocess(backbone.spec.preprocess)
    return lambda pixels: [t.numpy() if hasattr(t, "numpy") else np.asarray(t)
                           for t in inner(preprocess(pixels), training=False)]


def grad_cam(backbone, head, image: Image.Image, c: int) -> np.ndarray | None:
    """Grad-CAM grid (h, w) in [0, 1] for class index `c`, or None where it does not apply."""
    views, transform = parse_head_input(head.params.get("views", "none"))
    blocks = tuple(backbone.spec.blocks)
    activations = _activation_model(backbone)
    if activations is None:
        return None
    pixels = resize_for_model(image, backbone.input_size)[None].astype(np.float32)
    a, pooled = activations(pixels)
    top = blocks[0]
    # Grad-CAM's channel weights equal the pooled feature's gradient only if pooled = mean(A).
    if a.shape[-1] != top or not np.allclose(a.mean(axis=(1, 2)), pooled[:, :top], atol=1e-3,
                                             rtol=1e-3):
        return None
    raw = _raw_features(backbone, image, views)
    g = _centred_logit_gradient(head, transform, blocks, raw, c)[:top]
    return _normalise(np.maximum(a[0] @ g, 0))


def occlusion(backbone, head, image: Image.Image, c: int,
              grid: int = OCCLUSION_GRID) -> np.ndarray:
    """(grid, grid) in [0, 1]: how much class `c`'s probability drops when each cell of the
    (squashed) image is covered with mid-grey, over the head's own views."""
    views, transform = parse_head_input(head.params.get("views", "none"))
    blocks = backbone.spec.blocks
    size = backbone.input_size
    square = resize_for_model(image, size)
    edges = np.linspace(0, size, grid + 1).round().astype(int)
    covered = []
    for i in range(grid):
        for j in range(grid):
            im = square.copy()
            im[edges[i]:edges[i + 1], edges[j]:edges[j + 1]] = 128
            covered.append(Image.fromarray(im))
    from models.predictor import _pixels

    shown = [Image.fromarray(square), *covered]
    features = backbone.features(_pixels(shown, size, views))
    mean = features.reshape(len(views), len(shown), -1).mean(axis=0)
    probs = head.predict_proba(transform_features(mean, transform, blocks))[:, c]
    return _normalise(np.maximum(probs[0] - probs[1:], 0).reshape(grid, grid))


def _normalise(cam: np.ndarray) -> np.ndarray:
    peak = float(cam.max()) if cam.size else 0.0
    return (cam / peak if peak > 0 else np.zeros_like(cam)).astype(np.float64)


def heat_map(backbone, head, image: Image.Image, c: int) -> tuple[str, np.ndarray]:
    """("grad-cam" | "occlusion", grid in [0, 1]) for class index `c` of `head`."""
    cam = grad_cam(backbone, head, image, c)
    if cam is not None:
        return "grad-cam", cam
    return "occlusion", occlusion(backbone, head, image, c)


def explain(predictor, image: Image.Image, backbone: str | None = None,
            label: str | None = None, k: int = 3) -> dict:
    """Why `predictor` answers what it does for `image`, as the web API returns it:
    {"backbone", "label", "score", "method", "grid" (rows of values in [0, 1]),
    "neighbours" ([{"sha256", "label", "similarity"}], [] for an iteration saved without
    training embeddings)}. `backbone`: one of the iteration's (default: its first);
    `label`: the class to explain (default: that backbone's top class).
    Raises ValueError naming an unknown backbone or label."""
    names = list(predictor.backbones)
    name = backbone or names[0]
    if name not in predictor.backbones:
        raise ValueError(f"backbone {name!r} is not in this iteration; choose from {names}")
    classes = predictor.classes
    x = predictor.head_inputs([image])
    head = predictor.result.heads[name]
    probs = head.predict_proba(x[name])[0]
    if label is None:
        c = int(np.argmax(probs))
    elif label in classes:
        c = classes.index(label)
    else:
        raise ValueError(f"label {label!r} is not a class of this iteration; choose from {classes}")
    method, grid = heat_map(predictor.backbones[name], head, image, c)
    ood = predictor.result.ood
    embeddings = ood.embeddings.get(name) if ood is not None else None
    return {
        "backbone": name, "label": classes[c], "score": round(float(probs[c]), 4),
        "method": method, "grid": np.round(grid, 3).tolist(),
        "neighbours": nearest(embeddings, x[name][0], classes, k) if embeddings is not None else [],
    }

"""Fine-tuning the top of an EfficientNet-Lite backbone, kept only when cross-validation says so.

The backbone is split at the input of its last block. Everything below the split stays frozen:
each image (and each augmented view of it) goes through that bottom once per run, and its
split-point activations are held in memory. The "top" (the last block, the 1x1 head conv and
the pooling) trains end to end with the linear head in two phases: phase 1 is the frozen
recipe's head (`models.heads.train_head`, exactly as the frozen recipe trains it); phase 2
trains top + head together with Adam at LEARNING_RATE for EPOCHS epochs of BATCH_SIZE, one
random augmented view per image per epoch, BatchNorm in inference mode, and an L2 penalty
PULL pulling every trained weight back towards its phase-1 (pretrained) value.

Whether the tuned model replaces the frozen one is decided on the frozen recipe's own outer CV
folds (`decide`). Only EfficientNet-Lite backbones are supported; for the others the report says
so and the frozen model stays.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from models.features import VIEWS, Item, parse_head_input, transform
from models.heads import (LinearHead, apply_temperature, cross_fit_temperature, fit_temperature,
                          softmax, train_head)
from models.images import resize_for_model
from models.registry import get_spec

LEARNING_RATE = 3e-4
EPOCHS = 10
BATCH_SIZE = 16
PULL = 1e-3  # L2 strength of the pull towards the phase-1 weights
# Keep the tuned model only if its calibrated CV log-loss is lower by at least this much, by
# more than SE_FACTOR standard errors of the per-image difference, and its CV accuracy is not
# lower: a kept fine-tuning costs a 14-20 MB network per backbone in the result.
MIN_GAIN = 0.005
SE_FACTOR = 2.0
# Training views when the head uses the image alone: it plus a closer look at its middle.
DEFAULT_AUGMENTATION = ("orig", "zoom")


def supported(name: str) -> bool:
    """True for the backbones this module can fine-tune (EfficientNet-Lite)."""
    return get_spec(name).preprocess == "lite"


def augmentation_views(head_views: str) -> tuple[str, ...]:
    """The views phase 2 trains on: the head's CV-chosen views, or DEFAULT_AUGMENTATION when the
    head uses the original image alone."""
    views, _ = parse_head_input(head_views)
    return DEFAULT_AUGMENTATION if views == ("orig",) else views


@dataclass(frozen=True)
class Decision:
    """Whether the tuned model is kept, why in words, and the CV figures behind it."""

    kept: bool
    reason: str
    figures: dict


def decide(frozen_losses: np.ndarray, tuned_losses: np.ndarray, frozen_correct: np.ndarray,
           tuned_correct: np.ndarray) -> Decision:
    """The keep rule on per-image calibrated CV log-losses and correctness (same images, folds).

    Kept when the tuned mean log-loss is lower by >= MIN_GAIN and by more than SE_FACTOR
    standard errors of the per-image difference, and the tuned CV accuracy is not lower.
    """
    diff = np.asarray(tuned_losses, float) - np.asarray(frozen_losses, float)
    gain = float(-diff.mean())
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("inf")
    acc_frozen, acc_tuned = float(np.mean(frozen_correct)), float(np.mean(tuned_correct))
    figures = {
        "frozen": {"cv_accuracy": round(acc_frozen, 4),
                   "cv_log_loss": round(float(np.mean(frozen_losses)), 4)},
        "tuned": {"cv_accuracy": round(acc_tuned, 4),
                  "cv_log_loss": round(float(np.mean(tuned_losses)), 4)},
        "log_loss_gain": round(gain, 4),
        "log_loss_gain_se": round(se, 4),
    }
    summary = (f"CV log-loss {figures['frozen']['cv_log_loss']:.3f} frozen vs "
               f"{figures['tuned']['cv_log_loss']:.3f} tuned (gain {gain:.3f} +/- {se:.3f} SE), "
               f"CV accuracy {acc_frozen:.1%} vs {acc_tuned:.1%}")
    failed = [why for why, fails in (
        (f"log-loss gain below {MIN_GAIN}", gain < MIN_GAIN),
        (f"gain within {SE_FACTOR:g} standard errors", gain <= SE_FACTOR * se),
        ("lower CV accuracy", acc_tuned < acc_frozen)) if fails]
    if failed:
        return Decision(False, f"not kept ({'; '.join(failed)}): {summary}", figures)
    return Decision(True, f"kept: {summary}", figures)


def _split_layer(spec) -> str:
    """The name of the layer whose output feeds a block."""
    return f"block{spec.index}_add" if spec.has_skip else f"block{spec.index}_project_bn"


class TunableNetwork:
    """A private copy of a Lite backbone's features model, split at the input of its last block.

    `bottom(pixels)` -> (split activations, frozen pooled parts); `features(split, frozen)` ->
    the backbone's feature vector (same layout as the frozen one) computed by the current top.
    Training the top (`tune`) changes this copy only; `features_model()` wraps it as a pixels ->
    features Keras model, as `models.backbones.Backbone.features_model` is.
    """

    def __init__(self, backbone):
        import keras

        from models.backbones import compiled_call
        from models.efficientnet_lite import block_specs, build_efficientnet_lite, stage_end_blocks

        self.spec = backbone.spec
        variant = self.spec.name.split("_")[-1]
        self.base = build_efficientnet_lite(variant, None, include_top=False)
        self.base.set_weights(backbone.features_model.get_weights())
        blocks = block_specs(variant)
        split = self.base.get_layer(_split_layer(blocks[-2])).output
        last = blocks[-1].index
        taps = [b.index for b in stage_end_blocks(variant)]
        # The feature vector is [head, pooled taps in order]; only the last tap is in the top.
        if taps[-1] != last:
            raise AssertionError("the last block must be the last tapped stage")
        frozen = [self.base.get_layer(f"block{i}_pool").output for i in taps[:-1]]
        self._bottom = compiled_call(keras.Model(self.base.input, [split, *frozen]))
        # Shares its layers with self.base: training it trains the copy.
        self.top = keras.Model(split, [self.base.get_layer("avg_pool").output,
                                       self.base.get_layer(f"block{last}_pool").output])
        for layer in self.top.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False  # inference mode, statistics untouched
        self.pretrained = [w.numpy() for w in self.top.trainable_weights]
        self._top = compiled_call(self.top)

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    def bottom(self, pixels: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        from models.efficientnet_lite import preprocess_input

        splits, frozen = [], []
        for i in range(0, len(pixels), batch_size):
            out = self._bottom(preprocess_input(pixels[i:i + batch_size]))
            splits.append(np.asarray(out[0]))
            frozen.append(np.concatenate([np.asarray(o) for o in out[1:]], axis=1))
        return np.concatenate(splits), np.concatenate(frozen)

    def features(self, split: np.ndarray, frozen: np.ndarray, batch_size: int = 64) -> np.ndarray:
        rows = []
        for i in range(0, len(split), batch_size):
            head, last = self._top(split[i:i + batch_size])
            rows.append(np.concatenate([np.asarray(head), frozen[i:i + batch_size],
                                        np.asarray(last)], axis=1))
        return np.concatenate(rows)

    def reset(self) -> None:
        """Put the pretrained weights back into the top."""
        for w, value in zip(self.top.trainable_weights, self.pretrained):
            w.assign(value)

    def features_model(self):
        """The tuned copy as pixels [0, 255] -> features, like `Backbone.features_model`."""
        from models.backbones import with_preprocessing

        return with_preprocessing(self.spec, self.base, f"{self.spec.name}_tuned_features")


class SplitFeatures:
    """Split-point activations of images under views, computed once each and held in memory."""

    def __init__(self, network: TunableNetwork, items: Sequence[Item]):
        self.network, self.items = network, list(items)
        self.split: dict[str, np.ndarray] = {}
        self.frozen: dict[str, np.ndarray] = {}

    def ensure(self, views: Sequence[str]) -> None:
        """Compute every missing view of every image (each image is decoded once per call)."""
        missing = [v for v in dict.fromkeys(views) if v not in self.split]
        if not missing or not self.items:
            return
        size, per_view = self.network.input_size, {v: ([], []) for v in missing}
        for chunk in range(0, len(self.items), 16):
            images = [item.load() for item in self.items[chunk:chunk + 16]]
            for v in missing:
                split, frozen = self.network.bottom(
                    np.stack([resize_for_model(VIEWS[v](im), size) for im in images]))
                per_view[v][0].append(split)
                per_view[v][1].append(frozen)
        for v, (splits, frozens) in per_view.items():
            self.split[v], self.frozen[v] = np.concatenate(splits), np.concatenate(frozens)

    def head_input(self, views: str, rows: np.ndarray | None = None) -> np.ndarray:
        """A head's input (`models.features.head_input`) from the network's current top."""
        names, transform_name = parse_head_input(views)
        self.ensure(names)
        pick = slice(None) if rows is None else rows
        mean = np.mean([self.network.features(self.split[v][pick], self.frozen[v][pick])
                        for v in names], axis=0)
        return transform(mean, transform_name, self.network.spec.blocks)


def _head_input(x, transform_name: str, blocks: Sequence[int]):
    """`models.backbones.HeadInput` with a gradient everywhere: sqrt's derivative is infinite
    at 0 (and ReLU's zero times it is NaN), so it takes sqrt(max(x, 1e-12)) (off by <= 1e-6)."""
    import tensorflow as tf

    top = x[:, :blocks[0]]
    if transform_name == "raw":
        return top
    top = tf.sqrt(tf.maximum(top, 1e-12))
    if transform_name == "sqrt":
        return top
    parts, start = [top], blocks[0]
    for width in blocks[1:]:
        parts.append(x[:, start:start + width])
        start += width
    return tf.concat([p / tf.maximum(tf.norm(p, axis=1, keepdims=True), 1e-12) for p in parts],
                     axis=1)


def tune(network: TunableNetwork, store: SplitFeatures, head: LinearHead, labels: np.ndarray,
         rows: np.ndarray, seed: int) -> tuple[LinearHead, list[float]]:
    """Phase 2: train the top and `head` end to end on `rows` (a boolean mask over the store's
    images), starting from the pretrained top. Returns the tuned head (the top stays tuned in
    `network`) and the mean training loss of each epoch."""
    import keras
    import tensorflow as tf

    network.reset()
    views = augmentation_views(head.params.get("views", "none"))
    store.ensure(views)
    _, transform_name = parse_head_input(head.params.get("views", "none"))
    blocks = network.spec.blocks
    kernel0, bias0 = head.folded()
    kernel, bias = keras.Variable(kernel0, name="kernel"), keras.Variable(bias0, name="bias")
    weights = [*network.top.trainable_weights, kernel, bias]
    anchors = [tf.constant(w) for w in (*network.pretrained, kernel0, bias0)]
    optimizer = keras.optimizers.Adam(LEARNING_RATE)
    optimizer.build(weights)  # its variables must exist before the traced step runs

    @tf.function(reduce_retracing=True)
    def step(split, frozen, y):
        with tf.GradientTape() as tape:
            head_part, last_part = network.top(split, training=False)
            x = _head_input(tf.concat([head_part, frozen, last_part], axis=1), transform_name,
                            blocks)
            logits = tf.matmul(x, kernel) + bias
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
            penalty = tf.add_n([tf.reduce_sum(tf.square(w - a)) for w, a in zip(weights, anchors)])
            total = loss + PULL * penalty
        optimizer.apply_gradients(zip(tape.gradient(total, weights), weights))
        return loss

    rng = np.random.default_rng(seed)
    index = np.flatnonzero(rows)
    split_all = np.stack([store.split[v] for v in views])  # (views, n, h, w, c)
    frozen_all = np.stack([store.frozen[v] for v in views])
    losses = []
    for _ in range(EPOCHS):
        order = rng.permutation(index)
        chosen = rng.integers(0, len(views), len(order))
        total, count = 0.0, 0
        for start in range(0, len(order), BATCH_SIZE):
            i, v = order[start:start + BATCH_SIZE], chosen[start:start + BATCH_SIZE]
            loss = step(split_all[v, i], frozen_all[v, i], labels[i].astype(np.int32))
            total += float(loss) * len(i)
            count += len(i)
        losses.append(total / count)
    tuned = LinearHead(list(head.classes), np.zeros(kernel0.shape[0], np.float32), 1.0,
                       kernel.numpy(), bias.numpy(), dict(head.params, fine_tuned=True))
    return tuned, losses


@dataclass
class FineTuning:
    """What `fine_tune` found: the report block, and when kept the tuned model and its
    temperature-calibrated head with {"cv", "train", "test"} probabilities."""

    report: dict
    head: LinearHead | None = None
    model: object | None = None  # pixels -> features Keras model
    probs: dict = field(default_factory=dict)

    @property
    def kept(self) -> bool:
        return self.model is not None


def not_tried(reason: str) -> FineTuning:
    """The outcome when fine-tuning cannot run: the frozen model stays, `reason` says why."""
    return FineTuning({"tried": False, "kept": False, "reason": reason})


def fine_tune(name: str, make_backbone: Callable[[], object], train_items: Sequence[Item],
              test_items: Sequence[Item], labels: np.ndarray, classes: list[str],
              candidates: dict[str, np.ndarray], val_masks: list[np.ndarray] | None,
              groups: np.ndarray | None, seed: int, frozen_cv_probs: np.ndarray | None,
              progress: Callable[[int, int], None] | None = None) -> FineTuning:
    """Fine-tune backbone `name` (built by `make_backbone()`, only if supported) on the frozen
    recipe's outer folds `val_masks`, and keep the result if `decide` prefers it to the frozen
    recipe's calibrated CV probabilities `frozen_cv_probs` on the same images.

    `candidates` are the frozen head's candidate inputs on the training images (as
    `models.heads.train_head` takes them). When kept, the tuned top and head are retrained on
    all training images and calibrated by a temperature fitted on the tuned CV logits.
    `progress(done, total)` is called after each fold and the final fit (its caller may raise
    there to cancel).
    """
    if not supported(name):
        return not_tried(f"not supported for {get_spec(name).title}: EfficientNet-Lite only; "
                         "kept the frozen model")
    if not val_masks or frozen_cv_probs is None:
        return not_tried("needs cross-validation (at least 2 images per class) to decide; "
                         "kept the frozen model")
    began = time.perf_counter()
    network = TunableNetwork(make_backbone())
    store = SplitFeatures(network, train_items)
    n = len(labels)
    cv_logits = np.zeros((n, len(classes)))
    total = len(val_masks) + 1
    for k, val in enumerate(val_masks):
        rows = ~val
        # A linear head: phase 2 trains it end to end with the top (`tune` folds it).
        head = train_head({c: x[rows] for c, x in candidates.items()}, labels[rows], classes,
                          None if groups is None else groups[rows], seed)
        tuned, _ = tune(network, store, head, labels, rows, seed + k)
        cv_logits[val] = tuned.logits(store.head_input(tuned.params["views"], val))
        if progress:
            progress(k + 1, total)
    tuned_cv = cross_fit_temperature(cv_logits, labels, val_masks)
    true = np.arange(n), labels
    decision = decide(-np.log(np.clip(frozen_cv_probs[true], 1e-12, 1.0)),
                      -np.log(np.clip(tuned_cv[true], 1e-12, 1.0)),
                      frozen_cv_probs.argmax(axis=1) == labels, tuned_cv.argmax(axis=1) == labels)
    report = {"tried": True, "kept": decision.kept, "reason": decision.reason,
              "cv": decision.figures, "epochs": EPOCHS, "learning_rate": LEARNING_RATE}
    if not decision.kept:
        report["seconds"] = round(time.perf_counter() - began, 3)
        return FineTuning(report)
    head = train_head(candidates, labels, classes, groups, seed)
    tuned, _ = tune(network, store, head, labels, np.ones(n, bool), seed + len(val_masks))
    tuned = apply_temperature(tuned, fit_temperature(cv_logits, labels))
    views = tuned.params["views"]
    probs = {"cv": tuned_cv, "train": softmax(tuned.logits(store.head_input(views))),
             "test": (softmax(tuned.logits(SplitFeatures(network, test_items).head_input(views)))
                      if test_items else None)}
    if progress:
        progress(total, total)
    report["seconds"] = round(time.perf_counter() - began, 3)
    return FineTuning(report, tuned, network.features_model(), probs)


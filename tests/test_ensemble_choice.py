"""Which ensemble a training keeps: the one with the lowest cross-validated log-loss, so a
majority vote's near-hard probabilities never cost calibration for an accuracy edge that
cross-validation cannot tell from noise (issue 14)."""
import io

import numpy as np
import pytest
from PIL import Image

from models.datasets import Sample
from models.features import FeatureCache
from models.images import sha256_hex
from models.training import _choose_ensemble, train

pytestmark = pytest.mark.unit


def entry(accuracy, loss):
    return {"cv_accuracy": accuracy, "cv": {"log_loss": loss, "accuracy": accuracy}}


def test_a_more_accurate_vote_with_near_hard_probabilities_is_not_chosen():
    ensembles = {"vote": entry(0.72, 2.9), "mean": entry(0.70, 0.81), "weighted": entry(0.70, 0.84)}
    key, why = _choose_ensemble(ensembles, 3)
    assert key == "mean"
    assert "log-loss" in why and "majority vote 2.900 (72.0% accurate)" in why


def test_equal_log_loss_goes_to_the_more_accurate():
    ensembles = {"vote": entry(0.6, 1.5), "mean": entry(0.70, 0.8), "weighted": entry(0.75, 0.8)}
    assert _choose_ensemble(ensembles, 3)[0] == "weighted"


def test_without_cross_validation_the_mean_keeps_the_probabilities():
    ensembles = {"vote": {"cv_accuracy": None}, "mean": {"cv_accuracy": None},
                 "weighted": {"cv_accuracy": None}}
    key, why = _choose_ensemble(ensembles, 2)
    assert key == "mean" and "no cross-validation" in why


class SliceBackbone:
    """A stand-in backbone: a fixed slice of the pixels, so the three disagree."""
    input_size = 16

    def __init__(self, offset):
        self.offset = offset

    def features(self, pixels, batch_size=32):
        flat = pixels.reshape(len(pixels), -1).astype(np.float32) / 255
        return flat[:, self.offset:self.offset + 48] + 0.01


def png(pixels):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def test_training_keeps_the_ensemble_with_the_lowest_cv_log_loss(tmp_path):
    rng = np.random.default_rng(0)
    samples = []
    for label, level in (("dark", 90), ("light", 150), ("mid", 120)):
        for i in range(8):
            noisy = rng.normal(level, 45, (16, 16, 3)).clip(0, 255).astype(np.uint8)
            data = png(noisy)
            samples.append(Sample(sha256_hex(data), label, f"{label}{i}.png", data))
    names = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    backbones = {n: SliceBackbone(48 * k) for k, n in enumerate(names)}
    report = train(samples, names, FeatureCache(tmp_path), backbones.__getitem__).report
    losses = {k: e["cv"]["log_loss"] for k, e in report["ensembles"].items() if e["cv"]}
    assert set(losses) == {"vote", "mean", "weighted"}
    assert report["ensemble"]["key"] == min(losses, key=losses.get)
    assert losses["vote"] > min(losses.values())  # vote shares are near-hard probabilities
    assert "lowest cross-validated log-loss" in report["ensemble"]["why"]

""""None of these" (models.ood): CV-calibrated OOD scores on embeddings, saved with the
iteration, answered by the predictor even where the softmax is confident."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from helpers import photo_variants

from models.backbones import load_backbone
from models.datasets import Sample
from models.features import FeatureCache
from models.ood import OOD_FILE, QUANTILE, Scorer, fit_ood, held_out_scores, load_ood
from models.predictor import UNKNOWN, Predictor
from models.training import train

LITE0 = "efficientnet_lite0"


def _clusters(rng, n, centres, spread=0.3):
    """n points per centre (unit directions in 64-d), with Gaussian noise."""
    x = np.concatenate([c + spread * rng.standard_normal((n, len(c))) for c in centres])
    return x, np.repeat(np.arange(len(centres)), n)


@pytest.mark.unit
@pytest.mark.parametrize("method", ["knn", "mahalanobis"])
def test_calibrated_threshold_separates_another_cluster(method):
    rng = np.random.default_rng(0)
    centres = np.eye(64)[:2] * 5
    x, y = _clusters(rng, 60, centres)
    held, _ = _clusters(rng, 100, centres)
    far, _ = _clusters(rng, 200, [np.eye(64)[5] * 5])
    folds = [np.arange(len(x)) % 5 == f for f in range(5)]
    model = fit_ood({"b": x}, y, [f"{i:064x}" for i in range(len(x))], folds, method=method)
    entry = model.info["backbones"]["b"]
    # The threshold is the quantile of held-out (other-fold) scores, so those agree.
    cv = held_out_scores(method, x, y, folds)
    assert entry["threshold"] == pytest.approx(np.quantile(cv, QUANTILE))
    assert entry["cv_unknown_rate"] <= 1 - QUANTILE + 1e-9
    answer = model.answer(model.scores({"b": np.concatenate([held, far])}))
    unknown = np.array([a["unknown"] for a in answer["ensemble"]])
    assert unknown[:200].mean() <= 0.05  # in-distribution: rarely unknown
    assert unknown[200:].mean() >= 0.9  # another cluster: unknown
    assert [a["unknown"] for a in answer["backbones"]["b"]] == list(unknown)  # one backbone


@pytest.mark.unit
def test_knn_score_of_a_training_point_is_zero_and_grows_with_distance():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 16))
    scorer = Scorer("knn", x, np.zeros(30, int), k=1)
    assert scorer.score(x[:3]) == pytest.approx(0, abs=1e-9)
    away = scorer.score(np.stack([x[0] + 0.1 * rng.standard_normal(16),
                                  x[0] + 2.0 * rng.standard_normal(16)]))
    assert away[0] < away[1]
    with pytest.raises(ValueError, match="unknown OOD method 'nope'"):
        Scorer("nope", x, np.zeros(30, int))


@pytest.mark.unit
def test_no_cv_folds_means_no_ood_model():
    x = np.ones((2, 4))
    assert fit_ood({"b": x}, np.array([0, 1]), ["a" * 64, "b" * 64], None) is None


def _samples(photos: dict, per: int, seed: int) -> list[Sample]:
    import hashlib
    import io

    from skimage import data

    out = []
    for j, (label, name) in enumerate(photos.items()):
        for i, im in enumerate(photo_variants(getattr(data, name)(), per, seed + j)):
            buf = io.BytesIO()
            im.save(buf, "PNG")
            raw = buf.getvalue()
            out.append(Sample(hashlib.sha256(raw).hexdigest(), label, f"{label}/{i}.png", raw))
    return out


@pytest.fixture(scope="module")
def two_class_result(tmp_path_factory):
    """EfficientNet-Lite0 (real weights) trained on two photo classes, 20 images each."""
    cache = FeatureCache(tmp_path_factory.mktemp("cache"))
    samples = _samples({"cat": "chelsea", "coffee": "coffee"}, 20, 0)
    result = train(samples, [LITE0], cache, load_backbone, view_policies=("none",))
    return result.save(tmp_path_factory.mktemp("result"))


@pytest.mark.integration
def test_other_images_answer_unknown_and_held_out_ones_do_not(two_class_result):
    """Train on two classes; images of the same classes held out are rarely unknown (<= 5 %),
    images from other sets (digits, other photos) are unknown (>= 90 %), even where the
    softmax is sure of its answer."""
    from PIL import Image
    from sklearn.datasets import load_digits

    predictor = Predictor(two_class_result, load_backbone)
    assert predictor.result.ood is not None
    assert predictor.result.report["ood"]["backbones"][LITE0]["method"] == "knn"
    held = [s.image() for s in _samples({"cat": "chelsea", "coffee": "coffee"}, 20, 50)]
    digits = load_digits()
    others = [Image.fromarray((255 - digits.images[i] * 255 / 16).astype(np.uint8))
              .resize((64, 64)).convert("RGB") for i in range(20)]
    others += [s.image() for s in _samples({"a": "astronaut", "c": "camera", "r": "rocket",
                                            "h": "hubble_deep_field"}, 5, 70)]
    inside = predictor.predict(held)
    outside = predictor.predict(others)
    assert np.mean([a["ensemble"]["unknown"] for a in inside]) <= 0.05
    assert np.mean([a["ensemble"]["unknown"] for a in outside]) >= 0.9
    for a in outside:
        if a["ensemble"]["unknown"]:
            assert a["ensemble"]["label"] == UNKNOWN
            assert a["ensemble"]["reason"] == "unlike any class"
            assert a["ensemble"]["best_guess"] in ("cat", "coffee")
            assert a["ood"][LITE0]["score"] > a["ood"][LITE0]["threshold"]
    # confident softmax, still unknown: the point of the OOD score
    assert any(a["ensemble"]["unknown"] and a["ensemble"]["score"] >= 0.9 for a in outside)
    for a in inside:
        if not a["ensemble"]["unknown"]:
            assert a["ensemble"]["label"] in ("cat", "coffee")


@pytest.mark.integration
def test_an_iteration_saved_without_ood_still_predicts(two_class_result, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(two_class_result, old)
    (old / OOD_FILE).unlink()
    shutil.rmtree(old / "embeddings")
    assert load_ood(old) is None
    from PIL import Image

    answer = Predictor(old, load_backbone).predict([Image.new("RGB", (64, 64), (128, 128, 128))])[0]
    assert "ood" not in answer and "unknown" not in answer["ensemble"]
    assert answer["ensemble"]["label"] in ("cat", "coffee")

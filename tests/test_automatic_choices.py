"""Each choice Transferlab makes for the user, checked on a case where the right answer is known."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import photo_variants
from PIL import Image
from skimage import data as photos

from models.backbones import load_backbone
from models.datasets import read_dataset
from models.ensemble import fit_weights
from models.features import FeatureCache
from models.heads import cross_fit_temperature, fit_temperature, make_folds, softmax
from models.metrics import expected_calibration_error
from models.predictor import answers
from models.training import train


@pytest.mark.integration
def test_views_that_hide_the_class_are_not_chosen_where_orientation_matters(tmp_path):
    """Upright photos against the same kind of photos upside down: averaged over the eight
    flips and turns, an image and its half-turn look exactly alike, so CV must keep the
    plain view, and still tell the classes apart."""
    root = tmp_path / "orientation"
    for label in ("upright", "upside_down"):
        (root / label).mkdir(parents=True)
    for seed, name in enumerate(("chelsea", "coffee", "rocket", "astronaut")):
        variants = photo_variants(getattr(photos, name)(), 6, 100 + seed)
        for i, im in enumerate(variants):
            if i % 2:  # each photo's variants are split between the classes: no shortcut
                im = im.transpose(Image.Transpose.ROTATE_180)
                im.save(root / "upside_down" / f"{name}_{i}.jpg", quality=90)
            else:
                im.save(root / "upright" / f"{name}_{i}.jpg", quality=90)
    dataset = read_dataset(root)
    result = train(dataset.samples, ["efficientnet_lite0"], FeatureCache(tmp_path / "cache"),
                   load_backbone)
    entry = result.report["backbones"]["efficientnet_lite0"]
    views = entry["hyperparameters"]["views"]
    assert views.partition("+")[0] == "none", views
    assert all(v.partition("+")[0] == "none" for v in entry["calibration"]["cv_views_chosen_per_fold"])
    assert entry["cv_accuracy"] >= 0.75


@pytest.mark.unit
def test_temperature_scaling_lowers_the_calibration_error_of_an_overconfident_model():
    rng = np.random.default_rng(0)
    n, classes = 600, 4
    labels = rng.integers(0, classes, n)
    # A model right about 70% of the time whose logits are five times too sharp.
    honest = rng.normal(0, 1, (n, classes))
    honest[np.arange(n), labels] += 1.5
    overconfident = 5 * honest
    before = expected_calibration_error(softmax(overconfident), labels)
    assert fit_temperature(overconfident, labels) > 2
    folds = make_folds(labels, seed=0)
    after = expected_calibration_error(cross_fit_temperature(overconfident, labels, folds), labels)
    assert before > 0.15 and after < before / 3


@pytest.mark.unit
def test_threshold_answers_unknown_and_keeps_the_best_guess():
    probs = {"a": np.array([[0.55, 0.45], [0.95, 0.05]]), "b": np.array([[0.6, 0.4], [0.9, 0.1]])}
    sure, unsure = answers(probs, ["cat", "dog"], 1, {"key": "mean"}, threshold=0.8)[::-1]
    assert sure["ensemble"]["label"] == "cat" and "best_guess" not in sure["ensemble"]
    assert unsure["ensemble"]["label"] == "unknown"
    assert unsure["ensemble"]["best_guess"] == "cat" and unsure["ensemble"]["threshold"] == 0.8
    assert answers(probs, ["cat", "dog"], 1, {"key": "mean"})[0]["ensemble"]["label"] == "cat"


@pytest.mark.unit
def test_weighted_ensemble_trusts_the_backbone_that_generalises():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 300)
    good = np.full((300, 3), 0.1)
    good[np.arange(300), labels] = 0.8
    noise = rng.dirichlet(np.ones(3), 300)  # a backbone that knows nothing
    weights = fit_weights([good, noise], labels)
    assert weights[0] > 0.9 and abs(weights.sum() - 1) < 1e-6


@pytest.mark.unit
def test_near_duplicate_groups_stay_in_one_fold():
    labels = np.repeat([0, 1], 20)
    groups = np.arange(40)
    groups[[0, 1, 2]] = 100  # three copies of one picture
    groups[[25, 26]] = 101
    for seed in range(5):
        folds = make_folds(labels, groups, seed=seed)
        for members in ([0, 1, 2], [25, 26]):
            assert sum(fold[members].any() for fold in folds) == 1


@pytest.mark.unit
def test_the_inner_choice_averages_several_draws_of_folds():
    from models.heads import inner_repeats
    from models.heads.search import repeated_folds

    labels = np.repeat([0, 1, 2], 8)
    groups = np.arange(24)
    groups[[0, 1]] = 99  # a near-duplicate pair
    folds = repeated_folds(labels, groups, seed=3)
    repeats = inner_repeats(24)
    assert repeats == 3 and len(folds) == repeats * 5
    assert (np.sum(folds, axis=0) == repeats).all()  # every row validated once per draw
    draws = [folds[i * 5:(i + 1) * 5] for i in range(repeats)]
    assert len({tuple(np.argmax(draw, axis=0)) for draw in draws}) == repeats  # all differ
    assert all(sum(f[[0, 1]].any() for f in draw) == 1 for draw in draws)
    assert repeated_folds(np.array([0, 0, 1]), None, seed=0) is None  # CV impossible


@pytest.mark.unit
def test_fewer_draws_of_inner_folds_as_rows_grow():
    """Repeats cost time in proportion and matter less with more rows: 3, 2, then 1."""
    from models.heads import inner_repeats
    from models.heads.search import repeated_folds

    assert [inner_repeats(n) for n in (10, 79, 80, 133, 134, 500)] == [3, 3, 2, 2, 1, 1]
    assert len(repeated_folds(np.repeat(np.arange(10), 19), None, seed=0)) == 5  # 190 rows

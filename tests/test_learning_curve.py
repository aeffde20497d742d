"""The learning curve: points measured by refitting the chosen head on nested subsets of each
fold, the inverse power law and its band, per-class gains, and its place in the report."""
import time

import numpy as np
import pytest

from models.features import FeatureCache
from models.heads import make_folds
from models.learning_curve import (FRACTIONS, extrapolate, fit_power_law, learning_curve,
                                   nested_subsets, power_law)
from models.training import train


@pytest.mark.unit
def test_the_power_law_is_recovered_from_exact_points():
    n = np.array([50, 100, 150, 200.0])
    params = fit_power_law(n, 0.9 - 0.8 * n ** -0.5)
    np.testing.assert_allclose(params, [0.9, 0.8, 0.5], atol=1e-9)
    assert power_law(params, 400) == pytest.approx(0.9 - 0.8 * 400 ** -0.5)
    # Many curves at once give the same as one at a time.
    many = fit_power_law(n, np.stack([0.9 - 0.8 * n ** -0.5, 0.7 - 0.3 * n ** -1.0]))
    np.testing.assert_allclose(many[1], fit_power_law(n, 0.7 - 0.3 * n ** -1.0))


@pytest.mark.unit
def test_the_fit_never_promises_more_than_everything_nor_a_rising_flat_curve():
    n = np.array([10, 20, 30.0])
    steep = fit_power_law(n, np.array([0.5, 0.9, 0.99]))
    assert steep[0] <= 1 and power_law(steep, 1e6) <= 1
    falling = fit_power_law(n, np.array([0.8, 0.75, 0.7]))
    assert falling[1] == 0 and power_law(falling, 60) == pytest.approx(0.75)


@pytest.mark.unit
def test_the_band_contains_the_measured_full_point_on_a_synthetic_curve():
    """Accuracy truly follows 0.9 - 2 n^-0.6; each of 200 images is right at a point when
    its difficulty is below the accuracy there (so the points move together, as real
    ones do), and 5 % of answers flip between subsets. Fitted on 25-75 %, the 90 % band
    holds the 100 % measurement in at least 80 % of 50 draws, and the error stays small."""
    n = np.array([50, 100, 150, 200.0])
    truth = 0.9 - 2.0 * n ** -0.6
    inside, errors = [], []
    for seed in range(50):
        rng = np.random.default_rng(seed)
        right = ((rng.random(200)[None] < truth[:, None]) ^ (rng.random((4, 200)) < 0.05))
        early = extrapolate(n[:3], right[:3].astype(float), n[3], seed=seed)
        measured = right[3].mean()
        inside.append(early["low"] <= measured <= early["high"])
        errors.append(early["accuracy"] - measured)
        assert early["low"] <= early["accuracy"] <= early["high"]
    assert np.mean(inside) >= 0.8, np.mean(inside)
    assert np.mean(np.abs(errors)) < 0.04


@pytest.mark.unit
def test_subsets_are_stratified_nested_and_inside_the_fold():
    labels = np.repeat([0, 1, 2], [8, 12, 20])
    rows = np.ones(len(labels), bool)
    rows[::5] = False  # the fold's validation rows
    masks = nested_subsets(labels, rows, FRACTIONS, np.random.default_rng(0))
    for small, big in zip(masks, masks[1:]):
        assert (small <= big).all()  # nested
    assert (masks[-1] == rows).all()
    for mask, f in zip(masks, FRACTIONS):
        assert not (mask & ~rows).any()
        for c in range(3):
            assert mask[labels == c].sum() == max(1, round(f * (rows & (labels == c)).sum()))


def blobs(per_class=20, classes=3, seed=2):
    """Gaussian blobs in 16 dimensions, separable on average, with noise the head must
    average out (so that more images help)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, 16))
    y = np.repeat(np.arange(classes), per_class)
    return centres[y] + rng.normal(0, 4, (len(y), 16)), y


@pytest.mark.unit
def test_a_separable_toy_has_a_rising_four_point_curve():
    x, y = blobs()
    classes = ["a", "b", "c"]
    folds = make_folds(y, seed=0)
    curve = learning_curve(x, y, classes, folds, {"l2": 1e-3, "steps": 160})
    assert curve["fractions"] == list(FRACTIONS) and curve["n_images"] == [15, 30, 45, 60]
    acc = curve["accuracy"]
    assert len(acc) == 4 and acc[-1] >= 0.85
    assert all(b >= a - 0.05 for a, b in zip(acc, acc[1:])), acc  # monotone, give or take noise
    assert acc[-1] > acc[0]
    assert set(curve["per_class"]) == set(classes) and all(len(v) == 4 for v in curve["per_class"].values())
    ahead = curve["expected_at_2x"]
    assert ahead["n_images"] == 120 and ahead["low"] <= ahead["accuracy"] <= ahead["high"]
    assert ahead["level"] == 0.9 and set(ahead["fit"]) == {"a", "b", "c"}
    assert set(curve["classes_gaining_most"]) <= set(classes)
    assert all(curve["gain_per_doubling"][c] > 0 for c in curve["classes_gaining_most"])
    assert curve["cpu_seconds"] >= 0
    assert learning_curve(x, y, classes, None, {"l2": 1e-3, "steps": 160}) is None


@pytest.mark.unit
def test_the_class_that_needs_more_images_gains_most():
    """Class c's blob overlaps a's unless the head sees many images; b is easy from the start."""
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 30)
    centres = np.array([[0.0] * 8, [8.0] * 8, [1.2] * 8])
    x = centres[y] + rng.normal(0, 1.5, (90, 8))
    curve = learning_curve(x, y, ["a", "b", "c"], make_folds(y, seed=0), {"l2": 1e-4, "steps": 320})
    gains = curve["gain_per_doubling"]
    assert gains["b"] < max(gains["a"], gains["c"])
    assert "b" not in curve["classes_gaining_most"][:1]


@pytest.mark.integration
def test_training_reports_a_cheap_learning_curve_per_backbone(tmp_path):
    """Through `train` on real digits (the digit's pixels as features): every backbone's
    entry has the curve, and it costs well under a quarter of the run's CPU time."""
    from test_curation import PixelBackbone, digit_samples

    samples = digit_samples(20)
    began = time.process_time()  # the pixel "backbone" costs nothing: as a cached retrain
    report = train(samples, ["efficientnet_lite0"], FeatureCache(tmp_path),
                   lambda name: PixelBackbone(), view_policies=("none",)).report
    spent = time.process_time() - began
    curve = report["backbones"]["efficientnet_lite0"]["learning_curve"]
    assert curve["n_images"] == [50, 100, 150, 200]
    assert curve["accuracy"][-1] > curve["accuracy"][0]
    assert curve["expected_at_2x"]["n_images"] == 400
    assert curve["cpu_seconds"] < 0.25 * spent, (curve["cpu_seconds"], spent)


@pytest.mark.unit
def test_many_class_ridge_heads_are_refitted_in_closed_form():
    """The many-class path's head (`models.heads.ridge`: no "steps") gets a curve too."""
    x, y = blobs()
    params = {"solver": "ridge", "l2": 0.01, "logit_scale": 10.0}
    curve = learning_curve(x, y, ["a", "b", "c"], make_folds(y, seed=0), params)
    assert len(curve["accuracy"]) == 4 and curve["accuracy"][-1] >= 0.8
    assert curve["accuracy"][-1] > curve["accuracy"][0]

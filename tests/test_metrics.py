import numpy as np
import pytest

from models.heads import make_folds
from models.metrics import classification_report, expected_calibration_error, fold_accuracies

pytestmark = pytest.mark.unit


def test_report_on_hand_checked_case():
    classes = ["cat", "dog", "fox"]
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 0, 1])
    r = classification_report(y_true, y_pred, classes)
    assert r["accuracy"] == pytest.approx(3 / 6)
    assert r["confusion"]["matrix"] == [[2, 1, 0], [1, 1, 0], [0, 1, 0]]
    # cat: predicted 3 times, 2 right; 3 true cats, 2 found.
    assert r["per_class"]["cat"]["precision"] == pytest.approx(2 / 3)
    assert r["per_class"]["cat"]["recall"] == pytest.approx(2 / 3)
    # dog: predicted 3 times, 1 right; 2 true dogs, 1 found; F1 = 2PR/(P+R) = 0.4.
    assert r["per_class"]["dog"]["precision"] == pytest.approx(1 / 3)
    assert r["per_class"]["dog"]["recall"] == pytest.approx(1 / 2)
    assert r["per_class"]["dog"]["f1"] == pytest.approx(0.4)
    # fox never predicted: precision reported as 0, not NaN.
    assert r["per_class"]["fox"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_fold_accuracies_and_std():
    y_true = np.array([0, 1, 0, 1])
    y_pred = np.array([0, 1, 1, 1])
    masks = [np.array([1, 1, 0, 0], bool), np.array([0, 0, 1, 1], bool)]
    accs = fold_accuracies(y_true, y_pred, masks)
    assert accs == [1.0, 0.5]
    assert np.std(accs) == pytest.approx(0.25)


def test_folds_are_stratified_and_cover_every_row_once():
    labels = np.repeat([0, 1, 2], [5, 7, 3])
    masks = make_folds(labels)
    assert len(masks) == 3  # limited by the smallest class
    assert (np.sum(masks, axis=0) == 1).all()
    for m in masks:
        assert set(labels[m]) == {0, 1, 2}


def test_no_folds_when_a_class_has_one_image():
    assert make_folds(np.array([0, 0, 1])) is None


def test_groups_stay_in_one_fold():
    labels = np.repeat([0, 1], 6)
    groups = np.array([0, 0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9])
    for m in make_folds(labels, groups):
        for g in np.unique(groups):
            assert len(set(m[groups == g])) == 1


def test_ece_zero_when_confidence_matches_accuracy_and_high_when_overconfident():
    y = np.array([0, 1, 0, 1])
    honest = np.array([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    assert expected_calibration_error(honest, y) == pytest.approx(0.0)
    overconfident = np.array([[0.99, 0.01]] * 4)  # always "0" at 99%, right half the time
    assert expected_calibration_error(overconfident, y) == pytest.approx(0.49)


@pytest.mark.unit
def test_reliability_bins_pool_into_the_same_ece():
    from models.metrics import ece_of_bins, reliability

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4) * 0.5, size=200)
    y = rng.integers(0, 4, 200)
    bins = reliability(probs, y)
    assert sum(b["count"] for b in bins) == 200 and all(b["count"] > 0 for b in bins)
    assert all(0.25 <= b["confidence"] <= 1 for b in bins)  # 4 classes: top-1 >= 1/4
    assert ece_of_bins(bins) == pytest.approx(expected_calibration_error(probs, y))

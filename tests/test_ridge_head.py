"""The many-class path (issue 14): the closed-form ridge head, when it is taken, and the
per-training view budget that keeps a project of hundreds of images to one pass per image."""
import numpy as np
import pytest
from sklearn.linear_model import Ridge

from models.heads import fit_head, make_folds, softmax, train_and_cross_validate
from models.heads.ridge import (RIDGE_GRID, SCALE_GRID, fit_ridge, many_classes,
                                search_ridge)
from models.heads.search import Search


def _many(classes=120, per=3, d=64, spread=1.5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d))
    y = np.repeat(np.arange(classes), per)
    x = centres[y] + spread * rng.normal(size=(len(y), d))
    return x.astype(np.float32), y, centres


@pytest.mark.unit
def test_ridge_head_is_the_ridge_regression_optimum():
    x, y, _ = _many(classes=30, per=4, d=200)  # d > n: the row-span rotation matters
    classes = [f"c{i}" for i in range(30)]
    rows = np.ones(len(y), bool)
    params = {"solver": "ridge", "l2": 1e-2, "logit_scale": 7.0}
    head = fit_ridge(x, rows, y, classes, params)
    mean = x.mean(axis=0)
    scale = np.sqrt(((x - mean) ** 2).sum(axis=1).mean())
    z = (x - mean) / scale
    reference = Ridge(alpha=len(y) * 1e-2).fit(z, np.eye(30)[y])
    np.testing.assert_allclose(head.logits(x), 7.0 * reference.predict(z), atol=2e-4)
    assert head.params == {"head": "linear", **params}


@pytest.mark.unit
def test_ridge_search_scores_each_strength_as_separate_fits_would():
    x, y, _ = _many(classes=40, per=3, d=80)
    classes = [str(i) for i in range(40)]
    folds = make_folds(y, seed=0)
    rows = np.ones(len(y), bool)
    found = search_ridge([Search(x, rows, folds)], y, 40)[0]
    assert found["solver"] == "ridge"
    assert found["l2"] in RIDGE_GRID and found["logit_scale"] in SCALE_GRID

    def cv_loss(l2, scale):
        total = 0.0
        for val in folds:
            head = fit_ridge(x, ~val, y, classes, {"solver": "ridge", "l2": l2,
                                                    "logit_scale": scale})
            p = softmax(head.logits(x[val]).astype(np.float64))
            total -= np.log(p[np.arange(val.sum()), y[val]]).sum()
        return total / len(y)

    assert found["cv_log_loss"] == pytest.approx(cv_loss(found["l2"], found["logit_scale"]),
                                                 rel=1e-3)
    # The choice is the grid's best: its neighbours in either direction are no better.
    i, k = RIDGE_GRID.index(found["l2"]), SCALE_GRID.index(found["logit_scale"])
    for j, m in ((i - 1, k), (i + 1, k), (i, k - 1), (i, k + 1)):
        if 0 <= j < len(RIDGE_GRID) and 0 <= m < len(SCALE_GRID):
            assert cv_loss(RIDGE_GRID[j], SCALE_GRID[m]) >= found["cv_log_loss"] - 1e-4


@pytest.mark.unit
def test_the_ridge_path_is_chosen_by_problem_size():
    assert many_classes(900, 300) and many_classes(450, 150)
    # The 4-10 class sets of 19 images per class, and up to 20 such classes, keep the descent.
    for rows, classes in ((76, 4), (190, 10), (380, 20), (180, 60)):
        assert not many_classes(rows, classes)

    x, y, centres = _many(classes=120, per=3)
    classes = [str(i) for i in range(120)]
    assert many_classes(len(y), 120)
    folds = make_folds(y, seed=0)
    head, logits, chosen = train_and_cross_validate({"a": x, "b": np.sqrt(np.abs(x))}, y, classes,
                                                    folds)
    assert head.params["solver"] == "ridge" and "steps" not in head.params
    assert all(p["solver"] == "ridge" for p in chosen) and len(chosen) == len(folds)
    # Nested CV held-out predictions from 2 images per class, and new images, are far above
    # chance (1/120) on these blobs.
    assert (logits.argmax(axis=1) == y).mean() > 0.5
    test = centres + 1.5 * np.random.default_rng(1).normal(size=centres.shape)
    assert (head.predict_proba(test.astype(np.float32)).argmax(axis=1) == np.arange(120)).mean() > 0.7
    # fit_head on the chosen params gives the same head.
    again = fit_head(x if head.params["views"] == "a" else np.sqrt(np.abs(x)), y, classes,
                     head.params)
    np.testing.assert_allclose(again.logits(test), head.logits(test), rtol=1e-5, atol=1e-5)

    small_x, small_y, _ = _many(classes=4, per=10)
    small, _, _ = train_and_cross_validate(small_x, small_y, list("abcd"), make_folds(small_y))
    assert "solver" not in small.params and small.params["steps"] > 0  # the descent


@pytest.mark.unit
def test_views_are_not_offered_past_the_training_budget():
    from models.features import TRAINING_VIEW_BUDGET_GFLOPS, view_policies_for
    from models.registry import BACKBONES

    lite0, lite2 = BACKBONES["efficientnet_lite0"].gflops, BACKBONES["efficientnet_lite2"].gflops
    assert view_policies_for(lite0, n_images=76) == ("none", "dihedral")  # galaxy draws
    assert view_policies_for(lite2, n_images=190) == ("none", "dihedral")  # digits draws
    assert view_policies_for(lite0, n_images=900) == ("none",)  # 300 classes x 3 images
    edge = int(TRAINING_VIEW_BUDGET_GFLOPS // (8 * lite0))
    assert view_policies_for(lite0, n_images=edge) == ("none", "dihedral")
    assert view_policies_for(lite0, n_images=edge + 1) == ("none",)


@pytest.mark.unit
def test_many_class_reports_write_confusions_as_their_non_zero_cells():
    from models.training import DENSE_CONFUSION_CLASSES, _entry

    rng = np.random.default_rng(0)
    for n in (DENSE_CONFUSION_CLASSES, DENSE_CONFUSION_CLASSES + 1):
        classes = [f"c{i}" for i in range(n)]
        y = np.repeat(np.arange(n), 3)
        probs = softmax(rng.normal(size=(len(y), n)) + 2.0 * np.eye(n)[y])
        folds = make_folds(y, seed=0)
        samples = [type("S", (), {"sha256": f"{i:064x}", "source": f"{i}.jpg"})() for i in range(len(y))]
        entry = _entry({"cv": probs, "train": probs, "test": None}, {"cv": y, "train": y,
                       "test": np.zeros(0, int)}, {"cv": samples, "train": samples, "test": []},
                       classes, folds)
        dense = np.zeros((n, n), int)
        np.add.at(dense, (y, probs.argmax(axis=1)), 1)
        shown, other = entry["confusion"], entry["train"]["confusion"]
        assert shown["source"] == "cv" and "confusion" not in entry["cv"]  # moved, not copied
        for confusion in (shown, other):
            if n <= DENSE_CONFUSION_CLASSES:
                assert confusion["matrix"] == dense.tolist() and "cells" not in confusion
            else:
                assert "matrix" not in confusion and confusion["labels"] == classes
                rebuilt = np.zeros((n, n), int)
                for i, j, count in confusion["cells"]:
                    assert count > 0
                    rebuilt[i, j] = count
                np.testing.assert_array_equal(rebuilt, dense)
        # The per-image out-of-fold rows stay, one per image.
        assert [p["pred"] for p in entry["predictions"]["cv"]] == [classes[k] for k in probs.argmax(1)]

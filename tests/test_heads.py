import numpy as np
import pytest

from models.heads import (L2_GRID, STEP_GRID, HiddenHead, LinearHead, apply_temperature,
                          fit_head, head_from_keras, make_folds, softmax,
                          train_and_cross_validate, train_head)
from models.heads.kinds import HIDDEN_UNITS
from models.heads.search import survivors


def _blobs(n_per=12, d=300, classes=3, spread=1.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d))
    x = np.concatenate([centres[c] + spread * rng.normal(size=(n_per, d)) for c in range(classes)])
    return x.astype(np.float32), np.repeat(np.arange(classes), n_per)


def _reference_descent(x, y, n_classes, l2, steps):
    """The same Nesterov descent as models.heads, done naively in the full feature space."""
    mean = x.mean(axis=0)
    scale = np.sqrt(((x - mean) ** 2).sum(axis=1).mean())
    z = (x - mean) / scale
    onehot = np.eye(n_classes)[y]
    lipschitz = 0.5 * (np.linalg.eigvalsh(z @ z.T)[-1] / len(z) + 1.0)
    rate = 1.0 / (lipschitz + l2)
    w = prev_w = np.zeros((z.shape[1], n_classes))
    b = prev_b = np.zeros(n_classes)
    for step in range(1, steps + 1):
        m = (step - 1) / (step + 2)
        lw, lb = w + m * (w - prev_w), b + m * (b - prev_b)
        r = (softmax(z @ lw + lb) - onehot) / len(z)
        prev_w, prev_b = w, b
        w = lw - rate * (z.T @ r + l2 * lw)
        b = lb - rate * r.sum(axis=0)
    return softmax(z @ w + b)


@pytest.mark.unit
def test_descent_in_the_row_span_equals_descent_in_full_space():
    x, y = _blobs(n_per=8, d=200, spread=3.0)
    head = fit_head(x, y, ["a", "b", "c"], {"l2": 0.01, "steps": 50})
    expected = _reference_descent(x.astype(np.float64), y, 3, 0.01, 50)
    np.testing.assert_allclose(head.predict_proba(x), expected, atol=1e-5)


@pytest.mark.unit
def test_head_learns_separable_classes_and_generalises():
    x, y = _blobs(n_per=20, spread=1.0)
    head = train_head(x[::2], y[::2], ["a", "b", "c"])
    assert (head.predict_proba(x[1::2]).argmax(axis=1) == y[1::2]).mean() >= 0.9


def _linear_params(x, y, n_classes, groups=None):
    """What CV chooses for a linear head on these rows."""
    return train_head(x, y, [str(c) for c in range(n_classes)], groups).params


@pytest.mark.unit
def test_the_search_picks_from_the_grids_and_reports_cv_loss():
    x, y = _blobs(n_per=10, spread=2.0)
    params = _linear_params(x, y, 3)
    assert params["l2"] in L2_GRID and params["steps"] in STEP_GRID
    assert 0 < params["cv_log_loss"] < np.log(3) + 1


@pytest.mark.unit
def test_noise_labels_get_strong_regularisation_or_short_training():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 300)).astype(np.float32)
    y = rng.integers(0, 2, 40)
    y[:2] = [0, 1]
    params = _linear_params(x, y, 2)
    # With nothing to learn, CV must not pick the longest, least regularised run.
    assert not (params["l2"] == min(L2_GRID) and params["steps"] == max(STEP_GRID))
    assert params["cv_log_loss"] < np.log(2) + 0.05


@pytest.mark.integration
def test_nested_cv_predicts_every_row_from_a_model_that_never_saw_it():
    x, y = _blobs(n_per=10, spread=1.0)
    masks = make_folds(y)
    probs = softmax(train_and_cross_validate(x, y, ["a", "b", "c"], masks)[1])
    assert probs.shape == (30, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert (probs.argmax(axis=1) == y).mean() >= 0.9


@pytest.mark.unit
def test_keras_export_matches_numpy_head():
    x, y = _blobs(n_per=6, d=64)
    head = fit_head(x, y, ["a", "b", "c"], {"l2": 0.01, "steps": 40})
    model = head.to_keras()
    np.testing.assert_allclose(model.predict(x, verbose=0), head.predict_proba(x), atol=1e-5)
    back = LinearHead.from_keras(model, ["a", "b", "c"])
    np.testing.assert_allclose(back.predict_proba(x), head.predict_proba(x), atol=1e-5)


@pytest.mark.integration
def test_batched_search_makes_the_choices_of_one_search_at_a_time():
    """One batched descent (candidates x outer folds x inner folds) = the plain definition:
    per outer fold, `train_head` (one draw of folds) on its training rows alone, scoring its
    held-out rows."""
    x, y = _blobs(n_per=9, d=40, spread=2.5)
    candidates = {"raw": x, "sqrt": np.sqrt(np.abs(x))}
    groups = np.arange(len(y)) // 2  # pairs of rows stay together
    masks = make_folds(y, groups)
    head, logits, chosen = train_and_cross_validate(candidates, y, ["a", "b", "c"], masks, groups)
    alone = train_head(candidates, y, ["a", "b", "c"], groups)
    assert head.params == alone.params
    np.testing.assert_allclose(head.weight, alone.weight, atol=1e-6)
    for val, fold_params in zip(masks, chosen):
        train = ~val
        inner = train_head({k: v[train] for k, v in candidates.items()}, y[train],
                           ["a", "b", "c"], groups[train], repeats=1)
        _assert_same_choice(inner.params, fold_params)
        views = fold_params["views"]
        np.testing.assert_allclose(logits[val], inner.logits(candidates[views][val]), atol=1e-6)
    # Each search stops on its own: searching the chosen input alone gives the same answer.
    views = head.params["views"]
    alone = train_head({views: candidates[views]}, y, ["a", "b", "c"], groups).params
    assert _choice(alone) == _choice(head.params)


def _xor(n_per=16, d=12, seed=0):
    """Two classes as the diagonals of four clusters in 2 dims (no line separates them),
    plus noise dimensions."""
    rng = np.random.default_rng(seed)
    corner = np.repeat(np.arange(4), n_per)
    centres = np.array([[1, 1], [-1, -1], [1, -1], [-1, 1]])[corner]
    x = np.concatenate([centres + 0.3 * rng.normal(size=(len(corner), 2)),
                        0.3 * rng.normal(size=(len(corner), d - 2))], axis=1)
    return x.astype(np.float32), (corner >= 2).astype(int)


def _random_hidden_head(dim, seed=0):
    rng = np.random.default_rng(seed)
    return HiddenHead(["a", "b"], rng.normal(size=dim).astype(np.float32), 2.0,
                      rng.normal(0, dim ** -0.5, (dim, HIDDEN_UNITS)).astype(np.float32),
                      np.full(HIDDEN_UNITS, 0.1, np.float32),
                      rng.normal(0, 0.5, (HIDDEN_UNITS, 2)).astype(np.float32),
                      np.zeros(2, np.float32), {"head": "hidden"})


@pytest.mark.unit
def test_saved_hidden_heads_still_load_and_take_a_temperature(tmp_path):
    """No hidden head is trained any more; results saved with one must still serve."""
    x, y = _xor(seed=3)
    head = _random_hidden_head(x.shape[1])
    path = tmp_path / "hidden.keras"
    head.to_keras().save(path)
    back = head_from_keras(path, ["a", "b"], head.params)
    assert isinstance(back, HiddenHead) and back.params == head.params
    np.testing.assert_allclose(back.predict_proba(x), head.predict_proba(x), atol=1e-6)
    cooled = apply_temperature(head, 2.0)
    np.testing.assert_allclose(cooled.logits(x), head.logits(x) / 2, rtol=1e-5, atol=1e-5)
    assert cooled.params["temperature"] == 2.0 and "temperature" not in head.params
    linear = fit_head(x, y, ["a", "b"], {"l2": 1e-3, "steps": 40})
    assert isinstance(head_from_keras(linear.to_keras(), ["a", "b"]), LinearHead)


@pytest.mark.unit
def test_pruning_rule_keeps_strengths_near_the_best():
    loss = {0: 0.30, 1: 0.40, 2: 0.41, 3: 0.45}
    assert survivors(loss, best=0.30) == [0, 1]  # 0.41 is 0.11 behind: dropped
    assert survivors(loss, best=0.15) == []  # every one fell far behind an earlier best


@pytest.mark.integration
def test_pruning_keeps_the_choice_on_a_small_case(monkeypatch):
    """Successive halving only saves time here: without it, the same choices."""
    from models.heads import search
    from models.heads.descent import Descent

    x, y = _blobs(n_per=10, d=80, spread=2.5, seed=4)
    hx, hy = _xor(n_per=8, seed=4)
    pruned = [_linear_params(x, y, 3), _linear_params(hx, hy, 2)]
    narrowed = []
    monkeypatch.setattr(Descent, "select",
                        lambda self, slots, real=Descent.select: (
                            narrowed.append(slots.shape[1]), real(self, slots))[1])
    assert _choice(_linear_params(x, y, 3)) == _choice(pruned[0])
    assert min(narrowed) < len(L2_GRID)  # it does prune
    monkeypatch.setattr(search, "PRUNE_GAP", np.inf)
    unpruned = [_linear_params(x, y, 3), _linear_params(hx, hy, 2)]
    assert [_choice(p) for p in unpruned] == [_choice(p) for p in pruned]
    # float32 products batched in other shapes round differently: losses agree, not bits
    np.testing.assert_allclose([p["cv_log_loss"] for p in unpruned],
                               [p["cv_log_loss"] for p in pruned], rtol=1e-4)


def _choice(params):
    return params["l2"], params["steps"]


def _assert_same_choice(params, expected):
    """Equal choices; the CV losses behind them equal up to float32 rounding (the problems
    were batched in differently shaped arrays)."""
    assert {k: v for k, v in params.items() if k != "cv_log_loss"} == \
        {k: v for k, v in expected.items() if k != "cv_log_loss"}
    np.testing.assert_allclose(params["cv_log_loss"], expected["cv_log_loss"], rtol=1e-3,
                               atol=1e-4)


@pytest.mark.unit
def test_softmax_without_max_shift_matches_and_stays_finite():
    from models.heads.descent import softmax_few

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 5, (3, 7, 4))
    np.testing.assert_allclose(softmax_few(logits), softmax(logits), rtol=1e-12)
    huge = np.array([[500.0, -500.0, 0.0], [-900.0, -950.0, -990.0]], np.float32)
    probs = softmax_few(huge)
    assert np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1)
    assert probs[0].argmax() == 0  # (the second row, all clipped, is uniform: no NaN)


@pytest.mark.unit
def test_calibration_is_dropped_where_it_does_not_lower_cv_log_loss():
    from models.heads import decide_temperature

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (60, 3))
    # Labels drawn from softmax(logits): calibrated already, a fitted T only adds noise.
    y = np.array([rng.choice(3, p=p) for p in softmax(logits)])
    masks = make_folds(y)
    t, probs, figures = decide_temperature(logits, y, masks)
    assert t is None and not figures["temperature_kept"]
    assert figures["cv_log_loss_calibrated"] >= figures["cv_log_loss_uncalibrated"]
    np.testing.assert_allclose(probs, softmax(logits))
    # Far overconfident logits: the temperature pays, and is kept (T > 1).
    t, probs, figures = decide_temperature(8 * logits, y, masks)
    assert figures["temperature_kept"] and t > 2
    assert figures["cv_log_loss_calibrated"] < figures["cv_log_loss_uncalibrated"]


@pytest.mark.unit
def test_search_reports_progress_monotonically_to_the_end():
    x, y = _blobs(n_per=8, d=50, spread=2.0)
    seen = []
    train_and_cross_validate(x, y, ["a", "b", "c"], make_folds(y), progress=seen.append)
    assert len(seen) > 3 and seen == sorted(seen) and seen[-1] == 1.0

"""Softmax heads on cached features, with their input and hyper-parameters chosen by CV.

A head is a linear softmax layer on standardised features (`LinearHead`, a Keras `Dense` when
saved), trained by full-batch descent on cached features. Three facts make choosing its
hyper-parameters by cross-validation cheap enough to need no user knobs:

* Started at zero, gradient descent on an L2-penalised linear model only ever moves the weights
  inside the span of the training rows. So we rotate the features onto that span (an SVD of
  the training rows: at most n dimensions instead of 512-2048) and run the *same* descent
  there, exactly, then rotate the weights back.
* Every (fold, L2 strength) pair is trained at once as one batched array problem, and the
  validation predictions are read at several step counts along the way, so the training
  length is chosen from the same run; an L2 strength far behind the best is dropped from the
  run early (successive halving).
* Only the training rows take part in a descent; held-out rows are scored at checkpoints.

The criterion is validation log-loss (a proper score; accuracy on a few dozen images is too
coarse to rank hyper-parameters), ties going to the stronger penalty and the shorter run.

A head with one hidden layer (`HiddenHead`, Dense-ReLU-Dense) was also searched until issue 14:
CV chose it in 3 of 20 galaxy and 1-2 of 10 digits draws, with no accuracy gained, at 60% of
the search's time, so it is no longer trained; the class stays so saved results still load.

This module holds the public entry points (`train_head`, `train_and_cross_validate`,
`fit_head`, `head_from_keras`) and re-exports the rest of the public API; other code imports
from `models.heads` only. Inside the package: `kinds` (the heads), `export` (their Keras
form), `descent` (what the batched solver needs), `linear` (the solver), `fit` (heads of
chosen params), `search` (folds, grids, CV with successive halving, the choice of input),
`calibration` (temperature), `ridge` (the closed-form solver for many classes). Each
constant is read in the module that defines it, so a test
that changes one sets it there (e.g. `models.heads.search.PRUNE_GAP`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .calibration import (
    apply_temperature,
    cross_fit_temperature,
    decide_temperature,
    fit_temperature,
)
from .descent import one_blas_thread
from .fit import fit_chosen
from .kinds import Head, HiddenHead, LinearHead, softmax
from .ridge import many_classes, search_ridge
from .search import (
    DEFAULT_PARAMS,
    L2_GRID,
    MAX_FOLDS,
    PRUNE_FROM,
    PRUNE_GAP,
    STEP_GRID,
    SWITCH_MARGIN,
    Candidates,
    Search,
    as_candidates,
    inner_repeats,
    make_folds,
    pick,
    repeated_folds,
    search_all,
    spread,
)

__all__ = [
    "DEFAULT_PARAMS",
    "L2_GRID",
    "MAX_FOLDS",
    "PRUNE_FROM",
    "PRUNE_GAP",
    "STEP_GRID",
    "SWITCH_MARGIN",
    "Candidates",
    "Head",
    "HiddenHead",
    "LinearHead",
    "apply_temperature",
    "cross_fit_temperature",
    "decide_temperature",
    "fit_head",
    "fit_temperature",
    "head_from_keras",
    "inner_repeats",
    "make_folds",
    "softmax",
    "train_and_cross_validate",
    "train_head",
]


def train_head(features: np.ndarray | Candidates, labels: np.ndarray, classes: list[str],
               groups: np.ndarray | None = None, seed: int = 0,
               repeats: int | None = None) -> Head:
    """Choose the input, L2 and training length by CV on these images, then fit on all of
    them.

    `features` is one (n, d) array, or {name: (n, d) array} of candidate inputs for the same
    images (e.g. one per view policy, simplest first): the head uses the candidate with the
    best CV log-loss, and records its name in `params["views"]` ("linear" in `params["head"]`).
    The CV draws `repeats` sets of folds (default `inner_repeats(len(labels))`).
    """
    return train_and_cross_validate(features, labels, classes, None, groups, seed,
                                    repeats=repeats)[0]


def train_and_cross_validate(
    features: np.ndarray | Candidates, labels: np.ndarray, classes: list[str],
    val_masks: list[np.ndarray] | None, groups: np.ndarray | None = None, seed: int = 0,
    progress: Callable[[float], None] | None = None, repeats: int | None = None,
) -> tuple[Head, np.ndarray | None, list[dict]]:
    """`train_head` on all rows, and nested-CV held-out logits, in one batched search.

    Returns (head, held-out logits (n, C) or None without `val_masks`, the params each outer
    fold's head chose: its "views", "head" kind, "l2", "steps"). For each outer fold,
    everything is chosen by an inner CV on the outer training rows only (one draw of inner
    folds, `make_folds` on those rows), so held-out rows never influence the model that
    scores them: each fold's choices are exactly those `train_head(..., repeats=1)` makes on
    its training rows, with every descent batched together.
    `progress(fraction)` hears how far the search is, at least every `search.TICK_STEPS`
    descent steps. Problems past `ridge.many_classes` (rows^2 x classes) are solved in closed
    form by ridge regression instead (`ridge`: params "solver" "ridge", "l2", "logit_scale"
    in place of "steps"), with the same folds, candidates and nesting.
    """
    candidates = as_candidates(features)
    n = len(labels)
    outers = [np.ones(n, bool)] + [~v for v in (val_masks or [])]
    inners = []
    for o, rows in enumerate(outers):
        # The outer folds' searches only score the procedure, on rows it never saw: one draw
        # of inner folds there (not `inner_repeats`) cuts the search's cost by about 2.3x
        # at 76 rows, and the head that is kept is still chosen on repeated draws.
        inner = repeated_folds(labels[rows], groups[rows] if groups is not None else None, seed,
                               repeats if o == 0 else 1)
        inners.append(None if inner is None else [spread(m, rows) for m in inner])
    ridge = many_classes(n, len(classes))
    with one_blas_thread():
        searches = [Search(x, rows, inner) for rows, inner in zip(outers, inners)
                    for x in candidates.values()]
        # The final fits run up to 1,280 steps in float64: a few seconds on many classes.
        tick = (lambda f: progress(0.8 * f)) if progress else None
        params = (search_ridge if ridge else search_all)(searches, labels, len(classes),
                                                         tick=tick)
        k = len(candidates)
        picks = [pick(candidates, params[i * k:(i + 1) * k]) for i in range(len(outers))]
        chosen = [dict(p, head="linear") for _, p in picks]
        heads = fit_chosen([(candidates[name], rows, p)
                            for (name, _), rows, p in zip(picks, outers, chosen)], labels,
                           classes, (lambda f: progress(0.8 + 0.2 * f)) if progress else None)
    if progress:
        progress(1.0)
    for head, (name, _), p in zip(heads, picks, chosen):
        head.params.update(cv_log_loss=p["cv_log_loss"], views=name)
    if not val_masks:
        return heads[0], None, []
    logits = np.zeros((n, len(classes)))
    for head, val in zip(heads[1:], val_masks):
        logits[val] = head.logits(candidates[head.params["views"]][val])
    return heads[0], logits, [h.params for h in heads[1:]]


def fit_head(features: np.ndarray, labels: np.ndarray, classes: list[str], params: dict) -> Head:
    """Train one linear head on all rows with the given {"l2", "steps"} (or, for a ridge
    head, {"solver": "ridge", "l2", "logit_scale"}): no search, the fit `train_head` ends
    with, on chosen params."""
    with one_blas_thread():
        return fit_chosen([(features, np.ones(len(labels), bool), params)], labels, classes)[0]


def head_from_keras(path_or_model, classes: list[str], params: dict | None = None) -> Head:
    """The head saved by `to_keras` (a `.keras` path or a loaded model), of either kind."""
    import keras

    model = path_or_model
    if isinstance(model, (str, Path)):
        model = keras.saving.load_model(model, safe_mode=True)
    kind = HiddenHead if any(layer.name == "hidden" for layer in model.layers) else LinearHead
    return kind.from_keras(model, classes, params)

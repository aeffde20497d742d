"""Fitting linear heads with chosen hyper-parameters: many descended together (`fit_all`), or
for the many-class ridge head in closed form; `fit_chosen` picks by the parameters."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .descent import common_rank, gather, prepare
from .kinds import LinearHead
from .linear import LinearDescent
from .ridge import fit_ridge
from .search import TICK_STEPS


def fit_all(fits: list[tuple[np.ndarray, np.ndarray, dict]], labels: np.ndarray,
            classes: list[str], tick: Callable[[float], None] | None = None
            ) -> list[LinearHead]:
    """One linear head per (features, training rows, {"l2", "steps"}), descended together;
    `tick(fraction of the longest run done)` every `search.TICK_STEPS` steps."""
    folds = [prepare(x, rows) for x, rows, _ in fits]
    onehot = np.eye(len(classes))[labels]
    rows = gather(folds, [x for x, _, _ in fits], np.array([r for _, r, _ in fits]), onehot,
                  common_rank(folds))
    l2s = np.array([[float(p["l2"])] for _, _, p in fits])
    steps = np.array([int(p["steps"]) for _, _, p in fits])
    descent = LinearDescent(rows, np.array([f.lipschitz for f in folds]), l2s)
    heads: list[LinearHead | None] = [None] * len(fits)
    left = np.arange(len(fits))
    for step in sorted(set(steps.tolist())):
        while descent.step < step:
            descent.run_to(min(step, descent.step + TICK_STEPS))
            if tick:
                tick(descent.step / steps.max())
        done = steps[left] == step
        for k in np.flatnonzero(done):
            i = left[k]
            params = {"head": "linear", **{key: fits[i][2][key] for key in ("l2", "steps")}}
            heads[i] = descent.head(k, folds[i], classes, params)
        if not done.all():
            descent.keep(~done)
            left = left[~done]
    return heads


def fit_chosen(fits: list[tuple[np.ndarray, np.ndarray, dict]], labels: np.ndarray,
               classes: list[str], tick: Callable[[float], None] | None = None
               ) -> list[LinearHead]:
    """One head per (features, training rows, chosen params): ridge heads ({"solver":
    "ridge", "l2", "logit_scale"}) in closed form one by one, descent heads ({"l2",
    "steps"}) together by `fit_all` (with its `tick`). One search never mixes the two."""
    if fits and all(p.get("solver") == "ridge" for _, _, p in fits):
        return [fit_ridge(x, rows, labels, classes, p) for x, rows, p in fits]
    return fit_all(fits, labels, classes, tick)

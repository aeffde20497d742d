"""Fitting linear heads with chosen hyper-parameters, many descended together (`fit_all`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .descent import common_rank, gather, prepare
from .kinds import LinearHead
from .linear import LinearDescent
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

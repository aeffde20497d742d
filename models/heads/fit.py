"""Fitting heads with chosen hyper-parameters: many heads, of either kind, descended together
(`fit_all`), each kind by its solver in `DESCENTS`."""

from __future__ import annotations

import numpy as np

from .descent import common_rank, gather, prepare
from .hidden import HiddenDescent
from .kinds import Head
from .linear import LinearDescent

DESCENTS = {"linear": LinearDescent, "hidden": HiddenDescent}


def _fit_kind(fits: list[tuple[np.ndarray, np.ndarray, dict]], labels: np.ndarray,
              classes: list[str], kind: str) -> list[Head]:
    """One head of `kind` per (features, training rows, params), all descended together."""
    folds = [prepare(x, rows) for x, rows, _ in fits]
    onehot = np.eye(len(classes))[labels]
    rows = gather(folds, [x for x, _, _ in fits], np.array([r for _, r, _ in fits]), onehot,
                   common_rank(folds))
    l2s = np.array([[float(p["l2"])] for _, _, p in fits])
    steps = np.array([int(p["steps"]) for _, _, p in fits])
    descent = DESCENTS[kind](rows, np.array([f.lipschitz for f in folds]), l2s)
    heads: list[Head | None] = [None] * len(fits)
    left = np.arange(len(fits))
    for step in sorted(set(steps.tolist())):
        descent.run_to(step)
        done = steps[left] == step
        for k in np.flatnonzero(done):
            i = left[k]
            params = {"head": kind, **{key: fits[i][2][key] for key in ("l2", "steps")}}
            heads[i] = descent.head(k, folds[i], classes, params)
        if not done.all():
            descent.keep(~done)
            left = left[~done]
    return heads


def fit_all(fits: list[tuple[np.ndarray, np.ndarray, dict]], labels: np.ndarray,
             classes: list[str]) -> list[Head]:
    """One head per (features, training rows, params), of the kind `params["head"]` names
    (linear when absent); heads of one kind descend together."""
    heads: list[Head | None] = [None] * len(fits)
    for kind in DESCENTS:
        mine = [i for i, (_, _, p) in enumerate(fits) if p.get("head", "linear") == kind]
        if mine:
            for i, head in zip(mine, _fit_kind([fits[i] for i in mine], labels, classes, kind)):
                heads[i] = head
    return heads

"""The many-class solver: ridge regression onto the one-hot labels, in closed form in each
fold's row span, for every L2 strength at once, its scores made probabilities by one logit
scale fitted with them.

Why: the descent (`linear`) costs rows x rank x classes per step for hundreds of steps, so at
300 classes x 3 images its search takes minutes. In a fold's basis the training rows' columns
are orthogonal (`descent.prepare`: Z^T Z = diag(s)), so the ridge solution for strength `l2`
is W = diag(1 / (s + n l2)) Z^T (Y - mean Y): a division per strength, no iterations. The
strongest penalties give a nearest-class-mean rule (scores = similarity to each class's
training rows), the weakest the minimum-norm fit, so the grid spans the classic few-shot
rules. Logits are `logit_scale` x the ridge scores; the scale is chosen with the strength,
on the same held-out rows, by log-loss (one number, fitted on hundreds of rows).

`many_classes` says when a problem takes this path instead of the descent.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .descent import Fold, prepare
from .kinds import LinearHead

RIDGE_GRID = tuple(float(v) for v in 10.0 ** np.arange(-4.0, 1.01, 0.5))  # x the row count
SCALE_GRID = tuple(float(v) for v in 10.0 ** np.arange(-1.0, 3.01, 0.125))

# rows^2 x classes above which the descent's search is too dear (it costs ~rows x rank x
# classes per step): 60 classes x 3 images (1.9e6) took 5.4 s with the descent, 150 x 3
# (3.0e7) 52-61 s. 5e6 keeps every 19-images-per-class problem up to 20 classes (2.9e6) and
# the 4-10 class sets on the descent.
MANY_CLASSES_WORK = 5e6


def many_classes(n_rows: int, n_classes: int) -> bool:
    """Whether a problem of `n_rows` images over `n_classes` classes takes the ridge path."""
    return float(n_rows) ** 2 * n_classes > MANY_CLASSES_WORK


def _span(x: np.ndarray, train: np.ndarray, onehot: np.ndarray) -> tuple[Fold, np.ndarray,
                                                                          np.ndarray, np.ndarray]:
    """(fold, s: squared norms of Z's columns, Z^T (Y - mean Y), mean Y) for rows `train`."""
    fold = prepare(x, train)
    z = fold.project(x[train])
    y = onehot[train]
    prior = y.mean(axis=0)
    return fold, (z ** 2).sum(axis=0), z.T @ (y - prior), prior


def _scores(zv: np.ndarray, s: np.ndarray, zty: np.ndarray, prior: np.ndarray, n: int,
            l2s: np.ndarray) -> np.ndarray:
    """(L, v, C) ridge scores of projected rows `zv` for every strength in `l2s`."""
    return (zv[None] / (s[None, None] + n * l2s[:, None, None])) @ zty + prior


def _nll_by_scale(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(L, S): summed log-loss of softmax(scale x scores) for each strength and SCALE_GRID."""
    scores = scores.astype(np.float32)
    true = scores[:, np.arange(len(labels)), labels]  # (L, v)
    top = scores.max(axis=-1)
    out = np.empty((scores.shape[0], len(SCALE_GRID)))
    for k, scale in enumerate(SCALE_GRID):
        shifted = scale * (scores - top[..., None])
        lse = np.log(np.exp(shifted).sum(axis=-1))  # (L, v)
        out[:, k] = (lse - scale * (true - top)).sum(axis=-1)
    return out


def search_ridge(searches: list, labels: np.ndarray, n_classes: int,
                 tick: Callable[[float], None] | None = None) -> list[dict]:
    """`search.search_all`'s contract on the ridge path: per search (x, rows, val_masks), the
    (l2, logit_scale) with the lowest held-out log-loss over its folds, strongest penalty
    and smallest scale winning ties. Returns {"solver": "ridge", "l2", "logit_scale",
    "cv_log_loss"}, or DEFAULT_RIDGE with cv_log_loss None where CV is impossible."""
    onehot = np.eye(n_classes)[labels]
    l2s = np.array(RIDGE_GRID)
    out = []
    for i, search in enumerate(searches):
        if search.val_masks is None:
            out.append(dict(DEFAULT_RIDGE, cv_log_loss=None))
            continue
        nll = np.zeros((len(l2s), len(SCALE_GRID)))
        held = 0
        for val in search.val_masks:
            train = search.rows & ~val
            fold, s, zty, prior = _span(search.x, train, onehot)
            scores = _scores(fold.project(search.x[val]), s, zty, prior, int(train.sum()), l2s)
            nll += _nll_by_scale(scores, labels[val])
            held += int(val.sum())
        # Strongest penalty first, then the smallest scale: argmin keeps the first minimum.
        order = nll[::-1] / held
        j, k = np.unravel_index(int(np.argmin(order)), order.shape)
        out.append({"solver": "ridge", "l2": float(l2s[::-1][j]),
                    "logit_scale": float(SCALE_GRID[k]), "cv_log_loss": float(order[j, k])})
        if tick:
            tick((i + 1) / len(searches))
    return out


DEFAULT_RIDGE = {"solver": "ridge", "l2": 1e-1, "logit_scale": 10.0}


def fit_ridge(x: np.ndarray, rows: np.ndarray, labels: np.ndarray, classes: list[str],
              params: dict) -> LinearHead:
    """The ridge head on `rows` with chosen {"l2", "logit_scale"}, as a `LinearHead` on raw
    features (logits = logit_scale x ridge scores)."""
    onehot = np.eye(len(classes))[labels]
    fold, s, zty, prior = _span(x, rows, onehot)
    scale = float(params["logit_scale"])
    weight = fold.basis @ (zty / (s + int(rows.sum()) * float(params["l2"]))[:, None])
    kept = {k: params[k] for k in ("solver", "l2", "logit_scale")}
    return LinearHead(list(classes), fold.mean.astype(np.float32), fold.scale,
                      (scale * weight).astype(np.float32), (scale * prior).astype(np.float32),
                      {"head": "linear", **kept})

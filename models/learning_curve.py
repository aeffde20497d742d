"""How many more images? A learning curve per backbone, its extrapolation, and per-class slopes.

`learning_curve` measures cross-validated accuracy when the project had 25/50/75/100 % of its
training images: on the training run's own folds, each fold's training rows are cut to a
stratified subset (nested: the 25 % rows are inside the 50 % ones, so the curve's steps are
not lost in the noise of different draws) and a head with the hyper-parameters the search
chose for the full set is refitted there (no new search, on the cached features: a few
batched fits), then scored on the fold's untouched validation rows. Every image is thus
scored once per point, by a head that never saw it.

The extrapolation fits acc(n) = a - b * n^-c (an inverse power law, the usual shape of
learning curves) by least squares: exactly, for each c on a grid, since a and b then enter
linearly (3 parameters on 3-4 noisy points make a general optimiser wander). Its band is
a bootstrap over the scored images (the points move together when an image is resampled, as
they do in reality), widened by the binomial noise of measuring an accuracy on the target's
number of images. `bench/learning_curve.py` checks the band on galaxy4-dev: fitted on the <= 75 %
points, it should contain the measured 100 % figure.

A class's gain per doubling is the least-squares slope of its recall against log2(n); the
classes with the steepest slopes are those more images would help most.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

FRACTIONS = (0.25, 0.5, 0.75, 1.0)
# Subset draws per fold for the fractions below 1: two smooth the points on few classes; on
# many, one (the fits' cost grows with the classes: at 100 classes x 5 images two draws in one
# batch took 32 % of the training's CPU time; one draw, batched per fraction, 13 %).
REPEATS = 2
MANY_CLASSES = 20
C_GRID = np.linspace(0.05, 2.0, 40)  # exponents tried: flat-ish to steep curves
BOOTSTRAP = 300
LEVEL = 0.9  # the band's coverage
TOP_CLASSES = 3


def nested_subsets(labels: np.ndarray, rows: np.ndarray, fractions: Sequence[float],
                   rng: np.random.Generator) -> list[np.ndarray]:
    """Boolean masks over `labels`, one per fraction: a stratified share of `rows` (a mask),
    each class keeping round(f * its count) rows and at least one, nested across fractions."""
    masks = [np.zeros(len(labels), bool) for _ in fractions]
    for c in np.unique(labels[rows]):
        mine = rng.permutation(np.flatnonzero(rows & (labels == c)))
        for mask, f in zip(masks, fractions):
            mask[mine[:max(1, round(f * len(mine)))]] = True
    return masks


def scored(x: np.ndarray, labels: np.ndarray, classes: list[str], val_masks: list[np.ndarray],
           params: dict, fractions: Sequence[float] = FRACTIONS, repeats: int | None = None,
           seed: int = 0) -> np.ndarray:
    """(len(fractions), n) share of each image's held-out predictions that were right: per
    fold, heads of `params` ({"l2", "steps"}, or a ridge head's {"solver": "ridge", "l2",
    "logit_scale"}) fitted on nested subsets of the fold's training
    rows (`repeats` draws below 100 %: default REPEATS, 1 beyond MANY_CLASSES classes), scored
    on its validation rows."""
    from models.heads.descent import one_blas_thread
    from models.heads.fit import fit_chosen

    if repeats is None:
        repeats = REPEATS if len(classes) <= MANY_CLASSES else 1
    rng = np.random.default_rng(seed)
    fits, where = [], []
    for fold, val in enumerate(val_masks):
        for r in range(repeats):
            for f, rows in zip(fractions, nested_subsets(labels, ~val, fractions, rng)):
                if f >= 1.0 and r > 0:
                    continue  # the full fold is the same every draw
                fits.append((x, rows, params))
                where.append((fold, fractions.index(f)))
    heads = [None] * len(fits)
    with one_blas_thread():
        # One batch per fraction: a batch descends at its largest subset's rank, so the
        # 25 % fits batched with the 100 % ones would cost as much as they do.
        for p in range(len(fractions)):
            mine = [i for i, (_, q) in enumerate(where) if q == p]
            for i, head in zip(mine, fit_chosen([fits[i] for i in mine], labels, classes)):
                heads[i] = head
    right = np.zeros((len(fractions), len(labels)))
    draws = np.zeros((len(fractions), len(labels)))
    for head, (fold, p) in zip(heads, where):
        val = val_masks[fold]
        right[p, val] += head.logits(x[val]).argmax(axis=1) == labels[val]
        draws[p, val] += 1
    return right / np.maximum(draws, 1)


def fit_power_law(n: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Least-squares (a, b, c) of acc = a - b * n^-c with b >= 0, a <= 1 (no accuracy above
    100 %, however many images) and c on `C_GRID`, for one curve (acc: (k,)) or many at once
    (acc: (B, k)) -> (3,) or (B, 3)."""
    single = np.ndim(acc) == 1
    acc = np.atleast_2d(acc)
    best = np.full((len(acc), 4), np.inf)  # sse, a, b, c
    for c in C_GRID:
        power = np.power(n, -c)
        design = np.stack([np.ones_like(n, float), -power], axis=1)
        coef, *_ = np.linalg.lstsq(design, acc.T, rcond=None)  # (2, B)
        a, b = coef
        capped = a > 1  # the best fit with a = 1: b alone, by least squares
        a = np.where(capped, 1.0, a)
        b = np.where(capped, ((1 - acc) @ power) / (power @ power), b)
        flat = b < 0  # a falling curve: the best non-increasing fit is the mean
        a = np.where(flat, acc.mean(axis=1), a)
        b = np.where(flat, 0.0, b)
        sse = ((a[:, None] - b[:, None] * np.power(n, -c) - acc) ** 2).sum(axis=1)
        better = sse < best[:, 0] - 1e-15
        best[better] = np.stack([sse, a, b, np.full_like(a, c)], axis=1)[better]
    return best[0, 1:] if single else best[:, 1:]


def power_law(params: np.ndarray, n: float | np.ndarray) -> np.ndarray:
    a, b, c = np.moveaxis(np.asarray(params), -1, 0)
    return np.clip(a - b * np.power(n, -c), 0.0, 1.0)


def extrapolate(n: Sequence[float], right: np.ndarray, target: float, seed: int = 0,
                level: float = LEVEL) -> dict:
    """Expected CV accuracy at `target` images from points at `n` images (right: (k, m), each
    scored image's share of right answers at each point) with a `level` band:
    {"n_images", "accuracy", "low", "high", "level", "fit": {"a", "b", "c"}}."""
    n = np.asarray(n, float)
    params = fit_power_law(n, right.mean(axis=1))
    rng = np.random.default_rng(seed)
    resampled = right[:, rng.integers(0, right.shape[1], (BOOTSTRAP, right.shape[1]))]
    boot = power_law(fit_power_law(n, resampled.mean(axis=2).T), target)
    guess = float(power_law(params, target))
    # A CV measurement with `target` images carries its own sampling noise: binomial, over
    # that many scored images.
    count = max(int(round(target)), 1)
    noise = rng.binomial(count, guess, BOOTSTRAP) / count - guess
    spread = boot - boot.mean() + noise
    tail = (1 - level) / 2
    return {"n_images": int(round(target)), "accuracy": round(guess, 4),
            "low": round(float(np.clip(guess + np.quantile(spread, tail), 0, 1)), 4),
            "high": round(float(np.clip(guess + np.quantile(spread, 1 - tail), 0, 1)), 4),
            "level": level,
            "fit": {k: round(float(v), 6) for k, v in zip("abc", params)}}


def class_gains(n: Sequence[float], right: np.ndarray, labels: np.ndarray,
                classes: list[str]) -> dict[str, float]:
    """{class: least-squares slope of its recall against log2(n images)}: recall gained per
    doubling of the images."""
    t = np.log2(np.asarray(n, float))
    t = t - t.mean()
    out = {}
    for j, name in enumerate(classes):
        mine = labels == j
        if mine.any():
            recall = right[:, mine].mean(axis=1)
            out[name] = round(float((t * (recall - recall.mean())).sum() / (t * t).sum()), 4)
    return out


def learning_curve(x: np.ndarray, labels: np.ndarray, classes: list[str],
                   val_masks: list[np.ndarray] | None, params: dict, seed: int = 0,
                   fractions: Sequence[float] = FRACTIONS) -> dict | None:
    """A backbone's learning curve block for the report (None without CV folds).

    `x` (n, d): the head's input for the n training images; `params`: the chosen head's
    {"l2", "steps", ...}. Returns {"fractions", "n_images", "accuracy", "per_class":
    {class: [recall per point]}, "expected_at_2x" (see `extrapolate`), "gain_per_doubling":
    {class: recall gained per doubling}, "classes_gaining_most": up to TOP_CLASSES classes with
    a positive gain, steepest first, "cpu_seconds"}.
    """
    if not val_masks:
        return None
    began = time.process_time()
    fractions = tuple(fractions)
    right = scored(x, labels, classes, val_masks, params, fractions, seed=seed)
    n = [f * len(labels) for f in fractions]
    gains = class_gains(n, right, labels, classes)
    return {
        "fractions": list(fractions),
        "n_images": [int(round(v)) for v in n],
        "accuracy": [round(float(v), 4) for v in right.mean(axis=1)],
        "per_class": {name: [round(float(v), 4) for v in right[:, labels == j].mean(axis=1)]
                      for j, name in enumerate(classes) if (labels == j).any()},
        "expected_at_2x": extrapolate(n, right, 2 * len(labels), seed),
        "gain_per_doubling": gains,
        "classes_gaining_most": [c for c in sorted(gains, key=lambda c: -gains[c])
                                 if gains[c] > 0][:TOP_CLASSES],
        "cpu_seconds": round(time.process_time() - began, 3),
    }

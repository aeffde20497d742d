"""Likely mislabelled training images, ranked from out-of-fold probabilities.

Training already scores every training image with a head that never saw it (the outer CV
folds). An image whose given label that head finds unlikely is either hard or mislabelled;
ranking by how little the held-out model believes the given label puts the mislabelled ones
first (the "self-confidence" ranking of confident learning, Northcutt et al. 2021).

Two ways to rank are offered, both NumPy on an (n, C) array, no training:

* `"self_confidence"`: p(given label), lowest first.
* `"confident_margin"`: confident learning's per-class thresholds (t_j = the mean p_j over
  the images labelled j: how sure the model usually is of class j) normalise each column,
  then the margin q(given) - max_{j != given} q_j ranks, lowest first. It helps when
  classes differ in how confident the model is about them.

`bench/mislabelled.py` measured both on galaxy4-dev with 10 % of labels flipped (see
bench/RESULTS.md); `DEFAULT_METHOD` is the one that recalled more flipped images there.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

METHODS = ("self_confidence", "confident_margin")
DEFAULT_METHOD = "self_confidence"
# How many ranked images a report keeps: a fifth of the training images (twice a 10 % error
# rate, the yardstick), at least MIN_KEPT and at most MAX_KEPT.
MIN_KEPT, MAX_KEPT = 20, 200


def class_thresholds(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Confident learning's per-class thresholds: the mean p_j over the images labelled j
    (1/C for a class without images, which then never counts as confident)."""
    n_classes = probs.shape[1]
    out = np.full(n_classes, 1.0 / n_classes)
    for j in range(n_classes):
        mine = labels == j
        if mine.any():
            out[j] = probs[mine, j].mean()
    return np.maximum(out, 1e-12)


def suspicion(probs: np.ndarray, labels: np.ndarray, method: str = DEFAULT_METHOD
              ) -> tuple[np.ndarray, np.ndarray]:
    """(score, suggested class) per image: the lower the score, the likelier the given label is
    wrong; the suggestion is the likeliest class other than the given one (per `method`'s
    normalisation). Raises ValueError for an unknown method or mismatched shapes."""
    if method not in METHODS:
        raise ValueError(f"unknown ranking method {method!r}; choose from {list(METHODS)}")
    probs = np.asarray(probs, float)
    labels = np.asarray(labels, int)
    if probs.ndim != 2 or len(probs) != len(labels) or probs.shape[1] < 2:
        raise ValueError(f"need (n, C >= 2) probabilities for n labels, got {probs.shape} for "
                         f"{len(labels)} labels")
    rows = np.arange(len(labels))
    q = probs / class_thresholds(probs, labels) if method == "confident_margin" else probs
    others = q.copy()
    others[rows, labels] = -np.inf
    suggested = others.argmax(axis=1)
    score = q[rows, labels] - (others[rows, suggested] if method == "confident_margin" else 0)
    return score, suggested


def rank(probs: np.ndarray, labels: np.ndarray, method: str = DEFAULT_METHOD) -> np.ndarray:
    """Image indices, likeliest mislabelled first (ties keep the input order)."""
    return np.argsort(suspicion(probs, labels, method)[0], kind="stable")


def kept(n_images: int) -> int:
    """How many ranked images a report keeps for `n_images` training images."""
    return min(n_images, max(MIN_KEPT, min(MAX_KEPT, math.ceil(n_images / 5))))


def mislabelled_report(cv_probs: Sequence[np.ndarray | None], labels: np.ndarray,
                       samples: Sequence, classes: list[str],
                       method: str = DEFAULT_METHOD) -> dict:
    """The report's "mislabelled" block from each backbone's out-of-fold probabilities.

    The backbones' (n, C) held-out probabilities are averaged (an image every backbone doubts
    ranks first). `samples` are the training images (`.sha256`, `.source`) in the rows'
    order. Returns {"method", "source", "n_ranked", "n_disagreeing", "images": [{"sha256",
    "source", "given", "suggested", "given_probability", "suggested_probability", "rank"}]
    likeliest first}: among the top `kept(n)`, those whose held-out answer is not their given
    label (an image the model agrees with is no suggestion, however low it ranks); or with
    "images" empty and a "note" when there are no held-out probabilities (a class with one
    image: no cross-validation).
    """
    parts = [p for p in cv_probs if p is not None]
    out = {"method": method, "source": "mean out-of-fold probability over the backbones",
           "n_ranked": 0, "images": []}
    if not parts:
        return dict(out, note="needs cross-validation (at least 2 images per class)")
    probs = np.mean(parts, axis=0)
    score, suggested = suspicion(probs, labels, method)
    disagree = probs.argmax(axis=1) != labels
    order = [i for i in np.argsort(score, kind="stable")[:kept(len(labels))] if disagree[i]]
    out["n_ranked"] = len(labels)
    out["n_disagreeing"] = int(disagree.sum())
    out["images"] = [{
        "sha256": samples[i].sha256,
        "source": samples[i].source,
        "given": classes[labels[i]],
        "suggested": classes[suggested[i]],
        "given_probability": round(float(probs[i, labels[i]]), 4),
        "suggested_probability": round(float(probs[i, suggested[i]]), 4),
        "rank": r + 1,
    } for r, i in enumerate(order)]
    return out


def flip_labels(samples: Sequence, share: float, rng: np.random.Generator) -> tuple[list, dict]:
    """For measuring a ranking (bench/mislabelled.py, tests): `samples` with `share` of them
    given a label drawn uniformly from the other classes, and {sha256: original label} of
    those flipped."""
    import dataclasses

    classes = sorted({s.label for s in samples})
    chosen = rng.choice(len(samples), round(share * len(samples)), replace=False)
    out = list(samples)
    for i in chosen:
        others = [c for c in classes if c != samples[i].label]
        out[i] = dataclasses.replace(samples[i], label=str(rng.choice(others)))
    return out, {samples[i].sha256: samples[i].label for i in chosen}

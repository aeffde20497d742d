"""Ensembles of per-backbone class probabilities."""
from __future__ import annotations

import numpy as np


def mean_probability(probs: list[np.ndarray]) -> np.ndarray:
    """The average of the backbones' (n, C) probability arrays."""
    return np.mean(np.stack(probs), axis=0)


def majority_vote(probs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Majority vote of the backbones' top-1 labels.

    Returns (predicted class (n,), its mean probability (n,), votes (n, C)). A tie between
    classes with equally many votes goes to the one with the highest mean probability.
    """
    stacked = np.stack(probs)  # (B, n, C)
    votes = np.zeros(stacked.shape[1:], int)
    for top1 in stacked.argmax(axis=2):
        votes[np.arange(len(top1)), top1] += 1
    mean = stacked.mean(axis=0)
    tied = votes == votes.max(axis=1, keepdims=True)
    predicted = np.where(tied, mean, -np.inf).argmax(axis=1)
    return predicted, mean[np.arange(len(predicted)), predicted], votes


def weighted_probability(probs: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """sum_b weights[b] * probs[b]; the weights are non-negative and sum to 1."""
    return np.tensordot(np.asarray(weights), np.stack(probs), axes=1)


def fit_weights(probs: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Backbone weights minimising the log-loss of the weighted mean probability.

    Fitted on held-out (cross-validated) probabilities, so a backbone that generalises worse
    gets less say. Parametrised as a softmax, so the weights stay on the simplex.
    """
    from scipy.optimize import minimize

    stacked = np.stack(probs)[:, np.arange(len(labels)), labels]  # (B, n): p of the true class

    def loss(a):
        w = np.exp(a - a.max())
        w /= w.sum()
        return -np.log(np.clip(w @ stacked, 1e-12, 1.0)).mean()

    a = minimize(loss, np.zeros(len(probs)), method="L-BFGS-B").x
    w = np.exp(a - a.max())
    return w / w.sum()


def cross_fit_weighted(probs: list[np.ndarray], labels: np.ndarray,
                       val_masks: list[np.ndarray]) -> np.ndarray:
    """Held-out weighted-ensemble probabilities: each fold weighted by the other folds' fit."""
    out = np.zeros_like(probs[0])
    for val in val_masks:
        weights = fit_weights([p[~val] for p in probs], labels[~val])
        out[val] = weighted_probability([p[val] for p in probs], weights)
    return out

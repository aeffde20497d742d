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

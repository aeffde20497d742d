"""Temperature scaling: fitting T on held-out logits, honest cross-fitted calibrated
probabilities, and a head with its T built in."""

from __future__ import annotations

import numpy as np

from .kinds import Head, softmax


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the log-loss of softmax(logits / T) (temperature scaling)."""
    from scipy.optimize import minimize_scalar

    def loss(log_t):
        logp = np.log(np.clip(softmax(logits / np.exp(log_t)), 1e-12, 1.0))
        return -logp[np.arange(len(labels)), labels].mean()

    return float(np.exp(minimize_scalar(loss, bounds=(-3.0, 3.0), method="bounded").x))


def cross_fit_temperature(logits: np.ndarray, labels: np.ndarray,
                          val_masks: list[np.ndarray]) -> np.ndarray:
    """Calibrated held-out probabilities: each fold scaled by a T fitted on the other folds.

    This keeps calibration figures honest: no fold's T has seen that fold's labels.
    """
    probs = np.zeros_like(logits)
    for val in val_masks:
        t = fit_temperature(logits[~val], labels[~val])
        probs[val] = softmax(logits[val] / t)
    return probs


def apply_temperature(head: Head, temperature: float) -> Head:
    """The same head (either kind) with its logits divided by `temperature` (the Keras
    export keeps it)."""
    scaled = head.scaled(temperature)
    scaled.params = dict(head.params, temperature=round(float(temperature), 4))
    return scaled

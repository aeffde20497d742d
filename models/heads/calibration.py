"""Temperature scaling: fitting T on held-out logits, honest cross-fitted calibrated
probabilities, and a head with its T built in."""

from __future__ import annotations

import numpy as np

from models.metrics import log_loss

from .kinds import Head, softmax

CALIBRATION_SE = 2.0  # how clearly CV must prefer the temperature (standard errors)


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


def decide_temperature(logits: np.ndarray, labels: np.ndarray, val_masks: list[np.ndarray]
                       ) -> tuple[float | None, np.ndarray, dict]:
    """Whether temperature scaling helps these held-out logits, judged honestly.

    Returns (T fitted on all `logits`, or None where calibration is off; the held-out
    probabilities that go with that decision: cross-fitted calibrated ones, or plain softmax;
    {"cv_log_loss_uncalibrated", "cv_log_loss_calibrated", "temperature_kept"}). T is kept only
    if the cross-fitted calibrated log-loss is lower by more than CALIBRATION_SE standard
    errors of the per-image differences: with a few dozen held-out predictions a fitted T is
    often noise (kept on any improvement, it raised pooled test log-loss on galaxy, issue 14).
    """
    plain = softmax(logits)
    scaled = cross_fit_temperature(logits, labels, val_masks)
    rows = np.arange(len(labels))
    gain = (np.log(np.clip(scaled[rows, labels], 1e-12, 1.0))
            - np.log(np.clip(plain[rows, labels], 1e-12, 1.0)))
    se = gain.std(ddof=1) / np.sqrt(len(gain)) if len(gain) > 1 else np.inf
    keep = bool(gain.mean() > CALIBRATION_SE * se)
    figures = {"cv_log_loss_uncalibrated": log_loss(plain, labels),
               "cv_log_loss_calibrated": log_loss(scaled, labels), "temperature_kept": keep}
    return (fit_temperature(logits, labels) if keep else None), (scaled if keep else plain), figures


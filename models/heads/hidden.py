"""The hidden head's solver: batched full-batch Adam on one ReLU layer of `HIDDEN_UNITS`
units and a softmax layer, from seeded random hidden weights in each fold's rotated basis."""

from __future__ import annotations

import numpy as np

from .descent import Descent, Fold, Rows
from .kinds import HiddenHead, relu

HIDDEN_UNITS = 64
HIDDEN_RATE = 0.03  # Adam's step size for the hidden head, on features of unit mean norm
HIDDEN_SEED = 0


class HiddenDescent(Descent):
    """Full-batch Adam on a ReLU hidden layer and a softmax layer.

    The hidden layer starts at the same seeded random weights in every problem, drawn in the
    rotated basis (inside the span of the training rows, where its gradients also lie), and
    the softmax layer at zero, so every search and final fit is reproducible. Each slot
    descends independently (Adam is elementwise): a strength's path is the same alone or
    beside others, as for the linear head.
    """

    layers = ("w1", "b1", "w2", "b2")
    slotted = ("l2", *layers, "m_w1", "m_b1", "m_w2", "m_b2", "v_w1", "v_b1", "v_w2", "v_b2")
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    def __init__(self, rows: Rows, lipschitz: np.ndarray, l2s: np.ndarray, dtype=np.float64):
        super().__init__(rows, l2s, dtype)
        n_problems, _, rank = rows.data.shape
        n_l2, n_classes, units = l2s.shape[1], rows.onehot.shape[2], HIDDEN_UNITS
        # Unit-variance weights: standardised rows have unit mean norm, so pre-activations
        # start of order one.
        start = np.random.default_rng(HIDDEN_SEED).normal(size=(rank, units))
        self.w1 = np.zeros((n_problems, rank, n_l2, units), dtype)
        for p, r in enumerate(rows.ranks):
            self.w1[p, :r] = start[:r, None, :]
        self.b1 = np.zeros((n_problems, 1, n_l2, units), dtype)
        self.w2 = np.zeros((n_problems, units, n_l2, n_classes), dtype)
        self.b2 = np.zeros((n_problems, 1, n_l2, n_classes), dtype)
        for name in self.layers:
            setattr(self, f"m_{name}", np.zeros_like(getattr(self, name)))
            setattr(self, f"v_{name}", np.zeros_like(getattr(self, name)))

    def _forward(self, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pre-activations (P, k, L, H), logits (P, k, L, C)) of rows `data` (P, k, r)."""
        p, r, n_l2, units = self.w1.shape
        pre = (data @ self.w1.reshape(p, r, n_l2 * units)).reshape(p, -1, n_l2, units) + self.b1
        hidden = relu(pre).transpose(0, 2, 1, 3)  # (P, L, k, H)
        logits = (hidden @ self.w2.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3) + self.b2
        return pre, logits

    def _adam(self, name: str, grad: np.ndarray) -> None:
        m = getattr(self, f"m_{name}") * self.beta1 + (1 - self.beta1) * grad
        v = getattr(self, f"v_{name}") * self.beta2 + (1 - self.beta2) * grad * grad
        setattr(self, f"m_{name}", m)
        setattr(self, f"v_{name}", v)
        m_hat = m / (1 - self.beta1 ** self.step)
        v_hat = v / (1 - self.beta2 ** self.step)
        setattr(self, name, getattr(self, name) - HIDDEN_RATE * m_hat / (np.sqrt(v_hat) + self.eps))

    def run_to(self, step: int) -> None:
        while self.step < step:
            self.step += 1
            pre, logits = self._forward(self.data)
            residual = self._residual(logits).transpose(0, 2, 1, 3)  # (P, L, m, C)
            hidden = relu(pre).transpose(0, 2, 1, 3)  # (P, L, m, H)
            grad_w2 = (hidden.transpose(0, 1, 3, 2) @ residual).transpose(0, 2, 1, 3)
            grad_b2 = residual.sum(axis=2)[:, None]
            back = (residual @ self.w2.transpose(0, 2, 3, 1)).transpose(0, 2, 1, 3)
            back *= pre > 0  # (P, m, L, H)
            p, m, n_l2, units = back.shape
            grad_w1 = (self.data_t @ back.reshape(p, m, n_l2 * units)).reshape(self.w1.shape)
            grad_b1 = back.sum(axis=1, keepdims=True)
            self._adam("w1", grad_w1 + self.l2 * self.w1)
            self._adam("b1", grad_b1)
            self._adam("w2", grad_w2 + self.l2 * self.w2)
            self._adam("b2", grad_b2)

    def logits(self, data: np.ndarray) -> np.ndarray:
        """(P, k, L, C) logits of rows `data` (P, k, r) at the current step."""
        return self._forward(data)[1]

    def head(self, p: int, fold: Fold, classes: list[str], params: dict) -> HiddenHead:
        """Problem p's first strength as a head on raw features."""
        rank = fold.basis.shape[1]
        f32 = np.float32
        return HiddenHead(list(classes), fold.mean.astype(f32), fold.scale,
                          (fold.basis @ self.w1[p, :rank, 0]).astype(f32),
                          self.b1[p, 0, 0].astype(f32), self.w2[p, :, 0].astype(f32),
                          self.b2[p, 0, 0].astype(f32), params)

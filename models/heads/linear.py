"""The linear head's solver: batched Nesterov descent of L2-penalised softmax regressions in
each fold's rotated basis, started at zero."""

from __future__ import annotations

import numpy as np

from .descent import Descent, Fold, Rows
from .kinds import LinearHead


class LinearDescent(Descent):
    """Nesterov descent of softmax regressions started at zero, step 1 / Lipschitz bound."""

    slotted = ("l2", "rate", "w", "b", "prev_w", "prev_b")

    def __init__(self, rows: Rows, lipschitz: np.ndarray, l2s: np.ndarray, dtype=np.float64):
        super().__init__(rows, l2s, dtype)
        n_problems, _, rank = rows.data.shape
        n_l2, n_classes = l2s.shape[1], rows.onehot.shape[2]
        self.rate = (1.0 / (lipschitz[:, None] + l2s))[:, None, :, None].astype(dtype)
        self.w = np.zeros((n_problems, rank, n_l2, n_classes), dtype)
        self.b = np.zeros((n_problems, 1, n_l2, n_classes), dtype)
        self.prev_w, self.prev_b = self.w, self.b

    def _logits(self, data: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
        p, r, l2, c = w.shape
        return (data @ w.reshape(p, r, l2 * c)).reshape(p, -1, l2, c) + b

    def run_to(self, step: int) -> None:
        while self.step < step:
            self.step += 1
            momentum = (self.step - 1) / (self.step + 2)
            look_w = self.w + momentum * (self.w - self.prev_w)
            look_b = self.b + momentum * (self.b - self.prev_b)
            residual = self._residual(self._logits(self.data, look_w, look_b))
            p, n, l2, c = residual.shape
            grad_w = (self.data_t @ residual.reshape(p, n, l2 * c)).reshape(look_w.shape)
            grad_w += self.l2 * look_w
            grad_b = residual.sum(axis=1, keepdims=True)
            self.prev_w, self.prev_b = self.w, self.b
            self.w = look_w - self.rate * grad_w
            self.b = look_b - self.rate * grad_b

    def logits(self, data: np.ndarray) -> np.ndarray:
        """(P, k, L, C) logits of rows `data` (P, k, r) at the current step."""
        return self._logits(data, self.w, self.b)

    def head(self, p: int, fold: Fold, classes: list[str], params: dict) -> LinearHead:
        """Problem p's first strength as a head on raw features."""
        rank = fold.basis.shape[1]
        return LinearHead(list(classes), fold.mean.astype(np.float32), fold.scale,
                          (fold.basis @ self.w[p, :rank, 0]).astype(np.float32),
                          self.b[p, 0, 0].astype(np.float32), params)

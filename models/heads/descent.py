"""What every batched descent shares: folds standardised and rotated onto the span of their
training rows (`Fold`, `prepare`), rows of many problems padded to one array (`Rows`,
`gather`), the `Descent` base class that trains many (problem, L2 strength) slots at once,
and the fast few-class softmax and single-thread BLAS they run with."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Fold:
    """One training subset, standardised and rotated onto the span of its rows."""

    mean: np.ndarray
    scale: float
    basis: np.ndarray  # (d, r): orthonormal span of the standardised training rows
    lipschitz: float  # smoothness of the linear head's mean cross-entropy in rotated weights

    def project(self, features: np.ndarray) -> np.ndarray:
        """(k, r): these rows standardised and in the basis."""
        return ((features - self.mean) / self.scale) @ self.basis


def prepare(features: np.ndarray, train: np.ndarray) -> Fold:
    rows = features[train]
    mean = rows.mean(axis=0)
    # One global scale, not one per dimension: it keeps the geometry of the features, and
    # it does not blow up the many near-constant dimensions of pooled CNN features.
    scale = float(np.sqrt(((rows - mean) ** 2).sum(axis=1).mean())) or 1.0
    centred = (rows - mean) / scale
    # The span of the rows from the small n x n Gram matrix: far cheaper than an SVD of n x d.
    eigval, eigvec = np.linalg.eigh(centred @ centred.T)
    top = float(eigval[-1]) if eigval.size else 0.0
    keep = eigval > max(top, 1e-30) * 1e-10
    basis = centred.T @ (eigvec[:, keep] / np.sqrt(eigval[keep]))
    return Fold(mean, scale, basis, 0.5 * (top / len(rows) + 1.0))


@dataclass
class Rows:
    """Some rows of every problem, each in its own fold's basis, zero-padded to one shape."""

    data: np.ndarray  # (P, m, r)
    present: np.ndarray  # (P, m): 1 on the problem's rows, 0 on padding
    onehot: np.ndarray  # (P, m, C)
    ranks: np.ndarray  # (P,): each fold's rank r_p <= r

    @property
    def counts(self) -> np.ndarray:
        return self.present.sum(axis=1)


def gather(folds: list[Fold], xs: list[np.ndarray], masks: np.ndarray, onehot: np.ndarray,
            rank: int) -> Rows:
    """Rows `masks[p]` of `xs[p]` in `folds[p]`'s basis, for every problem p."""
    width = max(1, int(masks.sum(axis=1).max()))
    data = np.zeros((len(folds), width, rank))
    present = np.zeros((len(folds), width))
    hot = np.zeros((len(folds), width, onehot.shape[1]))
    for p, (fold, x, mask) in enumerate(zip(folds, xs, masks)):
        idx = np.flatnonzero(mask)
        data[p, :len(idx), :fold.basis.shape[1]] = fold.project(x[idx])
        present[p, :len(idx)] = 1.0
        hot[p, :len(idx)] = onehot[idx]
    return Rows(data, present, hot, np.array([f.basis.shape[1] for f in folds]))


def common_rank(folds: list[Fold]) -> int:
    return max(1, max(f.basis.shape[1] for f in folds))


class Descent:
    """Batched full-batch descent of many L2-penalised softmax problems at once.

    Problem p trains on its rows `rows.data[p]` (its own rotated features), for every L2
    strength of `l2s[p]` side by side: parameters are (P, ., L, .), so one matrix product
    serves all strengths. `keep(which)` drops finished problems and `select(slots)` narrows
    the strengths each problem still trains, so the rest run on without them. `dtype`
    float32 halves the work of a hyper-parameter search; final heads descend in float64.
    """

    shared: tuple[str, ...] = ("data", "data_t", "weight", "onehot")
    slotted: tuple[str, ...] = ()  # (P, ., L, .) arrays: one slot per L2 strength

    def __init__(self, rows: Rows, l2s: np.ndarray, dtype):
        self.data = rows.data.astype(dtype)
        self.data_t = np.ascontiguousarray(self.data.transpose(0, 2, 1))
        # (P, m, 1, 1): 1/count on training rows, 0 on padding
        self.weight = (rows.present / rows.counts[:, None])[:, :, None, None].astype(dtype)
        self.onehot = rows.onehot[:, :, None, :].astype(dtype)
        self.l2 = l2s[:, None, :, None].astype(dtype)
        self.step = 0

    def _residual(self, logits: np.ndarray) -> np.ndarray:
        """d(mean cross-entropy)/d(logits) on the training rows, (P, m, L, C)."""
        return (softmax_few(logits) - self.onehot) * self.weight

    def keep(self, which: np.ndarray) -> None:
        for name in self.shared + self.slotted:
            setattr(self, name, getattr(self, name)[which])

    def select(self, slots: np.ndarray) -> None:
        """Keep, per problem p, the strengths in slots `slots[p]` (a (P, L') index)."""
        index = slots[:, None, :, None]
        for name in self.slotted:
            setattr(self, name, np.take_along_axis(getattr(self, name), index, axis=2))


def softmax_few(logits: np.ndarray) -> np.ndarray:
    """`softmax` over a short last axis (the classes), without NumPy's slow reductions along
    a tiny axis: the sum is a matrix product, and there is no max to subtract. The linear
    head's logits sum to zero over the classes (it starts at zero and every gradient step
    keeps that sum), so the largest is >= 0 and the sum of exponentials >= 1; the clip keeps
    exp finite in float32 and the hidden head's logits, which Adam does not keep centred,
    from all underflowing."""
    exp = np.exp(np.clip(logits, -80.0, 80.0))
    return exp / (exp @ np.ones(logits.shape[-1], logits.dtype))[..., None]


def one_blas_thread():
    """BLAS on one thread: these products are small, and threads only add contention
    (measured 10-25x slower eigh/matmul on 2 busy cores with OpenBLAS's default threads)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")

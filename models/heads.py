"""Softmax heads on cached features, with their kind and hyper-parameters chosen by CV.

Two kinds of head, both on standardised features: a linear softmax layer (`LinearHead`, a
Keras `Dense` when saved) and one hidden layer of `HIDDEN_UNITS` ReLU units before it
(`HiddenHead`, Dense-ReLU-Dense). Both are trained by full-batch descent on cached features,
and three facts make choosing their hyper-parameters by cross-validation cheap enough to
need no user knobs:

* Started at zero, gradient descent on an L2-penalised linear model only ever moves the weights
  inside the span of the training rows. So we rotate the features onto that span (an SVD of
  the training rows: at most n dimensions instead of 512-2048) and run the *same* descent
  there, exactly, then rotate the weights back. The hidden head is trained in the same basis
  by Adam, from random hidden weights drawn there, so its first layer too lies in the span
  (Adam is not rotation-invariant: this is how the hidden head is defined, not a shortcut
  for Adam on raw features).
* Every (fold, L2 strength) pair is trained at once as one batched array problem, and the
  validation predictions are read at several step counts along the way, so the training
  length is chosen from the same run; an L2 strength far behind the best is dropped from the
  run early (successive halving).
* Only the training rows take part in a descent; held-out rows are scored at checkpoints.

The criterion is validation log-loss (a proper score; accuracy on a few dozen images is too
coarse to rank hyper-parameters), ties going to the stronger penalty and the shorter run.
The hidden head is tried on the input the linear search chose, and kept only if its CV
log-loss beats the linear head's by `HIDDEN_MARGIN`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

L2_GRID = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
STEP_GRID = (10, 20, 40, 80, 160, 320, 640, 1280)
DEFAULT_PARAMS = {"l2": 1e-2, "steps": 160}  # used only when a class has < 2 images
MAX_FOLDS = 5

# Successive halving: from this many steps on, an L2 strength whose CV log-loss is worse than
# the best so far by more than PRUNE_GAP nats stops descending. Such a gap is rarely closed by
# longer training, and dropping it early is most of the saving on 10-class problems.
PRUNE_FROM = 80
PRUNE_GAP = 0.1

HIDDEN_UNITS = 64
# The hidden head replaces the linear one only if its CV log-loss is lower by this many nats:
# it has more to fit, so near-ties go to the simpler head.
HIDDEN_MARGIN = 0.01
HIDDEN_RATE = 0.03  # Adam's step size for the hidden head, on features of unit mean norm
HIDDEN_SEED = 0
# Adam at that rate has settled within 320 steps on these row counts; the longer runs of the
# linear grid made the hidden search 95% of the head's time.
HIDDEN_STEP_GRID = STEP_GRID[:6]


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


@dataclass
class LinearHead:
    """A trained softmax head: probabilities = softmax(((x - mean) / scale) @ weight + bias)."""

    classes: list[str]
    mean: np.ndarray
    scale: float
    weight: np.ndarray
    bias: np.ndarray
    params: dict = field(default_factory=dict)

    kind = "linear"

    def logits(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.scale) @ self.weight + self.bias

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return softmax(self.logits(features))

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """(kernel, bias) of one Dense layer on raw features equal to this head."""
        return _fold_standardisation(self.mean, self.scale, self.weight, self.bias)

    def keras_output(self, pooled):
        """This head's Keras layers applied to the tensor `pooled` (raw features): probabilities."""
        return _dense(pooled, *self.folded(), "softmax", "head")

    def to_keras(self):
        """A Keras model: raw features (feature_dim,) -> class probabilities."""
        return _keras_model(self)

    def scaled(self, temperature: float) -> "LinearHead":
        """The same head with its logits divided by `temperature`."""
        return dataclasses.replace(self, weight=self.weight / temperature,
                                   bias=self.bias / temperature)

    @classmethod
    def from_keras(cls, model, classes: list[str], params: dict | None = None) -> "LinearHead":
        """The inverse of `to_keras` (the standardisation stays folded into the weights)."""
        kernel, bias = model.get_layer("head").get_weights()
        return cls(list(classes), np.zeros(kernel.shape[0], np.float32), 1.0, kernel, bias,
                   dict(params or {}))


@dataclass
class HiddenHead:
    """A trained head with one hidden layer: probabilities =
    softmax(relu(((x - mean) / scale) @ w1 + b1) @ w2 + b2)."""

    classes: list[str]
    mean: np.ndarray
    scale: float
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    params: dict = field(default_factory=dict)

    kind = "hidden"

    def logits(self, features: np.ndarray) -> np.ndarray:
        return _relu(((features - self.mean) / self.scale) @ self.w1 + self.b1) @ self.w2 + self.b2

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return softmax(self.logits(features))

    def keras_output(self, pooled):
        """This head's Keras layers applied to the tensor `pooled` (raw features): probabilities."""
        kernel, bias = _fold_standardisation(self.mean, self.scale, self.w1, self.b1)
        hidden = _dense(pooled, kernel, bias, "relu", "hidden")
        return _dense(hidden, self.w2.astype(np.float32), self.b2.astype(np.float32), "softmax",
                      "head")

    def to_keras(self):
        """A Keras model: raw features (feature_dim,) -> class probabilities."""
        return _keras_model(self)

    def scaled(self, temperature: float) -> "HiddenHead":
        """The same head with its logits divided by `temperature`."""
        return dataclasses.replace(self, w2=self.w2 / temperature, b2=self.b2 / temperature)

    @classmethod
    def from_keras(cls, model, classes: list[str], params: dict | None = None) -> "HiddenHead":
        """The inverse of `to_keras` (the standardisation stays folded into the weights)."""
        w1, b1 = model.get_layer("hidden").get_weights()
        w2, b2 = model.get_layer("head").get_weights()
        return cls(list(classes), np.zeros(w1.shape[0], np.float32), 1.0, w1, b1, w2, b2,
                   dict(params or {}))


Head = Union[LinearHead, HiddenHead]


def head_from_keras(path_or_model, classes: list[str], params: dict | None = None) -> Head:
    """The head saved by `to_keras` (a `.keras` path or a loaded model), of either kind."""
    import keras

    model = path_or_model
    if isinstance(model, (str, Path)):
        model = keras.saving.load_model(model, safe_mode=True)
    kind = HiddenHead if any(layer.name == "hidden" for layer in model.layers) else LinearHead
    return kind.from_keras(model, classes, params)


def _fold_standardisation(mean, scale, weight, bias) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) on raw features equal to `weight`, `bias` on standardised ones."""
    kernel = weight / scale
    return kernel.astype(np.float32), (bias - mean @ kernel).astype(np.float32)


def _dense(x, kernel: np.ndarray, bias: np.ndarray, activation: str, name: str):
    """A Keras Dense layer with these weights, applied to the tensor `x`."""
    import keras

    layer = keras.layers.Dense(kernel.shape[1], activation=activation, name=name)
    out = layer(x)
    layer.set_weights([kernel, bias])
    return out


def _keras_model(head: Head):
    import keras

    inputs = keras.Input((head.mean.shape[0],), name="features")
    return keras.Model(inputs, head.keras_output(inputs), name="head")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


@dataclass
class _Fold:
    """One training subset, standardised and rotated onto the span of its rows."""

    mean: np.ndarray
    scale: float
    basis: np.ndarray  # (d, r): orthonormal span of the standardised training rows
    lipschitz: float  # smoothness of the linear head's mean cross-entropy in rotated weights

    def project(self, features: np.ndarray) -> np.ndarray:
        """(k, r): these rows standardised and in the basis."""
        return ((features - self.mean) / self.scale) @ self.basis


def _prepare(features: np.ndarray, train: np.ndarray) -> _Fold:
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
    return _Fold(mean, scale, basis, 0.5 * (top / len(rows) + 1.0))


@dataclass
class _Rows:
    """Some rows of every problem, each in its own fold's basis, zero-padded to one shape."""

    data: np.ndarray  # (P, m, r)
    present: np.ndarray  # (P, m): 1 on the problem's rows, 0 on padding
    onehot: np.ndarray  # (P, m, C)
    ranks: np.ndarray  # (P,): each fold's rank r_p <= r

    @property
    def counts(self) -> np.ndarray:
        return self.present.sum(axis=1)


def _gather(folds: list[_Fold], xs: list[np.ndarray], masks: np.ndarray, onehot: np.ndarray,
            rank: int) -> _Rows:
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
    return _Rows(data, present, hot, np.array([f.basis.shape[1] for f in folds]))


def _rank(folds: list[_Fold]) -> int:
    return max(1, max(f.basis.shape[1] for f in folds))


class _Descent:
    """Batched full-batch descent of many L2-penalised softmax problems at once.

    Problem p trains on its rows `rows.data[p]` (its own rotated features), for every L2
    strength of `l2s[p]` side by side: parameters are (P, ., L, .), so one matrix product
    serves all strengths. `keep(which)` drops finished problems and `select(slots)` narrows
    the strengths each problem still trains, so the rest run on without them. `dtype`
    float32 halves the work of a hyper-parameter search; final heads descend in float64.
    """

    shared: tuple[str, ...] = ("data", "data_t", "weight", "onehot")
    slotted: tuple[str, ...] = ()  # (P, ., L, .) arrays: one slot per L2 strength

    def __init__(self, rows: _Rows, l2s: np.ndarray, dtype):
        self.data = rows.data.astype(dtype)
        self.data_t = np.ascontiguousarray(self.data.transpose(0, 2, 1))
        # (P, m, 1, 1): 1/count on training rows, 0 on padding
        self.weight = (rows.present / rows.counts[:, None])[:, :, None, None].astype(dtype)
        self.onehot = rows.onehot[:, :, None, :].astype(dtype)
        self.l2 = l2s[:, None, :, None].astype(dtype)
        self.step = 0

    def _residual(self, logits: np.ndarray) -> np.ndarray:
        """d(mean cross-entropy)/d(logits) on the training rows, (P, m, L, C)."""
        return (_softmax_few(logits) - self.onehot) * self.weight

    def keep(self, which: np.ndarray) -> None:
        for name in self.shared + self.slotted:
            setattr(self, name, getattr(self, name)[which])

    def select(self, slots: np.ndarray) -> None:
        """Keep, per problem p, the strengths in slots `slots[p]` (a (P, L') index)."""
        index = slots[:, None, :, None]
        for name in self.slotted:
            setattr(self, name, np.take_along_axis(getattr(self, name), index, axis=2))


class _LinearDescent(_Descent):
    """Nesterov descent of softmax regressions started at zero, step 1 / Lipschitz bound."""

    slotted = ("l2", "rate", "w", "b", "prev_w", "prev_b")

    def __init__(self, rows: _Rows, lipschitz: np.ndarray, l2s: np.ndarray, dtype=np.float64):
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

    def head(self, p: int, fold: _Fold, classes: list[str], params: dict) -> LinearHead:
        """Problem p's first strength as a head on raw features."""
        rank = fold.basis.shape[1]
        return LinearHead(list(classes), fold.mean.astype(np.float32), fold.scale,
                          (fold.basis @ self.w[p, :rank, 0]).astype(np.float32),
                          self.b[p, 0, 0].astype(np.float32), params)


class _HiddenDescent(_Descent):
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

    def __init__(self, rows: _Rows, lipschitz: np.ndarray, l2s: np.ndarray, dtype=np.float64):
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
        hidden = _relu(pre).transpose(0, 2, 1, 3)  # (P, L, k, H)
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
            hidden = _relu(pre).transpose(0, 2, 1, 3)  # (P, L, m, H)
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

    def head(self, p: int, fold: _Fold, classes: list[str], params: dict) -> HiddenHead:
        """Problem p's first strength as a head on raw features."""
        rank = fold.basis.shape[1]
        f32 = np.float32
        return HiddenHead(list(classes), fold.mean.astype(f32), fold.scale,
                          (fold.basis @ self.w1[p, :rank, 0]).astype(f32),
                          self.b1[p, 0, 0].astype(f32), self.w2[p, :, 0].astype(f32),
                          self.b2[p, 0, 0].astype(f32), params)


DESCENTS = {"linear": _LinearDescent, "hidden": _HiddenDescent}


def _softmax_few(logits: np.ndarray) -> np.ndarray:
    """`softmax` over a short last axis (the classes), without NumPy's slow reductions along
    a tiny axis: the sum is a matrix product, and there is no max to subtract. The linear
    head's logits sum to zero over the classes (it starts at zero and every gradient step
    keeps that sum), so the largest is >= 0 and the sum of exponentials >= 1; the clip keeps
    exp finite in float32 and the hidden head's logits, which Adam does not keep centred,
    from all underflowing."""
    exp = np.exp(np.clip(logits, -80.0, 80.0))
    return exp / (exp @ np.ones(logits.shape[-1], logits.dtype))[..., None]


def make_folds(labels: np.ndarray, groups: np.ndarray | None = None, max_folds: int = MAX_FOLDS,
               seed: int = 0) -> list[np.ndarray] | None:
    """Stratified folds as boolean *validation* masks, or None when a class has < 2 images.

    With `groups`, images of one group always fall in the same fold (near-duplicates).
    """
    _, counts = np.unique(labels, return_counts=True)
    k = int(min(max_folds, counts.min()))
    if k < 2:
        return None
    placeholder = np.zeros(len(labels))
    if groups is None:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(placeholder, labels)
    else:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(placeholder, labels, groups)
    masks = []
    for _, val in splits:
        mask = np.zeros(len(labels), bool)
        mask[val] = True
        masks.append(mask)
    return masks


@dataclass
class _Search:
    """Choose (l2, steps) for features `x` by CV: validation `val_masks` within `rows`."""

    x: np.ndarray  # (n, d): every row; only `rows` take part
    rows: np.ndarray  # (n,) bool
    val_masks: list[np.ndarray] | None  # None: CV impossible, DEFAULT_PARAMS


def _survivors(loss: dict[int, float], best: float) -> list[int]:
    """The L2 strengths (grid indices) that keep descending: within PRUNE_GAP of the best."""
    return sorted(j for j, value in loss.items() if value <= best + PRUNE_GAP)


def _slots(current: np.ndarray, alive: list[int], width: int) -> np.ndarray:
    """Positions in `current` (grid indices per slot) of `alive`, padded to `width` by
    repeating the first (a repeated slot descends twice, harmlessly)."""
    where = [int(np.flatnonzero(current == j)[0]) for j in alive]
    return np.array(where + where[:1] * (width - len(where)))


def _held_out_loss(descent: _Descent, held: _Rows, active: np.ndarray) -> np.ndarray:
    """(P', L): each active problem's summed log-loss on its held-out rows, per slot."""
    logits = descent.logits(held.data[active]).astype(np.float64)
    logp = np.log(np.clip(_softmax_few(logits), 1e-12, 1.0))  # (P', m, L, C)
    nll = -(logp * held.onehot[active][:, :, None, :]).sum(axis=-1)  # (P', m, L)
    return np.einsum("pml,pm->pl", nll, held.present[active])


def _narrow(descent: _Descent, slot_l2: np.ndarray, active: np.ndarray,
            alive: list[list[int]]) -> np.ndarray:
    """Let each active problem descend only its `alive` strengths (grid indices; one list
    per active problem). `slot_l2` (all problems x slots) maps slots to grid indices; returns
    it updated to the new slots."""
    width = max(len(a) for a in alive)
    current = slot_l2[active]
    slots = np.array([_slots(row, a, width) for row, a in zip(current, alive)])
    if width == current.shape[1] and (slots == np.arange(width)).all():
        return slot_l2
    descent.select(slots)
    slot_l2 = slot_l2[:, :width].copy()
    slot_l2[np.flatnonzero(active)] = np.take_along_axis(current, slots, axis=1)
    return slot_l2


def _search_all(searches: list[_Search], labels: np.ndarray, n_classes: int,
                kind: str = "linear") -> list[dict]:
    """Run every search's CV in one batched descent of heads of `kind`; each stops on its own.

    Per search: validation log-loss at each step checkpoint, strongest penalty winning ties,
    then the shortest run; from PRUNE_FROM steps on, strengths far behind the best stop
    (`_survivors`); a search stops after two doublings of the run length without a better
    model, or when no strength survives. Returns {"l2", "steps", "cv_log_loss"} per search
    (DEFAULT_PARAMS and None where CV is impossible).
    """
    results: list[dict | None] = [None] * len(searches)
    folds, xs, train_masks, val_masks, owner = [], [], [], [], []
    for s, search in enumerate(searches):
        if search.val_masks is None:
            results[s] = dict(DEFAULT_PARAMS, cv_log_loss=None)
            continue
        for val in search.val_masks:
            train = search.rows & ~val
            folds.append(_prepare(search.x, train))
            xs.append(search.x)
            train_masks.append(train)
            val_masks.append(val)
            owner.append(s)
    if not folds:
        return results
    onehot = np.eye(n_classes)[labels]
    rank = _rank(folds)
    descent = DESCENTS[kind](_gather(folds, xs, np.array(train_masks), onehot, rank),
                             np.array([f.lipschitz for f in folds]),
                             np.tile(L2_GRID, (len(folds), 1)), np.float32)
    held = _gather(folds, xs, np.array(val_masks), onehot, rank)
    held.data = held.data.astype(np.float32)
    owner = np.array(owner)
    held_count = {s: held.counts[owner == s].sum() for s in np.unique(owner).tolist()}
    slot_l2 = np.tile(np.arange(len(L2_GRID)), (len(folds), 1))  # grid index of each slot
    live = np.unique(owner)  # searches still running
    active = np.ones(len(owner), bool)  # problems still in the descent
    best: dict[int, tuple[float, float, int]] = {}
    stale = dict.fromkeys(live.tolist(), 0)
    alive: dict[int, list[int]] = {}
    for step in HIDDEN_STEP_GRID if kind == "hidden" else STEP_GRID:
        descent.run_to(step)
        per_problem = _held_out_loss(descent, held, active)
        for s in live.tolist():
            mine = owner[active] == s
            total = per_problem[mine].sum(axis=0) / held_count[s]  # (L,)
            loss = {int(j): float(v) for j, v in zip(slot_l2[active][mine][0], total)}
            improved = False
            for j in sorted(loss, reverse=True):
                if s not in best or loss[j] < best[s][0] - 1e-9:
                    best[s] = (loss[j], L2_GRID[j], step)
                    improved = True
            stale[s] = 0 if improved else stale[s] + 1
            alive[s] = _survivors(loss, best[s][0]) if step >= PRUNE_FROM else sorted(loss)
        # A search whose every strength fell behind its best so far has nothing left to run.
        live = np.array([s for s in live.tolist() if stale[s] < 2 and alive[s]], int)
        still = np.isin(owner[active], live)
        if not still.any():
            break
        if not still.all():
            descent.keep(still)
            active[np.flatnonzero(active)[~still]] = False
        slot_l2 = _narrow(descent, slot_l2, active, [alive[s] for s in owner[active]])
    for s, (loss, l2, step) in best.items():
        results[s] = {"l2": l2, "steps": step, "cv_log_loss": loss}
    return results


def _fit_kind(fits: list[tuple[np.ndarray, np.ndarray, dict]], labels: np.ndarray,
              classes: list[str], kind: str) -> list[Head]:
    """One head of `kind` per (features, training rows, params), all descended together."""
    folds = [_prepare(x, rows) for x, rows, _ in fits]
    onehot = np.eye(len(classes))[labels]
    rows = _gather(folds, [x for x, _, _ in fits], np.array([r for _, r, _ in fits]), onehot,
                   _rank(folds))
    l2s = np.array([[float(p["l2"])] for _, _, p in fits])
    steps = np.array([int(p["steps"]) for _, _, p in fits])
    descent = DESCENTS[kind](rows, np.array([f.lipschitz for f in folds]), l2s)
    heads: list[Head | None] = [None] * len(fits)
    left = np.arange(len(fits))
    for step in sorted(set(steps.tolist())):
        descent.run_to(step)
        done = steps[left] == step
        for k in np.flatnonzero(done):
            i = left[k]
            params = {"head": kind, **{key: fits[i][2][key] for key in ("l2", "steps")}}
            heads[i] = descent.head(k, folds[i], classes, params)
        if not done.all():
            descent.keep(~done)
            left = left[~done]
    return heads


def _fit_all(fits: list[tuple[np.ndarray, np.ndarray, dict]], labels: np.ndarray,
             classes: list[str]) -> list[Head]:
    """One head per (features, training rows, params), of the kind `params["head"]` names
    (linear when absent); heads of one kind descend together."""
    heads: list[Head | None] = [None] * len(fits)
    for kind in DESCENTS:
        mine = [i for i, (_, _, p) in enumerate(fits) if p.get("head", "linear") == kind]
        if mine:
            for i, head in zip(mine, _fit_kind([fits[i] for i in mine], labels, classes, kind)):
                heads[i] = head
    return heads


def fit_head(features: np.ndarray, labels: np.ndarray, classes: list[str], params: dict) -> Head:
    """Train one head on all rows with the given {"l2", "steps"} and optional "head" kind
    ("linear" when absent): no search, the fit `train_head` ends with, on chosen params."""
    with _one_blas_thread():
        return _fit_all([(features, np.ones(len(labels), bool), params)], labels, classes)[0]


def _one_blas_thread():
    """BLAS on one thread: these products are small, and threads only add contention
    (measured 10-25x slower eigh/matmul on 2 busy cores with OpenBLAS's default threads)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


Candidates = dict  # name -> (n, d) features of the same images, simplest candidate first

# A richer candidate (e.g. more views per image) must beat a simpler one by this much CV
# log-loss to be chosen: it costs forward passes at every prediction, so ties go to the cheap.
SWITCH_MARGIN = 0.002


def _as_candidates(features) -> Candidates:
    return features if isinstance(features, dict) else {"orig": features}


def _pick(candidates: Candidates, params: list[dict]) -> tuple[str, dict]:
    """The candidate `train_head` uses: best CV log-loss, a richer one only by SWITCH_MARGIN."""
    best_name, best = None, None
    for name, p in zip(candidates, params):
        loss = p["cv_log_loss"]
        if best is None or (loss is not None and loss < best["cv_log_loss"] - SWITCH_MARGIN):
            best_name, best = name, p
        if loss is None:  # CV impossible: no ground to prefer a costlier input
            break
    return best_name, best


def _pick_kind(linear: dict, hidden: dict | None) -> dict:
    """The params of the head to fit: the hidden head's only if its CV log-loss beats the
    linear head's by HIDDEN_MARGIN (`hidden` is None where it was not tried)."""
    if hidden is not None and hidden["cv_log_loss"] < linear["cv_log_loss"] - HIDDEN_MARGIN:
        return dict(hidden, head="hidden")
    return dict(linear, head="linear")


def train_and_cross_validate(
    features: np.ndarray | Candidates, labels: np.ndarray, classes: list[str],
    val_masks: list[np.ndarray] | None, groups: np.ndarray | None = None, seed: int = 0,
    try_hidden: bool = True,
) -> tuple[Head, np.ndarray | None, list[dict]]:
    """`train_head` on all rows, and nested-CV held-out logits, in one batched search.

    Returns (head, held-out logits (n, C) or None without `val_masks`, the params each outer
    fold's head chose: its "views", "head" kind, "l2", "steps"). For each outer fold,
    everything is chosen by an inner CV on the outer training rows only (inner folds as `_repeated_folds` draws them on those rows), so held-out
    rows never influence the model that scores them: each fold's choices are exactly those
    `train_head` makes on its training rows, with every descent batched together.
    The choice is in two rounds: the linear head's input, L2 and length; then the hidden
    head's L2 and length on that input, the hidden head winning only by HIDDEN_MARGIN
    (without `try_hidden`, every head is linear).
    """
    candidates = _as_candidates(features)
    n = len(labels)
    outers = [np.ones(n, bool)] + [~v for v in (val_masks or [])]
    inners = []
    for rows in outers:
        inner = _repeated_folds(labels[rows], groups[rows] if groups is not None else None, seed)
        inners.append(None if inner is None else [_spread(m, rows) for m in inner])
    with _one_blas_thread():
        searches = [_Search(x, rows, inner) for rows, inner in zip(outers, inners)
                    for x in candidates.values()]
        params = _search_all(searches, labels, len(classes))
        k = len(candidates)
        picks = [_pick(candidates, params[i * k:(i + 1) * k]) for i in range(len(outers))]
        tried = [i for i, inner in enumerate(inners) if inner is not None and try_hidden]
        hidden = _search_all([_Search(candidates[picks[i][0]], outers[i], inners[i])
                              for i in tried], labels, len(classes), "hidden")
        hidden_of = dict(zip(tried, hidden))
        chosen = [_pick_kind(p, hidden_of.get(i)) for i, (_, p) in enumerate(picks)]
        heads = _fit_all([(candidates[name], rows, p)
                          for (name, _), rows, p in zip(picks, outers, chosen)], labels, classes)
    for head, (name, _), p in zip(heads, picks, chosen):
        head.params.update(cv_log_loss=p["cv_log_loss"], views=name)
    if not val_masks:
        return heads[0], None, []
    logits = np.zeros((n, len(classes)))
    for head, val in zip(heads[1:], val_masks):
        logits[val] = head.logits(candidates[head.params["views"]][val])
    return heads[0], logits, [h.params for h in heads[1:]]


def inner_repeats(n_rows: int) -> int:
    """How many draws of folds the inner CV averages over, for a search on `n_rows` rows.

    With 5-50 images per class one draw of folds is noisy enough to flip the choice between
    near-equal candidates; repeats cost time in proportion, and matter less as rows grow.
    """
    return 3 if n_rows < 80 else 2 if n_rows < 134 else 1


def _repeated_folds(labels: np.ndarray, groups: np.ndarray | None, seed: int
                    ) -> list[np.ndarray] | None:
    """`make_folds` drawn `inner_repeats` times with different seeds, all folds in one list."""
    folds = [make_folds(labels, groups, seed=seed + 1000 * r)
             for r in range(inner_repeats(len(labels)))]
    return None if folds[0] is None else [mask for draw in folds for mask in draw]


def _spread(mask: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A mask over `rows`' True entries, as a mask over all rows."""
    out = np.zeros(len(rows), bool)
    out[np.flatnonzero(rows)[mask]] = True
    return out


def train_head(features: np.ndarray | Candidates, labels: np.ndarray, classes: list[str],
               groups: np.ndarray | None = None, seed: int = 0, try_hidden: bool = True) -> Head:
    """Choose the input, head kind, L2 and training length by CV on these images, then fit on
    all of them (a linear head without `try_hidden`).

    `features` is one (n, d) array, or {name: (n, d) array} of candidate inputs for the same
    images (e.g. one per view policy, simplest first): the head uses the candidate with the
    best CV log-loss, and records its name in `params["views"]`, its kind in `params["head"]`.
    """
    return train_and_cross_validate(features, labels, classes, None, groups, seed, try_hidden)[0]


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

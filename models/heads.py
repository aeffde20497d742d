"""Softmax heads on cached features, with regularisation and training length chosen by CV.

The head is a linear softmax layer (a Keras `Dense` when saved) on standardised features. It is
trained by full-batch Nesterov gradient descent. Two facts make choosing its hyper-parameters
by cross-validation cheap enough to need no user knobs:

* Started at zero, gradient descent on an L2-penalised linear model only ever moves the weights
  inside the span of the training rows. So we rotate the features onto that span (an SVD of the
  training rows: at most n dimensions instead of 512-2048) and run the *same* descent there,
  exactly, then rotate the weights back.
* Every (fold, L2 strength) pair is trained at once as one batched array problem, and the
  validation predictions are read at several step counts along the way, so the training
  length is chosen from the same run.

The criterion is validation log-loss (a proper score; accuracy on a few dozen images is too
coarse to rank hyper-parameters), ties going to the stronger penalty and the shorter run.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

L2_GRID = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
STEP_GRID = (10, 20, 40, 80, 160, 320, 640, 1280)
DEFAULT_PARAMS = {"l2": 1e-2, "steps": 160}  # used only when a class has < 2 images
MAX_FOLDS = 5


@dataclass
class LinearHead:
    """A trained softmax head: probabilities = softmax(((x - mean) / scale) @ weight + bias)."""

    classes: list[str]
    mean: np.ndarray
    scale: float
    weight: np.ndarray
    bias: np.ndarray
    params: dict = field(default_factory=dict)

    def logits(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.scale) @ self.weight + self.bias

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return softmax(self.logits(features))

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """(kernel, bias) of one Dense layer on raw features equal to this head."""
        kernel = self.weight / self.scale
        return kernel.astype(np.float32), (self.bias - self.mean @ kernel).astype(np.float32)

    def to_keras(self):
        """A Keras model: raw features (feature_dim,) -> class probabilities."""
        import keras

        kernel, bias = self.folded()
        inputs = keras.Input((kernel.shape[0],), name="features")
        dense = keras.layers.Dense(kernel.shape[1], activation="softmax", name="head")
        model = keras.Model(inputs, dense(inputs), name="head")
        dense.set_weights([kernel, bias])
        return model

    @classmethod
    def from_keras(cls, model, classes: list[str], params: dict | None = None) -> "LinearHead":
        """The inverse of `to_keras` (the standardisation stays folded into the weights)."""
        kernel, bias = model.get_layer("head").get_weights()
        return cls(list(classes), np.zeros(kernel.shape[0], np.float32), 1.0, kernel, bias,
                   dict(params or {}))


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
    projected: np.ndarray  # (n, r): every row (training and held out) in that basis
    lipschitz: float  # smoothness of the mean cross-entropy in the rotated weights


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
    projected = ((features - mean) / scale) @ basis
    return _Fold(mean, scale, basis, projected, 0.5 * (top / len(rows) + 1.0))


def _descend(folds: list[_Fold], onehot: np.ndarray, train_masks: np.ndarray,
             l2s: tuple[float, ...], checkpoints: tuple[int, ...]):
    """Batched Nesterov descent for every (fold, l2); yields (step, weights, biases, logits).

    weights: (F, L, r, C) in each fold's rotated basis (zero-padded to the largest r);
    logits: (F, L, n, C) for every row, so held-out rows can be scored at each checkpoint.
    """
    n_folds, n_l2 = len(folds), len(l2s)
    rank = max(1, max(f.projected.shape[1] for f in folds))
    n, n_classes = onehot.shape
    data = np.zeros((n_folds, 1, n, rank))
    for i, fold in enumerate(folds):
        data[i, 0, :, : fold.projected.shape[1]] = fold.projected
    data_t = np.ascontiguousarray(data.transpose(0, 1, 3, 2))
    l2 = np.asarray(l2s)[None, :, None, None]
    rate = 1.0 / (np.array([f.lipschitz for f in folds])[:, None] + np.asarray(l2s)[None, :])
    rate = rate[:, :, None, None]
    mask = train_masks[:, None, :, None].astype(float)
    counts = mask.sum(axis=2, keepdims=True)
    weights = np.zeros((n_folds, n_l2, rank, n_classes))
    biases = np.zeros((n_folds, n_l2, 1, n_classes))
    prev_w, prev_b = weights, biases
    for step in range(1, max(checkpoints) + 1):
        momentum = (step - 1) / (step + 2)
        look_w = weights + momentum * (weights - prev_w)
        look_b = biases + momentum * (biases - prev_b)
        logits = data @ look_w + look_b
        residual = (softmax(logits) - onehot) * mask / counts
        grad_w = data_t @ residual + l2 * look_w
        grad_b = residual.sum(axis=2, keepdims=True)
        prev_w, prev_b = weights, biases
        weights = look_w - rate * grad_w
        biases = look_b - rate * grad_b
        if step in checkpoints:
            logits = data @ weights + biases
            yield step, weights, biases, logits


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


def choose_params(features: np.ndarray, labels: np.ndarray, n_classes: int,
                  groups: np.ndarray | None = None, seed: int = 0) -> dict:
    """Pick {"l2", "steps"} by k-fold CV log-loss on these images (defaults if CV impossible).

    The result also carries "cv_log_loss", the winning mean validation log-loss.
    """
    val_masks = make_folds(labels, groups, seed=seed)
    if val_masks is None:
        return dict(DEFAULT_PARAMS, cv_log_loss=None)
    train_masks = ~np.array(val_masks)
    folds = [_prepare(features, tm) for tm in train_masks]
    onehot = np.eye(n_classes)[labels]
    val = np.array(val_masks)[:, None, :]
    best = None
    stale = 0
    for step, _, _, logits in _descend(folds, onehot, train_masks, L2_GRID, STEP_GRID):
        logp = np.log(np.clip(softmax(logits), 1e-12, 1.0))
        nll = -(logp * onehot).sum(axis=-1)  # (F, L, n)
        loss = (nll * val).sum(axis=(0, 2)) / val.sum()  # (L,)
        # Strongest penalty wins ties (iterate strong to weak), then the shortest run.
        improved = False
        for j in reversed(range(len(L2_GRID))):
            if best is None or loss[j] < best[0] - 1e-9:
                best = (float(loss[j]), L2_GRID[j], step)
                improved = True
        stale = 0 if improved else stale + 1
        if stale == 2:
            break  # two doublings of the run length without a better model: stop looking
    return {"l2": best[1], "steps": best[2], "cv_log_loss": best[0]}


def fit_head(features: np.ndarray, labels: np.ndarray, classes: list[str], params: dict) -> LinearHead:
    """Train one head on all rows with the given {"l2", "steps"}."""
    everything = np.ones(len(labels), bool)
    fold = _prepare(features, everything)
    onehot = np.eye(len(classes))[labels]
    steps = int(params["steps"])
    *_, (_, weights, biases, _) = _descend(
        [fold], onehot, everything[None, :], (float(params["l2"]),), (steps,)
    )
    rank = fold.basis.shape[1]
    weight = fold.basis @ weights[0, 0, :rank]
    return LinearHead(list(classes), fold.mean.astype(np.float32), fold.scale,
                      weight.astype(np.float32), biases[0, 0, 0].astype(np.float32),
                      {k: params[k] for k in ("l2", "steps")})


Candidates = dict  # name -> (n, d) features of the same images, simplest candidate first

# A richer candidate (e.g. more views per image) must beat a simpler one by this much CV
# log-loss to be chosen: it costs forward passes at every prediction, so ties go to the cheap.
SWITCH_MARGIN = 0.002


def _as_candidates(features) -> Candidates:
    return features if isinstance(features, dict) else {"orig": features}


def train_head(features: np.ndarray | Candidates, labels: np.ndarray, classes: list[str],
               groups: np.ndarray | None = None, seed: int = 0) -> LinearHead:
    """Choose the input, L2 and training length by CV on these images, then fit on all of them.

    `features` is one (n, d) array, or {name: (n, d) array} of candidate inputs for the same
    images (e.g. one per view policy, simplest first): the head uses the candidate with the
    best CV log-loss, and records its name in `params["views"]`.
    """
    candidates = _as_candidates(features)
    best_name, best = None, None
    for name, x in candidates.items():
        params = choose_params(x, labels, len(classes), groups, seed)
        loss = params["cv_log_loss"]
        if best is None or (loss is not None and loss < best["cv_log_loss"] - SWITCH_MARGIN):
            best_name, best = name, params
        if loss is None:  # CV impossible: no ground to prefer a costlier input
            break
    head = fit_head(candidates[best_name], labels, classes, best)
    head.params.update(cv_log_loss=best["cv_log_loss"], views=best_name)
    return head


def cross_val_logits(features: np.ndarray | Candidates, labels: np.ndarray, classes: list[str],
                     val_masks: list[np.ndarray], groups: np.ndarray | None = None,
                     seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Nested CV: held-out logits (n, C) for every row, and the input each fold chose.

    For each outer fold, everything `train_head` chooses is chosen by an inner CV on the outer
    training rows only, so the held-out rows never influence the model that scores them.
    """
    candidates = _as_candidates(features)
    logits = np.zeros((len(labels), len(classes)))
    chosen = []
    for val in val_masks:
        train = ~val
        inner_groups = groups[train] if groups is not None else None
        head = train_head({k: x[train] for k, x in candidates.items()}, labels[train], classes,
                          inner_groups, seed)
        logits[val] = head.logits(candidates[head.params["views"]][val])
        chosen.append(head.params["views"])
    return logits, chosen


def cross_val_predict(features, labels, classes, val_masks, groups=None, seed=0) -> np.ndarray:
    """Nested-CV held-out probabilities (n, C); see `cross_val_logits`."""
    return softmax(cross_val_logits(features, labels, classes, val_masks, groups, seed)[0])


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


def apply_temperature(head: LinearHead, temperature: float) -> LinearHead:
    """The same head with its logits divided by `temperature` (the Keras export keeps it)."""
    params = dict(head.params, temperature=round(float(temperature), 4))
    return LinearHead(head.classes, head.mean, head.scale, head.weight / temperature,
                      head.bias / temperature, params)

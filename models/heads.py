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


class _Descent:
    """Batched Nesterov descent of many L2-penalised softmax problems at once.

    Problem p trains on the rows where `weight[p] > 0` of its own rotated features `data[p]`
    (n, r), for every L2 strength of `l2s[p]` side by side. Weights are (P, r, L, C), so each
    step is two matrix products per problem (all strengths in one), not one per strength.
    `keep(which)` drops finished problems, so the rest run on without them. `dtype` float32
    halves the work of a hyper-parameter search; final heads descend in float64.
    """

    def __init__(self, data: np.ndarray, weight: np.ndarray, onehot: np.ndarray,
                 lipschitz: np.ndarray, l2s: np.ndarray, dtype=np.float64):
        n_problems, _, rank = data.shape
        n_l2, n_classes = l2s.shape[1], onehot.shape[1]
        self.data = data.astype(dtype)
        self.data_t = np.ascontiguousarray(self.data.transpose(0, 2, 1))
        # (P, n, 1, 1): 1/count on training rows, else 0
        self.weight = weight[:, :, None, None].astype(dtype)
        self.onehot = onehot[None, :, None, :].astype(dtype)
        self.l2 = l2s[:, None, :, None].astype(dtype)
        self.rate = (1.0 / (lipschitz[:, None] + l2s))[:, None, :, None].astype(dtype)
        self.w = np.zeros((n_problems, rank, n_l2, n_classes), dtype)
        self.b = np.zeros((n_problems, 1, n_l2, n_classes), dtype)
        self.prev_w, self.prev_b = self.w, self.b
        self.step = 0

    def _logits(self, w: np.ndarray, b: np.ndarray) -> np.ndarray:
        p, r, l2, c = w.shape
        return (self.data @ w.reshape(p, r, l2 * c)).reshape(p, -1, l2, c) + b

    def run_to(self, step: int) -> None:
        while self.step < step:
            self.step += 1
            momentum = (self.step - 1) / (self.step + 2)
            look_w = self.w + momentum * (self.w - self.prev_w)
            look_b = self.b + momentum * (self.b - self.prev_b)
            residual = (_softmax_few(self._logits(look_w, look_b)) - self.onehot) * self.weight
            p, n, l2, c = residual.shape
            grad_w = (self.data_t @ residual.reshape(p, n, l2 * c)).reshape(look_w.shape)
            grad_w += self.l2 * look_w
            grad_b = residual.sum(axis=1, keepdims=True)
            self.prev_w, self.prev_b = self.w, self.b
            self.w = look_w - self.rate * grad_w
            self.b = look_b - self.rate * grad_b

    def logits(self) -> np.ndarray:
        """(P, n, L, C) logits of every row at the current step."""
        return self._logits(self.w, self.b)

    def keep(self, which: np.ndarray) -> None:
        for name in ("data", "data_t", "weight", "l2", "rate", "w", "b", "prev_w", "prev_b"):
            setattr(self, name, getattr(self, name)[which])


def _softmax_few(logits: np.ndarray) -> np.ndarray:
    """`softmax` over a short last axis (the classes), without NumPy's slow reductions along
    a tiny axis: an elementwise running max, and the sum as a matrix product."""
    top = logits[..., 0]
    for c in range(1, logits.shape[-1]):
        top = np.maximum(top, logits[..., c])
    exp = np.exp(logits - top[..., None])
    return exp / (exp @ np.ones(logits.shape[-1], logits.dtype))[..., None]


def _stack(folds: list[_Fold], train_masks: np.ndarray):
    """The arrays `_Descent` takes for these folds: rotated rows zero-padded to one rank."""
    rank = max(1, max(f.projected.shape[1] for f in folds))
    data = np.zeros((len(folds), train_masks.shape[1], rank))
    for i, fold in enumerate(folds):
        data[i, :, : fold.projected.shape[1]] = fold.projected
    weight = train_masks / train_masks.sum(axis=1, keepdims=True)
    return data, weight, np.array([f.lipschitz for f in folds])


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


def _search_all(searches: list[_Search], labels: np.ndarray, n_classes: int) -> list[dict]:
    """Run every search's CV in one batched descent; each stops on its own criterion.

    Per search, exactly `choose_params`'s rule: validation log-loss at each step checkpoint,
    strongest penalty winning ties, then the shortest run; a search stops after two
    doublings of the run length without a better model.
    """
    results: list[dict | None] = [None] * len(searches)
    folds, train_masks, owner = [], [], []
    for s, search in enumerate(searches):
        if search.val_masks is None:
            results[s] = dict(DEFAULT_PARAMS, cv_log_loss=None)
            continue
        for val in search.val_masks:
            train = search.rows & ~val
            folds.append(_prepare(search.x, train))
            train_masks.append(train)
            owner.append(s)
    if not folds:
        return results
    onehot = np.eye(n_classes)[labels]
    data, weight, lipschitz = _stack(folds, np.array(train_masks))
    descent = _Descent(data, weight, onehot, lipschitz, np.tile(L2_GRID, (len(folds), 1)),
                       np.float32)
    val = np.array([v for s in searches if s.val_masks is not None for v in s.val_masks], float)
    owner = np.array(owner)
    live = np.unique(owner)  # searches still running
    active = np.ones(len(owner), bool)  # problems still in the descent
    best: dict[int, tuple[float, float, int]] = {}
    stale = dict.fromkeys(live.tolist(), 0)
    for step in STEP_GRID:
        descent.run_to(step)
        logits = descent.logits().astype(np.float64)
        logp = np.log(np.clip(_softmax_few(logits), 1e-12, 1.0))  # (P, n, L, C)
        nll = -(logp * onehot[None, :, None, :]).sum(axis=-1)  # (P, n, L)
        held = val[active]
        per_problem = np.einsum("pnl,pn->pl", nll, held)
        for s in live.tolist():
            mine = owner[active] == s
            loss = per_problem[mine].sum(axis=0) / held[mine].sum()  # (L,)
            improved = False
            for j in reversed(range(len(L2_GRID))):
                if s not in best or loss[j] < best[s][0] - 1e-9:
                    best[s] = (float(loss[j]), L2_GRID[j], step)
                    improved = True
            stale[s] = 0 if improved else stale[s] + 1
        live = np.array([s for s in live.tolist() if stale[s] < 2], int)
        still = np.isin(owner[active], live)
        if not still.any():
            break
        if not still.all():
            descent.keep(still)
            active[np.flatnonzero(active)[~still]] = False
    for s, (loss, l2, step) in best.items():
        results[s] = {"l2": l2, "steps": step, "cv_log_loss": loss}
    return results


def choose_params(features: np.ndarray, labels: np.ndarray, n_classes: int,
                  groups: np.ndarray | None = None, seed: int = 0) -> dict:
    """Pick {"l2", "steps"} by k-fold CV log-loss on these images (defaults if CV impossible).

    The result also carries "cv_log_loss", the winning mean validation log-loss.
    """
    with _one_blas_thread():
        search = _Search(features, np.ones(len(labels), bool), make_folds(labels, groups, seed=seed))
        return _search_all([search], labels, n_classes)[0]


def _fit_all(fits: list[tuple[np.ndarray, np.ndarray, dict]], labels: np.ndarray,
             classes: list[str]) -> list[LinearHead]:
    """One head per (features, training rows, params), all descended together."""
    folds = [_prepare(x, rows) for x, rows, _ in fits]
    masks = np.array([rows for _, rows, _ in fits])
    data, weight, lipschitz = _stack(folds, masks)
    l2s = np.array([[float(p["l2"])] for _, _, p in fits])
    steps = np.array([int(p["steps"]) for _, _, p in fits])
    descent = _Descent(data, weight, np.eye(len(classes))[labels], lipschitz, l2s)
    heads: list[LinearHead | None] = [None] * len(fits)
    left = np.arange(len(fits))
    for step in sorted(set(steps.tolist())):
        descent.run_to(step)
        done = steps[left] == step
        for k in np.flatnonzero(done):
            i = left[k]
            fold, rank = folds[i], folds[i].basis.shape[1]
            heads[i] = LinearHead(
                list(classes), fold.mean.astype(np.float32), fold.scale,
                (fold.basis @ descent.w[k, :rank, 0]).astype(np.float32),
                descent.b[k, 0, 0].astype(np.float32),
                {k2: fits[i][2][k2] for k2 in ("l2", "steps")})
        if not done.all():
            descent.keep(~done)
            left = left[~done]
    return heads


def fit_head(features: np.ndarray, labels: np.ndarray, classes: list[str], params: dict) -> LinearHead:
    """Train one head on all rows with the given {"l2", "steps"}."""
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


def train_and_cross_validate(
    features: np.ndarray | Candidates, labels: np.ndarray, classes: list[str],
    val_masks: list[np.ndarray] | None, groups: np.ndarray | None = None, seed: int = 0,
) -> tuple[LinearHead, np.ndarray | None, list[str]]:
    """`train_head` on all rows, and nested-CV held-out logits, in one batched search.

    Returns (head, held-out logits (n, C) or None without `val_masks`, the input each outer
    fold chose). For each outer fold, everything is chosen by an inner CV on the outer
    training rows only (inner folds as `_repeated_folds` draws them on those rows), so held-out
    rows never influence the model that scores them: the same choices, made exactly as
    `train_head` and `cross_val_logits` make them, with every descent batched together.
    """
    candidates = _as_candidates(features)
    n = len(labels)
    outers = [np.ones(n, bool)] + [~v for v in (val_masks or [])]
    searches = []
    for rows in outers:
        inner = _repeated_folds(labels[rows], groups[rows] if groups is not None else None, seed)
        inner = None if inner is None else [_spread(m, rows) for m in inner]
        searches += [_Search(x, rows, inner) for x in candidates.values()]
    with _one_blas_thread():
        params = _search_all(searches, labels, len(classes))
        k = len(candidates)
        picks = [_pick(candidates, params[i * k:(i + 1) * k]) for i in range(len(outers))]
        heads = _fit_all([(candidates[name], rows, p) for (name, p), rows in zip(picks, outers)],
                         labels, classes)
    for head, (name, p) in zip(heads, picks):
        head.params.update(cv_log_loss=p["cv_log_loss"], views=name)
    if not val_masks:
        return heads[0], None, []
    logits = np.zeros((n, len(classes)))
    for head, val in zip(heads[1:], val_masks):
        logits[val] = head.logits(candidates[head.params["views"]][val])
    return heads[0], logits, [h.params["views"] for h in heads[1:]]


# The inner CV that chooses a head's input, L2 and length is repeated with this many different
# fold draws, and the choice goes by the mean loss over all of them: with 5-50 images per class
# one draw of folds is noisy enough to flip the choice between near-equal candidates.
INNER_REPEATS = 3


def _repeated_folds(labels: np.ndarray, groups: np.ndarray | None, seed: int
                    ) -> list[np.ndarray] | None:
    """`make_folds` drawn INNER_REPEATS times with different seeds, all folds in one list."""
    folds = [make_folds(labels, groups, seed=seed + 1000 * r) for r in range(INNER_REPEATS)]
    return None if folds[0] is None else [mask for draw in folds for mask in draw]


def _spread(mask: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A mask over `rows`' True entries, as a mask over all rows."""
    out = np.zeros(len(rows), bool)
    out[np.flatnonzero(rows)[mask]] = True
    return out


def train_head(features: np.ndarray | Candidates, labels: np.ndarray, classes: list[str],
               groups: np.ndarray | None = None, seed: int = 0) -> LinearHead:
    """Choose the input, L2 and training length by CV on these images, then fit on all of them.

    `features` is one (n, d) array, or {name: (n, d) array} of candidate inputs for the same
    images (e.g. one per view policy, simplest first): the head uses the candidate with the
    best CV log-loss, and records its name in `params["views"]`.
    """
    return train_and_cross_validate(features, labels, classes, None, groups, seed)[0]


def cross_val_logits(features: np.ndarray | Candidates, labels: np.ndarray, classes: list[str],
                     val_masks: list[np.ndarray], groups: np.ndarray | None = None,
                     seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Nested CV: held-out logits (n, C) for every row, and the input each fold chose.

    For each outer fold, everything `train_head` chooses is chosen by an inner CV on the outer
    training rows only, so the held-out rows never influence the model that scores them.
    """
    _, logits, chosen = train_and_cross_validate(features, labels, classes, val_masks, groups,
                                                 seed)
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

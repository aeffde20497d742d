""""None of these": how unlike the training images an image is, and when to call it unknown.

An image's out-of-distribution (OOD) score is a distance from its embedding (the head's input
features, see `models.features.head_input`) to the training images' embeddings:

- "knn": 1 - the mean cosine similarity of its `k` nearest training embeddings;
- "mahalanobis": the smallest Mahalanobis distance to a class mean, under one covariance shared
  by the classes (of the unit-length embeddings minus their class mean), shrunk by Ledoit-Wolf
  (far fewer images than dimensions, so the plain covariance is singular).

`bench/ood.py` measures which separates better; `DEFAULT_METHOD` is the winner. The threshold
is calibrated by cross-validation on the project's own images: every training image is scored
by a model fitted on the other folds, and the threshold is the `QUANTILE` (0.975) of those
held-out scores, so about 2.5 % of in-distribution images are called unknown (measured on
galaxy4-dev: the 0.95 quantile called 8 % of held-out images unknown, over the 5 % allowed).
The ensemble's score is the mean of the backbones' score / threshold, calibrated the same way.

Files in an iteration folder (`models.result` layout): `embeddings/<backbone>.npz` (the
training embeddings `x`, their class indices `y` and `sha256`, also used for the nearest
training images, `models.explain`) and `ood.json` (method, thresholds, CV figures). An
iteration without them predicts as before, without an unknown flag. Numpy and scikit-learn
only: no TensorFlow.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.features import unit_length

OOD_FILE = "ood.json"
EMBEDDINGS_DIR = "embeddings"
METHODS = ("knn", "mahalanobis")
DEFAULT_METHOD = "knn"
QUANTILE = 0.975
K = 5


def _unit(x: np.ndarray) -> np.ndarray:
    return unit_length(np.asarray(x, np.float64))


@dataclass
class Embeddings:
    """The training images' embeddings for one backbone: `x` (n, d), class indices `y` (n,),
    their `sha256` (n,)."""

    x: np.ndarray
    y: np.ndarray
    sha256: np.ndarray

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, x=self.x.astype(np.float32), y=self.y.astype(np.int32),
                 sha256=np.asarray(self.sha256, dtype="<U64"))

    @classmethod
    def load(cls, path: Path) -> Embeddings:
        with np.load(path, allow_pickle=False) as f:
            return cls(f["x"], f["y"], f["sha256"])


class Scorer:
    """An OOD score fitted on training embeddings: `score(q)` (m,), larger = less alike."""

    def __init__(self, method: str, x: np.ndarray, y: np.ndarray, k: int = K):
        if method not in METHODS:
            raise ValueError(f"unknown OOD method {method!r}; choose from {list(METHODS)}")
        self.method = method
        self.k = max(1, min(k, len(x)))
        unit = _unit(x)
        if method == "knn":
            self.train = unit
            return
        from sklearn.covariance import LedoitWolf

        classes = np.unique(y)
        self.means = np.stack([unit[y == c].mean(axis=0) for c in classes])
        centred = unit - self.means[np.searchsorted(classes, y)]
        self.precision = LedoitWolf(assume_centered=True).fit(centred).get_precision()

    def score(self, q: np.ndarray) -> np.ndarray:
        unit = _unit(q)
        if self.method == "knn":
            sims = unit @ self.train.T
            top = -np.partition(-sims, self.k - 1, axis=1)[:, :self.k]
            return 1.0 - top.mean(axis=1)
        d = unit[:, None, :] - self.means[None, :, :]  # (m, C, d)
        return np.sqrt(np.einsum("mcd,de,mce->mc", d, self.precision, d).min(axis=1))


def held_out_scores(method: str, x: np.ndarray, y: np.ndarray,
                    val_masks: Sequence[np.ndarray], k: int = K) -> np.ndarray:
    """Every training image's score under a scorer fitted on the other folds (n,)."""
    out = np.full(len(x), np.nan)
    for mask in val_masks:
        out[mask] = Scorer(method, x[~mask], y[~mask], k).score(x[mask])
    return out


@dataclass
class OodModel:
    """Per backbone a fitted `Scorer` and its threshold; an ensemble threshold over them.

    `info` is what `ood.json` holds: {"quantile", "backbones": {name: {"method", "k",
    "threshold", "cv_unknown_rate"}}, "ensemble": {"threshold", "cv_unknown_rate"}}."""

    info: dict
    embeddings: dict[str, Embeddings]
    scorers: dict[str, Scorer] = field(default_factory=dict)

    def __post_init__(self):
        for name, entry in self.info["backbones"].items():
            if name not in self.scorers:
                e = self.embeddings[name]
                self.scorers[name] = Scorer(entry["method"], e.x, e.y, entry["k"])

    @property
    def backbones(self) -> list[str]:
        return list(self.info["backbones"])

    def scores(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{backbone: (n,) scores} for the backbones that have a scorer and are in `features`."""
        return {n: s.score(features[n]) for n, s in self.scorers.items() if n in features}

    def answer(self, scores: dict[str, np.ndarray]) -> dict:
        """What the predictor adds for n images: {"backbones": {name: {"score", "threshold",
        "unknown"} lists of n}, "ensemble": [{"ood_score", "ood_threshold", "unknown"}] * n}.
        The ensemble's score is the mean of score / threshold over the backbones."""
        per = {}
        for name, s in scores.items():
            t = self.info["backbones"][name]["threshold"]
            per[name] = [{"score": round(float(v), 4), "threshold": round(t, 4),
                          "unknown": bool(v > t)} for v in s]
        combined = np.mean([s / self.info["backbones"][n]["threshold"]
                            for n, s in scores.items()], axis=0)
        t = self.info["ensemble"]["threshold"]
        ens = [{"ood_score": round(float(v), 4), "ood_threshold": round(t, 4),
                "unknown": bool(v > t)} for v in combined]
        return {"backbones": per, "ensemble": ens}

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        for name, e in self.embeddings.items():
            e.save(embeddings_file(folder, name))
        (folder / OOD_FILE).write_text(json.dumps(self.info, indent=1))


def embeddings_file(folder: str | Path, backbone: str) -> Path:
    """Where an iteration folder keeps `backbone`'s training embeddings."""
    return Path(folder) / EMBEDDINGS_DIR / f"{backbone}.npz"


def fit_ood(features: dict[str, np.ndarray], y: np.ndarray, sha256: Sequence[str],
            val_masks: Sequence[np.ndarray] | None, method: str = DEFAULT_METHOD,
            quantile: float = QUANTILE, k: int = K) -> OodModel | None:
    """Fit and calibrate the OOD model on {backbone: (n, d) training embeddings}.

    `val_masks` are the training run's CV folds (near-duplicates share a fold); without them
    (a class with one image) nothing can be calibrated and the answer is None.
    """
    if not val_masks or not features:
        return None
    info: dict = {"quantile": quantile, "backbones": {}, "ensemble": {}}
    normalised = []
    for name, x in features.items():
        held = held_out_scores(method, x, y, val_masks, k)
        t = float(np.quantile(held, quantile))
        info["backbones"][name] = {"method": method, "k": k, "threshold": t,
                                   "cv_unknown_rate": round(float((held > t).mean()), 4)}
        normalised.append(held / t)
    combined = np.mean(normalised, axis=0)
    t = float(np.quantile(combined, quantile))
    info["ensemble"] = {"threshold": t, "cv_unknown_rate": round(float((combined > t).mean()), 4)}
    sha = np.asarray(list(sha256), dtype="<U64")
    return OodModel(info, {n: Embeddings(np.asarray(x, np.float32), np.asarray(y), sha)
                           for n, x in features.items()})


def load_ood(folder: str | Path) -> OodModel | None:
    """The OOD model saved in an iteration folder, or None for an iteration without one."""
    folder = Path(folder)
    if not (folder / OOD_FILE).exists():
        return None
    info = json.loads((folder / OOD_FILE).read_text())
    return OodModel(info, {n: Embeddings.load(embeddings_file(folder, n))
                           for n in info["backbones"]})

"""Train a project: features through the cache, a CV-tuned head per backbone, honest metrics.

`train()` is the one call the CLI, the web worker and the benchmarks share. It never imports
Flask, and builds a backbone only when the cache is missing some of its features.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.datasets import Sample
from models.ensemble import majority_vote, mean_probability
from models.features import FeatureCache, Item
from models.heads import LinearHead, cross_val_predict, make_folds, train_head
from models.metrics import classification_report, expected_calibration_error, fold_accuracies
from models.registry import get_spec

REPORT_FILE = "report.json"
HEADS_DIR = "heads"


class TrainingError(ValueError):
    """The data cannot train a classifier (e.g. fewer than two classes)."""


@dataclass(frozen=True)
class Progress:
    """Where a training run is: `stage` in words, `done`/`total` within it, `fraction` overall."""

    stage: str
    done: int
    total: int
    fraction: float


ProgressCallback = Callable[[Progress], None]


@dataclass
class TrainResult:
    """What `train` produced: a head per backbone and the JSON-able report."""

    classes: list[str]
    heads: dict[str, LinearHead]
    report: dict = field(default_factory=dict)

    def save(self, folder: str | Path) -> Path:
        """Write `report.json` and `heads/<backbone>.keras` into `folder`."""
        folder = Path(folder)
        (folder / HEADS_DIR).mkdir(parents=True, exist_ok=True)
        for name, head in self.heads.items():
            head.to_keras().save(folder / HEADS_DIR / f"{name}.keras")
        (folder / REPORT_FILE).write_text(json.dumps(self.report, indent=1))
        return folder


def load_result(folder: str | Path) -> TrainResult:
    """Read back what `TrainResult.save` wrote (Keras files of our own making only)."""
    import keras

    folder = Path(folder)
    report = json.loads((folder / REPORT_FILE).read_text())
    heads = {}
    for name, entry in report["backbones"].items():
        model = keras.saving.load_model(folder / HEADS_DIR / f"{name}.keras", safe_mode=True)
        heads[name] = LinearHead.from_keras(model, report["classes"], entry["hyperparameters"])
    return TrainResult(report["classes"], heads, report)


def _items(samples: Sequence[Sample]) -> list[Item]:
    return [Item(s.sha256, s.image) for s in samples]


def _predictions(samples: Sequence[Sample], y: np.ndarray, probs: np.ndarray,
                 classes: list[str]) -> list[dict]:
    pred = probs.argmax(axis=1)
    return [
        {
            "sha256": s.sha256,
            "source": s.source,
            "true": classes[t],
            "pred": classes[p],
            "score": round(float(probs[i, p]), 4),
        }
        for i, (s, t, p) in enumerate(zip(samples, y, pred))
    ]


def _entry(probs: dict[str, np.ndarray | None], y: dict[str, np.ndarray],
           samples: dict[str, Sequence[Sample]], classes: list[str],
           val_masks: list[np.ndarray] | None) -> dict:
    """The metrics block shared by backbones and ensembles (keys as the web API promises)."""
    out: dict = {"cv": None, "test": None, "train": None, "predictions": {}}
    for split in ("cv", "train", "test"):
        p = probs.get(split)
        if p is None or len(y[split]) == 0:
            continue
        pred = p.argmax(axis=1)
        out[split] = classification_report(y[split], pred, classes)
        out[split]["ece"] = expected_calibration_error(p, y[split])
        out["predictions"][split] = _predictions(samples[split], y[split], p, classes)
    cv_folds = (fold_accuracies(y["cv"], probs["cv"].argmax(axis=1), val_masks)
                if out["cv"] is not None else None)
    out["cv_fold_accuracies"] = cv_folds
    out["cv_accuracy"] = out["cv"]["accuracy"] if out["cv"] else None
    out["cv_accuracy_std"] = float(np.std(cv_folds)) if cv_folds else None
    out["test_accuracy"] = out["test"]["accuracy"] if out["test"] else None
    out["train_accuracy"] = out["train"]["accuracy"] if out["train"] else None
    shown = "test" if out["test"] else "cv" if out["cv"] else "train"
    out["per_class"] = out[shown]["per_class"]
    out["confusion"] = dict(out[shown]["confusion"], source=shown)
    return out


def train(
    train_samples: Sequence[Sample],
    backbones: Sequence[str],
    cache: FeatureCache,
    make_backbone: Callable[[str], object],
    *,
    test_samples: Sequence[Sample] = (),
    progress: ProgressCallback | None = None,
    seed: int = 0,
) -> TrainResult:
    """Train one head per backbone on `train_samples` and evaluate everything honestly.

    `make_backbone(name)` returns a loaded backbone (see `models.backbones.load_backbone`); it
    is called only if the cache misses. Metrics: nested stratified k-fold CV on the training
    images (k = min(5, smallest class)), the test set when given (test images of a class absent
    from training are left out and listed under "test_skipped"), and training-set scores under
    their own name. Raises TrainingError for fewer than two classes or no backbone.
    """
    classes = sorted({s.label for s in train_samples})
    if len(classes) < 2:
        raise TrainingError(f"need at least 2 classes with images, got {len(classes)}")
    if not backbones:
        raise TrainingError("choose at least one backbone")
    for name in backbones:
        get_spec(name)
    index = {label: i for i, label in enumerate(classes)}
    test_kept = [s for s in test_samples if s.label in index]
    skipped = [{"source": s.source, "reason": f"class {s.label!r} has no training images"}
               for s in test_samples if s.label not in index]
    samples = {"cv": list(train_samples), "train": list(train_samples), "test": test_kept}
    y = {split: np.array([index[s.label] for s in ss], int) for split, ss in samples.items()}
    val_masks = make_folds(y["train"], seed=seed)

    share = 1.0 / len(backbones)

    def report_progress(stage: str, done: int, total: int, start: float, width: float) -> None:
        if progress:
            progress(Progress(stage, done, total, start + width * (done / total if total else 1)))

    heads: dict[str, LinearHead] = {}
    entries: dict[str, dict] = {}
    all_probs: dict[str, dict[str, np.ndarray | None]] = {}
    for b, name in enumerate(backbones):
        began = time.perf_counter()
        base = b * share
        todo = _items(samples["train"]) + _items(test_kept)
        stage = f"extracting features ({get_spec(name).title})"
        features = cache.get_or_compute(
            name, todo, lambda: make_backbone(name),
            progress=lambda d, t: report_progress(stage, d, t, base, 0.8 * share),
        )
        x_train, x_test = features[: len(train_samples)], features[len(train_samples):]
        report_progress(f"fitting head ({get_spec(name).title})", 0, 1, base + 0.8 * share, 0.2 * share)
        head = train_head(x_train, y["train"], classes, seed=seed)
        probs = {
            "cv": cross_val_predict(x_train, y["train"], classes, val_masks, seed=seed)
            if val_masks else None,
            "train": head.predict_proba(x_train),
            "test": head.predict_proba(x_test) if len(test_kept) else None,
        }
        heads[name] = head
        all_probs[name] = probs
        entries[name] = _entry(probs, y, samples, classes, val_masks)
        entries[name]["hyperparameters"] = head.params
        entries[name]["train_seconds"] = round(time.perf_counter() - began, 3)
        report_progress(f"fitting head ({get_spec(name).title})", 1, 1, base + 0.8 * share, 0.2 * share)

    ensembles = {}
    for method in ("vote", "mean"):
        combined = {}
        for split in ("cv", "train", "test"):
            parts = [all_probs[n][split] for n in backbones]
            if any(p is None for p in parts):
                combined[split] = None
            elif method == "mean":
                combined[split] = mean_probability(parts)
            else:
                _, _, votes = majority_vote(parts)
                # Vote shares as scores; the tiny mean-probability term breaks ties exactly
                # as majority_vote does, so argmax gives the voted class.
                combined[split] = votes / len(parts) + 1e-6 * mean_probability(parts)
        ensembles[method] = _entry(combined, y, samples, classes, val_masks)
        ensembles[method]["method"] = {"vote": "majority vote", "mean": "mean probability"}[method]

    report = {
        "classes": classes,
        "counts": {c: int((y["train"] == i).sum()) for i, c in enumerate(classes)},
        "test_counts": {c: int((y["test"] == i).sum()) for i, c in enumerate(classes)},
        "n_train": len(train_samples),
        "n_test": len(test_kept),
        "test_skipped": skipped,
        "cv_folds": len(val_masks) if val_masks else None,
        "cv_note": None if val_masks else "cross-validation needs at least 2 images per class",
        "backbones": entries,
        "ensemble": ensembles["vote"],
        "ensembles": ensembles,
    }
    if progress:
        progress(Progress("done", 1, 1, 1.0))
    return TrainResult(classes, heads, report)

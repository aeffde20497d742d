"""Classification metrics, reported the same way for every backbone and ensemble."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix.

    `y_true`/`y_pred` are class indices into `classes`. The confusion matrix's rows are true
    classes and its columns predicted ones, both in `classes` order. A class that was never
    predicted gets precision 0 (not NaN), so the JSON stays plain numbers.
    """
    indices = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=indices, zero_division=0
    )
    matrix = confusion_matrix(y_true, y_pred, labels=indices)
    return {
        "accuracy": float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if len(y_true) else None,
        "n": int(len(y_true)),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(classes)
        },
        "confusion": {"labels": list(classes), "matrix": matrix.tolist()},
    }


def fold_accuracies(y_true: np.ndarray, y_pred: np.ndarray, val_masks: list[np.ndarray]) -> list[float]:
    """Accuracy of each validation fold."""
    return [float(np.mean(y_true[m] == y_pred[m])) for m in val_masks]


def reliability(probs: np.ndarray, y_true: np.ndarray, bins: int = 10) -> list[dict]:
    """A reliability diagram's data: per equal-width bin of top-1 confidence (empty bins
    omitted), {"confidence": mean confidence, "accuracy": share correct, "count": rows}."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    # Bin i holds (i/bins, (i+1)/bins]; a confidence of exactly 0 cannot occur for probabilities.
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    return [{"confidence": float(confidence[index == i].mean()),
             "accuracy": float(correct[index == i].mean()), "count": int((index == i).sum())}
            for i in range(bins) if (index == i).any()]


def ece_of_bins(bins: list[dict]) -> float:
    """ECE from `reliability` bins, which may be pooled from many runs' bins of one grid."""
    total = sum(b["count"] for b in bins)
    return float(sum(abs(b["accuracy"] - b["confidence"]) * b["count"] for b in bins) / total)


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 10) -> float:
    """ECE of the top-1 confidence: sum over equal-width confidence bins of |acc - conf| * share."""
    return ece_of_bins(reliability(probs, y_true, bins))


def log_loss(probs: np.ndarray, y_true: np.ndarray) -> float:
    """Mean negative log-probability of the true class (clipped at 1e-12)."""
    return float(-np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, 1.0)).mean())


def brier(probs: np.ndarray, y_true: np.ndarray) -> float:
    """Mean over rows of the squared distance between the probabilities and the one-hot truth."""
    onehot = np.eye(probs.shape[1])[y_true]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())

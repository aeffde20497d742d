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


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 10) -> float:
    """ECE of the top-1 confidence: sum over equal-width confidence bins of |acc - conf| * share."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += abs(correct[inside].mean() - confidence[inside].mean()) * inside.mean()
    return float(ece)

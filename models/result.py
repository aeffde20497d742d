"""A training result: its folder layout, its report, the figures read from it, the ensemble rule.

A result folder holds `report.json` (the `Report` below) and `heads/<backbone>.keras`, plus
`heads/<backbone>.tuned.keras` for a fine-tuned backbone, and `ood.json` with
`embeddings/<backbone>.npz` ("None of these" and the nearest training images, `models.ood`).
The trainer writes it (`TrainResult.save`), the predictor loads it (`load_result`), the web
worker and API read its report (`read_report`, `summarize`, `views_extracted`).

This module imports only numpy and the standard library at import time (Keras and the heads
module are imported inside `load_result`), so the web process can read results cheaply.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from models.ensemble import majority_vote, mean_probability, weighted_probability

if TYPE_CHECKING:
    from models.heads import Head

REPORT_FILE = "report.json"
HEADS_DIR = "heads"
TUNED_SUFFIX = ".tuned.keras"


class Entry(TypedDict, total=False):
    """The metrics of one backbone or one ensemble (the web API promises these keys).

    `cv`, `train`, `test`: a classification report per split (None where not measured);
    `predictions`: {split: [{"sha256", "source", "true", "pred", "score"}]};
    `per_class` and `confusion`: from the test split, else CV, else training (`confusion`'s
    "source" says which; that split's report does not repeat its confusion matrix).
    A backbone's entry adds "hyperparameters", "calibration", "fine_tuning" (when asked for),
    "learning_curve" (`models.learning_curve.learning_curve`; None without CV)
    and "extract_seconds", "head_seconds", "train_seconds"; an ensemble's adds "method", the
    weighted one's "weights" ({backbone: weight}), the chosen one's "key" and "why".
    """

    cv: dict | None
    train: dict | None
    test: dict | None
    predictions: dict[str, list[dict]]
    cv_fold_accuracies: list[float] | None
    cv_accuracy: float | None
    cv_accuracy_std: float | None
    test_accuracy: float | None
    train_accuracy: float | None
    per_class: dict
    confusion: dict


class Report(TypedDict, total=False):
    """`report.json`: what a training run measured and chose (see `models.training.train`)."""

    classes: list[str]
    counts: dict[str, int]
    test_counts: dict[str, int]
    n_train: int
    n_test: int
    test_skipped: list[dict]
    cv_folds: int | None
    cv_note: str | None
    view_policies: dict[str, list[str]]  # every policy some backbone tried -> its views
    view_policies_by_backbone: dict[str, list[str]]
    near_duplicates: list[dict]
    backbones: dict[str, Entry]
    # The chosen one: "key" (into `ensembles`), "why", and its headline figures
    # (models.training.CHOSEN_ENSEMBLE_KEYS); its matrices and rows are in ensembles[key].
    ensemble: dict
    ensembles: dict[str, Entry]  # "vote", "mean", "weighted"
    backbone_titles: dict[str, str]  # {backbone: display name}
    ood: dict | None  # "None of these" calibration (models.ood.OodModel.info), None without CV
    mislabelled: dict  # likeliest mislabelled training images: models.curation.mislabelled_report


def head_file(folder: str | Path, backbone: str) -> Path:
    """Where a result folder keeps `backbone`'s head."""
    return Path(folder) / HEADS_DIR / f"{backbone}.keras"


def tuned_file(folder: str | Path, backbone: str) -> Path:
    """Where a result folder keeps `backbone`'s fine-tuned network (only if it was kept)."""
    return Path(folder) / HEADS_DIR / f"{backbone}{TUNED_SUFFIX}"


def read_report(folder: str | Path) -> Report:
    """The report of the result in `folder`. Raises OSError or ValueError if unreadable."""
    return json.loads((Path(folder) / REPORT_FILE).read_text())


def write_report(folder: str | Path, report: Report) -> None:
    """Write `report` as `folder`'s report.json (compact JSON, keys in insertion order: an
    indented 300-class report was 3.4x larger, a line per matrix cell)."""
    (Path(folder) / REPORT_FILE).write_text(json.dumps(report, separators=(",", ":")))


@dataclass
class TrainResult:
    """What `models.training.train` produced: a head per backbone and the JSON-able report."""

    classes: list[str]
    heads: dict[str, Head]
    report: Report = field(default_factory=dict)
    # Fine-tuning (models.finetune): {backbone: pixels -> features Keras model} where it was kept.
    tuned: dict = field(default_factory=dict)
    # "None of these" (models.ood.OodModel): None for an old iteration or one without CV.
    ood: object | None = None

    def save(self, folder: str | Path) -> Path:
        """Write the report and every head (and fine-tuned network) into `folder`."""
        folder = Path(folder)
        (folder / HEADS_DIR).mkdir(parents=True, exist_ok=True)
        for name, head in self.heads.items():
            head.to_keras().save(head_file(folder, name))
        for name, model in self.tuned.items():
            model.save(tuned_file(folder, name))
        if self.ood is not None:
            self.ood.save(folder)
        write_report(folder, self.report)
        return folder


def load_result(folder: str | Path) -> TrainResult:
    """Read back what `TrainResult.save` wrote (Keras files of our own making only)."""
    from models.heads import head_from_keras

    report = read_report(folder)
    heads = {name: head_from_keras(head_file(folder, name), report["classes"],
                                   entry["hyperparameters"])
             for name, entry in report["backbones"].items()}
    tuned = {}
    for name in heads:
        if tuned_file(folder, name).exists():
            import keras

            import models.backbones  # noqa: F401  (registers their Preprocess layer)

            tuned[name] = keras.saving.load_model(tuned_file(folder, name), safe_mode=True)
    from models.ood import load_ood

    return TrainResult(report["classes"], heads, report, tuned, load_ood(folder))


# -- figures read from a report ----------------------------------------------------------------

SUMMARY_KEYS = ("cv_accuracy", "cv_accuracy_std", "test_accuracy", "train_accuracy",
                "train_seconds")


def summarize(report: Report) -> dict:
    """Headline numbers per backbone and for the ensemble (for iteration lists):
    {backbone | "ensemble": {key: value or None for key in SUMMARY_KEYS}}."""
    out = {name: {k: entry.get(k) for k in SUMMARY_KEYS}
           for name, entry in report.get("backbones", {}).items()}
    out["ensemble"] = {k: report.get("ensemble", {}).get(k) for k in SUMMARY_KEYS}
    return out


def views_extracted(report: Report, backbones: Sequence[str]) -> int:
    """Views extracted per image, summed over `backbones` (each has its own candidates)."""
    all_policies = report.get("view_policies") or {"none": ["orig"]}
    by_backbone = (report.get("view_policies_by_backbone")
                   or {b: list(all_policies) for b in backbones})
    return sum(len({v for p in by_backbone.get(b, ["none"]) for v in all_policies.get(p, ["orig"])})
               for b in backbones)


def backbone_titles(backbones: Sequence[str]) -> dict[str, str]:
    """{backbone: its display title} (the name itself for a backbone the registry lacks)."""
    from models.registry import BACKBONES

    return {n: BACKBONES[n].title if n in BACKBONES else n for n in backbones}


def prediction_rows(report: Report) -> Iterator[dict]:
    """Every per-image prediction row of the report (all backbones and ensembles, all splits)."""
    for entry in [*report.get("backbones", {}).values(), *report.get("ensembles", {}).values(),
                  report.get("ensemble") or {}]:
        for rows in (entry.get("predictions") or {}).values():
            yield from rows


# -- the ensemble rule ---------------------------------------------------------------------------

ENSEMBLE_NAMES = {"vote": "majority vote", "mean": "mean probability",
                  "weighted": "CV-weighted mean probability"}


@dataclass(frozen=True)
class Combined:
    """An ensemble's answer for n images over C classes.

    `probs` (n, C): scores whose argmax is `predicted`; for a vote, the vote shares plus a tiny
    mean-probability term that breaks ties as `majority_vote` does. `score` (n,): the
    confidence shown with `predicted` (for a vote, the voted class's mean probability).
    `votes` (n, C): the backbones' top-1 votes, whatever the method.
    """

    probs: np.ndarray
    predicted: np.ndarray
    score: np.ndarray
    votes: np.ndarray


def combine_ensemble(method: str, per_backbone_probs: dict[str, np.ndarray],
                     weights: dict[str, float] | None = None) -> Combined:
    """Combine {backbone: (n, C) probabilities} by `method` ("vote", "mean" or "weighted",
    the keys of ENSEMBLE_NAMES); "weighted" needs `weights` ({backbone: weight}, summing to 1).
    """
    parts = list(per_backbone_probs.values())
    predicted, score, votes = majority_vote(parts)
    if method == "vote":
        probs = votes / len(parts) + 1e-6 * mean_probability(parts)
        return Combined(probs, predicted, score, votes)
    if method == "weighted":
        probs = weighted_probability(parts, [weights[n] for n in per_backbone_probs])
    elif method == "mean":
        probs = mean_probability(parts)
    else:
        raise ValueError(f"unknown ensemble method {method!r}; choose from {list(ENSEMBLE_NAMES)}")
    predicted = probs.argmax(axis=1)
    return Combined(probs, predicted, probs[np.arange(len(predicted)), predicted], votes)

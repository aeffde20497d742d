"""Train a project: features through the cache, a CV-tuned head per backbone, honest metrics.

`train()` is the one call the CLI, the web worker and the benchmarks share. It never imports
Flask, and builds a backbone only when the cache is missing some of its features.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from models.curation import mislabelled_report
from models.datasets import Sample
from models.duplicates import near_duplicate_groups
from models.ensemble import cross_fit_weighted, fit_weights
from models.features import (VIEW_POLICIES, FeatureCache, Item, head_input, head_inputs,
                             transforms_for, view_policies_for)
from models.finetune import fine_tune as fine_tune_backbone
from models.heads import (Head, apply_temperature, decide_temperature, make_folds, softmax,
                          train_and_cross_validate)
from models.learning_curve import learning_curve
from models.metrics import (brier, classification_report, expected_calibration_error,
                            fold_accuracies, log_loss, reliability)
from models.ood import fit_ood
from models.registry import get_spec
from models.result import ENSEMBLE_NAMES, TrainResult, backbone_titles, combine_ensemble


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

# The head search ticks every few milliseconds on small projects; each report is a database
# write in the worker, so pass on at most one per PROGRESS_SECONDS (the page wants ~2 s).
PROGRESS_SECONDS = 0.5


def _every(seconds: float, report: Callable[[float], None]) -> Callable[[float], None]:
    """`report`, called at most once per `seconds`, and always for the final fraction 1."""
    last = [-np.inf]

    def tick(fraction: float) -> None:
        now = time.monotonic()
        if now - last[0] >= seconds or fraction >= 1.0:
            last[0] = now
            report(fraction)

    return tick


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
    out: dict = {"cv": None, "test": None, "train": None, "predictions": {},
                 "reliability": {"cv": None, "test": None}}
    for split in ("cv", "train", "test"):
        p = probs.get(split)
        if p is None or len(y[split]) == 0:
            continue
        pred = p.argmax(axis=1)
        out[split] = classification_report(y[split], pred, classes)
        out[split]["ece"] = expected_calibration_error(p, y[split])
        out[split]["log_loss"] = log_loss(p, y[split])
        out[split]["brier"] = brier(p, y[split])
        out["predictions"][split] = _predictions(samples[split], y[split], p, classes)
        if split != "train":  # a reliability diagram of fitted rows says nothing
            out["reliability"][split] = reliability(p, y[split])
    cv_folds = (fold_accuracies(y["cv"], probs["cv"].argmax(axis=1), val_masks)
                if out["cv"] is not None else None)
    out["cv_fold_accuracies"] = cv_folds
    out["cv_accuracy"] = out["cv"]["accuracy"] if out["cv"] else None
    out["cv_accuracy_std"] = float(np.std(cv_folds)) if cv_folds else None
    out["test_accuracy"] = out["test"]["accuracy"] if out["test"] else None
    out["train_accuracy"] = out["train"]["accuracy"] if out["train"] else None
    shown = "test" if out["test"] else "cv" if out["cv"] else "train" if out["train"] else None
    if shown is None:  # e.g. the CV-weighted ensemble when a class has one image: no weights
        out["per_class"], out["confusion"] = {}, {"labels": [], "matrix": [], "source": None}
        return out
    out["per_class"] = out[shown]["per_class"]
    if len(classes) > DENSE_CONFUSION_CLASSES:
        for split in ("cv", "train", "test"):
            if out[split] is not None:
                out[split]["confusion"] = _sparse(out[split]["confusion"])
    # Moved, not copied: at 300 classes one matrix is 90,000 numbers (issue 14).
    out["confusion"] = dict(out[shown].pop("confusion"), source=shown)
    return out


# Beyond this many classes a confusion matrix is written as its non-zero cells: at 300 classes
# a dense one is 90,000 numbers for at most as many images as were scored (static/js/results.js
# `confusionMatrix` reads either form).
DENSE_CONFUSION_CLASSES = 30


def _sparse(confusion: dict) -> dict:
    """{"labels", "cells": [[true index, predicted index, count], ...]}, non-zero cells in
    row-major order, for {"labels", "matrix"}."""
    matrix = np.asarray(confusion["matrix"])
    rows, cols = np.nonzero(matrix)
    return {"labels": confusion["labels"],
            "cells": [[int(i), int(j), int(matrix[i, j])] for i, j in zip(rows, cols)]}


# What the report's "ensemble" (the chosen one) repeats of its entry in "ensembles": the
# headline figures, not the matrices and per-image rows (those are in "ensembles"[key]).
CHOSEN_ENSEMBLE_KEYS = ("method", "weights", "cv_accuracy", "cv_accuracy_std", "test_accuracy",
                        "train_accuracy")


def _chosen_ensemble(ensembles: dict, key: str, why: str) -> dict:
    entry = ensembles[key]
    return {**{k: entry[k] for k in CHOSEN_ENSEMBLE_KEYS if k in entry}, "key": key, "why": why}


def train(
    train_samples: Sequence[Sample],
    backbones: Sequence[str],
    cache: FeatureCache,
    make_backbone: Callable[[str], object],
    *,
    test_samples: Sequence[Sample] = (),
    progress: ProgressCallback | None = None,
    view_policies: Sequence[str] | None = None,
    seed: int = 0,
    fine_tune: bool = False,
) -> TrainResult:
    """Train one head per backbone on `train_samples` and evaluate everything honestly.

    `make_backbone(name)` returns a loaded backbone (see `models.backbones.load_backbone`); it
    is called only if the cache misses. Metrics: nested stratified k-fold CV on the training
    images (k = min(5, smallest class); near-duplicate images share a fold), the test set when
    given (test images of a class absent from training are left out and listed under
    "test_skipped"), and training-set scores under their own name.

    Automatic choices, all by CV on the training images: per backbone, which views of each
    image the head sees (averaged features: test-time augmentation) and whether their square
    roots serve better, its L2 strength and training length (the head is linear:
    `hyperparameters["head"]`); whether a temperature calibrates its probabilities (kept
    only where the cross-fitted CV log-loss clearly improves: `calibration.temperature_kept`);
    and which ensemble (majority vote, mean, CV-weighted mean) the project answers with. The candidate view policies are
    `view_policies` for every backbone when given, else each backbone's affordable ones
    (`models.features.view_policies_for`: the dihedral views for the cheap EfficientNet-Lite
    backbones up to a few hundred training images, the image alone for ResNet50, VGG16 and
    Xception and for larger projects).

    With `fine_tune`, each EfficientNet-Lite backbone also has the top of its network trained
    end to end (`models.finetune`), kept only where its CV beats the frozen recipe's on the
    same folds; each backbone's report says under "fine_tuning" whether it was tried and kept,
    and why.
    Raises TrainingError for fewer than two classes, no backbone or an unknown view policy.
    """
    classes = sorted({s.label for s in train_samples})
    if len(classes) < 2:
        raise TrainingError(f"need at least 2 classes with images, got {len(classes)}")
    if not backbones:
        raise TrainingError("choose at least one backbone")
    for name in backbones:
        get_spec(name)
    if view_policies is not None:
        unknown = [p for p in view_policies if p not in VIEW_POLICIES]
        if unknown or not view_policies:
            raise TrainingError(
                f"unknown view policies {unknown}; choose from {list(VIEW_POLICIES)}")
    policies = {name: tuple(view_policies) if view_policies is not None
                else view_policies_for(get_spec(name).gflops, n_images=len(train_samples))
                for name in backbones}
    index = {label: i for i, label in enumerate(classes)}
    test_kept = [s for s in test_samples if s.label in index]
    skipped = [{"source": s.source, "reason": f"class {s.label!r} has no training images"}
               for s in test_samples if s.label not in index]
    samples = {"cv": list(train_samples), "train": list(train_samples), "test": test_kept}
    y = {split: np.array([index[s.label] for s in ss], int) for split, ss in samples.items()}
    n_train = len(train_samples)

    def report_progress(stage: str, done: int, total: int, start: float, width: float) -> None:
        if progress:
            progress(Progress(stage, done, total, start + width * (done / total if total else 1)))

    # Stage 1 (80%): every needed (image, backbone, view) through the bottleneck cache.
    todo = _items(samples["train"]) + _items(test_kept)
    per_view: dict[str, dict[str, np.ndarray]] = {}
    seconds: dict[str, float] = {}
    for b, name in enumerate(backbones):
        began = time.perf_counter()
        views = list(dict.fromkeys(v for p in policies[name] for v in VIEW_POLICIES[p]))
        stage = (f"extracting features ({get_spec(name).title}, "
                 f"{len(views)} view{'' if len(views) == 1 else 's'})")
        start = 0.8 * b / len(backbones)
        per_view[name] = cache.get_or_compute_views(
            name, todo, lambda: make_backbone(name), views,
            progress=lambda d, t: report_progress(stage, d, t, start, 0.8 / len(backbones)))
        seconds[name] = time.perf_counter() - began

    # Near-duplicates (by the first backbone's embedding) stay together in every split.
    top_features = per_view[backbones[0]]["orig"][:, :get_spec(backbones[0]).blocks[0]]
    groups_all = near_duplicate_groups(top_features)
    groups = groups_all[:n_train]
    val_masks = make_folds(y["train"], groups, seed=seed)

    # Stage 2 (20%): per backbone, a head whose input, kind, L2 and length CV chose; calibration.
    heads: dict[str, Head] = {}
    tuned: dict[str, object] = {}
    entries: dict[str, dict] = {}
    all_probs: dict[str, dict[str, np.ndarray | None]] = {}
    embeddings: dict[str, np.ndarray] = {}  # head inputs, for "None of these" (models.ood)
    for b, name in enumerate(backbones):
        began = time.perf_counter()
        stage = f"fitting head ({get_spec(name).title})"
        report_progress(stage, 0, 1, 0.8 + 0.2 * b / len(backbones), 0.2 / len(backbones))
        blocks = get_spec(name).blocks
        candidates = {c: head_input(per_view[name], c, blocks)
                      for c in head_inputs(policies[name], transforms_for(blocks))}
        train_x = {p: x[:n_train] for p, x in candidates.items()}
        head_start, head_width = 0.8 + 0.2 * b / len(backbones), 0.2 / len(backbones)
        head, cv_logits, chosen = train_and_cross_validate(
            train_x, y["train"], classes, val_masks, groups, seed,
            progress=_every(PROGRESS_SECONDS,
                            lambda f, stage=stage, start=head_start, width=0.95 * head_width:
                            report_progress(stage, round(100 * f), 100, start, width)))
        x = candidates[head.params["views"]]
        curve = learning_curve(x[:n_train], y["train"], classes, val_masks, head.params, seed)
        calibration = {}
        cv_probs = None
        if val_masks:
            temperature, cv_probs, calibration = decide_temperature(cv_logits, y["train"],
                                                                    val_masks)
            calibration.update({
                "cv_ece_uncalibrated": expected_calibration_error(softmax(cv_logits), y["train"]),
                "cv_ece_calibrated": expected_calibration_error(cv_probs, y["train"]),
                "cv_views_chosen_per_fold": [p["views"] for p in chosen],
                "cv_heads_chosen_per_fold": [p["head"] for p in chosen],
            })
            if test_kept:
                plain = head.predict_proba(x[n_train:])
                calibration.update({
                    "test_ece_uncalibrated": expected_calibration_error(plain, y["test"]),
                    "test_log_loss_uncalibrated": log_loss(plain, y["test"]),
                    "test_brier_uncalibrated": brier(plain, y["test"]),
                    "test_reliability_uncalibrated": reliability(plain, y["test"]),
                })
            if temperature is not None:
                head = apply_temperature(head, temperature)
        probs = {
            "cv": cv_probs,
            "train": head.predict_proba(x[:n_train]),
            "test": head.predict_proba(x[n_train:]) if test_kept else None,
        }
        # Fine-tuning: the tuned model replaces the frozen one only where CV prefers it.
        tuning = None
        if fine_tune:
            tuning = fine_tune_backbone(
                name, partial(make_backbone, name), _items(samples["train"]), _items(test_kept),
                y["train"], classes, train_x, val_masks, groups, seed, cv_probs,
                progress=partial(report_progress, f"fine-tuning ({get_spec(name).title})",
                                 start=0.8 + 0.2 * b / len(backbones),
                                 width=0.18 / len(backbones)))
            if tuning.kept:
                head, probs, tuned[name] = tuning.head, tuning.probs, tuning.model
                calibration["cv_ece_calibrated"] = expected_calibration_error(probs["cv"],
                                                                              y["train"])
        heads[name] = head
        all_probs[name] = probs
        if name not in tuned:  # a tuned head reads the tuned network's features, not these
            embeddings[name] = x[:n_train]
        entries[name] = _entry(probs, y, samples, classes, val_masks)
        entries[name]["hyperparameters"] = head.params
        entries[name]["calibration"] = calibration
        entries[name]["learning_curve"] = curve  # of the frozen features' head
        if tuning is not None:
            entries[name]["fine_tuning"] = tuning.report
        entries[name]["extract_seconds"] = round(seconds[name], 3)
        entries[name]["head_seconds"] = round(time.perf_counter() - began, 3)
        entries[name]["train_seconds"] = round(seconds[name] + time.perf_counter() - began, 3)
        report_progress(stage, 1, 1, 0.8 + 0.2 * b / len(backbones), 0.2 / len(backbones))

    ensembles = _ensembles(all_probs, backbones, y, samples, classes, val_masks)
    chosen_key, why = _choose_ensemble(ensembles, len(backbones))
    ood = fit_ood(embeddings, y["train"], [s.sha256 for s in train_samples], val_masks)
    report = {
        "classes": classes,
        "counts": {c: int((y["train"] == i).sum()) for i, c in enumerate(classes)},
        "test_counts": {c: int((y["test"] == i).sum()) for i, c in enumerate(classes)},
        "n_train": n_train,
        "n_test": len(test_kept),
        "test_skipped": skipped,
        "cv_folds": len(val_masks) if val_masks else None,
        "cv_note": None if val_masks else "cross-validation needs at least 2 images per class",
        # Every policy tried by some backbone; which backbone tried which: the next key.
        "view_policies": {p: list(VIEW_POLICIES[p]) for ps in policies.values() for p in ps},
        "view_policies_by_backbone": {n: list(ps) for n, ps in policies.items()},
        "near_duplicates": _near_duplicate_report(groups_all, samples, n_train),
        "backbones": entries,
        "ensemble": _chosen_ensemble(ensembles, chosen_key, why),
        "ensembles": ensembles,
        "backbone_titles": backbone_titles(backbones),
        "ood": ood.info if ood else None,
        "mislabelled": mislabelled_report([all_probs[n]["cv"] for n in backbones], y["train"],
                                          samples["train"], classes),
    }
    if progress:
        progress(Progress("done", 1, 1, 1.0))
    return TrainResult(classes, heads, report, tuned, ood)


def _ensembles(all_probs, backbones, y, samples, classes, val_masks) -> dict:
    """The three ensembles' metrics; the weighted one's weights come from held-out probs."""
    weights = None
    if val_masks:
        weights = fit_weights([all_probs[n]["cv"] for n in backbones], y["train"])
    by_name = None if weights is None else dict(zip(backbones, weights))
    out = {}
    for key in ENSEMBLE_NAMES:
        combined = {}
        for split in ("cv", "train", "test"):
            parts = {n: all_probs[n][split] for n in backbones}
            if any(p is None for p in parts.values()) or (key == "weighted" and weights is None):
                combined[split] = None
            elif key == "weighted" and split == "cv":  # held out: weights from other folds
                combined[split] = cross_fit_weighted(list(parts.values()), y["train"], val_masks)
            else:
                combined[split] = combine_ensemble(key, parts, by_name).probs
        out[key] = _entry(combined, y, samples, classes, val_masks)
        out[key]["method"] = ENSEMBLE_NAMES[key]
        if key == "weighted" and weights is not None:
            out[key]["weights"] = {n: round(float(w), 4) for n, w in zip(backbones, weights)}
    return out


def _choose_ensemble(ensembles: dict, n_backbones: int) -> tuple[str, str]:
    """The ensemble to use, and why, in words: the lowest cross-validated log-loss (ties:
    CV accuracy). Log-loss, a proper scoring rule, charges both wrong answers and confident
    ones: chosen by CV accuracy, the majority vote (whose probabilities are vote shares, near
    0 or 1) won 2 of 10 galaxy draws and made the pooled test log-loss 1.29 against 0.95 for
    its best backbone alone. Without CV: the mean probability, which keeps the backbones'
    probabilities."""
    if n_backbones == 1:
        return "mean", "one backbone: the ensemble is that backbone's answer"
    scored = {k: e for k, e in ensembles.items() if e["cv_accuracy"] is not None}
    if not scored:
        return "mean", ("no cross-validation possible (a class has one image): mean "
                        "probability, which keeps the backbones' probabilities")
    key = min(scored, key=lambda k: (round(scored[k]["cv"]["log_loss"], 9),
                                     -scored[k]["cv_accuracy"]))
    figures = ", ".join(f"{ENSEMBLE_NAMES[k]} {scored[k]['cv']['log_loss']:.3f} "
                        f"({scored[k]['cv_accuracy']:.1%} accurate)" for k in scored)
    return key, ("lowest cross-validated log-loss, which counts confident mistakes as well as "
                 f"wrong answers ({figures})")


def _near_duplicate_report(groups: np.ndarray, samples: dict, n_train: int) -> list[dict]:
    everyone = [("train", s) for s in samples["train"]] + [("test", s) for s in samples["test"]]
    out = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        if len(members) < 2:
            continue
        rows = [{"split": everyone[i][0], "sha256": everyone[i][1].sha256,
                 "source": everyone[i][1].source, "label": everyone[i][1].label} for i in members]
        out.append({"members": rows,
                    "straddles_train_and_test": len({r["split"] for r in rows}) == 2})
    return out

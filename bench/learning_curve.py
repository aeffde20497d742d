"""Does the learning curve's extrapolation hold? Fit on <= 75 % of the images, check at 100 %.

    python bench/learning_curve.py DATASET_DIR [--backbone efficientnet_lite0] [--draws 5]
        [--subsample 1.0] [--cache DIR]

Per draw (a different seed: other folds and subsets; with `--subsample` below 1 also another
stratified sample of the dataset's images), `models.training.train` runs as the app runs it.
The learning curve it makes is checked against itself: the inverse power law fitted on the
25/50/75 % points (`models.learning_curve.extrapolate`, on the same scored images) predicts
the 100 % point; the figures are the error of that prediction and how often the measured
100 % accuracy falls inside the stated band (90 %). The cost of the learning curve is its CPU
seconds against the whole training run's (features cached, so the run is mostly the head
search: the curve's share is the largest it gets). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models.training  # noqa: E402
from models.datasets import read_dataset  # noqa: E402
from models.features import FeatureCache  # noqa: E402
from models.learning_curve import FRACTIONS, extrapolate, scored  # noqa: E402

from machine import machine  # noqa: E402  (bench/machine.py, beside this script)


def stratified(samples, share, rng):
    if share >= 1:
        return list(samples)
    out = []
    for label in sorted({s.label for s in samples}):
        mine = [s for s in samples if s.label == label]
        out += [mine[i] for i in rng.permutation(len(mine))[:round(share * len(mine))]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--subsample", type=float, default=1.0)
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/transferlab-bench"))
    args = parser.parse_args()

    from models.backbones import load_backbone

    data = read_dataset(args.dataset)
    cache = FeatureCache(args.cache)
    captured = {}
    real = models.training.learning_curve

    def capture(x, labels, classes, val_masks, params, seed=0, **kw):
        captured.update(x=x, labels=labels, classes=classes, val_masks=val_masks,
                        params=params, seed=seed)
        return real(x, labels, classes, val_masks, params, seed, **kw)

    models.training.learning_curve = capture
    draws = []
    for draw in range(args.draws):
        samples = stratified(data.samples, args.subsample, np.random.default_rng(100 + draw))
        began = time.process_time()
        result = models.training.train(samples, [args.backbone], cache, load_backbone, seed=draw)
        train_cpu = time.process_time() - began
        entry = result.report["backbones"][args.backbone]
        curve = entry["learning_curve"]
        c = captured
        right = scored(c["x"], c["labels"], c["classes"], c["val_masks"], c["params"],
                       seed=c["seed"])
        n = [f * len(c["labels"]) for f in FRACTIONS]
        early = extrapolate(n[:3], right[:3], n[3], seed=draw)
        measured = float(right[3].mean())
        draws.append({
            "n_images": len(samples), "points": [round(float(v), 4) for v in right.mean(axis=1)],
            "predicted_100": early["accuracy"], "band_100": [early["low"], early["high"]],
            "measured_100": round(measured, 4),
            "error": round(early["accuracy"] - measured, 4),
            "inside": early["low"] <= measured <= early["high"],
            "expected_at_2x": curve["expected_at_2x"],
            "classes_gaining_most": curve["classes_gaining_most"],
            "curve_cpu_seconds": curve["cpu_seconds"], "train_cpu_seconds": round(train_cpu, 3),
            "curve_share_of_training": round(curve["cpu_seconds"] / train_cpu, 4),
            "nested_cv_accuracy": entry["cv_accuracy"],
        })
        print(json.dumps(draws[-1]), file=sys.stderr)
    errors = np.array([d["error"] for d in draws])
    print(json.dumps({
        "dataset": Path(args.dataset).name, "backbone": args.backbone, "draws": args.draws,
        "subsample": args.subsample,
        "mean_abs_error_100": round(float(np.abs(errors).mean()), 4),
        "mean_error_100": round(float(errors.mean()), 4),
        "max_abs_error_100": round(float(np.abs(errors).max()), 4),
        "inside_band": f"{sum(d['inside'] for d in draws)}/{len(draws)}",
        "mean_band_width": round(float(np.mean([d["band_100"][1] - d["band_100"][0]
                                                for d in draws])), 4),
        "curve_share_of_training": round(float(np.mean([d["curve_share_of_training"]
                                                         for d in draws])), 4),
        "per_draw": draws, "load_average": os.getloadavg(), "machine": machine(),
    }, indent=1))


if __name__ == "__main__":
    main()

"""Recall of the "likely mislabelled" ranking: flip 10 % of the labels, train, look at the top.

    python bench/mislabelled.py DATASET_DIR [--backbones efficientnet_lite0] [--draws 5]
        [--cache DIR] [--flip 0.1]

Per draw: `--flip` of the training images get a label drawn uniformly from the other classes;
`models.training.train` runs exactly as the app runs it (features from the cache, heads and
their nested CV), and the report's "mislabelled" ranking is scored: recall = the share of the
flipped images among the top 2 x (number flipped) suggestions, the issue's acceptance figure
(>= 70 %). Both of `models.curation.METHODS` are scored on the same out-of-fold
probabilities (captured from the call `train` makes, so no recipe is re-implemented here),
with the recall at 1 x and 2 x the number flipped and the average precision.
Prints one JSON object: per method, recall mean/min over draws, and the machine.
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
from models.curation import METHODS, flip_labels, rank  # noqa: E402
from models.datasets import read_dataset  # noqa: E402
from models.features import FeatureCache  # noqa: E402

from machine import machine  # noqa: E402  (bench/machine.py, beside this script)


def average_precision(order, flipped):
    hits, total = 0, 0.0
    for k, i in enumerate(order, 1):
        if i in flipped:
            hits += 1
            total += hits / k
    return total / len(flipped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--backbones", default="efficientnet_lite0")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--flip", type=float, default=0.1)
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/transferlab-bench"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from models.backbones import load_backbone

    data = read_dataset(args.dataset)
    backbones = args.backbones.split(",")
    cache = FeatureCache(args.cache)
    captured = {}
    real = models.training.mislabelled_report

    def capture(cv_probs, labels, samples, classes, **kw):
        captured.update(probs=np.mean([p for p in cv_probs if p is not None], axis=0),
                        labels=np.asarray(labels))
        return real(cv_probs, labels, samples, classes, **kw)

    models.training.mislabelled_report = capture
    rows = {m: {"recall_1x": [], "recall_2x": [], "average_precision": []} for m in METHODS}
    stored, cv_accuracy, seconds = [], [], []
    for draw in range(args.draws):
        rng = np.random.default_rng(args.seed + draw)
        samples, truth = flip_labels(data.samples, args.flip, rng)
        flipped = {i for i, s in enumerate(samples) if s.sha256 in truth}
        began = time.process_time()
        result = models.training.train(samples, backbones, cache, load_backbone, seed=draw)
        seconds.append(time.process_time() - began)
        cv_accuracy.append(result.report["ensemble"]["cv_accuracy"])
        k = len(flipped)
        for method in METHODS:
            order = rank(captured["probs"], captured["labels"], method).tolist()
            rows[method]["recall_1x"].append(len(flipped & set(order[:k])) / k)
            rows[method]["recall_2x"].append(len(flipped & set(order[:2 * k])) / k)
            rows[method]["average_precision"].append(average_precision(order, flipped))
        top = [r["sha256"] for r in result.report["mislabelled"]["images"][:2 * k]]
        stored.append(len(truth.keys() & set(top)) / k)
        print(json.dumps({"draw": draw, "stored_recall_2x": stored[-1],
                          **{m: rows[m]["recall_2x"][-1] for m in METHODS}}), file=sys.stderr)

    def summary(values):
        return {"mean": round(float(np.mean(values)), 4), "min": round(float(np.min(values)), 4),
                "per_draw": [round(v, 4) for v in values]}

    print(json.dumps({
        "dataset": Path(args.dataset).name, "backbones": backbones, "n_images": len(data.samples),
        "flipped": round(args.flip * len(data.samples)), "draws": args.draws,
        "cv_accuracy_with_flips": summary(cv_accuracy),
        "report_ranking_recall_2x": summary(stored),
        "methods": {m: {k: summary(v) for k, v in r.items()} for m, r in rows.items()},
        "train_cpu_seconds": summary(seconds),
        "load_average": os.getloadavg(), "machine": machine(),
    }, indent=1))


if __name__ == "__main__":
    main()

"""Active suggestions against random picks: which N images to label next, measured by test
accuracy after retraining.

    python bench/active.py DATASET_DIR [--start 3] [--add 12] [--test 20] [--draws 10]

Per draw (seeded): `--test` images per class are held out for testing; of the rest, `--start`
per class are the labelled training set and every other image is the unlabelled batch. A head
is trained on the start set exactly as the app trains one (`models.heads.train_head`: input,
L2 and length chosen by CV) on the cached features of `--backbone`'s original view, and
classifies the batch. Then `--add` images of the batch are labelled (their true class) and
the head is trained again, for each strategy:

  active        `models.active.suggest` (what the batch page suggests: lowest margin, made
                diverse over the head's inputs)
  margin_only   the `--add` lowest margins, no diversity (pool = `--add`)
  random        `--add` images drawn at random from the batch

Test accuracy after retraining is compared on the same draws (paired differences, mean and
standard error, wins/ties/losses against random). Prints one JSON object, with the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.active import embed, suggest  # noqa: E402
from models.datasets import read_dataset  # noqa: E402
from models.features import (  # noqa: E402
    FeatureCache,
    Item,
    head_input,
    head_inputs,
    transforms_for,
)

from machine import machine  # noqa: E402  (bench/machine.py, beside this script)

STRATEGIES = ("active", "margin_only", "random")


def fit(candidates: dict[str, np.ndarray], rows: np.ndarray, labels: np.ndarray,
        classes: list[str], seed: int):
    """The app's head on `rows`: (head, the name of the input CV chose)."""
    from models.heads import train_head

    head = train_head({k: v[rows] for k, v in candidates.items()}, labels[rows], classes,
                      seed=seed)
    return head, head.params["views"]


def accuracy(head, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(head.predict_proba(x).argmax(axis=1) == y))


def pick(strategy: str, head, x_batch: np.ndarray, n: int, rng) -> np.ndarray:
    """Positions (in the batch) of the `n` images `strategy` labels next."""
    if strategy == "random":
        return rng.choice(len(x_batch), size=n, replace=False)
    probs = head.predict_proba(x_batch)
    pool = n if strategy == "margin_only" else None
    return np.array(suggest(probs, embed({"head": x_batch}), k=n, pool=pool))


def paired(a: list[float], b: list[float]) -> dict:
    d = np.array(a) - np.array(b)
    return {"mean": round(float(d.mean()), 4),
            "sem": round(float(d.std(ddof=1) / np.sqrt(len(d))), 4) if len(d) > 1 else None,
            "wins": int((d > 0).sum()), "ties": int((d == 0).sum()), "losses": int((d < 0).sum())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--start", type=int, default=3, help="labelled images per class at first")
    parser.add_argument("--add", type=int, default=12, help="images labelled next")
    parser.add_argument("--test", type=int, default=20, help="test images per class")
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "transferlab" / "features"))
    args = parser.parse_args(argv)

    from models.backbones import load_backbone
    from models.registry import get_spec

    data = read_dataset(args.dataset)
    samples, classes = data.samples, data.classes
    labels = np.array([classes.index(s.label) for s in samples])
    cache = FeatureCache(args.cache)
    began = time.perf_counter()
    raw = cache.get_or_compute(args.backbone, [Item(s.sha256, s.image) for s in samples],
                               lambda: load_backbone(args.backbone))
    extract_seconds = time.perf_counter() - began
    blocks = get_spec(args.backbone).blocks
    candidates = {name: head_input({"orig": raw}, name, blocks)
                  for name in head_inputs(["none"], transforms_for(blocks))}

    rng = np.random.default_rng(args.seed)
    start_acc, acc = [], {s: [] for s in STRATEGIES}
    picked_classes = {s: [] for s in STRATEGIES}  # distinct true classes among the added
    cpu = time.process_time()
    for draw in range(args.draws):
        test, start, batch = [], [], []
        for c in range(len(classes)):
            rows = rng.permutation(np.flatnonzero(labels == c))
            test += list(rows[:args.test])
            start += list(rows[args.test:args.test + args.start])
            batch += list(rows[args.test + args.start:])
        test, start, batch = np.array(test), np.array(start), np.array(batch)
        head, chosen = fit(candidates, start, labels, classes, draw)
        start_acc.append(accuracy(head, candidates[chosen][test], labels[test]))
        for strategy in STRATEGIES:
            where = pick(strategy, head, candidates[chosen][batch], args.add,
                         np.random.default_rng([args.seed, draw]))
            added = batch[where]
            picked_classes[strategy].append(len(set(labels[added])))
            again, name = fit(candidates, np.concatenate([start, added]), labels, classes, draw)
            acc[strategy].append(accuracy(again, candidates[name][test], labels[test]))
    out = {
        "dataset": os.path.basename(os.path.normpath(args.dataset)), "backbone": args.backbone,
        "classes": len(classes), "images": len(samples), "start_per_class": args.start,
        "added": args.add, "test_per_class": args.test, "draws": args.draws,
        "start_accuracy": round(float(np.mean(start_acc)), 4),
        "accuracy": {s: {"mean": round(float(np.mean(v)), 4),
                         "std": round(float(np.std(v, ddof=1)), 4) if len(v) > 1 else None}
                     for s, v in acc.items()},
        "minus_random": {s: paired(acc[s], acc["random"]) for s in STRATEGIES if s != "random"},
        "active_minus_margin_only": paired(acc["active"], acc["margin_only"]),
        "distinct_classes_added": {s: round(float(np.mean(v)), 2)
                                   for s, v in picked_classes.items()},
        "per_draw": {s: [round(a, 4) for a in v] for s, v in acc.items()},
        "feature_seconds": round(extract_seconds, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "load_average": os.getloadavg()[0],
        "machine": machine(),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Few-shot accuracy: Transferlab's recipe against its peers' recipes, on the same draws.

    python bench/accuracy.py DATASET_DIR [--backbone efficientnet_lite0] [--draws 20]

The protocol of the seed study: per draw, `--train` (19) training and `--test` (10) test images
per class, drawn at random from a folder of class folders; every recipe trains on the same
cached features of the same draw and is scored on the same test images. One JSON object per
recipe and line: {"dataset", "backbone", "recipe", "n_train", "draws", "mean", "std", ...}.

Transferlab's recipe is `models.training.train` itself, exactly as the app runs it (views,
head kind, L2 and training length chosen by CV, temperature calibration), on `--backbone` alone
(`transferlab`) and on the offline ensemble `--ensemble` (`transferlab_ensemble`);
`transferlab_ft` is `transferlab` with fine-tuning on (`train(..., fine_tune=True)`: the
backbone's top trained end to end, kept when CV prefers it); its row says how often it was kept
and the mean CV figures of both models. `transferlab_ft_always` keeps the tuned model in every
draw whatever CV says (bench-only, to measure fine-tuning itself apart from its keep rule).

Peer recipes, as their tools ran them on frozen (un-augmented) features (the classic pooled top
features; Transferlab may also use the backbone's pooled earlier stages, see features.py):
  poets    one softmax layer, SGD lr 0.01, batch 100 sampled per step, 500 steps (TF-for-Poets)
  tm       Dense 100 relu + softmax, Adam 1e-3, batch 16, 50 epochs (Teachable Machine)
  keras20  Dense 1024 relu + softmax, Adam, 20 epochs (the Keras tutorials' head)
  logreg   scikit-learn's StandardScaler + LogisticRegressionCV (default Cs grid, 5-fold CV)

Each row also gives, for every other recipe, the paired per-draw difference of test accuracy
(`paired_minus`: this recipe minus that one, mean and standard error over draws), and test
ECE, log-loss and Brier pooled over all draws' test predictions (`pooled_test`; for
Transferlab also before calibration, and how often CV kept the temperature). Pick counts:
`choices` (head input), `l2_choices`, `steps_choices`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.datasets import read_dataset  # noqa: E402
from models.features import FeatureCache, Item  # noqa: E402
from models.metrics import expected_calibration_error  # noqa: E402
from models.training import train  # noqa: E402

from machine import machine  # noqa: E402  (bench/machine.py, beside this script)


def _keras_head(n_classes: int, hidden: int | None, dim: int):
    import keras

    layers = [keras.Input((dim,))]
    if hidden:
        layers.append(keras.layers.Dense(hidden, activation="relu"))
    layers.append(keras.layers.Dense(n_classes, activation="softmax"))
    return keras.Sequential(layers)


def recipe_poets(x, y, n_classes, rng):
    import keras

    model = _keras_head(n_classes, None, x.shape[1])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    for _ in range(500):
        batch = rng.integers(0, len(x), 100)
        model.train_on_batch(x[batch], y[batch])
    return model


def recipe_tm(x, y, n_classes, rng):
    import keras

    model = _keras_head(n_classes, 100, x.shape[1])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=16, epochs=50, shuffle=True, verbose=0)
    return model


def recipe_keras20(x, y, n_classes, rng):

    model = _keras_head(n_classes, 1024, x.shape[1])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=20, shuffle=True, verbose=0)
    return model


def recipe_logreg(x, y, n_classes, rng):
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegressionCV(max_iter=2000)).fit(x, y)


PEERS = {"poets": recipe_poets, "tm": recipe_tm, "keras20": recipe_keras20,
         "logreg": recipe_logreg}


class Pool:
    """Test predictions pooled over draws: reliability bins summed, log-loss and Brier sums."""

    def __init__(self):
        self.bins = [[0.0, 0.0, 0] for _ in range(10)]  # confidence sum, correct sum, count
        self.log_loss = self.brier = 0.0
        self.n = 0

    def add(self, bins: list[dict], log_loss: float, brier: float, n: int) -> None:
        for b in bins:
            i = min(9, max(0, int(np.ceil(b["confidence"] * 10)) - 1))
            self.bins[i][0] += b["confidence"] * b["count"]
            self.bins[i][1] += b["accuracy"] * b["count"]
            self.bins[i][2] += b["count"]
        self.log_loss += log_loss * n
        self.brier += brier * n
        self.n += n

    def add_probs(self, probs: np.ndarray, y: np.ndarray) -> None:
        from models.metrics import brier, log_loss, reliability

        self.add(reliability(probs, y), log_loss(probs, y), brier(probs, y), len(y))

    def figures(self) -> dict:
        ece = sum(abs(conf - acc) for conf, acc, _ in self.bins) / self.n
        return {"ece": round(ece, 4), "log_loss": round(self.log_loss / self.n, 4),
                "brier": round(self.brier / self.n, 4), "n": self.n}


def paired(a: list[float], b: list[float]) -> dict:
    """Mean and standard error of the per-draw differences a - b."""
    d = np.array(a) - np.array(b)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None
    return {"mean": round(float(d.mean()), 4), "se": None if se is None else round(se, 4)}
FINE_TUNED = ("transferlab_ft", "transferlab_ft_always")


@contextmanager
def always_keep_fine_tuning():
    """`models.finetune.decide` keeps the tuned model, with the real CV figures, until exit."""
    from models import finetune

    real = finetune.decide

    def keep(*args):
        return finetune.Decision(True, "kept (forced by the benchmark)", real(*args).figures)

    finetune.decide = keep
    try:
        yield
    finally:
        finetune.decide = real


def probabilities(model, x) -> np.ndarray:
    if hasattr(model, "predict_proba"):
        return model.predict_proba(x)
    return np.asarray(model(x, training=False))


def draw_split(labels: np.ndarray, n_train: int, n_test: int, rng) -> tuple[np.ndarray, np.ndarray]:
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) < n_train + n_test:
            raise SystemExit(f"class {c} has {len(members)} images; need {n_train + n_test}")
        train.extend(members[:n_train])
        test.extend(members[n_train:n_train + n_test])
    return np.array(train), np.array(test)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--ensemble", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2",
                        help="backbones of the transferlab_ensemble recipe")
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--train", type=int, default=19)
    parser.add_argument("--test", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipes", default="transferlab,transferlab_ensemble,poets,tm,keras20")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "transferlab" / "features"))
    parser.add_argument("--weights-dir")
    args = parser.parse_args(argv)

    from models.backbones import load_backbone

    def make(name):
        return load_backbone(name, "imagenet", args.weights_dir)

    data = read_dataset(args.dataset)
    for r in data.rejected:
        print(f"skipped {r.source}: {r.reason}", file=sys.stderr)
    samples = data.samples
    classes = data.classes
    labels = np.array([classes.index(s.label) for s in samples])
    cache = FeatureCache(args.cache)
    began = time.perf_counter()
    features = cache.get_or_compute(args.backbone, [Item(s.sha256, s.image) for s in samples],
                                    lambda: make(args.backbone))
    extract_seconds = time.perf_counter() - began
    # The peers train on the classic bottleneck: the backbone's pooled top features only.
    from models.registry import get_spec

    features = features[:, :get_spec(args.backbone).blocks[0]]
    ensemble = args.ensemble.split(",")

    chosen = args.recipes.split(",")
    scores = {name: [] for name in chosen}
    ece = {name: {"uncalibrated": [], "calibrated": []} for name in chosen}
    draw_seconds = {name: [] for name in chosen}
    views = {name: [] for name in chosen}
    kept = {name: [] for name in chosen}
    cv_figures = {name: [] for name in chosen}
    kinds = {name: [] for name in chosen}  # the head kind CV chose ("linear" or "hidden")
    picks = {name: {"l2": [], "steps": [], "temperature_kept": []} for name in chosen}
    pools = {name: {"calibrated": Pool(), "uncalibrated": Pool()} for name in chosen}
    rng = np.random.default_rng(args.seed)
    for draw in range(args.draws):
        train_idx, test_idx = draw_split(labels, args.train, args.test, rng)
        for name in chosen:
            began = time.perf_counter()
            if name.startswith("transferlab"):
                single = name == "transferlab" or name in FINE_TUNED
                backbones = [args.backbone] if single else ensemble
                forced = name == "transferlab_ft_always"
                with always_keep_fine_tuning() if forced else nullcontext():
                    report = train([samples[i] for i in train_idx], backbones, cache, make,
                                   test_samples=[samples[i] for i in test_idx], seed=draw,
                                   fine_tune=name in FINE_TUNED).report
                entry = (report["backbones"][args.backbone] if single
                         else report["ensembles"][report["ensemble"]["key"]])
                scores[name].append(entry["test_accuracy"])
                ece[name]["calibrated"].append(entry["test"]["ece"])
                pools[name]["calibrated"].add(entry["reliability"]["test"],
                                              entry["test"]["log_loss"], entry["test"]["brier"],
                                              entry["test"]["n"])
                if "fine_tuning" in entry:
                    kept[name].append(entry["fine_tuning"]["kept"])
                    cv_figures[name].append(entry["fine_tuning"]["cv"])
                if single:
                    cal = entry["calibration"]
                    ece[name]["uncalibrated"].append(cal["test_ece_uncalibrated"])
                    pools[name]["uncalibrated"].add(
                        cal["test_reliability_uncalibrated"], cal["test_log_loss_uncalibrated"],
                        cal["test_brier_uncalibrated"], entry["test"]["n"])
                    hp = entry["hyperparameters"]
                    picks[name]["l2"].append(hp["l2"])
                    picks[name]["steps"].append(hp.get("steps", hp.get("solver")))
                    picks[name]["temperature_kept"].append(cal.get("temperature_kept", True))
                    views[name].append(entry["hyperparameters"]["views"])
                    kinds[name].append(entry["hyperparameters"]["head"])
                else:
                    views[name].append(report["ensemble"]["key"])
            else:
                model = PEERS[name](features[train_idx], labels[train_idx], len(classes),
                                    np.random.default_rng(args.seed + draw))
                probs = probabilities(model, features[test_idx])
                scores[name].append(float((probs.argmax(axis=1) == labels[test_idx]).mean()))
                ece[name]["uncalibrated"].append(
                    expected_calibration_error(probs, labels[test_idx]))
                pools[name]["uncalibrated"].add_probs(probs, labels[test_idx])
            draw_seconds[name].append(time.perf_counter() - began)
        print(f"draw {draw + 1}/{args.draws}: " + ", ".join(
            f"{n} {scores[n][-1]:.3f} ({draw_seconds[n][-1]:.0f} s)" for n in chosen)
            + "".join(f", {n} kept {kept[n][-1]}" for n in chosen if kept[n]), file=sys.stderr)

    for name in chosen:
        row = {
            "dataset": Path(args.dataset).name,
            "backbone": args.backbone if name != "transferlab_ensemble" else "+".join(ensemble),
            "recipe": name,
            "n_train": args.train,
            "n_test": args.test,
            "classes": len(classes),
            "draws": args.draws,
            "mean": round(float(np.mean(scores[name])), 4),
            "std": round(float(np.std(scores[name])), 4),
            "fit_seconds_per_draw": round(float(np.mean(draw_seconds[name])), 3),
            "fit_seconds_range": [round(min(draw_seconds[name]), 1),
                                  round(max(draw_seconds[name]), 1)],
        }
        for kind, values in ece[name].items():
            if values:
                row[f"test_ece_{kind}"] = round(float(np.mean(values)), 4)
        row["paired_minus"] = {other: paired(scores[name], scores[other])
                               for other in chosen if other != name}
        row["pooled_test"] = {kind: pool.figures() for kind, pool in pools[name].items()
                              if pool.n}
        for key, values in picks[name].items():
            if values:
                row[f"{key}_choices"] = {str(v): values.count(v) for v in sorted(set(values))}
        if kept[name]:
            row["fine_tuning_kept"] = f"{sum(kept[name])}/{len(kept[name])}"
            figures = cv_figures[name]
            row["fine_tuning_mean_cv"] = {
                f"{model}_{key}": round(float(np.mean([f[model][key] for f in figures])), 4)
                for model in ("frozen", "tuned") for key in ("cv_accuracy", "cv_log_loss")}
        if views[name]:
            row["choices"] = {c: views[name].count(c) for c in sorted(set(views[name]))}
        if kinds[name]:
            row["head_choices"] = {k: kinds[name].count(k) for k in sorted(set(kinds[name]))}
        row["feature_seconds"] = round(extract_seconds, 2)
        row["machine"] = machine()
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())

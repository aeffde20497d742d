""""None of these" (models.ood): does an image from another set answer unknown, while held-out
images of the project's own classes do not?

    python bench/ood.py DATASET_DIR [--classes spiral elliptical] [--draws 5] [--backbone ...]

Per draw: half of each of the two `--classes` of DATASET_DIR (a folder of class folders) trains
a project with `models.training.train` exactly as the app does (OOD calibrated by its CV), the
other half is held out (in-distribution). Out-of-distribution sets, never part of any project:
"digits" (scikit-learn's handwritten digits rendered as images, as bench/make_digits.py draws
them), "photos" (scikit-image's sample photos, cropped variants) and "other_classes" (the
dataset's remaining classes: near out-of-distribution, harder by design, reported apart).

For every method of `models.ood.METHODS` (and k-NN with k=1), on the same embeddings and CV
folds: the unknown rate on held-out in-distribution images at the CV-calibrated threshold, the
unknown rate per OOD set, and AUROC (in-distribution vs each OOD set, by the raw score).
One JSON line per method, with the machine and load average.
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

from models.backbones import load_backbone  # noqa: E402
from models.datasets import Sample, read_dataset  # noqa: E402
from models.features import FeatureCache, Item, head_input, parse_head_input  # noqa: E402
from models.heads import make_folds  # noqa: E402
from models.ood import QUANTILE, Scorer, held_out_scores  # noqa: E402
from models.registry import get_spec  # noqa: E402
from models.training import train  # noqa: E402

from machine import machine  # noqa: E402  (bench/machine.py, beside this script)


def _digits(n: int) -> list[Item]:
    import io

    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for i in range(n):
        pixels = (255 - digits.images[i] * 255 / 16).astype(np.uint8)
        im = Image.fromarray(pixels).resize((64, 64), Image.BILINEAR).convert("RGB")
        out.append(_item(f"digit{i}", im, io))
    return out


def _photos(n: int) -> list[Item]:
    import io

    from skimage import data

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from helpers import PHOTO_CLASSES, photo_variants

    names = [*PHOTO_CLASSES.values(), "astronaut", "camera", "coins", "hubble_deep_field"]
    per = max(1, n // len(names))
    out = []
    for seed, name in enumerate(names):
        for j, im in enumerate(photo_variants(getattr(data, name)(), per, 900 + seed)):
            out.append(_item(f"photo-{name}-{j}", im.convert("RGB"), io))
    return out


def _item(key: str, im, io) -> Item:
    import hashlib

    buf = io.BytesIO()
    im.save(buf, "PNG")
    return Item(hashlib.sha256(buf.getvalue()).hexdigest(), lambda im=im: im)


def _auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))],
                               np.r_[inside, outside]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("--classes", nargs=2, default=["spiral", "elliptical"])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--ood-count", type=int, default=200)
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/transferlab-bench"))
    args = parser.parse_args()

    cache = FeatureCache(args.cache)
    samples = read_dataset(args.dataset).samples
    inside = [s for s in samples if s.label in args.classes]
    others = [s for s in samples if s.label not in args.classes]
    ood_sets = {"digits": _digits(args.ood_count), "photos": _photos(args.ood_count),
                "other_classes": [Item(s.sha256, s.image) for s in others]}
    blocks = get_spec(args.backbone).blocks
    started, cpu0 = time.perf_counter(), time.process_time()
    rows: dict[str, dict] = {}
    for draw in range(args.draws):
        rng = np.random.default_rng(draw)
        train_s: list[Sample] = []
        held: list[Sample] = []
        for label in args.classes:
            mine = [s for s in inside if s.label == label]
            order = rng.permutation(len(mine))
            train_s += [mine[i] for i in order[: len(mine) // 2]]
            held += [mine[i] for i in order[len(mine) // 2:]]
        result = train(train_s, [args.backbone], cache, load_backbone, seed=draw)
        head = result.heads[args.backbone]
        views = head.params["views"]

        def embed(items, views=views):
            per_view = cache.get_or_compute_views(
                args.backbone, items, lambda: load_backbone(args.backbone),
                list(parse_head_input(views)[0]))
            return head_input(per_view, views, blocks)

        x_train = embed([Item(s.sha256, s.image) for s in train_s])
        y_train = np.array([args.classes.index(s.label) for s in train_s])
        x_held = embed([Item(s.sha256, s.image) for s in held])
        x_ood = {k: embed(v) for k, v in ood_sets.items()}
        folds = make_folds(y_train, np.arange(len(y_train)), seed=draw)
        saved = result.ood.info["backbones"][args.backbone]
        for method, k in (("knn", 5), ("knn", 1), ("mahalanobis", 5)):
            key = f"{method}" + (f"_k{k}" if method == "knn" else "")
            cv = held_out_scores(method, x_train, y_train, folds, k)
            threshold = float(np.quantile(cv, QUANTILE))
            scorer = Scorer(method, x_train, y_train, k)
            s_in = scorer.score(x_held)
            row = rows.setdefault(key, {"in_unknown": [], "cv_unknown": [],
                                        **{f"{n}_unknown": [] for n in ood_sets},
                                        **{f"{n}_auroc": [] for n in ood_sets}})
            row["in_unknown"].append(float((s_in > threshold).mean()))
            row["cv_unknown"].append(float((cv > threshold).mean()))
            for name, x in x_ood.items():
                s_out = scorer.score(x)
                row[f"{name}_unknown"].append(float((s_out > threshold).mean()))
                row[f"{name}_auroc"].append(_auroc(s_in, s_out))
        # The app's own path (the model train() saved) must agree with the bench's default.
        app_in = result.ood.scores({args.backbone: x_held})[args.backbone]
        rows.setdefault("app", {"in_unknown": [], **{f"{n}_unknown": [] for n in ood_sets}})
        rows["app"]["in_unknown"].append(float((app_in > saved["threshold"]).mean()))
        for name, x in x_ood.items():
            s_out = result.ood.scores({args.backbone: x})[args.backbone]
            rows["app"][f"{name}_unknown"].append(float((s_out > saved["threshold"]).mean()))
        rows["app"]["app_method"] = saved["method"]
    load = os.getloadavg()
    for key, row in rows.items():
        out = {"bench": "ood", "method": key, "dataset": Path(args.dataset).name,
               "classes": args.classes, "backbone": args.backbone, "draws": args.draws,
               "n_train": len(inside) // 2, "n_held_out": len(inside) - len(inside) // 2,
               "ood_counts": {k: len(v) for k, v in ood_sets.items()}, "quantile": QUANTILE}
        for name, values in row.items():
            if isinstance(values, list):
                out[name] = {"mean": round(float(np.mean(values)), 4),
                             "min": round(float(np.min(values)), 4),
                             "max": round(float(np.max(values)), 4)}
            else:
                out[name] = values
        out.update(wall_s=round(time.perf_counter() - started, 1),
                   cpu_s=round(time.process_time() - cpu0, 1), loadavg=load, machine=machine())
        print(json.dumps(out))


if __name__ == "__main__":
    main()

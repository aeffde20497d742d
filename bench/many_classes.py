"""Many classes (issue #14 item 4): a whole first training of C classes x 3 images, timed.

    python bench/many_classes.py [--classes 300] [--per-class 3] [--test-per-class 1]
                                 [--backbones efficientnet_lite0] [--write DIR]

Generates C synthetic classes as real image files (each class a seeded style: background,
palette, favourite shape; each image a fresh drawing in it, turned and brightened, JPEG), so
that decoding and the forward passes count as they do for a user's upload. Then
`models.training.train` from an empty feature cache with the real offline backbone, exactly
as the worker runs it: extraction (the default view policies for that project's size), head
search with nested CV, final fits, calibration, ensembles; then `TrainResult.save`.

Prints ONE JSON object: `total_seconds` (train + save), `train_seconds`, per backbone
`extract_seconds` / `head_seconds` (the report's), `save_seconds`, `cpu_seconds` (this
process, all threads), `forward_passes`, the chosen hyperparameters, the test accuracy on the
held-out images (one per class by default; chance is 1/C), `report_bytes` (report.json) and
`heads_bytes`, the load average before and after, and the machine.

`--write DIR` keeps the images as class folders (`DIR/train`, `DIR/test`), e.g. for
`bench/api_training_time.py DIR/train` (the same training through the web API).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from machine import machine  # noqa: E402  (bench/machine.py, beside this script)
from PIL import Image, ImageDraw, ImageEnhance  # noqa: E402

from models.backbones import load_backbone  # noqa: E402
from models.datasets import read_dataset  # noqa: E402
from models.features import FeatureCache  # noqa: E402
from models.result import REPORT_FILE  # noqa: E402
from models.training import train  # noqa: E402

SIZE = 192


def class_style(rng: np.random.Generator) -> dict:
    """One class: a background colour, a palette of three colours and a favourite shape."""
    return {"background": rng.integers(0, 256, 3), "palette": rng.integers(0, 256, (3, 3)),
            "shape": int(rng.integers(3))}


def drawing(style: dict, rng: np.random.Generator) -> Image.Image:
    """A fresh image in a class's style: five shapes at random places and sizes, mostly the
    class's favourite kind, coloured from its palette with +-25 of jitter per channel, and
    the background jittered too (so no two images of a class are near-duplicates)."""
    def colour(base):
        return tuple(int(v) for v in np.clip(base + rng.integers(-25, 26, 3), 0, 255))

    image = Image.new("RGB", (SIZE, SIZE), colour(style["background"]))
    draw = ImageDraw.Draw(image)
    for _ in range(5):
        x0, y0 = (int(v) for v in rng.integers(0, SIZE - 40, 2))
        x1, y1 = x0 + int(rng.integers(30, 110)), y0 + int(rng.integers(30, 110))
        fill = colour(style["palette"][rng.integers(3)])
        kind = style["shape"] if rng.random() < 0.7 else int(rng.integers(3))
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=fill)
    out = image.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR)
    return ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.8, 1.2)))


def write_classes(root: Path, classes: int, per_class: int, test_per_class: int,
                  seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        style = class_style(rng)
        for split, count in (("train", per_class), ("test", test_per_class)):
            folder = root / split / f"class_{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                drawing(style, rng).save(folder / f"{i}.jpg", quality=90)


def run(root: Path, backbones: list[str], work: Path) -> dict:
    train_samples = read_dataset(root / "train").samples
    test_dir = root / "test"
    test_samples = read_dataset(test_dir).samples if test_dir.exists() else []
    cache = FeatureCache(work / "features")
    load_backbone.cache_clear()
    out: dict = {"images": {"train": len(train_samples), "test": len(test_samples),
                            "classes": len({s.label for s in train_samples})},
                 "load_average_at_start": os.getloadavg()}
    cpu = time.process_time()
    began = time.perf_counter()
    result = train(train_samples, backbones, cache, lambda name: load_backbone(name, "imagenet"),
                   test_samples=test_samples)
    out["train_seconds"] = round(time.perf_counter() - began, 2)
    saved = time.perf_counter()
    folder = result.save(work / "result")
    out["save_seconds"] = round(time.perf_counter() - saved, 2)
    out["total_seconds"] = round(time.perf_counter() - began, 2)
    out["cpu_seconds"] = round(time.process_time() - cpu, 2)
    out["forward_passes"] = cache.computed
    out["by_backbone"] = {
        name: {"extract_seconds": e["extract_seconds"], "head_seconds": e["head_seconds"],
               "views": result.report["view_policies_by_backbone"][name],
               "hyperparameters": e["hyperparameters"], "cv_accuracy": e["cv_accuracy"],
               "test_accuracy": e["test_accuracy"],
               "temperature_kept": e["calibration"].get("temperature_kept")}
        for name, e in result.report["backbones"].items()}
    out["report_bytes"] = (folder / REPORT_FILE).stat().st_size
    out["heads_bytes"] = sum(p.stat().st_size for p in (folder / "heads").iterdir())
    out["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out["load_average_at_end"] = os.getloadavg()
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=300)
    parser.add_argument("--per-class", type=int, default=3)
    parser.add_argument("--test-per-class", type=int, default=1)
    parser.add_argument("--backbones", default="efficientnet_lite0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", help="keep the generated images here (class folders)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.write) if args.write else Path(tmp) / "images"
        write_classes(root, args.classes, args.per_class, args.test_per_class, args.seed)
        out = {"machine": machine(), "classes": args.classes, "per_class": args.per_class}
        out.update(run(root, args.backbones.split(","), Path(tmp)))
    print(json.dumps(out))


if __name__ == "__main__":
    main()

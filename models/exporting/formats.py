"""Writing an exported Keras model (`models.exporting.graph`) in each portable format.

`write(model, format, folder)` saves it under `folder` and returns the file or folder a runtime
loads: TensorFlow SavedModel, TFLite (LiteRT), ONNX, OpenVINO IR, or `.keras`. Keras 3's
`Model.export` makes SavedModel, TFLite and ONNX (through tf2onnx); OpenVINO IR is read from the
SavedModel by OpenVINO's own TensorFlow frontend (`Core.read_model`) and saved, without its
`convert_model` tool, which reports usage to a remote server (see `models.runtime`).
"""
from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

FORMATS: dict[str, str] = {  # format -> what the bundle's `model` path is
    "savedmodel": "model",  # a folder
    "tflite": "model.tflite",
    "onnx": "model.onnx",
    "openvino": "model.xml",  # with model.bin beside it
    "keras": "model.keras",
}
RUNTIMES = {"savedmodel": "tensorflow", "tflite": "tensorflow (tf.lite.Interpreter) or LiteRT",
            "onnx": "onnxruntime", "openvino": "openvino", "keras": "keras"}


def write(model, fmt: str, folder: str | Path) -> list[Path]:
    """Save `model` as `fmt` (a key of FORMATS) in `folder`; returns the paths written
    (files, or the SavedModel folder)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    folder = Path(folder)
    target = folder / FORMATS[fmt]
    quiet = contextlib.redirect_stdout(io.StringIO())  # Keras prints a summary on export
    with quiet:
        if fmt == "keras":
            model.save(target)
        elif fmt == "savedmodel":
            model.export(str(target), format="tf_saved_model", verbose=False)
        elif fmt == "tflite":
            model.export(str(target), format="litert", verbose=False)
        elif fmt == "onnx":
            _call_once(model)  # Keras's ONNX export refuses a model that never ran
            model.export(str(target), format="onnx", verbose=False)
        else:
            _write_openvino(model, target)
    if fmt == "openvino":
        return [target, target.with_suffix(".bin")]
    return [target]


def _call_once(model) -> None:
    import numpy as np

    model([np.zeros((1, 32, 32, 3), np.uint8) for _ in model.inputs])


def _write_openvino(model, target: Path) -> None:
    from models.runtime import _import_openvino

    ov = _import_openvino()
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "saved"
        model.export(str(saved), format="tf_saved_model", verbose=False)
        converted = ov.Core().read_model(str(saved))
        ov.save_model(converted, str(target), compress_to_fp16=False)

"""Where a backbone's forward pass runs: OpenVINO when it is installed, else TensorFlow.

On these CPUs OpenVINO runs the same frozen graph faster than TensorFlow (measured in one run
on 2 cores: ResNet50 1.1x, VGG16 1.1x, Xception 1.4x, EfficientNet-Lite0 2.7x), mostly
because its kernels use AVX2/FMA throughout and because it can run two requests side by side,
one core each, which suits the small depthwise convolutions of EfficientNet.

The OpenVINO model is converted from the backbone's own traced TensorFlow function, so it is
the same network with the same weights. It is checked once against TensorFlow on a probe
batch; if any feature differs by more than `TOLERANCE`, or OpenVINO is missing or fails to
convert, the backbone stays on TensorFlow (with a warning), so features never depend on which
runtime made them by more than that tolerance. `TRANSFERLAB_RUNTIME=tensorflow` forces
TensorFlow.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import numpy as np

RUNTIME_ENV = "TRANSFERLAB_RUNTIME"
RUNTIMES = ("openvino", "tensorflow")
TOLERANCE = 1e-4
# A batch this large or larger goes to the throughput-configured model (one request per core,
# run side by side); smaller ones (a prediction) to the latency one (one request, all cores).
THROUGHPUT_MIN_BATCH = 4
THROUGHPUT_CHUNK = 8

log = logging.getLogger(__name__)


def requested_runtime() -> str:
    """The runtime the environment asks for ("openvino" unless `TRANSFERLAB_RUNTIME` says)."""
    value = os.environ.get(RUNTIME_ENV, "openvino").strip().lower()
    if value not in RUNTIMES:
        raise ValueError(f"{RUNTIME_ENV}={value!r}: choose one of {', '.join(RUNTIMES)}")
    return value


class OpenVinoForward:
    """The OpenVINO twin of a traced TensorFlow forward function (float32 pixels -> outputs).

    Two compiled models of one converted network, each built on first use: a latency one for
    small batches and a throughput one that runs chunks of a large batch side by side. Calls
    are serialised by a lock: one caller at a time owns the CPU anyway.
    """

    def __init__(self, tf_forward, example: np.ndarray):
        import openvino as ov

        self._core = ov.Core()
        self._model = ov.convert_model(tf_forward, example_input=example)
        self._compiled: dict[str, object] = {}
        self._lock = threading.Lock()

    def _get(self, hint: str):
        if hint not in self._compiled:
            self._compiled[hint] = self._core.compile_model(
                self._model, "CPU", {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32"})
        return self._compiled[hint]

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, np.float32)
        with self._lock:
            if len(pixels) < THROUGHPUT_MIN_BATCH:
                return np.array(self._get("LATENCY")(pixels)[0])
            return self._side_by_side(pixels)

    def _side_by_side(self, pixels: np.ndarray) -> np.ndarray:
        import openvino as ov

        compiled = self._get("THROUGHPUT")
        queue = ov.AsyncInferQueue(compiled)
        outputs: dict[int, np.ndarray] = {}
        queue.set_callback(lambda request, start: outputs.__setitem__(
            start, request.get_output_tensor(0).data.copy()))
        for start in range(0, len(pixels), THROUGHPUT_CHUNK):
            queue.start_async(pixels[start:start + THROUGHPUT_CHUNK], start)
        queue.wait_all()
        return np.concatenate([outputs[s] for s in sorted(outputs)])


def fastest_forward(tf_forward: Callable, input_shape: tuple[int, ...], name: str) -> Callable:
    """`tf_forward` itself or its OpenVINO twin, whichever `requested_runtime` and the probe
    allow. `tf_forward` maps a float32 (n, *input_shape) batch to an (n, d) tensor."""
    if requested_runtime() == "tensorflow":
        return tf_forward
    try:
        # Enough images to check both compiled models (a batch, and one image alone).
        probe = np.random.default_rng(0).uniform(0, 255, (THROUGHPUT_MIN_BATCH, *input_shape))
        probe = probe.astype(np.float32)
        twin = OpenVinoForward(tf_forward, probe[:1])
        expected = np.asarray(tf_forward(probe))
        difference = max(float(np.abs(twin(probe) - expected).max()),
                         float(np.abs(twin(probe[:1]) - expected[:1]).max()))
    except Exception as exc:  # missing package, unsupported op, ...: TensorFlow still works
        log.warning("%s: OpenVINO unavailable (%s); using TensorFlow", name, exc)
        return tf_forward
    if not difference <= TOLERANCE:
        log.warning("%s: OpenVINO differs from TensorFlow by %.2g > %g; using TensorFlow",
                    name, difference, TOLERANCE)
        return tf_forward
    return twin

"""Where a backbone's forward pass runs: TensorFlow, or OpenVINO where it pays.

Converting a backbone to OpenVINO takes seconds, so a backbone asks for it (`fastest_forward`)
only before a long run of images (`worth_converting`: the feature cache) or where every
request's latency counts (the prediction service); a few new images stay on TensorFlow.

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
import sys
import tempfile
import threading
from collections.abc import Callable

import numpy as np

RUNTIME_ENV = "TRANSFERLAB_RUNTIME"
RUNTIMES = ("openvino", "tensorflow")
TOLERANCE = 1e-4
# A batch this large or larger goes to the throughput-configured model (one request per core,
# run side by side); smaller ones (a prediction, or a few merged ones) to the latency one (one
# request, all cores): 8 clients' merged batches of 2-7 images ran 11% slower through the
# throughput model than through the latency one.
THROUGHPUT_MIN_BATCH = 16
THROUGHPUT_CHUNK = 8
# Converting a backbone (freezing its graph, compiling, checking against TensorFlow) took 1-4 s
# on 2 cores, about what OpenVINO saves over TensorFlow on 500 ResNet50 images (Lite0: 750).
CONVERT_MIN_IMAGES = 512

log = logging.getLogger(__name__)


def requested_runtime() -> str:
    """The runtime the environment asks for ("openvino" unless `TRANSFERLAB_RUNTIME` says)."""
    value = os.environ.get(RUNTIME_ENV, "openvino").strip().lower()
    if value not in RUNTIMES:
        raise ValueError(f"{RUNTIME_ENV}={value!r}: choose one of {', '.join(RUNTIMES)}")
    return value


def _frozen_graph(tf_forward) -> bytes:
    """The traced function as a frozen TensorFlow GraphDef (weights as constants).

    OpenVINO's runtime reads it directly (`Core.read_model`); its `convert_model` tool is not
    used because it reports usage to a remote server, which a self-hosted app must not do."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2)

    frozen = convert_variables_to_constants_v2(tf_forward.get_concrete_function())
    return frozen.graph.as_graph_def().SerializeToString()


def _import_openvino():
    """The `openvino` module, imported without its model-conversion tools.

    `import openvino` also imports `openvino.tools.ovc` when it can, and that starts OpenVINO's
    usage telemetry: a thread that may report to a remote server, which a self-hosted app must
    not do, and which under gevent keeps the process from exiting. Only the runtime is used
    here, so that import is made to fail (openvino expects and skips the failure)."""
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino.tools.ovc", None)
        try:
            import openvino  # noqa: F401
        finally:
            if sys.modules.get("openvino.tools.ovc", 0) is None:
                del sys.modules["openvino.tools.ovc"]
    return sys.modules["openvino"]


class OpenVinoForward:
    """The OpenVINO twin of a traced TensorFlow forward function (float32 pixels -> outputs).

    Two compiled models of one converted network, each built on first use: a latency one for
    small batches and a throughput one that runs chunks of a large batch side by side. Calls
    are serialised by a lock: one caller at a time owns the CPU anyway.
    """

    def __init__(self, tf_forward):
        self._core = _import_openvino().Core()
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "forward.pb")
            with open(path, "wb") as file:
                file.write(_frozen_graph(tf_forward))
            self._model = self._core.read_model(path)
        self._compiled: dict[str, object] = {}
        self._requests: list = []  # the throughput model's, one per stream, made once
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
        if not self._requests:
            compiled = self._get("THROUGHPUT")
            streams = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            self._requests = [compiled.create_infer_request() for _ in range(streams)]
        requests, streams = self._requests, len(self._requests)
        # Every stream gets work even for a small batch.
        chunk = min(THROUGHPUT_CHUNK, -(-len(pixels) // streams))
        outputs = []
        # Waves of one chunk per stream, waited for in order: the outputs need no callback.
        for wave in range(0, len(pixels), chunk * streams):
            running = []
            for request, start in zip(requests, range(wave, min(wave + chunk * streams,
                                                                len(pixels)), chunk)):
                request.start_async(pixels[start:start + chunk])
                running.append(request)
            for request in running:
                request.wait()
                outputs.append(request.get_output_tensor(0).data.copy())
        return np.concatenate(outputs)


def worth_converting(images: int) -> bool:
    """Whether `images` forward passes to come repay converting a backbone to OpenVINO."""
    return images >= CONVERT_MIN_IMAGES


def fastest_forward(tf_forward: Callable, input_shape: tuple[int, ...], name: str) -> Callable:
    """`tf_forward` itself or its OpenVINO twin, whichever `requested_runtime` and the probe
    allow. `tf_forward` maps a float32 (n, *input_shape) batch to an (n, d) tensor."""
    if requested_runtime() == "tensorflow":
        return tf_forward
    try:
        # Enough images to check both compiled models (a batch, and one image alone).
        probe = np.random.default_rng(0).uniform(0, 255, (THROUGHPUT_MIN_BATCH, *input_shape))
        probe = probe.astype(np.float32)
        twin = OpenVinoForward(tf_forward)
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

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

Given a cache folder and the network's identity (`ConvertedCache`), a checked conversion is
kept on disk as OpenVINO IR with TensorFlow's outputs on the probe batch; a later process
loads it and checks the OpenVINO outputs against those stored ones, to the same tolerance,
instead of tracing, freezing and running the network on TensorFlow again (the 1-4 s per
backbone that the first prediction after a restart waited for).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

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
# Bumped whenever what a cache entry holds, or how it is made, changes.
CACHE_FORMAT = 1

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

    def __init__(self, model, core=None):
        self._core = core or _import_openvino().Core()
        self.model = model  # the converted network (an `openvino.Model`)
        self._compiled: dict[str, object] = {}
        self._requests: list = []  # the throughput model's, one per stream, made once
        self._lock = threading.Lock()

    @classmethod
    def from_tensorflow(cls, tf_forward) -> OpenVinoForward:
        """The twin of `tf_forward`, converted from its frozen graph (seconds per backbone)."""
        core = _import_openvino().Core()
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "forward.pb")
            with open(path, "wb") as file:
                file.write(_frozen_graph(tf_forward))
            return cls(core.read_model(path), core)

    def _get(self, hint: str):
        if hint not in self._compiled:
            self._compiled[hint] = self._core.compile_model(
                self.model, "CPU", {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32"})
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


class ConvertedCache:
    """Checked OpenVINO conversions on disk, one folder per network:
    `<root>/<name>-<key>/{model.xml, model.bin, reference.npy}`, where `reference.npy` holds
    TensorFlow's outputs on the probe batch (`probe_batch`) and `key` digests the network's
    identity (architecture and weights, from the caller), the input shape, the OpenVINO
    version and `CACHE_FORMAT`: any change makes a new key, and so a miss.

    Several processes (the web process, workers) may share the folder: an entry is written
    under a temporary name and renamed into place whole, so a reader sees a complete entry or
    none; an unreadable or wrong one is replaced by the next conversion.
    """

    STALE_TEMP_SECONDS = 3600  # a temporary folder this old was left by a killed writer

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @staticmethod
    def key(identity: str, input_shape: tuple[int, ...]) -> str:
        ov = _import_openvino()
        text = json.dumps({"format": CACHE_FORMAT, "identity": identity,
                           "input_shape": list(input_shape), "openvino": ov.get_version()})
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def folder(self, name: str, key: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
        return self.root / f"{safe}-{key}"

    def load(self, name: str, key: str) -> tuple[OpenVinoForward, np.ndarray] | None:
        """The cached twin and TensorFlow's reference outputs, or None when there is no
        entry or it cannot be read (logged; the caller converts again)."""
        folder = self.folder(name, key)
        if not folder.is_dir():
            return None
        try:
            reference = np.load(folder / "reference.npy", allow_pickle=False)
            core = _import_openvino().Core()
            model = core.read_model(str(folder / "model.xml"), str(folder / "model.bin"))
            return OpenVinoForward(model, core), reference
        except Exception as exc:  # truncated or corrupt files: convert again
            log.warning("%s: cached OpenVINO model in %s unreadable (%s); converting again",
                        name, folder, exc)
            return None

    def store(self, name: str, key: str, twin: OpenVinoForward, reference: np.ndarray) -> None:
        """Keep `twin` and its reference outputs; replaces a bad entry of the same key. Never
        raises: a cache that cannot be written only costs the next process a conversion."""
        ov = _import_openvino()
        final = self.folder(name, key)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temps()
            temp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
            try:
                # f32 weights: OpenVINO's default fp16 compression would break the tolerance.
                ov.save_model(twin.model, str(temp / "model.xml"), compress_to_fp16=False)
                np.save(temp / "reference.npy", np.asarray(reference, np.float32),
                        allow_pickle=False)
                self._place(temp, final)
            finally:
                shutil.rmtree(temp, ignore_errors=True)
        except Exception as exc:
            log.warning("%s: could not cache the OpenVINO model in %s (%s)", name, final, exc)

    def _place(self, temp: Path, final: Path) -> None:
        try:
            os.rename(temp, final)  # atomic; fails if the entry exists (and is not empty)
            return
        except OSError:
            if not final.exists():
                raise
        # A bad entry of this key (the caller just failed to use it): swap it out.
        aside = self.root / f".old-{uuid.uuid4().hex}"
        try:
            os.rename(final, aside)
        except FileNotFoundError:
            pass
        try:
            os.rename(temp, final)
        except OSError:
            pass  # another process placed a fresh entry meanwhile: keep theirs
        shutil.rmtree(aside, ignore_errors=True)

    def _remove_stale_temps(self) -> None:
        cutoff = time.time() - self.STALE_TEMP_SECONDS
        for entry in self.root.iterdir():
            if entry.name.startswith((".tmp-", ".old-")):
                try:
                    if entry.stat().st_mtime < cutoff:
                        shutil.rmtree(entry, ignore_errors=True)
                except FileNotFoundError:
                    pass


def probe_batch(input_shape: tuple[int, ...]) -> np.ndarray:
    """The fixed pixels every twin is checked on: enough images for both compiled models (a
    batch, and one image alone)."""
    probe = np.random.default_rng(0).uniform(0, 255, (THROUGHPUT_MIN_BATCH, *input_shape))
    return probe.astype(np.float32)


def _difference(twin: OpenVinoForward, probe: np.ndarray, expected: np.ndarray) -> float:
    if expected.shape[0] != probe.shape[0]:
        return float("inf")
    return max(float(np.abs(twin(probe) - expected).max()),
               float(np.abs(twin(probe[:1]) - expected[:1]).max()))


def fastest_forward(tf_forward: Callable, input_shape: tuple[int, ...], name: str,
                    cache_dir: str | Path | None = None,
                    identity: str | None = None) -> Callable:
    """`tf_forward` itself or its OpenVINO twin, whichever `requested_runtime` and the probe
    allow. `tf_forward` maps a float32 (n, *input_shape) batch to an (n, d) tensor.

    With `cache_dir` and `identity` (a digest of everything the network computes with: see
    `models.backbones.network_identity`), a checked conversion is reused from, or kept in,
    `ConvertedCache(cache_dir)`."""
    if requested_runtime() == "tensorflow":
        return tf_forward
    cache = key = None
    try:
        probe = probe_batch(input_shape)
        if cache_dir is not None and identity is not None:
            cache = ConvertedCache(cache_dir)
            key = cache.key(identity, input_shape)
            hit = cache.load(name, key)
            if hit is not None:
                twin, expected = hit
                difference = _difference(twin, probe, expected)
                if difference <= TOLERANCE:
                    return twin
                log.warning("%s: cached OpenVINO model differs from TensorFlow by %.2g; "
                            "converting again", name, difference)
        twin = OpenVinoForward.from_tensorflow(tf_forward)
        expected = np.asarray(tf_forward(probe))
        difference = _difference(twin, probe, expected)
    except Exception as exc:  # missing package, unsupported op, ...: TensorFlow still works
        log.warning("%s: OpenVINO unavailable (%s); using TensorFlow", name, exc)
        return tf_forward
    if not difference <= TOLERANCE:
        log.warning("%s: OpenVINO differs from TensorFlow by %.2g > %g; using TensorFlow",
                    name, difference, TOLERANCE)
        return tf_forward
    if cache is not None:
        cache.store(name, key, twin, expected)
    return twin

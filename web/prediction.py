"""Classify images in the web process: trained iterations and the pretrained ImageNet mode.

TensorFlow is imported only when the first prediction arrives, never at import or to render a
page. A trained iteration is loaded once per process (an LRU keyed by iteration id) and the
backbones once per process (the engine's `load_backbone` cache), never per request. The
TensorFlow work runs through `web.concurrency.offload_tf`, so under gevent the server keeps
answering other requests while an image is classified.

Concurrent requests for trained iterations are micro-batched (`PredictionService.classify`):
each request queues its image, then asks the TensorFlow thread to serve the queue; whichever
turn comes first takes everything waiting (up to `max_batch`) and runs it as one batch per
backbone. Nobody waits for a batch to fill: a lone request runs at once, alone.
"""
from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from models.registry import BACKBONES, DEFAULT_BACKBONES, OFFLINE_BACKBONE, availability
from web.concurrency import offload_tf


_warm_threads: set[threading.Thread] = set()  # background warm-ups still running
_stopping = threading.Event()


def _join_warm_threads(timeout: float = 30.0) -> None:
    """At exit: let a running warm-up finish (for at most `timeout` s) and start no more, so
    the interpreter does not tear TensorFlow down under a thread that is loading it."""
    import time

    _stopping.set()
    deadline = time.monotonic() + timeout
    for thread in list(_warm_threads):
        thread.join(max(0.0, deadline - time.monotonic()))


def _start_warm_thread(target, *args, name: str) -> None:
    if not _warm_threads:
        import atexit

        atexit.unregister(_join_warm_threads)
        atexit.register(_join_warm_threads)

    def run():
        try:
            if not _stopping.is_set():
                target(*args)
        finally:
            _warm_threads.discard(thread)

    thread = threading.Thread(target=run, daemon=True, name=name)
    _warm_threads.add(thread)
    thread.start()


class BackboneUnavailable(RuntimeError):
    """A backbone's weights cannot be loaded here; the message says what to do."""


@dataclass
class _Request:
    """One queued image of a trained iteration; the TensorFlow thread fills in the outcome."""

    iteration_id: int
    folder: str | Path
    image: object
    top_k: int
    threshold: float
    answer: dict | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class BatchStats:
    """What the micro-batcher did in this process: `requests` images classified through
    `classify`, in `batches` model runs (a run = one batch per backbone of one iteration);
    `merged` requests shared their run with at least one other; `largest` is the biggest run."""

    requests: int = 0
    batches: int = 0
    merged: int = 0
    largest: int = 0
    sizes: dict = field(default_factory=dict)  # batch size -> how many runs had that size


class PredictionService:
    """Loaded models for one web process. Thread-safe; every method may block (offload it),
    except `classify`, which offloads itself.

    `load_backbone(name)` builds a backbone for a trained iteration; by default the ImageNet
    weights found as `models.weights` resolves them (benchmarks pass random-weight ones).
    `max_batch` caps how many queued requests run as one batch. `runtime_cache_dir` keeps the
    backbones' OpenVINO conversions for the next process (`models.runtime.ConvertedCache`).
    """

    def __init__(self, weights_dir: str | None = None, cache_size: int = 4,
                 load_backbone: Callable[[str], object] | None = None, max_batch: int = 16,
                 runtime_cache_dir: str | Path | None = None):
        self.weights_dir = weights_dir
        self.runtime_cache_dir = runtime_cache_dir
        self.cache_size = max(1, int(cache_size))
        self.max_batch = max(1, int(max_batch))
        self.stats = BatchStats()
        self._load_backbone = load_backbone
        self._predictors: OrderedDict[int, object] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Lock] = {}
        # Appended to by request threads/greenlets and emptied by the TensorFlow thread:
        # deque's append/popleft are atomic, so no lock is shared between the two (a lock
        # shared by a greenlet and a native thread is what deadlocks under gevent).
        self._queue: deque[_Request] = deque()
        self._warming: set[int] = set()  # iterations a background warm-up is loading
        self._backbones_warm: set[str] = set()  # backbones loaded or being loaded ahead
        self.warmed: dict[int, float] = {}  # iteration id -> seconds its warm-up took

    def warm(self, iteration_id: int, folder: str | Path) -> bool:
        """Load one iteration's predictor ahead of its first request, in the background (a
        greenlet under gevent, else a daemon thread; the TensorFlow work goes through
        `offload_tf`), and run one tiny image through it so the runtime has compiled it.
        Returns whether a warm-up started (False: already loaded or loading). Never raises:
        a warm-up that fails leaves the first request to load it and report the error."""
        # No lock here: this runs on the event loop, and a lock shared with the TensorFlow
        # thread is what deadlocks under gevent (membership tests and set.add are atomic).
        if iteration_id in self._predictors or iteration_id in self._warming:
            return False
        self._warming.add(iteration_id)
        _start_warm_thread(self._warm, iteration_id, folder, name=f"warm-{iteration_id}")
        return True

    def _warm(self, iteration_id: int, folder: str | Path) -> None:
        import logging
        import time

        start = time.perf_counter()
        try:
            offload_tf(self._warm_now, iteration_id, folder)
            self.warmed[iteration_id] = time.perf_counter() - start
            logging.getLogger("transferlab.prediction").info(
                "iteration %s warmed in %.1f s", iteration_id, self.warmed[iteration_id])
        except Exception as exc:  # noqa: BLE001 - the first request retries and reports it
            logging.getLogger("transferlab.prediction").warning(
                "could not warm iteration %s: %s", iteration_id, exc)
        finally:
            self._warming.discard(iteration_id)

    def _warm_now(self, iteration_id: int, folder: str | Path) -> None:
        from PIL import Image

        predictor = self.predictor(iteration_id, folder)
        predictor.probabilities([Image.new("RGB", (32, 32), (128, 128, 128))])

    def warm_backbones(self, names: Sequence[str]) -> bool:
        """Load (and convert for the fastest runtime) backbones ahead, in the background:
        called while a project trains, so that when its iteration is ready only the heads
        are left to load. Only with the default loader, whose backbones stay cached per
        process (`models.backbones.load_backbone`); backbones without weights are skipped.
        Returns whether a warm-up started."""
        if self._load_backbone is not None:
            return False
        todo = [n for n in names if n in BACKBONES and n not in self._backbones_warm
                and availability(n, self.weights_dir).available]
        if not todo:
            return False
        self._backbones_warm.update(todo)
        _start_warm_thread(self._warm_backbones, todo, name="warm-backbones")
        return True

    def _warm_backbones(self, names: list[str]) -> None:
        import logging

        for name in names:
            if _stopping.is_set():
                self._backbones_warm.discard(name)
                continue
            try:
                offload_tf(self.make_backbone, name)
            except Exception as exc:  # noqa: BLE001 - a later request reports it
                self._backbones_warm.discard(name)
                logging.getLogger("transferlab.prediction").warning(
                    "could not warm backbone %s: %s", name, exc)

    def is_warm(self, iteration_id: int) -> bool:
        """Whether the iteration's predictor is loaded in this process."""
        return iteration_id in self._predictors

    def warming(self) -> bool:
        """Whether a background warm-up is still running."""
        return bool(self._warming)

    def make_backbone(self, name: str):
        from models.weights import WeightsNotFound

        try:
            if self._load_backbone is not None:
                backbone = self._load_backbone(name)
            else:
                from models.backbones import load_backbone

                backbone = load_backbone(name, "imagenet", self.weights_dir)
        except WeightsNotFound as exc:
            raise BackboneUnavailable(f"{name}: {exc}") from exc
        if hasattr(backbone, "use_fastest_runtime"):  # every request's latency counts here
            backbone.use_fastest_runtime(self.runtime_cache_dir)
        return backbone

    def predictor(self, iteration_id: int, folder: str | Path):
        """The `Predictor` for one trained iteration, loaded on first use and kept (LRU)."""
        with self._lock:
            if iteration_id in self._predictors:
                self._predictors.move_to_end(iteration_id)
                return self._predictors[iteration_id]
            gate = self._loading.setdefault(iteration_id, threading.Lock())
        with gate:  # one load per iteration even when requests race
            with self._lock:
                if iteration_id in self._predictors:
                    return self._predictors[iteration_id]
            from models.predictor import Predictor

            predictor = Predictor(Path(folder), self.make_backbone)
            with self._lock:
                self._predictors[iteration_id] = predictor
                self._loading.pop(iteration_id, None)
                while len(self._predictors) > self.cache_size:
                    self._predictors.popitem(last=False)
            return predictor

    def predict(self, iteration_id: int, folder: str | Path, images: Sequence, top_k: int = 3,
                threshold: float = 0.0):
        """Answers of one trained iteration; below `threshold` the ensemble says "unknown"."""
        predictor = self.predictor(iteration_id, folder)
        return predictor.predict(list(images), top_k=top_k, threshold=threshold)

    def classify(self, iteration_id: int, folder: str | Path, image, top_k: int = 3,
                 threshold: float = 0.0) -> dict:
        """One image's answer (as `predict` gives it), micro-batched with whatever other
        requests are waiting for the TensorFlow thread. Call it from the request's own
        thread or greenlet: it queues the image, then runs `serve_queue` via `offload_tf`.

        Every request's own call to `serve_queue` comes after its image was queued, so by the
        time that call returns the image was answered, by this turn or an earlier one."""
        request = _Request(iteration_id, folder, image, top_k, threshold)
        self._queue.append(request)
        offload_tf(self.serve_queue)
        if request.error is not None:
            raise request.error
        if not request.done:  # pragma: no cover - would be a bug in the turn-taking above
            raise RuntimeError("prediction request was not served")
        return request.answer

    def serve_queue(self) -> None:
        """On the TensorFlow thread: answer every queued request, up to `max_batch` images
        of one iteration per batch (one forward pass per backbone and view for the batch)."""
        while self._queue:
            taken: list[_Request] = []
            while self._queue and len(taken) < self.max_batch:
                taken.append(self._queue.popleft())
            groups: dict[int, list[_Request]] = {}
            for request in taken:
                groups.setdefault(request.iteration_id, []).append(request)
            for requests in groups.values():
                self._run_batch(requests)

    def _run_batch(self, requests: list[_Request]) -> None:
        try:
            from models.predictor import slice_ood

            predictor = self.predictor(requests[0].iteration_id, requests[0].folder)
            probabilities, ood = predictor.outputs([r.image for r in requests])
            for i, request in enumerate(requests):
                request.answer = predictor.answer(
                    {name: p[i:i + 1] for name, p in probabilities.items()},
                    top_k=request.top_k, threshold=request.threshold,
                    ood=slice_ood(ood, i))[0]
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets it, none hangs
            for request in requests:
                request.error = exc
        finally:
            for request in requests:
                request.done = True
        stats, size = self.stats, len(requests)
        stats.requests += size
        stats.batches += 1
        stats.merged += size if size > 1 else 0
        stats.largest = max(stats.largest, size)
        stats.sizes[size] = stats.sizes.get(size, 0) + 1

    def explain(self, iteration_id: int, folder: str | Path, image, backbone: str | None = None,
                label: str | None = None) -> dict:
        """`models.explain.explain` with this iteration's predictor, on the TensorFlow thread."""
        from models.explain import explain

        return offload_tf(lambda: explain(self.predictor(iteration_id, folder), image,
                                          backbone, label))

    def imagenet(self, images: Sequence, backbones: Sequence[str], top_k: int = 3):
        from models.imagenet import imagenet_labels
        from models.predictor import imagenet_predict
        from models.weights import WeightsNotFound

        loaded = {name: self.make_backbone(name) for name in backbones}
        try:
            return imagenet_predict(list(images), loaded, imagenet_labels(), top_k=top_k)
        except WeightsNotFound as exc:  # the classifier (top) weights are a separate file
            raise BackboneUnavailable(str(exc)) from exc

    def forget(self, iteration_ids: Sequence[int]) -> None:
        with self._lock:
            for iteration_id in iteration_ids:
                self._predictors.pop(iteration_id, None)


def warm_recent_iterations(app, count: int | None = None) -> list[int]:
    """At start (`python app.py`): warm, in the background, the live iteration (published,
    else latest: `web.publishing`) of the `count` (`WARM_AT_START`, default 2) most recently
    trained projects, so the first prediction after a restart does not load them. Returns the
    iteration ids started."""
    from web.db import db
    from web.publishing import live_iterations

    count = int(app.config.get("WARM_AT_START", 2) if count is None else count)
    if count <= 0:
        return []
    service: PredictionService = app.extensions["transferlab.prediction"]
    storage = app.extensions["transferlab.storage"]
    with app.app_context():
        targets = [(it.id, storage.resolve(it.folder)) for it in live_iterations(count)]
        db.session.remove()
    return [iteration_id for iteration_id, folder in targets if service.warm(iteration_id, folder)]


def imagenet_candidates() -> list[str]:
    """Backbones the ImageNet mode offers: the defaults plus the offline EfficientNet-Lite0."""
    names = list(DEFAULT_BACKBONES)
    if OFFLINE_BACKBONE not in names:
        names.append(OFFLINE_BACKBONE)
    return [n for n in names if n in BACKBONES]


def imagenet_unavailable_reason(name: str, weights_dir: str | None) -> str | None:
    """Why `name` cannot classify ImageNet labels here (None if it can): the pretrained mode
    needs the full model's weights, a separate file from the features-only one for Keras."""
    from models.weights import WeightsNotFound, find_local

    status = availability(name, weights_dir)
    if not status.available:
        return status.reason
    spec = BACKBONES[name]
    if spec.classifier_weights is not None:
        try:
            find_local(spec.classifier_weights, weights_dir)
        except WeightsNotFound as exc:
            return str(exc)
    return None


def imagenet_backbones(requested: Sequence[str] | None, weights_dir: str | None) -> list[str]:
    """The backbones to use: the requested ones (each must be available, else ValueError
    naming it and why), or all available candidates."""
    if requested:
        chosen = []
        for name in requested:
            if name not in BACKBONES:
                raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
            reason = imagenet_unavailable_reason(name, weights_dir)
            if reason:
                raise ValueError(f"{name} is not available: {reason}")
            if name not in chosen:
                chosen.append(name)
        return chosen
    chosen = [n for n in imagenet_candidates() if not imagenet_unavailable_reason(n, weights_dir)]
    if not chosen:
        raise ValueError("no backbone has its weights here; "
                         "see GET /api/v1/backbones for what to install")
    return chosen

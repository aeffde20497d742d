"""Serving speed (issue #5, items 4 and 5): predictions through the HTTP API, and uploads.

    python bench/speed_serving.py [--dataset DIR] [--requests 30] [--clients 8]
                                  [--per-client 4] [--images 1000] [--small-images 250]
                                  [--only prediction|ingest]

prints one JSON object: {"machine", "prediction": prediction_latency(...),
"ingest": ingest_throughput(...)}. `bench/speed.py` calls the two functions directly.

Both run the product's own web server (`app.py`'s `serve`: gevent on a free loopback port,
no worker) in a subprocess on a fresh temporary instance folder, and talk to it over HTTP.

Prediction: the three default backbones (ResNet50, VGG16, Xception) have no downloadable
weights here, so they run with random weights (the same architectures and cost). A project
is created and its images uploaded through the API; it is trained by `models.training.train`
exactly as the worker calls it, but with random-weight backbones, and registered as the
project's iteration 1 (bench-only; the product itself never loads random weights). The
benchmark's server process builds its `PredictionService` with those random-weight
backbones and adds bench-only routes (`/_bench/...`, on that process's app object only) that
time the bare backbones on the TensorFlow thread and read the batcher's counters.
"""
from __future__ import annotations

import sys

if __name__ == "__main__" and sys.argv[1:2] == ["_serve"]:
    from gevent import monkey  # as in app.py: patch before anything imports the stdlib

    monkey.patch_all()

import argparse
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `import models`, `import web` when run as a script
    sys.path.insert(0, str(REPO))
DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "galaxy4-dev"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
SEED = 0


# -- shared helpers ---------------------------------------------------------------------------


def _dataset_images(root: Path) -> dict[str, list[Path]]:
    """{class folder: sorted image paths} of a folder of class folders."""
    out = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        paths = sorted(p for p in folder.iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if paths:
            out[folder.name] = paths
    if len(out) < 2:
        raise SystemExit(f"{root}: needs at least two class folders with images")
    return out


def photo_like_jpeg(source: Path, index: int, rng) -> bytes:
    """A photo-sized (longer side 400-800 px) distinct JPEG made from `source`: a random crop,
    scaled up, brightness changed, so every `index` gives other bytes (another sha256)."""
    from PIL import Image, ImageEnhance

    with Image.open(source) as im:
        im = im.convert("RGB")
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        side = int(rng.integers(400, 801))
        aspect = rng.uniform(0.66, 1.0)
        size = (side, int(side * aspect)) if index % 2 else (int(side * aspect), side)
        im = im.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BICUBIC)
        im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.8, 1.2)))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        return buf.getvalue()


def write_zip(path: Path, dataset: Path, count: int, seed: int = SEED) -> dict:
    """A zip of `count` distinct photo-like JPEGs in class folders (the dataset's classes, its
    images reused round-robin); written member by member. Returns {images, bytes, classes}."""
    import numpy as np

    rng = np.random.default_rng(seed)
    classes = _dataset_images(dataset)
    names = list(classes)
    total = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:  # JPEGs do not compress
        for i in range(count):
            label = names[i % len(names)]
            paths = classes[label]
            data = photo_like_jpeg(paths[(i // len(names)) % len(paths)], i, rng)
            archive.writestr(f"{label}/{i:05d}.jpg", data)
            total += len(data)
    return {"images": count, "image_bytes": total, "zip_bytes": path.stat().st_size,
            "classes": len(names)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


AUTH: dict[str, str] = {}  # the API token header every request sends (see _account)


def _account(app) -> str:
    """An account and an API token on `app`'s database; every request below sends the token."""
    from web.auth import service_token

    with app.app_context():
        token = service_token("bench", "bench/speed_serving.py")
    AUTH["Authorization"] = f"Bearer {token}"
    return token


def _request(url: str, data: bytes | None = None, headers: dict | None = None,
             timeout: float = 600):
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                     headers={**AUTH, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{url}: {exc.code} {exc.read().decode(errors='replace')[:2000]}") \
            from None


def _multipart(filename: str, data: bytes) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    body += data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _post_file(url: str, filename: str, data: bytes, timeout: float = 600):
    body, headers = _multipart(filename, data)
    return _request(url, body, headers, timeout)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _vm(pid: int, key: str) -> int:
    """A /proc/<pid>/status memory figure (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


class _Server:
    """This file's `_serve` command (the product's gevent server) in a subprocess."""

    def __init__(self, instance: Path, log_path: Path, random_backbones: bool):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        from web import create_app

        _account(create_app({"INSTANCE_PATH": str(instance)}))
        env = {**os.environ, "TRANSFERLAB_INSTANCE_PATH": str(instance),
               "TRANSFERLAB_HOST": "127.0.0.1", "TRANSFERLAB_PORT": str(self.port),
               "TRANSFERLAB_WORKER": "false", "TF_CPP_MIN_LOG_LEVEL": "2",
               "PYTHONUNBUFFERED": "1"}
        args = [sys.executable, str(Path(__file__).resolve()), "_serve"]
        if random_backbones:
            args.append("--random-backbones")
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                _request(self.base + "/api/v1/status", timeout=5)
                break
            except (OSError, RuntimeError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server not up after 120 s:\n{self.log()}") from None
                time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def get(self, path: str, timeout: float = 600):
        return _request(self.base + path, timeout=timeout)

    def post_file(self, path: str, filename: str, data: bytes, timeout: float = 600):
        return _post_file(self.base + path, filename, data, timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# -- prediction -------------------------------------------------------------------------------


def random_backbone(name: str):
    """`name` with random weights, built once per process; seeded, so every process of the
    benchmark builds the same weights (the heads trained in one fit the backbones of another)."""
    import keras

    from models.backbones import load_backbone

    if name not in _built:
        keras.utils.set_random_seed(SEED)
        _built.add(name)
    return load_backbone(name, None)


_built: set[str] = set()


def _prepare(instance: Path, dataset: Path, per_class: int, view_policies: str) -> dict:
    """A project with the default backbones, its images uploaded through the API (test
    client) and trained as the worker does (`web/jobs/training_run.py`) but with random-weight backbones;
    registered as iteration 1. `view_policies`: "default" (as the worker trains) or a
    comma-separated list for `train`. Returns what the benchmark reports about it."""
    from models.features import FeatureCache
    from models.registry import DEFAULT_BACKBONES
    from models.result import summarize
    from models.training import train
    from web import create_app
    from web.db import Iteration, ProjectImage, db
    from web.jobs import StoredSample

    app = create_app({"INSTANCE_PATH": str(instance)})
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {_account(app)}"
    backbones = list(DEFAULT_BACKBONES)
    pid = client.post("/api/v1/projects", json={"name": "bench", "backbones": backbones}
                      ).json["id"]
    classes = _dataset_images(dataset)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for label, paths in classes.items():
            for path in paths[:per_class]:
                archive.write(path, f"{label}/{path.name}")
    r = client.post(f"/api/v1/projects/{pid}/images",
                    data={"file": (io.BytesIO(buf.getvalue()), "train.zip")})
    assert r.status_code == 200, r.json
    storage = app.extensions["transferlab.storage"]
    with app.app_context():
        rows = db.session.scalars(db.select(ProjectImage).where(ProjectImage.project_id == pid)
                                  .order_by(ProjectImage.id)).all()
        samples = [StoredSample(r.sha256, r.label, r.name, storage.blob_path(r.sha256))
                   for r in rows]
        began = time.perf_counter()
        policies = {} if view_policies == "default" else {
            "view_policies": tuple(view_policies.split(","))}
        result = train(samples, backbones, FeatureCache(app.config["FEATURE_CACHE_DIR"]),
                       random_backbone, **policies)
        seconds = time.perf_counter() - began
        tmp = storage.temp_dir()
        result.save(tmp)
        relpath = storage.iteration_relpath(pid, 1)
        storage.commit_dir(tmp, relpath)
        report = result.report
        db.session.add(Iteration(project_id=pid, number=1, folder=relpath,
                                 classes=report["classes"], backbones=backbones,
                                 n_train=report["n_train"], n_test=0, summary=summarize(report)))
        db.session.commit()
    return {"project_id": pid, "n_train": report["n_train"], "train_seconds": round(seconds, 1),
            "head_inputs": {n: e["hyperparameters"]["views"]
                            for n, e in report["backbones"].items()},
            "ensemble": report["ensemble"]["key"]}


def _serve(random_backbones: bool) -> None:
    """`python app.py`'s web process (gevent, no worker), plus bench-only routes."""
    import app as app_module
    from web import create_app
    from web.concurrency import offload_tf
    from web.prediction import PredictionService

    flask_app = create_app()
    if random_backbones:
        from flask import jsonify, request

        service = PredictionService(cache_size=flask_app.config["PREDICTOR_CACHE_SIZE"],
                                    load_backbone=random_backbone)
        flask_app.extensions["transferlab.prediction"] = service

        def bare():
            """Each backbone's Keras model alone on one image at its input size (pixels as
            the product feeds them; preprocessing is the model's first layer), on the
            TensorFlow thread: {name: [seconds per call]}."""
            import numpy as np

            from models.images import resize_for_model

            reps = int(request.args.get("reps", 10))
            names = request.args.get("backbones", "").split(",")
            rng = np.random.default_rng(SEED)
            from PIL import Image

            image = Image.fromarray(rng.integers(0, 256, (480, 640, 3), np.uint8))

            def run():
                out = {}
                for name in names:
                    model = random_backbone(name)
                    x = resize_for_model(image, model.input_size)[None].astype(np.float32)
                    model.features_model.predict_on_batch(x)  # warm
                    times = []
                    for _ in range(reps):
                        began = time.perf_counter()
                        model.features_model.predict_on_batch(x)
                        times.append(time.perf_counter() - began)
                    out[name] = times
                return out

            return jsonify(offload_tf(run))

        def stats():
            s = service.stats
            return jsonify({"requests": s.requests, "batches": s.batches, "merged": s.merged,
                            "largest": s.largest, "sizes": {str(k): v for k, v in s.sizes.items()},
                            "max_batch": service.max_batch})

        def max_batch():
            service.max_batch = int(request.args["n"])
            return stats()

        flask_app.add_url_rule("/_bench/bare", "bench_bare", bare)
        flask_app.add_url_rule("/_bench/stats", "bench_stats", stats)
        flask_app.add_url_rule("/_bench/max_batch", "bench_max_batch", max_batch)
    import logging

    logging.basicConfig(level=logging.INFO)
    app_module.serve(flask_app)


def _scores(answer: dict) -> list[float]:
    return [c["score"] for entry in answer["backbones"].values() for c in entry] + \
        [answer["ensemble"]["score"]]


def _concurrent(server: _Server, url: str, images: list[bytes], clients: int,
                per_client: int) -> tuple[float, dict]:
    """`clients` threads, each posting `per_client` predictions back to back: (wall seconds,
    {(client, i): answer})."""
    answers: dict = {}
    errors: list = []

    def client(c: int) -> None:
        try:
            for i in range(per_client):
                data = images[(c + i) % len(images)]
                answers[(c, i)] = _post_file(url, f"c{c}.jpg", data)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"concurrent clients failed: {errors[0]}\n{server.log()}")
    return wall, answers


def prediction_latency(dataset: str | Path = DEFAULT_DATASET, requests: int = 30,
                       clients: int = 8, per_client: int = 4, per_class: int = 5,
                       bare_reps: int = 10, view_policies: str = "default",
                       workdir: str | Path | None = None) -> dict:
    """Prediction through the HTTP API (one image, three default backbones + heads +
    ensemble) against the bare backbones, and batching under concurrent clients.

    `view_policies`: "default" trains the project as the worker does (CV picks the heads'
    views among the default policies); a comma-separated list (e.g. "none") restricts it.

    Keys (seconds are wall-clock seconds measured by the client over loopback):
      backbones: the project's backbones; head_inputs: {backbone: the head input CV chose
        ("none" = one forward pass per image, "dihedral" = 8 views, "+sqrt" a transform)};
        passes_per_image: forward passes per image the product runs, summed over backbones;
        ensemble: the ensemble the project answers with; n_train, train_seconds: the
        (random-weight) training that made the project.
      image: the predicted images (distinct photo-like JPEGs, size range).
      latency_p50_s, latency_p95_s, latency_mean_s: `requests` one-at-a-time POST
        /api/v1/projects/<id>/predict (upload, decode, resize, forward passes, heads,
        ensemble, JSON).
      bare_forward_p50_s: {backbone: median seconds of its Keras features model on one
        image}, timed on the server's TensorFlow thread before and after the HTTP runs;
        bare_forward_sum_s: their sum (the issue's yardstick).
      overhead_p50, overhead_p95: latency / bare_forward_sum_s - 1 (target <= 0.25).
      bare_same_passes_s: bare forward seconds times each backbone's views, summed (what the
        product must compute); overhead_same_passes_p50: latency p50 over that, - 1.
      sequential_rps: requests per second one at a time (1 / mean latency);
        concurrent_rps: with `clients` clients each posting `per_client` back to back;
        concurrent_unbatched_rps: the same with the batcher capped at 1 image (batching off);
        throughput_ratio: concurrent_rps / sequential_rps (target >= 2);
        batching_gain: concurrent_rps / concurrent_unbatched_rps.
      batches: the server's batcher counters for the batched concurrent run (requests,
        batches, merged = requests that shared a batch, largest, sizes {size: count}).
      max_score_diff_batched_vs_alone: largest difference between any score a batched
        request got and the one the same image got alone (answers are rounded to 4 decimals);
        same_labels: whether every batched answer named the same classes as alone.
      load_average_after: the machine's load averages (other work on the same cores).
    """
    import numpy as np

    dataset = Path(dataset)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        instance = tmp / "instance"
        prep = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "_prepare", str(instance),
             str(dataset), str(per_class), view_policies], check=False, cwd=REPO, capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if prep.returncode != 0:
            raise RuntimeError(f"preparing the project failed:\n{prep.stderr[-4000:]}")
        project = json.loads(prep.stdout.strip().splitlines()[-1])
        backbones = list(project["head_inputs"])
        rng = np.random.default_rng(SEED + 1)
        sources = [p for paths in _dataset_images(dataset).values() for p in paths[per_class:]]
        images = [photo_like_jpeg(sources[i % len(sources)], i, rng) for i in range(8)]
        server = _Server(instance, tmp / "server.log", random_backbones=True)
        try:
            url = f"{server.base}/api/v1/projects/{project['project_id']}/predict"
            alone = [_post_file(url, "warm.jpg", im) for im in images]  # loads, traces
            # Keras traces its predict function again for the first batch of another size
            # (then a shape-generic one): once per process, so not part of the figures
            _concurrent(server, url, images, clients, 1)
            query = f"/_bench/bare?reps={bare_reps}&backbones={','.join(backbones)}"
            bare = server.get(query)
            latencies = []
            for i in range(requests):
                began = time.perf_counter()
                _post_file(url, "one.jpg", images[i % len(images)])
                latencies.append(time.perf_counter() - began)
            before = server.get("/_bench/stats")
            wall, answers = _concurrent(server, url, images, clients, per_client)
            after = server.get("/_bench/stats")
            server.get("/_bench/max_batch?n=1")
            wall_unbatched, _ = _concurrent(server, url, images, clients, per_client)
            for name, times in server.get(query).items():
                bare[name] += times
        finally:
            server.stop()
    diffs, same_labels = [0.0], True
    for (c, i), answer in answers.items():
        ref = alone[(c + i) % len(images)]
        diffs += list(np.abs(np.subtract(_scores(answer), _scores(ref))))
        same_labels &= (answer["ensemble"]["label"] == ref["ensemble"]["label"] and all(
            [x["label"] for x in answer["backbones"][n]] == [x["label"] for x in ref["backbones"][n]]
            for n in backbones))
    from models.features import parse_head_input

    views = {n: len(parse_head_input(h)[0]) for n, h in project["head_inputs"].items()}
    bare_p50 = {n: statistics.median(t) for n, t in bare.items()}
    bare_sum = sum(bare_p50.values())
    same_passes = sum(bare_p50[n] * views[n] for n in backbones)
    p50, p95 = _percentile(latencies, 50), _percentile(latencies, 95)
    total = clients * per_client
    sequential_rps = len(latencies) / sum(latencies)
    batches = {k: after[k] - before[k] for k in ("requests", "batches", "merged")}
    sizes = {k: v - before["sizes"].get(k, 0) for k, v in after["sizes"].items()
             if v - before["sizes"].get(k, 0)}
    batches.update(largest=max(map(int, sizes), default=0), sizes=sizes)
    sizes_px = [_long_side(im) for im in images]
    return {
        "backbones": backbones, "head_inputs": project["head_inputs"],
        "passes_per_image": sum(views.values()), "ensemble": project["ensemble"],
        "n_train": project["n_train"], "train_seconds": project["train_seconds"],
        "image": f"{len(images)} distinct JPEGs, {min(sizes_px)}..{max(sizes_px)} px long side",
        "requests": len(latencies),
        "latency_p50_s": round(p50, 4), "latency_p95_s": round(p95, 4),
        "latency_mean_s": round(statistics.mean(latencies), 4),
        "bare_forward_p50_s": {n: round(v, 4) for n, v in bare_p50.items()},
        "bare_forward_sum_s": round(bare_sum, 4),
        "overhead_p50": round(p50 / bare_sum - 1, 3), "overhead_p95": round(p95 / bare_sum - 1, 3),
        "bare_same_passes_s": round(same_passes, 4),
        "overhead_same_passes_p50": round(p50 / same_passes - 1, 3),
        "clients": clients, "per_client": per_client,
        "sequential_rps": round(sequential_rps, 3),
        "concurrent_rps": round(total / wall, 3),
        "concurrent_unbatched_rps": round(total / wall_unbatched, 3),
        "throughput_ratio": round(total / wall / sequential_rps, 2),
        "batching_gain": round(wall_unbatched / wall, 2),
        "batches": batches,
        "max_score_diff_batched_vs_alone": round(float(max(diffs)), 6),
        "same_labels": bool(same_labels),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def _long_side(data: bytes) -> int:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return max(im.size)


# -- ingest -----------------------------------------------------------------------------------


def _upload_run(zip_path: Path, dataset: Path, tmp: Path, tag: str) -> dict:
    """A fresh server; one zip uploaded through POST /api/v1/projects/<id>/images."""
    instance = tmp / f"instance-{tag}"
    server = _Server(instance, tmp / f"server-{tag}.log", random_backbones=False)
    try:
        project = _request(server.base + "/api/v1/projects",
                           json.dumps({"name": tag, "backbones": ["efficientnet_lite0"]}).encode(),
                           {"Content-Type": "application/json"})
        # warm: the whole upload path once (imports, caches) with 20 other images
        write_zip(tmp / "warm.zip", dataset, 20, seed=SEED + 99)
        server.post_file(f"/api/v1/projects/{project['id']}/images", "warm.zip",
                         (tmp / "warm.zip").read_bytes())
        rss_before = _vm(server.proc.pid, "VmRSS")
        hwm_before = _vm(server.proc.pid, "VmHWM")
        data = zip_path.read_bytes()
        cpu = _cpu_seconds(server.proc.pid)
        began = time.perf_counter()
        report = server.post_file(f"/api/v1/projects/{project['id']}/images", zip_path.name, data)
        seconds = time.perf_counter() - began
        cpu = _cpu_seconds(server.proc.pid) - cpu
        del data
        hwm_after = _vm(server.proc.pid, "VmHWM")
    finally:
        server.stop()
    return {"seconds": seconds, "cpu_seconds": cpu, "accepted": report["accepted"],
            "rejected": len(report["rejected"]), "duplicates": len(report["duplicates"]),
            "rss_before": rss_before, "hwm_before": hwm_before, "hwm_after": hwm_after}


def ingest_throughput(dataset: str | Path = DEFAULT_DATASET, images: int = 1000,
                      small_images: int = 250, workdir: str | Path | None = None) -> dict:
    """Upload-and-ingest speed and memory: a zip of `images` distinct photo-like JPEGs
    (400-800 px long side, from the dataset's images) posted to the real server in one
    request, and a zip of `small_images` the same way on another fresh server.

    Keys:
      images, image_bytes, zip_bytes: the big zip (image_bytes = all its JPEGs together);
      seconds: client wall time of the upload request (transfer over loopback, multipart
        parsing, reading the zip, hashing, decoding and validating, thumbnails, writing files,
        database rows, the JSON report); accepted/rejected/duplicates: its report (every
        image must be accepted: accepted == images);
      images_per_s: accepted / seconds (target >= 50); server_cpu_seconds: CPU time the
        server process used meanwhile (all its threads); images_per_cpu_s: accepted per CPU
        second (what the code costs, whatever else shares the cores);
        load_average_after: the machine's 1/5/15-minute load averages (2 cores here: above 2
        means other work competed for them).
      peak_rss_growth_bytes: the server process's peak resident memory (VmHWM) after the
        upload minus its resident memory just before it; small_*: the same for the small zip;
        growth_ratio_large_vs_small: peak growth with `images` over that with `small_images`
        (about 1 when memory is constant; `images / small_images` if it grew with the zip);
        growth_vs_image_bytes: peak growth / image_bytes (1 would mean every image held).
    """
    dataset = Path(dataset)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        big = write_zip(tmp / "big.zip", dataset, images)
        small = write_zip(tmp / "small.zip", dataset, small_images, seed=SEED + 7)
        run_small = _upload_run(tmp / "small.zip", dataset, tmp, "small")
        run_big = _upload_run(tmp / "big.zip", dataset, tmp, "big")
    growth = run_big["hwm_after"] - run_big["rss_before"]
    growth_small = run_small["hwm_after"] - run_small["rss_before"]
    return {
        **big, "seconds": round(run_big["seconds"], 2), "accepted": run_big["accepted"],
        "rejected": run_big["rejected"], "duplicates": run_big["duplicates"],
        "images_per_s": round(run_big["accepted"] / run_big["seconds"], 1),
        "server_cpu_seconds": round(run_big["cpu_seconds"], 2),
        "images_per_cpu_s": round(run_big["accepted"] / max(run_big["cpu_seconds"], 1e-9), 1),
        "peak_rss_growth_bytes": growth,
        "small_images": small["images"], "small_image_bytes": small["image_bytes"],
        "small_seconds": round(run_small["seconds"], 2),
        "small_images_per_s": round(run_small["accepted"] / run_small["seconds"], 1),
        "small_peak_rss_growth_bytes": growth_small,
        "growth_ratio_large_vs_small": round(growth / max(growth_small, 1), 2),
        "growth_vs_image_bytes": round(growth / big["image_bytes"], 3),
        "server_rss_before_bytes": run_big["rss_before"],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_serve":
        _serve("--random-backbones" in argv)
        return 0
    if argv and argv[0] == "_prepare":
        print(json.dumps(_prepare(Path(argv[1]), Path(argv[2]), int(argv[3]), argv[4])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET))
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-client", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=5,
                        help="training images per class of the predicting project")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--small-images", type=int, default=250)
    parser.add_argument("--view-policies", default="default",
                        help='"default" (as the worker trains) or e.g. "none"')
    parser.add_argument("--only", choices=("prediction", "ingest"))
    args = parser.parse_args(argv)
    from machine import machine  # bench/machine.py, beside this script

    out: dict = {"machine": machine()}
    if args.only in (None, "ingest"):
        out["ingest"] = ingest_throughput(args.dataset, args.images, args.small_images)
    if args.only in (None, "prediction"):
        out["prediction"] = prediction_latency(args.dataset, args.requests, args.clients,
                                               args.per_client, args.per_class,
                                               view_policies=args.view_policies)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

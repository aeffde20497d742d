"""Load: concurrent uploaders and classifiers against one real server, on loopback only.

    python bench/load.py [--seconds 60] [--uploaders 20] [--classifiers 20] [--instance DIR]

Starts `python app.py` (gevent web process + worker child) on a free 127.0.0.1 port with a
fresh temporary instance folder, trains a small project (two classes of photos, EfficientNet-
Lite0, the backbone with offline weights) and classifies once to load TensorFlow, then for
`--seconds`:
  * `--uploaders` threads each upload one new image per request (a distinct PNG, labelled with
    one of 4 classes) into a second project, as fast as answers come;
  * `--classifiers` threads each classify a photo with the trained project, as fast as answers
    come;
  * one prober loads the pages and listings a user clicks through (/, the project page, the
    project and image lists) every 0.25 s and times them;
  * the server's resident memory (VmRSS of the web process) is sampled every 0.5 s.
Afterwards every image an upload reported accepted must be listed in the project and served,
and nothing else may be there. Prints one JSON object: requests and errors per kind, latency
percentiles, images accepted/listed/missing, RSS at start/peak/end, and the machine.

Every request loop stops at the deadline; only 127.0.0.1 is ever contacted. `tests/test_load.py`
runs the same code for 20 s in CI. Uses the `requests` package (HTTP keep-alive per thread).
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: bench/ is sys.path[0], not the repository
    sys.path.insert(0, str(REPO))
from bench.server import launch_app, stop_app  # noqa: E402
BACKBONE = "efficientnet_lite0"


AUTH: dict[str, str] = {}  # the API token header every request sends (set by start_server)


def _session() -> requests.Session:
    """The HTTP session every request uses, with the API token made by `start_server`."""
    session = requests.Session()
    session.headers.update(AUTH)
    return session


def make_token(instance: Path) -> str:
    """An API token for a new account on `instance`, made in-process on its database."""
    from web import create_app
    from web.auth import service_token

    with create_app({"INSTANCE_PATH": str(instance)}).app_context():
        return service_token("load", "bench/load.py")


# -- the server -------------------------------------------------------------------------------


def start_server(instance: Path, log_path: Path, timeout: float = 120.0) -> tuple[
        subprocess.Popen, str]:
    """`python app.py` on 127.0.0.1 (with its worker child); returns (process, base URL) once
    the API answers and the worker is ready."""
    AUTH["Authorization"] = f"Bearer {make_token(instance)}"
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", "TRANSFERLAB_WORKER_POLL_SECONDS": "0.2",
           # one account stands in for 40 users here: no per-account caps or rate limits
           "TRANSFERLAB_UPLOADS_PER_USER": "1000", "TRANSFERLAB_RATELIMIT_ENABLED": "false"}
    session = _session()

    def ready(base: str) -> bool:
        return (session.get(f"{base}/api/v1/backbones", timeout=5).status_code == 200
                and "ready (queue" in log_path.read_text(errors="replace"))

    return launch_app(instance, log_path, env, ready, timeout)


def stop_server(proc: subprocess.Popen) -> None:
    stop_app(proc, timeout=30)


def rss_mb(pid: int) -> float | None:
    """Resident memory of `pid` in MB (Linux /proc), None if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# -- data -----------------------------------------------------------------------------------------


def photos(per_class: int = 5) -> dict[str, list[bytes]]:
    """JPEG crops of two scikit-image photos (cat, rocket): distinct, clearly two classes."""
    from PIL import Image
    from skimage import data

    out = {}
    rng = np.random.default_rng(0)
    for label, photo in (("cat", data.chelsea()), ("rocket", data.rocket())):
        base = Image.fromarray(photo).convert("RGB")
        images = []
        for _ in range(per_class):
            w, h = base.size
            cw, ch = int(w * rng.uniform(0.6, 0.9)), int(h * rng.uniform(0.6, 0.9))
            x, y = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
            buf = io.BytesIO()
            base.crop((x, y, x + cw, y + ch)).resize((160, 120)).save(buf, "JPEG", quality=88)
            images.append(buf.getvalue())
        out[label] = images
    return out


def noise_png(seed: int, side: int = 32) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def prepare(base: str, session_factory: Callable[[], requests.Session] = _session,
            timeout: float = 300.0) -> dict:
    """A trained project to classify with, an empty one to upload into, a photo to classify.
    Classifies once so TensorFlow is loaded before the clock starts."""
    http = session_factory()
    shots = photos(6)
    train = http.post(f"{base}/api/v1/projects", json={"name": "classify",
                                                       "backbones": [BACKBONE]}, timeout=30)
    train_pid = train.json()["id"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for label, images in shots.items():
            for i, data in enumerate(images[:5]):
                archive.writestr(f"{label}/{i}.jpg", data)
    r = http.post(f"{base}/api/v1/projects/{train_pid}/images",
                  files={"file": ("train.zip", buf.getvalue())}, timeout=120)
    assert r.status_code == 200 and r.json()["accepted"] == 10, r.text
    job_id = http.post(f"{base}/api/v1/projects/{train_pid}/train", timeout=30).json()["job_id"]
    deadline = time.monotonic() + timeout
    while True:
        job = http.get(f"{base}/api/v1/jobs/{job_id}", timeout=30).json()
        if job["state"] not in ("queued", "running"):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"training did not finish: {job}")
        time.sleep(0.2)
    assert job["state"] == "succeeded", job
    probe = shots["cat"][5]
    r = http.post(f"{base}/api/v1/projects/{train_pid}/predict",
                  files={"file": ("probe.jpg", probe)}, timeout=120)
    assert r.status_code == 200, r.text
    upload_pid = http.post(f"{base}/api/v1/projects", json={"name": "uploads",
                                                            "backbones": [BACKBONE]},
                           timeout=30).json()["id"]
    return {"train_pid": train_pid, "upload_pid": upload_pid, "probe": probe,
            "probe_label": r.json()["ensemble"]["label"]}


# -- the load -------------------------------------------------------------------------------------


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    arr = np.array(values)
    return {"n": len(values), "p50_ms": round(float(np.percentile(arr, 50)) * 1000, 1),
            "p95_ms": round(float(np.percentile(arr, 95)) * 1000, 1),
            "max_ms": round(float(arr.max()) * 1000, 1)}


def run_load(base: str, server_pid: int, setup: dict, *, seconds: float = 60.0,
             uploaders: int = 20, classifiers: int = 20,
             session_factory: Callable[[], requests.Session] = _session) -> dict:
    """Run the load for `seconds`, then check that no accepted image was lost; returns the
    figures (see the module doc)."""
    train_pid, upload_pid = setup["train_pid"], setup["upload_pid"]
    lock = threading.Lock()
    latencies: dict[str, list[float]] = {"upload": [], "classify": [], "page": []}
    by_page: dict[str, list[float]] = {}
    errors: dict[str, list[str]] = {"upload": [], "classify": [], "page": []}
    accepted: list[str] = []
    labels_seen: dict[str, int] = {}
    rss: list[float] = []
    start_rss = rss_mb(server_pid)
    deadline = time.monotonic() + seconds
    stop = threading.Event()

    def timed(kind: str, call: Callable[[], requests.Response],
              check: Callable[[requests.Response], str | None]) -> requests.Response | None:
        began = time.monotonic()
        try:
            response = call()
            problem = check(response)
        except requests.RequestException as exc:
            response, problem = None, f"{type(exc).__name__}: {exc}"
        with lock:
            latencies[kind].append(time.monotonic() - began)
            if problem:
                errors[kind].append(problem[:300])
        return None if problem else response

    def ok(response: requests.Response) -> str | None:
        if response.status_code == 200:
            return None
        return f"{response.status_code}: {response.text[:200]}"

    def uploader(index: int) -> None:
        http, n = session_factory(), 0
        while time.monotonic() < deadline:
            seed = 1_000_000 + index * 100_000 + n
            n += 1
            label = f"class-{seed % 4}"
            response = timed("upload", lambda seed=seed, label=label: http.post(
                f"{base}/api/v1/projects/{upload_pid}/images", timeout=120,
                files={"file": (f"u{seed}.png", noise_png(seed))}, data={"label": label}), ok)
            if response is not None:
                body = response.json()
                with lock:
                    accepted.extend(image["sha256"] for image in body["images"])
                    if body["accepted"] != 1:
                        errors["upload"].append(f"not accepted: {body}")

    def classifier(index: int) -> None:
        http = session_factory()

        def right(response):
            problem = ok(response)
            if problem is None:
                label = response.json()["ensemble"]["label"]
                with lock:
                    labels_seen[label] = labels_seen.get(label, 0) + 1
            return problem

        while time.monotonic() < deadline:
            timed("classify", lambda: http.post(
                f"{base}/api/v1/projects/{train_pid}/predict", timeout=120,
                files={"file": (f"c{index}.jpg", setup["probe"])}), right)

    def prober() -> None:
        http = session_factory()
        pages = ["/", f"/projects/{upload_pid}", "/api/v1/projects",
                 f"/api/v1/projects/{upload_pid}", f"/api/v1/projects/{train_pid}/results"]
        i = 0
        while time.monotonic() < deadline:
            path = pages[i % len(pages)]
            i += 1
            began = time.monotonic()
            timed("page", lambda path=path: http.get(base + path, timeout=60), ok)
            with lock:
                by_page.setdefault(path, []).append(time.monotonic() - began)
            time.sleep(0.25)

    def sampler() -> None:
        while not stop.is_set():
            value = rss_mb(server_pid)
            if value is not None:
                rss.append(value)
            stop.wait(0.5)

    threads = ([threading.Thread(target=uploader, args=(i,)) for i in range(uploaders)]
               + [threading.Thread(target=classifier, args=(i,)) for i in range(classifiers)]
               + [threading.Thread(target=prober)])
    watcher = threading.Thread(target=sampler)
    began = time.monotonic()
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    stop.set()
    watcher.join()

    # nothing lost: every accepted image is listed and served, and nothing else is there
    http = session_factory()
    listed = [image["sha256"] for image in
              http.get(f"{base}/api/v1/projects/{upload_pid}/images", timeout=120).json()]
    missing = sorted(set(accepted) - set(listed))
    unexpected = sorted(set(listed) - set(accepted))
    unserved = [sha for sha in accepted
                if http.get(f"{base}/api/v1/images/{sha}/thumbnail", timeout=60).status_code != 200]
    return {
        "seconds": round(elapsed, 1), "uploaders": uploaders, "classifiers": classifiers,
        "requests": {kind: len(values) for kind, values in latencies.items()},
        "errors": {kind: len(values) for kind, values in errors.items()},
        "error_samples": {kind: values[:3] for kind, values in errors.items() if values},
        "latency": {kind: _percentiles(values) for kind, values in latencies.items()},
        "page_latency": {path: _percentiles(values) for path, values in by_page.items()},
        "throughput_per_s": {kind: round(len(values) / elapsed, 2)
                             for kind, values in latencies.items()},
        "images": {"accepted": len(accepted), "unique_accepted": len(set(accepted)),
                   "listed": len(listed), "missing": len(missing), "unexpected": len(unexpected),
                   "not_served": len(unserved)},
        "classified_as": labels_seen, "expected_label": setup["probe_label"],
        "rss_mb": {"start": round(start_rss or 0, 1), "peak": round(max(rss, default=0), 1),
                   "end": round(rss[-1] if rss else 0, 1),
                   "growth": round(max(rss, default=0) - (start_rss or 0), 1)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--uploaders", type=int, default=20)
    parser.add_argument("--classifiers", type=int, default=20)
    parser.add_argument("--instance", type=Path, help="instance folder (default: a temporary one)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import machine

    with tempfile.TemporaryDirectory(prefix="transferlab-load-") as tmp:
        instance = args.instance or Path(tmp) / "instance"
        proc, base = start_server(instance, Path(tmp) / "server.log")
        try:
            setup = prepare(base)
            result = run_load(base, proc.pid, setup, seconds=args.seconds,
                              uploaders=args.uploaders, classifiers=args.classifiers)
        finally:
            stop_server(proc)
    result["machine"] = machine()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Upload-to-trained time through the web API, as a user of `python app.py` sees it.

    python bench/api_training_time.py [DATASET_DIR] [--backbones efficientnet_lite0]
                                      [--instance DIR] [--port N] [--timeout 3600]

Starts the real server (`python app.py`: gevent web process + worker child) on a free loopback
port with a fresh temporary instance folder (so no feature is cached; `--instance` keeps one),
waits for the worker to be ready, then, through the JSON API only:
  1. zips DATASET_DIR's class folders in memory (default ../shared/datasets/galaxy4-dev) and
     creates a project with `--backbones`;
  2. uploads the zip in one `POST /api/v1/projects/<id>/images`         -> upload_seconds
  3. `POST .../train` and polls the job until it finishes               -> train_seconds
  4. trains again at once, nothing new (every feature is cached)        -> retrain_seconds
and prints one JSON object: the timings (total_seconds = creating the project + upload +
first training), the jobs' features_computed, the results' CV accuracy ± std per backbone and
for the ensemble, the views each backbone chose, the first time each job stage was seen, and
the machine. The server is always stopped with SIGTERM at the end (killed if it hangs).

Standard library only; the dataset is read, never copied.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

from machine import machine  # bench/machine.py, beside this script

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "galaxy4-dev"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def zip_class_folders(root: Path) -> tuple[bytes, int, dict[str, int]]:
    """A zip (bytes, stored: images do not compress) of root's class folders' images."""
    buf = io.BytesIO()
    counts: dict[str, int] = {}
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for folder in folders:
            for path in sorted(folder.rglob("*")):
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES \
                        and not path.name.startswith("."):
                    archive.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
                    counts[folder.name] = counts.get(folder.name, 0) + 1
    return buf.getvalue(), sum(counts.values()), counts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    def __init__(self, base: str, token: str):
        self.base = base
        self.auth = {"Authorization": f"Bearer {token}"}

    def _call(self, request, timeout):
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")[:2000]
            raise RuntimeError(f"{request.get_method()} {request.full_url}: {exc.code} {body}") \
                from None

    def get(self, path, timeout=60):
        return self._call(urllib.request.Request(self.base + path, headers=self.auth), timeout)

    def post_json(self, path, payload, timeout=60):
        return self._call(urllib.request.Request(
            self.base + path, data=json.dumps(payload).encode(), method="POST",
            headers={"Content-Type": "application/json", **self.auth}), timeout)

    def post_file(self, path, filename, data, timeout=3600):
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"{filename}\"\r\nContent-Type: application/zip\r\n\r\n").encode()
        body += data + f"\r\n--{boundary}--\r\n".encode()
        return self._call(urllib.request.Request(
            self.base + path, data=body, method="POST",
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}", **self.auth}),
            timeout)


def bench_token(instance: Path) -> str:
    """An API token for the account `bench` on `instance` (made with `python app.py`'s CLI)."""
    import secrets

    env = {**os.environ, "TRANSFERLAB_INSTANCE_PATH": str(instance)}

    def app_py(*args, stdin=None):
        return subprocess.run([sys.executable, str(REPO / "app.py"), *args], input=stdin, env=env,
                              cwd=REPO, capture_output=True, text=True, check=False)

    app_py("create-user", "bench", "--password-stdin", stdin=secrets.token_hex(16) + "\n")  # or exists
    out = app_py("create-token", "bench", "--name", "bench/api_training_time.py")
    if out.returncode != 0:
        raise RuntimeError(f"could not make an API token: {out.stderr}")
    return out.stdout.strip()


class Server:
    """`python app.py` with its output in a log file."""

    def __init__(self, instance: Path, port: int, log_path: Path):
        self.instance, self.port, self.log_path = instance, port, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "TRANSFERLAB_INSTANCE_PATH": str(self.instance),
               "TRANSFERLAB_HOST": "127.0.0.1", "TRANSFERLAB_PORT": str(self.port),
               "TRANSFERLAB_WORKER": "true", "TF_CPP_MIN_LOG_LEVEL": "2",
               "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=REPO,
                                         env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"python app.py exited with {self.proc.returncode}:\n"
                               f"{self.log()[-4000:]}")

    def wait_ready(self, api: Api, timeout: float) -> tuple[float, float]:
        """Seconds until the web process answers, and until the worker has loaded TensorFlow."""
        began = time.monotonic()
        web = None
        while True:
            self.check()
            if web is None:
                try:
                    api.get("/api/v1/backbones", timeout=5)
                    web = time.monotonic() - began
                except (OSError, RuntimeError):
                    pass
            if web is not None and "ready (queue" in self.log():
                return web, time.monotonic() - began
            if time.monotonic() - began > timeout:
                raise TimeoutError(f"server/worker not ready after {timeout} s:\n"
                                   f"{self.log()[-4000:]}")
            time.sleep(0.1)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, wait; SIGKILL the whole session if it does not stop."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"python app.py did not stop within {timeout} s: killed", file=sys.stderr)
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()


def train_and_wait(api: Api, project_id: int, timeout: float, server: Server) -> dict:
    """POST train, poll the job until it finishes; the job, its seconds and stages' first sight."""
    began = time.monotonic()
    job = api.post_json(f"/api/v1/projects/{project_id}/train", {})
    stages: dict[str, float] = {}
    if job.get("nothing_changed"):  # same images, backbones and settings: answered at once
        return {"job": {"features_computed": 0, "nothing_changed": True},
                "seconds": round(time.monotonic() - began, 2), "stages": {}}
    while job["state"] in ("queued", "running"):
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"job {job['job_id']} not finished after {timeout} s: {job}")
        server.check()
        time.sleep(0.2)
        job = api.get(f"/api/v1/jobs/{job['job_id']}")
        stage = re.sub(r" \d+/\d+\)", ")", job.get("stage") or job["state"])  # view 3/8 -> one
        stages.setdefault(stage, round(time.monotonic() - began, 2))
    seconds = time.monotonic() - began
    if job["state"] != "succeeded":
        raise RuntimeError(f"job {job['job_id']} {job['state']}: {job.get('error')}\n"
                           f"{server.log()[-4000:]}")
    return {"job": job, "seconds": round(seconds, 2), "stages": stages}


def scores(results: dict) -> dict:
    def pick(entry):
        return {"cv_accuracy": entry.get("cv_accuracy"),
                "cv_accuracy_std": entry.get("cv_accuracy_std")}

    out = {name: pick(entry) for name, entry in results["backbones"].items()}
    ensemble = results.get("ensemble") or {}
    out["ensemble"] = {**pick(ensemble), "method": ensemble.get("key")}
    return out


def run(args, workdir: Path) -> dict:
    dataset = Path(args.dataset).resolve()
    if not dataset.is_dir():
        raise SystemExit(f"{dataset}: not a folder of class folders")
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    data, n_images, counts = zip_class_folders(dataset)
    if len(counts) < 2:
        raise SystemExit(f"{dataset}: needs at least two class folders with images")

    instance = Path(args.instance).resolve() if args.instance else workdir / "instance"
    fresh = not (instance / "features").exists()
    port = args.port or free_port()
    server = Server(instance, port, workdir / "server.log")
    api = Api(f"http://127.0.0.1:{port}", bench_token(instance))
    server.start()
    try:
        web_ready, worker_ready = server.wait_ready(api, timeout=300)

        began = time.monotonic()
        project = api.post_json("/api/v1/projects", {"name": f"bench {dataset.name}",
                                                     "backbones": backbones})
        pid = project["id"]
        up_began = time.monotonic()
        upload = api.post_file(f"/api/v1/projects/{pid}/images", f"{dataset.name}.zip", data)
        upload_seconds = time.monotonic() - up_began
        first = train_and_wait(api, pid, args.timeout, server)
        total_seconds = time.monotonic() - began
        results = api.get(f"/api/v1/projects/{pid}/results")
        second = train_and_wait(api, pid, args.timeout, server)
        retrained = api.get(f"/api/v1/projects/{pid}/results")
    finally:
        code = server.stop()
    if code not in (0, None):
        print(f"note: python app.py exited with {code} on SIGTERM", file=sys.stderr)

    return {
        "dataset": dataset.name,
        "dataset_path": str(dataset),
        "n_images": n_images,
        "classes": counts,
        "zip_bytes": len(data),
        "backbones": backbones,
        "accepted": upload.get("accepted"),
        "rejected": len(upload.get("rejected") or []),
        "duplicates": len(upload.get("duplicates") or []),
        "fresh_feature_cache": fresh,
        "server_ready_seconds": round(web_ready, 2),
        "worker_ready_seconds": round(worker_ready, 2),
        "upload_seconds": round(upload_seconds, 2),
        "train_seconds": first["seconds"],
        "total_seconds": round(total_seconds, 2),
        "features_computed": first["job"]["features_computed"],
        "features_total": first["job"]["features_total"],
        "train_stages": first["stages"],
        "cv": scores(results),
        "views": {name: (entry.get("hyperparameters") or {}).get("views")
                  for name, entry in results["backbones"].items()},
        "cv_folds": results.get("cv_folds"),
        "retrain_seconds": second["seconds"],
        "retrain_features_computed": second["job"]["features_computed"],
        "retrain_stages": second["stages"],
        "retrain_cv": scores(retrained),
        "machine": machine(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", nargs="?", default=str(DEFAULT_DATASET),
                        help="folder of class folders (default: %(default)s)")
    parser.add_argument("--backbones", default="efficientnet_lite0",
                        help="comma-separated backbones (default: %(default)s)")
    parser.add_argument("--instance", help="instance folder to use and keep (default: a "
                        "temporary one, removed afterwards, so nothing is cached)")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per training job")
    args = parser.parse_args(argv)

    # SIGTERM/SIGHUP to the benchmark unwinds like Ctrl-C, so the server is always stopped.
    def interrupted(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    with tempfile.TemporaryDirectory(prefix="transferlab-bench-") as tmp:
        try:
            row = run(args, Path(tmp))
        except KeyboardInterrupt as exc:
            print(f"interrupted ({exc or 'SIGINT'}); the server was stopped", file=sys.stderr)
            return 130
        except Exception as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())

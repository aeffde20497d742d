"""Plain helpers the tests import (`from helpers import ...`): data makers, log-ins, the real
worker and server processes. Fixtures live in conftest.py."""
from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `import web`, `import models` under plain `pytest`
    sys.path.insert(0, str(REPO))


def photo_variants(photo, count, seed):
    """`count` distinct JPEG-able variants of one photo: crops, flips, brightness."""
    import numpy as np
    from PIL import Image, ImageEnhance

    rng = np.random.default_rng(seed)
    base = Image.fromarray(photo).convert("RGB")
    w, h = base.size
    out = []
    for i in range(count):
        cw, ch = int(w * rng.uniform(0.6, 0.95)), int(h * rng.uniform(0.6, 0.95))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = base.crop((x, y, x + cw, y + ch)).resize((160, 120))
        if i % 2:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.7, 1.3))))
    return out


PHOTO_CLASSES = {"cat": "chelsea", "coffee": "coffee", "rocket": "rocket"}


def declare_member_size(path: Path, member: str, size: int, crc: int) -> None:
    """Make ``member``'s local and central headers declare ``size`` bytes with CRC ``crc``,
    whatever its data holds (what a hand-crafted bomb does)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        local = archive.getinfo(member).header_offset
    struct.pack_into("<I", data, local + 14, crc)
    struct.pack_into("<I", data, local + 22, size)
    header = data.find(b"PK\x01\x02")
    while header != -1:
        name_length = int.from_bytes(data[header + 28 : header + 30], "little")
        if data[header + 46 : header + 46 + name_length] == member.encode():
            struct.pack_into("<I", data, header + 16, crc)
            struct.pack_into("<I", data, header + 24, size)
        header = data.find(b"PK\x01\x02", header + 4)
    path.write_bytes(bytes(data))


# --- the web app's worker (web/jobs.py): a real Huey consumer in a subprocess -------------


class WorkerProcess:
    """`python app.py worker` against an instance folder; its output goes to `log_path`.

    Downloads are made to fail fast (a dead local proxy), so a worker can never reach the
    network even if asked to train a backbone whose weights are not on disk.
    """

    def __init__(self, instance_path, **env):
        self.instance_path = Path(instance_path)
        self.instance_path.mkdir(parents=True, exist_ok=True)
        self.log_path = self.instance_path / f"worker-{time.time_ns()}.log"
        self.env = {**os.environ, "TRANSFERLAB_INSTANCE_PATH": str(self.instance_path),
                    "TRANSFERLAB_WORKER_POLL_SECONDS": "0.2", "TF_CPP_MIN_LOG_LEVEL": "2",
                    "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
                    "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
                    "NO_PROXY": "", "no_proxy": "", "PYTHONUNBUFFERED": "1",
                    **{k: str(v) for k, v in env.items()}}
        self.proc = None

    def start(self):
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "worker"],
                                     cwd=REPO, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self, timeout=120.0):
        """Block until the worker says it is consuming the queue (TensorFlow loaded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready (queue" in self.log():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=20.0):
        if self.alive:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()


WEB_PHOTOS = {"cat": "chelsea", "coffee": "coffee", "rocket": "rocket", "astronaut": "astronaut"}


def make_zip(members: dict) -> bytes:
    """A zip (bytes) of {member path: bytes}."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


# --- accounts (web/auth.py): log a test client in the way a user does ---------------------------

TEST_PASSWORD = "correct horse battery staple"


def page_csrf_token(html: str) -> str:
    """The CSRF token a page carries in `<meta name="csrf-token">` (what static/js/api.js sends)."""
    import re

    found = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert found, "the page has no CSRF token"
    return found.group(1)


def logged_in(client, username: str = "ann", password: str = TEST_PASSWORD, *, create=True):
    """`client` (a Flask test client) logged in through the login page as `username` (the
    account is created first when `create`; the first one on an instance is the admin). The
    client then sends the page's CSRF token header with every request, as the pages do."""
    from web.auth import create_user
    from web.db import User, db

    app = client.application
    with app.app_context():
        if create and db.session.scalar(db.select(User).where(User.username == username)) is None:
            create_user(username, password, admin=username == "ann")
    token = page_csrf_token(client.get("/login").get_data(as_text=True))
    r = client.post("/login", data={"username": username, "password": password, "csrf_token": token})
    assert r.status_code == 302, r.get_data(as_text=True)[:500]
    client.environ_base["HTTP_X_CSRFTOKEN"] = page_csrf_token(client.get("/").get_data(as_text=True))
    return client


def api_token(app, username: str = "ann", password: str = TEST_PASSWORD) -> str:
    """A new API token for `username` (created if missing), for `Authorization: Bearer`."""
    from web.auth import create_user, issue_token
    from web.db import User, db

    with app.app_context():
        user = db.session.scalar(db.select(User).where(User.username == username))
        if user is None:
            user = create_user(username, password, admin=username == "ann")
        return issue_token(user, "tests")[1]


_TOKENS: dict[str, str] = {}


def bearer_session(instance):
    """A requests.Session for a real server on `instance`, with an API token of user "ann"
    on that instance (made once per instance, in-process, on the same database)."""
    from web import create_app

    key = str(instance)
    if key not in _TOKENS:
        _TOKENS[key] = api_token(create_app({"INSTANCE_PATH": key, "TESTING": True}))
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {_TOKENS[key]}"
    return session


# --- real `python app.py` servers ----------------------------------------------------------------


def free_port() -> int:
    """A loopback TCP port nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(tmp_path, port: int, log_path, **env):
    """`python app.py` on 127.0.0.1:`port` with the instance folder tmp_path/instance; returns
    the process once `/api/v1/openapi.yaml` answers (the test fails with the log otherwise)."""
    env = {**os.environ, "TRANSFERLAB_INSTANCE_PATH": str(tmp_path / "instance"),
           "TRANSFERLAB_PORT": str(port), "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "NO_PROXY": "127.0.0.1,localhost", **env}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/openapi.yaml",
                                        timeout=5) as r:
                assert r.status == 200
            return proc
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(log_path.read_text())
            time.sleep(0.2)


LIMITED = ("import os, resource, sys; limit = int(sys.argv[1]); "
           "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
           "os.execv(sys.argv[2], sys.argv[2:])")


class Server:
    """`python app.py` on a loopback port, output to a log file in the instance folder; its
    requests carry an API token (`bearer_session`)."""

    def __init__(self, instance: Path, file_size_limit: int | None = None, **env):
        self.instance, self.port = Path(instance), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.instance.parent / f"server-{time.time_ns()}.log"
        self.env = {**os.environ, "TRANSFERLAB_INSTANCE_PATH": str(self.instance),
                    "TRANSFERLAB_PORT": str(self.port), "TF_CPP_MIN_LOG_LEVEL": "2",
                    "PYTHONUNBUFFERED": "1", "TRANSFERLAB_WORKER_POLL_SECONDS": "0.2",
                    "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
                    "NO_PROXY": "127.0.0.1,localhost", **{k: str(v) for k, v in env.items()}}
        self.command = [sys.executable, str(REPO / "app.py")]
        if file_size_limit:  # RLIMIT_FSIZE set in the child itself, then exec app.py
            self.command = [sys.executable, "-c", LIMITED, str(file_size_limit), *self.command]
        self.http = bearer_session(self.instance)

    def start(self, wait_worker=False):
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command, cwd=REPO, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if (self.get("/api/v1/backbones").status_code == 200
                        and (not wait_worker or "ready (queue" in self.log())):
                    return self
            except requests.ConnectionError:
                pass
            assert self.proc.poll() is None, self.log()
            time.sleep(0.2)
        pytest.fail(f"server not ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path, **kw):
        return self.http.get(self.url + path, timeout=60, **kw)

    def post(self, path, **kw):
        return self.http.post(self.url + path, timeout=120, **kw)

    def job(self, job_id) -> dict:
        return self.get(f"/api/v1/jobs/{job_id}").json()

    def wait_job(self, job_id, done, timeout=240.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if done(job):
                return job
            time.sleep(0.05)
        pytest.fail(f"{job}\n{self.log()[-3000:]}")

    def worker_pid(self) -> int:
        return int(self.log().split("worker started (pid ")[-1].split(")")[0])

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

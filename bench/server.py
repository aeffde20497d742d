"""A real `python app.py` on loopback for the benchmarks that drive one over HTTP.

Contract: `launch_app(instance, log_path, env, ready)` starts it on a free 127.0.0.1 port with
the instance folder `instance`, its output in `log_path`, `env`'s `TRANSFERLAB_*` settings
added, and never through a proxy; it returns (process, base URL) once `ready(base)` is true,
raising with the log's tail if the process exits or `timeout` passes. `stop_app` stops it
(SIGTERM, then SIGKILL).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_app(instance: Path, log_path: Path, env: dict, ready: Callable[[str], bool],
               timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    port = free_port()
    full_env = {**os.environ, "TRANSFERLAB_INSTANCE_PATH": str(instance),
                "TRANSFERLAB_PORT": str(port), "TRANSFERLAB_HOST": "127.0.0.1",
                "PYTHONUNBUFFERED": "1",
                "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
                "NO_PROXY": "127.0.0.1,localhost", **{k: str(v) for k, v in env.items()}}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=REPO, env=full_env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log_path.read_text()[-3000:]}")
        try:
            if ready(base):
                return proc, base
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError(f"server not ready:\n{log_path.read_text()[-3000:]}")


def stop_app(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

"""Abuse: slow request bodies and password guessing against one real server, on loopback only.

    python bench/abuse.py slow-bodies [--connections 50] [--seconds 40]
    python bench/abuse.py wrong-logins [--threads 20] [--seconds 20] [--no-limits]

Starts `python app.py` with TRANSFERLAB_WORKER=false on a free 127.0.0.1 port and a fresh
temporary instance folder, with accounts made in-process first, then:

* slow-bodies: `--connections` raw sockets (spread over three attacking accounts, each
  uploading into its own project) send the headers of an upload with `Content-Length:
  100000000` and then one byte per second; meanwhile a prober asks `/healthz` and another
  user's `GET /api/v1/projects` every 0.25 s and times them.
* wrong-logins: `--threads` threads post wrong passwords to the login form as fast as answers
  come, while the prober times `/healthz`.
  `--no-limits` turns the rate limits off, so every guess is checked (what remains is the
  cost of hashing passwords).

Prints one JSON object: the probes' latency (median/max, ms), their errors by status, and what
the attackers got back. `tests/test_abuse.py` runs the same code, shorter.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: bench/ is sys.path[0], not the repository
    sys.path.insert(0, str(REPO))
from bench.server import launch_app, stop_app  # noqa: E402, F401 (stop_app: for importers)
PASSWORD = "correct horse battery staple"
ATTACKERS = ("mallory", "eve", "trudy")
VICTIM = "ann"


def make_accounts(instance: Path, names) -> dict[str, str]:
    """{name: API token} for new accounts on `instance`, made in-process on its database."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from web import create_app
    from web.auth import create_user, issue_token

    with create_app({"INSTANCE_PATH": str(instance)}).app_context():
        return {name: issue_token(create_user(name, PASSWORD, admin=name == VICTIM), "abuse")[1]
                for name in names}


def start_app(instance: Path, log_path: Path, timeout: float = 60.0, **env) -> tuple[
        subprocess.Popen, str]:
    """`python app.py` without a worker on 127.0.0.1; (process, base URL) once /healthz is 200.
    `env` adds `TRANSFERLAB_*` settings (e.g. tight limits)."""
    return launch_app(instance, log_path, {"TRANSFERLAB_WORKER": "false", **env},
                      lambda base: requests.get(f"{base}/healthz", timeout=2).status_code == 200,
                      timeout)


def bearer(token: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def summary(latencies: list[float]) -> dict:
    if not latencies:
        return {"n": 0}
    return {"n": len(latencies), "median_ms": round(statistics.median(latencies) * 1000, 1),
            "max_ms": round(max(latencies) * 1000, 1)}


class Prober(threading.Thread):
    """Times GETs of `urls` ({kind: (url, session)}) every `interval` s until stopped."""

    def __init__(self, urls: dict, interval: float = 0.25, timeout: float = 35.0):
        """`timeout`: a probe waiting longer counts as an error (its time as its latency)."""
        super().__init__(daemon=True)
        self.urls, self.interval, self.timeout = urls, interval, timeout
        self.latency = {kind: [] for kind in urls}
        self.errors = {kind: Counter() for kind in urls}
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            for kind, (url, session) in self.urls.items():
                began = time.monotonic()
                try:
                    status = session.get(url, timeout=self.timeout).status_code
                except requests.RequestException as exc:
                    status = type(exc).__name__
                self.latency[kind].append(time.monotonic() - began)
                if status != 200:
                    self.errors[kind][str(status)] += 1
            self.stopping.wait(self.interval)

    def stop(self) -> dict:
        self.stopping.set()
        self.join(60)
        return {kind: {**summary(self.latency[kind]), "errors": dict(self.errors[kind])}
                for kind in self.urls}


def _status_of(data: bytes) -> str | None:
    found = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return found.group(1).decode() if found else None


def slow_bodies(base: str, targets: list[tuple[str, int]], connections: int, seconds: float,
                probe_urls: dict, probe_timeout: float = 35.0) -> dict:
    """`connections` slow uploads (round-robin over `targets`: (token, project id)), one body
    byte per second each, for `seconds`, while `probe_urls` are timed. Returns the probes'
    figures and, for the attackers, the status each connection got back (or "open"/"closed")."""
    host, port = base.removeprefix("http://").split(":")
    boundary = "slowslowslow"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"slow.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
    socks, outcome = [], {}
    for i in range(connections):
        token, pid = targets[i % len(targets)]
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall((f"POST /api/v1/projects/{pid}/images HTTP/1.1\r\nHost: {host}:{port}\r\n"
                   f"Authorization: Bearer {token}\r\n"
                   f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                   f"Content-Length: 100000000\r\n\r\n").encode() + part)
        s.setblocking(False)
        socks.append(s)
    prober = Prober(probe_urls, timeout=probe_timeout)
    prober.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for i, s in enumerate(socks):
            if i in outcome:
                continue
            try:
                data = s.recv(4096)
                outcome[i] = _status_of(data) or "closed"
                continue
            except BlockingIOError:
                pass
            except OSError:
                outcome[i] = "closed"
                continue
            try:
                s.send(b"\xff")
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                outcome[i] = "closed"
        time.sleep(1.0)
    probes = prober.stop()
    for s in socks:
        s.close()
    got = Counter(outcome.get(i, "open") for i in range(connections))
    return {"connections": connections, "seconds": seconds, "probes": probes,
            "attackers_got": dict(got)}


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html) or re.search(
        r'<meta name="csrf-token" content="([^"]+)"', html)
    assert found, "the login page has no CSRF token"
    return found.group(1)


def _guess_logins(base: str, threads: int, seconds: float, username: str, out) -> None:
    """`threads` threads guessing passwords until `seconds` have passed; puts a Counter of the
    statuses they got on the queue `out`."""
    statuses: Counter = Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def guess(n: int):
        session = requests.Session()
        token = _csrf(session.get(f"{base}/login", timeout=30).text)
        i = 0
        while time.monotonic() < stop_at:
            try:
                status = session.post(f"{base}/login", timeout=30, allow_redirects=False, data={
                    "username": username, "password": f"guess-{n}-{i}", "csrf_token": token
                }).status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            with lock:
                statuses[str(status)] += 1
            i += 1

    workers = [threading.Thread(target=guess, args=(n,), daemon=True) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 60)
    out.put(dict(statuses))


def wrong_logins(base: str, threads: int, seconds: float, username: str = VICTIM) -> dict:
    """`threads` threads post wrong passwords for `username` to /login for `seconds` while
    /healthz is timed. The guessers run in a child process, so their threads do not slow the
    prober's own clock. Returns the probe figures and the attackers' statuses."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    out = context.Queue()
    attack = context.Process(target=_guess_logins, args=(base, threads, seconds, username, out),
                             daemon=True)
    prober = Prober({"healthz": (f"{base}/healthz", requests.Session())})
    attack.start()
    time.sleep(1.0)  # the guessers have their login pages and CSRF tokens
    prober.start()
    statuses = out.get(timeout=seconds + 120)
    probes = prober.stop()
    attack.join(30)
    return {"threads": threads, "seconds": seconds, "probes": probes,
            "attempts": sum(statuses.values()), "attackers_got": statuses}


def projects_for(base: str, tokens: dict[str, str], names) -> list[tuple[str, int]]:
    """One new project per account in `names`: [(token, project id)]."""
    out = []
    for name in names:
        r = bearer(tokens[name]).post(f"{base}/api/v1/projects", timeout=30, json={
            "name": f"{name}'s", "backbones": ["efficientnet_lite0"]})
        assert r.status_code == 201, r.text
        out.append((tokens[name], r.json()["id"]))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("attack", choices=("slow-bodies", "wrong-logins"))
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--no-limits", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="transferlab-abuse-") as tmp:
        instance = Path(tmp) / "instance"
        tokens = make_accounts(instance, (VICTIM, *ATTACKERS))
        env = {"TRANSFERLAB_RATELIMIT_ENABLED": "false"} if args.no_limits else {}
        proc, base = start_app(instance, Path(tmp) / "server.log", **env)
        try:
            if args.attack == "slow-bodies":
                result = slow_bodies(base, projects_for(base, tokens, ATTACKERS),
                                     args.connections, args.seconds or 40.0, {
                                         "healthz": (f"{base}/healthz", requests.Session()),
                                         "other_user": (f"{base}/api/v1/projects",
                                                        bearer(tokens[VICTIM]))})
            else:
                result = wrong_logins(base, args.threads, args.seconds or 20.0)
        finally:
            stop_app(proc)
        result["load_average"] = os.getloadavg()
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Real PostgreSQL and Redis servers for tests: Debian's packages (`.ci/run` installs them),
each started in its own temporary folder, listening on 127.0.0.1 on a free port, stopped and
deleted afterwards. A missing server binary is an error (the test fails), never a skip.

PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user that
Debian's package creates (its folder is handed to that user).
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen | None, what: str, log: Path,
                   timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"{what} did not start on 127.0.0.1:{port}:\n{text}")


def postgres_bin(name: str) -> str:
    """A PostgreSQL server program (Debian keeps them in /usr/lib/postgresql/<version>/bin)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    path = found[-1] if found else shutil.which(name)
    if not path:
        raise RuntimeError(f"PostgreSQL's {name} is not installed: apt-get install postgresql "
                           "(.ci/run does)")
    return path


class PostgresServer:
    """`initdb` + `postgres` on a free loopback port; `url` is a SQLAlchemy psycopg URL."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="transferlab-pg-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.user = "transferlab"

    def _as_server_user(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        shutil.chown(self.dir, "postgres")
        os.chmod(self.dir, 0o700)
        return ["runuser", "-u", "postgres", "--"]

    def start(self) -> "PostgresServer":
        prefix = self._as_server_user()
        data, log = self.dir / "data", self.dir / "server.log"
        subprocess.run(prefix + [postgres_bin("initdb"), "-D", str(data), "-U", self.user,
                                 "--auth=trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True)
        with open(log, "wb") as out:
            if prefix:
                shutil.chown(log, "postgres")
            self.proc = subprocess.Popen(
                prefix + [postgres_bin("postgres"), "-D", str(data), "-h", "127.0.0.1",
                          "-p", str(self.port), "-k", str(self.dir), "-F",
                          "-c", "max_connections=100"],
                stdout=out, stderr=subprocess.STDOUT)
        _wait_for_port(self.port, self.proc, "PostgreSQL", log)
        return self

    def create_database(self, name: str) -> str:
        """Create database `name`; returns its SQLAlchemy URL."""
        import psycopg

        deadline = time.monotonic() + 20
        while True:  # the port opens a moment before the server accepts logins
            try:
                with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{name}"')
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{name}"

    def dsn(self, name: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={name}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: PostgreSQL's "smart" shutdown
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer:
    """`redis-server` on a free loopback port, no persistence; `url` is its redis:// URL."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="transferlab-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server") or (
            "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
        if not binary:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server "
                               "(.ci/run does)")
        log = self.dir / "server.log"
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
             "--save", "", "--appendonly", "no", "--logfile", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait_for_port(self.port, self.proc, "Redis", log)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

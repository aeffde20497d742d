"""Training throughput of the scaled-out setup: projects trained per minute with 1 and with 2
worker processes, measured in one run on the same data.

    python bench/throughput.py [DATASET_DIR] [--projects 4] [--per-class 10]
                               [--workers 1,2] [--backbone efficientnet_lite0]

For each worker count: a fresh PostgreSQL database, a flushed Redis database and an empty
storage folder (so no feature is cached), then `--projects` projects, each with the same
`--per-class` images per class of DATASET_DIR (default ../shared/datasets/galaxy4-dev), every
project's copies re-encoded slightly differently (distinct content hashes: no project reuses
another's features, every project is the same amount of work). Workers are `python app.py
worker` processes (TensorFlow loaded, ready) before the clock starts; the clock runs from
queueing all projects at once to the last job's end. Prints one JSON object: per worker count
the seconds, projects per minute and per-job seconds, the speed-up, and the machine.

Uses real servers, as tests/test_scaleout.py does (tests/servers.py: Debian's redis-server
and PostgreSQL, on loopback in temporary folders). The dataset is read, never copied.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from machine import machine  # bench/machine.py, beside this script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "galaxy4-dev"


def project_zip(root: Path, per_class: int, variant: int) -> tuple[bytes, int]:
    """A zip of the first `per_class` images of each class folder, re-encoded as JPEG with a
    one-level brightness shift of `variant` (a distinct file, the same work)."""
    from PIL import Image

    buf, count = io.BytesIO(), 0
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            for path in sorted(folder.iterdir())[:per_class]:
                with Image.open(path) as im:
                    im = im.convert("RGB").point(lambda v: min(255, v + variant))
                    out = io.BytesIO()
                    im.save(out, "JPEG", quality=92)
                archive.writestr(f"{folder.name}/{path.stem}.jpg", out.getvalue())
                count += 1
    return buf.getvalue(), count


def start_worker(folder: Path, env: dict) -> tuple[subprocess.Popen, Path]:
    folder.mkdir(parents=True)
    log = folder / "worker.log"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "app.py"), "worker"], cwd=REPO,
        env={**os.environ, **env, "TRANSFERLAB_INSTANCE_PATH": str(folder),
             "TRANSFERLAB_WORKER_POLL_SECONDS": "0.2", "TF_CPP_MIN_LOG_LEVEL": "2"},
        stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    return proc, log


def wait_ready(proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "ready (queue" in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    raise TimeoutError(f"worker not ready:\n{log.read_text(errors='replace')[-3000:]}")


def run(n_workers: int, zips: list[bytes], backbone: str, postgres, redis_url: str,
        work: Path) -> dict:
    import redis

    from web import create_app

    redis.Redis.from_url(redis_url).flushdb()
    env = {"DATABASE_URL": postgres.create_database(f"bench_{n_workers}"), "REDIS_URL": redis_url,
           "TRANSFERLAB_STORAGE_DIR": str(work / f"shared-{n_workers}")}
    app = create_app({"INSTANCE_PATH": str(work / f"web-{n_workers}"), "TESTING": True,
                      "SQLALCHEMY_DATABASE_URI": env["DATABASE_URL"], "REDIS_URL": redis_url,
                      "STORAGE_DIR": env["TRANSFERLAB_STORAGE_DIR"]})
    client = app.test_client()
    with app.app_context():  # an account, and its API token on every request
        from web.auth import service_token

        token = service_token("bench", "bench/throughput.py")
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    projects = []
    for i, data in enumerate(zips):
        pid = client.post("/api/v1/projects", json={"name": f"p{i}", "backbones": [backbone]}
                          ).json["id"]
        r = client.post(f"/api/v1/projects/{pid}/images",
                        data={"file": (io.BytesIO(data), "data.zip")})
        assert r.status_code == 200, r.json
        projects.append(pid)
    workers = [start_worker(work / f"w{n_workers}-{i}", env) for i in range(n_workers)]
    try:
        for proc, log in workers:
            wait_ready(proc, log)
        start = time.monotonic()
        jobs = [client.post(f"/api/v1/projects/{pid}/train").json["job_id"] for pid in projects]
        final = {}
        while len(final) < len(jobs):
            for job_id in jobs:
                if job_id not in final:
                    job = client.get(f"/api/v1/jobs/{job_id}").json
                    if job["state"] in ("succeeded", "failed", "cancelled"):
                        final[job_id] = job
            for proc, log in workers:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker died:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        elapsed = time.monotonic() - start
    finally:
        for proc, _ in workers:
            proc.terminate()
        for proc, _ in workers:
            proc.wait(60)
        with app.app_context():
            from web.db import db

            db.engine.dispose()
    failed = {j: f["error"] for j, f in final.items() if f["state"] != "succeeded"}
    if failed:
        raise RuntimeError(f"jobs failed: {failed}")

    def seconds(job):
        from datetime import datetime

        parse = lambda s: datetime.fromisoformat(s.rstrip("Z"))  # noqa: E731
        return (parse(job["finished_at"]) - parse(job["started_at"])).total_seconds()

    return {"workers": n_workers, "projects": len(jobs), "seconds": round(elapsed, 1),
            "projects_per_minute": round(60 * len(jobs) / elapsed, 2),
            "job_seconds": sorted(round(seconds(f), 1) for f in final.values()),
            "workers_used": len({f["worker"] for f in final.values()}),
            "features_computed": sum(f["features_computed"] or 0 for f in final.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", nargs="?", default=str(DEFAULT_DATASET))
    parser.add_argument("--projects", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    args = parser.parse_args()
    from tests.servers import PostgresServer, RedisServer

    zips = [project_zip(Path(args.dataset), args.per_class, i) for i in range(args.projects)]
    work = Path(tempfile.mkdtemp(prefix="transferlab-throughput-"))
    postgres, redis_server = PostgresServer().start(), RedisServer().start()
    try:
        runs = [run(int(n), [z for z, _ in zips], args.backbone, postgres, redis_server.url,
                    work) for n in args.workers.split(",")]
    finally:
        redis_server.stop()
        postgres.stop()
        shutil.rmtree(work, ignore_errors=True)
    out = {"benchmark": "throughput", "dataset": Path(args.dataset).name,
           "images_per_project": zips[0][1], "backbone": args.backbone,
           "queue": "redis", "database": "postgresql", "runs": runs,
           "machine": {**machine(), "load_avg_1m": round(os.getloadavg()[0], 2)}}
    if len(runs) > 1:
        out["speedup"] = round(runs[-1]["projects_per_minute"] / runs[0]["projects_per_minute"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

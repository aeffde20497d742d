"""Scale-out, for real: a PostgreSQL server, a Redis server, the web app (`python app.py`
with TRANSFERLAB_WORKER=false) and two workers (`python app.py worker`), each process with its
own instance folder as if on its own machine, sharing only DATABASE_URL, REDIS_URL and the
storage folder (TRANSFERLAB_STORAGE_DIR, an NFS mount in a real deployment).

* Two projects train at once through the HTTP API; one worker is killed (SIGKILL) in the
  middle of its job; the other worker takes the job over (attempt 2) and both projects end
  with correct results: nothing is lost.
* Features computed by one worker are reused by another (shared storage).
* SIGTERM stops a worker gracefully: an idle one at once; a busy one lets its job finish
  within the grace period, or queues it again for another worker.

Every HTTP call goes through `api()`, the one place to add authentication.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from helpers import REPO, WorkerProcess, api_token, logged_in, make_zip

from tests.servers import PostgresServer, RedisServer, free_port

pytestmark = [pytest.mark.servers, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

BACKBONE = "efficientnet_lite0"  # real offline weights: predictions must be right
IMPATIENT = {"TRANSFERLAB_WORKER_SHUTDOWN_SECONDS": "0.05"}  # a worker with a short grace
HTTP = requests.Session()
HTTP.trust_env = False  # loopback only: never through a proxy from the environment


class WebProcess:
    """`python app.py` serving on a free loopback port, without a worker of its own."""

    def __init__(self, instance_path: Path, env: dict):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        instance_path.mkdir(parents=True, exist_ok=True)
        self.log_path = instance_path / "web.log"
        self.env = {**os.environ, **env, "TRANSFERLAB_INSTANCE_PATH": str(instance_path),
                    "TRANSFERLAB_PORT": str(self.port), "TRANSFERLAB_WORKER": "false",
                    "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        self.proc = None

    def start(self) -> "WebProcess":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=REPO,
                                     env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 60.0) -> "WebProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"web app exited:\n{self.log()}")
            try:
                if HTTP.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"web app not ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """PostgreSQL, Redis, a shared storage folder, the web app; workers are started by the
    tests with `cluster["start_worker"](name, **env)`."""
    root = tmp_path_factory.mktemp("scaleout")
    postgres, redis = PostgresServer().start(), RedisServer().start()
    workers: list[WorkerProcess] = []
    web = None
    try:
        shared = {"DATABASE_URL": postgres.create_database("transferlab"),
                  "REDIS_URL": redis.url, "TRANSFERLAB_STORAGE_DIR": str(root / "shared")}
        web = WebProcess(root / "web-machine", shared).start().wait_ready()  # schema made
        # An account and its API token, made on the shared database; every api() call sends it.
        from web import create_app

        accounts = create_app({"INSTANCE_PATH": str(root / "accounts"), "TESTING": True,
                               "SQLALCHEMY_DATABASE_URI": shared["DATABASE_URL"],
                               "REDIS_URL": shared["REDIS_URL"],
                               "STORAGE_DIR": shared["TRANSFERLAB_STORAGE_DIR"]})
        HTTP.headers["Authorization"] = f"Bearer {api_token(accounts)}"
        with accounts.app_context():
            from web.db import db

            db.engine.dispose()

        def start_worker(name: str, **env) -> WorkerProcess:
            worker = WorkerProcess(root / name, **shared, **env).start()
            workers.append(worker)
            return worker

        yield {"web": web, "start_worker": start_worker, "root": root, "shared": shared}
    finally:
        for worker in workers:
            worker.stop(signal.SIGKILL)
        if web is not None:
            web.stop()
        redis.stop()
        postgres.stop()


def api(cluster, method: str, path: str, expect: int | tuple = 200, **kwargs):
    """One HTTP call to the web app; returns the decoded JSON body (checks the status)."""
    r = HTTP.request(method, cluster["web"].url + "/api/v1" + path, timeout=120, **kwargs)
    codes = expect if isinstance(expect, tuple) else (expect,)
    assert r.status_code in codes, (method, path, r.status_code, r.text[:500])
    return r.json()


def new_project(cluster, name: str, web_photos, labels, indices) -> int:
    pid = api(cluster, "POST", "/projects", 201, json={"name": name, "backbones": [BACKBONE]})["id"]
    members = {f"{lab}/{lab}_{i}.jpg": web_photos[lab][i] for lab in labels for i in indices}
    body = api(cluster, "POST", f"/projects/{pid}/images",
               files={"file": ("data.zip", io.BytesIO(make_zip(members)), "application/zip")})
    assert body["accepted"] == len(members), body
    return pid


def wait_for(cluster, job_id: int, until, what: str, workers=(), timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = api(cluster, "GET", f"/jobs/{job_id}")
        if until(job):
            return job
        time.sleep(0.1)
    logs = "\n".join(w.log()[-2500:] for w in workers)
    pytest.fail(f"job {job_id}: {what} not reached in {timeout} s: {job}\n{logs}")


def finished(job) -> bool:
    return job["state"] in ("succeeded", "failed", "cancelled")


def check_prediction(cluster, pid: int, web_photos, label: str, index: int) -> None:
    body = api(cluster, "POST", f"/projects/{pid}/predict",
               files={"file": ("held-out.jpg", io.BytesIO(web_photos[label][index]), "image/jpeg")})
    assert body["ensemble"]["label"] == label, body


def test_two_workers_share_the_work_and_a_killed_workers_job_is_retried(cluster, web_photos):
    workers = [cluster["start_worker"](f"worker-machine-{i}") for i in (1, 2)]
    cluster["web"].wait_ready()
    for worker in workers:
        worker.wait_ready()
    status = api(cluster, "GET", "/status")
    assert status["queue"] == "redis" and len(status["workers"]) == 2, status

    projects = {
        "a": new_project(cluster, "cats coffee rockets", web_photos, ("cat", "coffee", "rocket"),
                         range(0, 6)),
        "b": new_project(cluster, "astronauts coffee", web_photos, ("astronaut", "coffee"),
                         range(0, 6)),
    }
    jobs = {k: api(cluster, "POST", f"/projects/{pid}/train", 202)["job_id"]
            for k, pid in projects.items()}
    running = {k: wait_for(cluster, j, lambda job: job["state"] == "running" and job["worker"],
                           "running", workers) for k, j in jobs.items()}
    assert running["a"]["worker"] != running["b"]["worker"], "both jobs on one worker"
    # Kill the worker running project a's job, mid-job.
    pids = {w.proc.pid: w for w in workers}
    victim = pids[int(running["a"]["worker"].rpartition(":")[2])]
    survivor = next(w for w in workers if w is not victim)
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()

    done = {k: wait_for(cluster, j, finished, "finished", [survivor]) for k, j in jobs.items()}
    for k in ("a", "b"):
        assert done[k]["state"] == "succeeded", (done[k], survivor.log()[-3000:])
        assert done[k]["iteration"] == 1 and done[k]["progress"] == 1.0
        assert done[k]["worker"] == f"{running[k]['worker'].rpartition(':')[0]}:{survivor.proc.pid}"
    assert done["a"]["attempts"] == 2 and done["b"]["attempts"] == 1
    assert f"queued again [{jobs['a']}]" in survivor.log()
    # correct results, served by the web process from the shared storage
    for k, labels in (("a", ["cat", "coffee", "rocket"]), ("b", ["astronaut", "coffee"])):
        its = api(cluster, "GET", f"/projects/{projects[k]}/iterations")
        assert [it["number"] for it in its] == [1], its
        results = api(cluster, "GET", f"/projects/{projects[k]}/results")
        assert results["classes"] == labels and results["n_train"] == 6 * len(labels)
    check_prediction(cluster, projects["a"], web_photos, "rocket", 11)
    check_prediction(cluster, projects["b"], web_photos, "astronaut", 11)
    status = api(cluster, "GET", "/status")
    assert (status["queued"], status["running"], status["pending"]) == (0, 0, 0), status

    # Shared storage: a new worker (another machine) retrains project b, whose features the
    # survivor computed: nothing is computed again. The survivor stops first (SIGTERM, idle:
    # it exits at once) so that the new worker is the one that runs the job.
    survivor.proc.send_signal(signal.SIGTERM)
    assert survivor.proc.wait(30) == 0
    assert "stopped" in survivor.log()
    third = cluster["start_worker"]("worker-machine-3", **IMPATIENT).wait_ready()
    job_id = api(cluster, "POST", f"/projects/{projects['b']}/train", 202,
                 json={"force": True})["job_id"]  # unchanged since its first training
    job = wait_for(cluster, job_id, finished, "finished", [third])
    assert job["state"] == "succeeded" and job["iteration"] == 2, job
    assert job["worker"].endswith(f":{third.proc.pid}")
    assert job["features_computed"] == 0 < job["features_total"], job
    cluster["impatient"] = third


# The next tests reuse the workers left by the one before when run in order (fewer TensorFlow
# start-ups), and start their own when run alone.


def test_sigterm_past_the_grace_period_queues_the_job_again(cluster, web_photos):
    impatient = cluster.pop("impatient", None) or cluster["start_worker"](
        "worker-machine-3", **IMPATIENT).wait_ready()
    pid = new_project(cluster, "graceful requeue", web_photos, ("coffee", "astronaut"),
                      range(6, 11))
    job_id = api(cluster, "POST", f"/projects/{pid}/train", 202)["job_id"]
    wait_for(cluster, job_id, lambda job: job["state"] == "running" and job["progress"] > 0,
             "progress", [impatient])
    impatient.proc.send_signal(signal.SIGTERM)
    assert impatient.proc.wait(60) == 0, impatient.log()[-3000:]
    job = api(cluster, "GET", f"/jobs/{job_id}")  # a 10-image job lasts well over 0.05 s
    assert job["state"] == "queued" and "queued again" in job["stage"], job
    assert job["attempts"] == 0 and api(cluster, "GET", "/status")["pending"] == 1
    other = cluster["start_worker"]("worker-machine-4").wait_ready()
    job = wait_for(cluster, job_id, finished, "finished", [other])
    assert job["state"] == "succeeded" and job["attempts"] == 1, job
    check_prediction(cluster, pid, web_photos, "astronaut", 11)
    cluster["patient"] = other


def test_sigterm_lets_the_running_job_finish_within_the_grace_period(cluster, web_photos):
    worker = cluster.pop("patient", None) or cluster["start_worker"](
        "worker-machine-4").wait_ready()
    pid = new_project(cluster, "graceful finish", web_photos, ("cat", "rocket"), range(6, 9))
    job_id = api(cluster, "POST", f"/projects/{pid}/train", 202)["job_id"]
    wait_for(cluster, job_id, lambda job: job["state"] == "running", "running", [worker])
    worker.proc.send_signal(signal.SIGTERM)  # grace: WORKER_SHUTDOWN_SECONDS, 30 s by default
    assert worker.proc.wait(120) == 0, worker.log()[-3000:]
    job = api(cluster, "GET", f"/jobs/{job_id}")
    assert job["state"] == "succeeded" and job["attempts"] == 1, job


def test_a_queued_job_whose_queue_message_was_lost_is_queued_again(tmp_path, web_photos):
    """A worker killed between taking a message and starting its job leaves a queued job
    with no message (so does a web process killed between saving a job and queueing it):
    the workers' periodic check queues a message again, once."""
    from datetime import timedelta

    from web import create_app
    from web.db import Job, db
    from web.jobs import LOST_MESSAGE_SECONDS

    app = create_app({"INSTANCE_PATH": str(tmp_path), "TESTING": True})
    client = logged_in(app.test_client())
    pid = client.post("/api/v1/projects", json={"name": "p", "backbones": [BACKBONE]}).json["id"]
    members = {f"{lab}/{i}.jpg": web_photos[lab][i] for lab in ("cat", "rocket") for i in (0, 1)}
    client.post(f"/api/v1/projects/{pid}/images",
                data={"file": (io.BytesIO(make_zip(members)), "d.zip")})
    job_id = client.post(f"/api/v1/projects/{pid}/train").json["job_id"]
    jobs = app.extensions["transferlab.jobs"]
    with app.app_context():
        assert jobs.recover_stale_jobs() == {"requeued": [], "failed": []}  # young: left alone
        job = db.session.get(Job, job_id)
        job.updated_at -= timedelta(seconds=LOST_MESSAGE_SECONDS + 1)
        db.session.commit()
        assert jobs.recover_stale_jobs() == {"requeued": [], "failed": []}  # message waiting
        jobs.huey.flush()  # the message is lost
        job.updated_at -= timedelta(seconds=1)
        db.session.commit()
        assert jobs.recover_stale_jobs() == {"requeued": [job_id], "failed": []}
        assert [t.args for t in jobs.huey.pending()] == [(job_id,)]
        assert jobs.recover_stale_jobs() == {"requeued": [], "failed": []}  # once
    assert client.get(f"/api/v1/jobs/{job_id}").json["state"] == "queued"

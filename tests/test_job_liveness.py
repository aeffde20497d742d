"""A job must never stay "running" forever (issue #9): its worker is judged dead by a stale
heartbeat even when its pid still exists (a zombie, or an unrelated process that reused the
pid), and a job that reports no progress for `JOB_STALL_SECONDS` is taken back even from a
worker whose heartbeat is fresh. A healthy job is left alone.

Real processes stand in for the workers: a child that exited and is not reaped (a zombie),
a `sleep` (a live process that is no worker), and this test process (a live worker).
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest

from web import create_app
from web.db import Job, Project, WorkerBeat, db, utcnow
from web.jobs import BEAT_TIMEOUT, pid_alive

pytestmark = pytest.mark.unit

STALL = 60  # JOB_STALL_SECONDS in these tests


@pytest.fixture
def app(tmp_path):
    return create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "TESTING": True,
                       "JOB_STALL_SECONDS": STALL, "JOB_MAX_ATTEMPTS": 2})


@pytest.fixture
def zombie():
    """The pid of a child that has exited and that nobody has reaped yet."""
    proc = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while _state(proc.pid) != "Z":  # Popen.poll() would reap it: read /proc instead
        assert time.monotonic() < deadline, "the child never became a zombie"
        time.sleep(0.01)
    yield proc.pid
    proc.wait()


@pytest.fixture
def sleeper():
    """The pid of a live process that is no worker (as if it had reused a dead worker's pid)."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def _running_job(pid_of_worker: int, *, beat_age: float | None, progress_age: float = 0.0,
                 attempts: int = 1) -> int:
    """A project with a job `running` on worker `<this host>:<pid_of_worker>`, last progress
    `progress_age` seconds ago, heartbeat `beat_age` seconds ago (None: no heartbeat row)."""
    now = utcnow()
    worker = f"{socket.gethostname()}:{pid_of_worker}"
    project = Project(name=f"p{pid_of_worker}-{time.time_ns()}", backbones=["efficientnet_lite0"])
    db.session.add(project)
    db.session.flush()
    job = Job(project_id=project.id, state="running", active_project=project.id,
              backbones=["efficientnet_lite0"], worker=worker, attempts=attempts,
              stage="extracting features", progress=0.3, started_at=now,
              updated_at=now - timedelta(seconds=progress_age))
    db.session.add(job)
    if beat_age is not None:
        seen = now - timedelta(seconds=beat_age)
        beat = db.session.get(WorkerBeat, worker) or WorkerBeat(id=worker, started_at=seen)
        beat.seen_at = seen
        db.session.add(beat)
    db.session.commit()
    return job.id


def _recover(app) -> dict:
    return app.extensions["transferlab.jobs"].recover_stale_jobs()


def _job(job_id: int) -> Job:
    db.session.expire_all()
    return db.session.get(Job, job_id)


STALE_BEAT = BEAT_TIMEOUT + 5


def test_a_zombie_worker_pid_counts_as_dead(app, zombie):
    assert not pid_alive(zombie)  # kill(pid, 0) alone succeeds on a zombie
    with app.app_context():
        no_beat = _running_job(zombie, beat_age=None)
        assert _recover(app) == {"requeued": [no_beat], "failed": []}
        job = _job(no_beat)
        assert job.state == "queued" and job.worker is None and job.attempts == 1
        assert job.stage == f"queued again: its worker {socket.gethostname()}:{zombie} stopped"
        assert job.active_project == job.project_id  # still the project's one active job


def test_a_stale_heartbeat_wins_over_a_zombie_or_a_reused_pid(app, zombie, sleeper):
    assert pid_alive(sleeper)
    with app.app_context():
        on_zombie = _running_job(zombie, beat_age=STALE_BEAT)
        on_sleep = _running_job(sleeper, beat_age=STALE_BEAT)
        found = _recover(app)
        assert sorted(found["requeued"]) == sorted([on_zombie, on_sleep]) and not found["failed"]
        job = _job(on_sleep)
        assert job.state == "queued" and "no heartbeat" in job.stage, job.stage
        pending = sorted(t.args for t in app.extensions["transferlab.jobs"].huey.pending())
        assert pending == sorted([(on_zombie,), (on_sleep,)])  # a worker will run them


def test_a_live_pid_with_a_fresh_heartbeat_keeps_its_job(app, sleeper):
    """The control for the test above: the same `sleep` pid, heartbeat fresh: untouched."""
    with app.app_context():
        job_id = _running_job(sleeper, beat_age=1.0, progress_age=STALL - 10)
        assert _recover(app) == {"requeued": [], "failed": []}
        job = _job(job_id)
        assert job.state == "running" and job.worker.endswith(f":{sleeper}")


def test_a_job_without_progress_past_the_bound_is_taken_back_despite_a_fresh_heartbeat(app):
    me = os.getpid()  # a live worker, heartbeat fresh, whose training thread hangs
    with app.app_context():
        stalled = _running_job(me, beat_age=1.0, progress_age=STALL + 5)
        healthy = _running_job(me, beat_age=1.0, progress_age=STALL - 10)
        assert _recover(app) == {"requeued": [stalled], "failed": []}
        job = _job(stalled)
        assert job.state == "queued" and job.attempts == 1
        assert job.stage == f"queued again: it reported no progress for {STALL} s"
        assert _job(healthy).state == "running"
        assert _recover(app) == {"requeued": [], "failed": []}  # once


def test_a_stuck_job_out_of_attempts_is_failed_with_a_clear_error(app, sleeper):
    with app.app_context():
        stalled = _running_job(os.getpid(), beat_age=1.0, progress_age=STALL + 5, attempts=2)
        dead = _running_job(sleeper, beat_age=STALE_BEAT, attempts=2)
        found = _recover(app)
        assert found["requeued"] == [] and sorted(found["failed"]) == sorted([stalled, dead])
        job = _job(stalled)
        assert job.state == "failed" and job.active_project is None  # trainable again
        assert job.error == (f"the worker running this job stopped or hung "
                             f"({socket.gethostname()}:{os.getpid()}): it reported no progress "
                             f"for {STALL} s; 2 time(s) out of the 2 allowed; train again")
        assert f"no heartbeat for {BEAT_TIMEOUT:g} s" in _job(dead).error

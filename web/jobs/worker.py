"""The worker process: the Huey consumer, its heartbeat, and the recovery of stuck jobs.

`run_worker(app)` runs the consumer until SIGTERM or SIGINT (see there). Beside it, threads
of its own: a heartbeat (a `WorkerBeat` row every `BEAT_SECONDS`, then `recover_stale_jobs`),
the housekeeping once at start, and, when started by `python app.py`, a watch on that parent.

Liveness: a running job is taken from its worker (`_why_stuck`) when the worker is gone (no
heartbeat for `BEAT_TIMEOUT`, or, on this machine, a pid that is not running: `pid_alive`)
or when the job made no progress for `JOB_STALL_SECONDS`. `recover_stale_jobs` queues such
jobs again, up to `JOB_MAX_ATTEMPTS` starts, then fails them; it also queues again a message
lost between the database and the queue. Every live worker runs it; the conditional updates
of `web.jobs.state` make one of them win. `live_workers` tells the web which workers are up.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from web.db import WorkerBeat, db, utcnow
from web.jobs import state
from web.jobs.housekeeping import run_housekeeping
from web.jobs.state import worker_id

if TYPE_CHECKING:
    from web.jobs.queue import Jobs

log = logging.getLogger("transferlab.worker")

PARENT_PID_ENV = "TRANSFERLAB_PARENT_PID"
BEAT_SECONDS = 5.0  # how often a worker says it is alive
BEAT_TIMEOUT = 30.0  # a worker silent this long is considered gone
LOST_MESSAGE_SECONDS = 60.0  # a job queued this long without a queue message is queued again


# -- liveness ------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this machine is running: it exists and is not a zombie
    (exited but not yet reaped by its parent, which `kill(pid, 0)` alone takes for alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """Whether `pid` is a zombie, from /proc (False where there is no /proc to ask)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rpartition(")")[2].split()  # the name in (...) may hold spaces
    return bool(fields) and fields[0] in ("Z", "X")


def live_workers(within: float = BEAT_TIMEOUT) -> list[WorkerBeat]:
    """Workers that reported in the last `within` seconds."""
    cutoff = utcnow() - timedelta(seconds=within)
    return db.session.scalars(sa.select(WorkerBeat).where(WorkerBeat.seen_at >= cutoff)
                              .order_by(WorkerBeat.started_at)).all()


@dataclass(frozen=True)
class _Bounds:
    """How long a running job may go without progress (`stall`), and a worker without a
    heartbeat (`beat`; `stale` for the job of a worker that never wrote one)."""

    stale: timedelta
    stall: timedelta
    beat: timedelta


def _why_stuck(worker: str | None, updated_at, seen_at, now, bounds: _Bounds, *,
               at_start: bool = False) -> str | None:
    """Why the running job of `worker` (progress last reported at `updated_at`, heartbeat
    last seen at `seen_at`, None if it has none) must be taken from it, or None while it is
    healthy. In order: no worker; no progress for `bounds.stall` (a hung thread in a live
    worker); a heartbeat older than `bounds.beat` (this wins over a pid that exists: a
    zombie, or another process that reused the pid); a pid of this machine that is not
    running (or is this very process at its start: it runs nothing yet); for a worker with
    no heartbeat on another machine, no progress for `bounds.stale`."""
    if not worker:
        return "it has no worker"
    if updated_at < now - bounds.stall:
        return f"it reported no progress for {bounds.stall.total_seconds():g} s"
    if seen_at is not None and seen_at < now - bounds.beat:
        return f"its worker {worker} stopped (no heartbeat for {bounds.beat.total_seconds():g} s)"
    owner, _, pid = worker.rpartition(":")
    if owner == socket.gethostname() and pid.isdigit():
        if (int(pid) == os.getpid() and at_start) or not pid_alive(int(pid)):
            return f"its worker {worker} stopped"
        return None
    if seen_at is None and updated_at < now - bounds.stale:
        return f"its worker {worker} stopped (no heartbeat, no progress)"
    return None


# -- recovery ------------------------------------------------------------------------------


def recover_stale_jobs(jobs: Jobs, *, at_start: bool = False) -> dict[str, list[int]]:
    """Queue again (or fail, after `JOB_MAX_ATTEMPTS` starts) the running jobs that are
    stuck; returns {"requeued": [ids], "failed": [ids]}.

    Also queues a message again for queued jobs whose message was lost.
    A job is stuck when `_why_stuck` gives a reason: its worker is gone, or it made no
    progress for `JOB_STALL_SECONDS` whatever its worker seems to be.
    """
    config = jobs.app.config
    max_attempts = int(config["JOB_MAX_ATTEMPTS"])
    bounds = _Bounds(stale=timedelta(seconds=float(config["STALE_JOB_SECONDS"])),
                     stall=timedelta(seconds=float(config["JOB_STALL_SECONDS"])),
                     beat=timedelta(seconds=BEAT_TIMEOUT))
    now = utcnow()
    beats = {b.id: b.seen_at for b in db.session.scalars(sa.select(WorkerBeat))}
    out: dict[str, list[int]] = {"requeued": [], "failed": []}
    running = state.running_jobs()
    db.session.commit()
    out["requeued"] += _requeue_lost_messages(jobs, now)
    for job_id, worker, attempts, updated_at in running:
        why = _why_stuck(worker, updated_at, beats.get(worker), now, bounds,
                         at_start=at_start)
        if why is None:
            continue
        if attempts < max_attempts and jobs.requeue(job_id, worker, counted=True, why=why):
            out["requeued"].append(job_id)
        elif attempts >= max_attempts and state.finish(
                job_id, "failed", from_states=("running",), owner=worker, error=(
                    f"the worker running this job stopped or hung ({worker}): {why}; "
                    f"{attempts} time(s) out of the {max_attempts} allowed; train again")):
            out["failed"].append(job_id)
    return out


def _requeue_lost_messages(jobs: Jobs, now) -> list[int]:
    """Queued jobs whose message is not on the queue (a worker died between taking the
    message and starting the job, or the web process between saving the job and queueing
    it): queue a message again. A duplicate message is harmless: only one worker can
    claim a queued job."""
    old = state.queued_before(now - timedelta(seconds=LOST_MESSAGE_SECONDS))
    db.session.commit()
    if not old:
        return []
    waiting = {task.id for task in jobs.huey.pending()}
    found = []
    for job_id, queue_id, updated_at in old:
        if queue_id not in waiting and state.mark_requeued(job_id, updated_at, now):
            jobs.enqueue(job_id)
            found.append(job_id)
    return found


def _recover(app, jobs: Jobs, at_start: bool = False) -> None:
    with app.app_context():
        try:
            found = jobs.recover_stale_jobs(at_start=at_start)
            if found["requeued"] or found["failed"]:
                log.warning("jobs of stopped workers: queued again %s, failed %s",
                            found["requeued"], found["failed"])
        except Exception as exc:
            log.warning("could not check for jobs of stopped workers: %s", exc)
        finally:
            db.session.remove()


# -- the worker's threads ------------------------------------------------------------------


def _watch_parent(parent_pid: int) -> None:
    """Stop this worker when the `python app.py` process that started it is gone."""
    while True:
        time.sleep(2)
        if os.getppid() != parent_pid:
            log.warning("parent process %s is gone; stopping the worker", parent_pid)
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _beat(app) -> None:
    """Every BEAT_SECONDS: record this worker's heartbeat, and queue again the jobs of
    workers that died (own connection, own thread)."""
    jobs: Jobs = app.extensions["transferlab.jobs"]
    me, started = worker_id(), utcnow()
    while True:
        try:
            _record_beat(app, me, started)
        except Exception as exc:  # a busy database must not kill the worker
            log.warning("heartbeat failed: %s", exc)
        _recover(app, jobs)
        time.sleep(BEAT_SECONDS)


def _record_beat(app, me: str, started) -> None:
    with app.app_context(), db.engine.begin() as conn:
        now = utcnow()
        if not conn.execute(sa.update(WorkerBeat).where(WorkerBeat.id == me)
                            .values(seen_at=now)).rowcount:
            conn.execute(sa.insert(WorkerBeat).values(id=me, started_at=started,
                                                      seen_at=now))
        conn.execute(sa.delete(WorkerBeat).where(  # forget long-gone workers
            WorkerBeat.seen_at < now - timedelta(days=1)))


def _housekeep_once(app) -> None:
    try:
        run_housekeeping(app)
    except Exception as exc:  # a busy database or an odd file must not kill the worker
        log.warning("housekeeping failed: %s", exc)


def _start_threads(app) -> None:
    threading.Thread(target=_housekeep_once, args=(app,), daemon=True,
                     name="housekeeping").start()  # what a crash left; jobs need not wait
    parent = os.environ.get(PARENT_PID_ENV)
    if parent and parent.isdigit():
        threading.Thread(target=_watch_parent, args=(int(parent),), daemon=True,
                         name="parent-watch").start()
    threading.Thread(target=_beat, args=(app,), daemon=True, name="heartbeat").start()


# -- the process ---------------------------------------------------------------------------


def run_worker(app) -> None:
    """Run the Huey consumer for `app` in this process until SIGTERM (graceful: the running
    job may finish within WORKER_SHUTDOWN_SECONDS, else it is queued again) or SIGINT (the
    running job is queued again at once)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s worker %(levelname)s %(name)s: %(message)s")
    jobs: Jobs = app.extensions["transferlab.jobs"]
    _recover(app, jobs, at_start=True)
    _start_threads(app)
    if app.config.get("WORKER_PRELOAD", True):
        import models.backbones  # noqa: F401  (TensorFlow loads now, not in the first job)
    consumer = jobs.huey.create_consumer(
        workers=max(1, int(app.config["WORKER_THREADS"])), worker_type="thread",
        initial_delay=0.05, backoff=1.15, max_delay=float(app.config["WORKER_POLL_SECONDS"]),
        periodic=True, check_worker_health=True, graceful_signal="TERM",
        shutdown_timeout=float(app.config["WORKER_SHUTDOWN_SECONDS"]))
    log.info("worker %s ready (queue: %s)", worker_id(),
             "redis" if app.config.get("REDIS_URL") else app.config["HUEY_DB"])
    consumer.run()  # returns once stopped; interrupted jobs are queued again by then
    _forget_beat(app)
    if jobs.in_flight:
        # A training thread outlived the grace period (its job is queued again): end the
        # process now rather than wait for TensorFlow inside a daemon thread.
        log.info("worker %s stopped (job(s) %s queued again)", worker_id(),
                 sorted(jobs.in_flight))
        logging.shutdown()
        os._exit(0)
    log.info("worker %s stopped", worker_id())


def _forget_beat(app) -> None:
    """Remove this worker's heartbeat: it stopped cleanly, nobody need wait for it."""
    with app.app_context():
        db.session.execute(sa.delete(WorkerBeat).where(WorkerBeat.id == worker_id()))
        db.session.commit()
        db.session.remove()

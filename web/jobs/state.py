"""The `jobs` table: every change of a job's state, and the reads that decide them.

Owns the transitions `queued` -> `running` -> `succeeded` | `failed` | `cancelled` (and
`running` -> `queued` again). Each one is a single conditional UPDATE naming the state it
leaves (and, for a running job, the worker that owns it), so of several processes racing for
the same job exactly one wins; each returns whether it won. Functions here need an app
context; they commit their own change, except `mark_succeeded` (see there). Nothing here
talks to the queue: that is `web.jobs.queue`.
"""
from __future__ import annotations

import os
import socket
from datetime import datetime

import sqlalchemy as sa

from web.db import Job, Project, db, utcnow


class JobCancelled(Exception):
    """Raised inside the training run when the job was cancelled (or deleted)."""


class JobConflict(Exception):
    """A job for this project is already queued or running."""

    def __init__(self, job: Job | None):
        super().__init__("a training job for this project is already queued or running")
        self.job = job


def worker_id() -> str:
    """This process as the owner of a running job: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def active_job(project_id: int) -> Job | None:
    return db.session.scalar(sa.select(Job).where(Job.active_project == project_id))


def create(project: Project, n_train: int, n_test: int) -> Job:
    """A new `queued` job for `project`; raises JobConflict if one is queued or running
    (one active job per project is a unique column, so two clicks cannot make two)."""
    job = Job(project_id=project.id, state="queued", active_project=project.id,
              backbones=list(project.backbones), progress=0.0, stage="queued",
              n_train=n_train, n_test=n_test)
    db.session.add(job)
    try:
        db.session.commit()
    except sa.exc.IntegrityError:
        db.session.rollback()
        raise JobConflict(active_job(project.id)) from None
    return job


def create_batch(project: Project, iteration, total: int) -> Job:
    """A new `queued` batch prediction job (kind "batch") of `project` with `iteration`. It
    is not the project's active job (`active_project` stays NULL): batches never block a
    training, nor each other."""
    job = Job(project_id=project.id, kind="batch", state="queued", active_project=None,
              backbones=list(iteration.backbones), iteration_id=iteration.id, progress=0.0,
              stage="queued", done=0, total=total)
    db.session.add(job)
    db.session.commit()
    return job


def run_claimed(job_id: int, work, *, describe: str, error_message=None) -> str:
    """Claim queued job `job_id` for this process and run `work(job, me)` (which returns the
    final state, or raises JobCancelled); a cancellation or any exception becomes the job's
    final state ("cancelled", "failed" with `error_message(exc)`, by default the exception's
    type and message). Returns the final state, or "skipped" when the job was not queued.
    What both job kinds share (`run_training`, `run_batch`); never raises for a failed job."""
    import logging
    import traceback

    log = logging.getLogger("transferlab.worker")
    me = worker_id()
    if not claim(job_id, me):
        log.info("job %s is not queued any more (cancelled?): skipped", job_id)
        return "skipped"
    job = db.session.get(Job, job_id)
    log.info("job %s: %s for project %s", job_id, describe, job.project_id)
    try:
        return work(job, me)
    except JobCancelled:
        db.session.rollback()
        finish(job_id, "cancelled", owner=me)
        log.info("job %s cancelled", job_id)
        return "cancelled"
    except Exception as exc:
        db.session.rollback()
        message = error_message(exc) if error_message else f"{type(exc).__name__}: {exc}"
        log.error("job %s failed: %s\n%s", job_id, message, traceback.format_exc())
        finish(job_id, "failed", error=message, owner=me)
        return "failed"


def set_queue_id(job_id: int, queue_id: str) -> None:
    """Remember the id of the job's queue message (to revoke it, to find it lost)."""
    db.session.execute(sa.update(Job).where(Job.id == job_id).values(queue_id=queue_id))
    db.session.commit()


def claim(job_id: int, worker: str) -> bool:
    """`queued` -> `running` on `worker`, counted as an attempt; False if the job is not
    queued any more (cancelled, or claimed by another worker)."""
    now = utcnow()
    claimed = db.session.execute(
        sa.update(Job).where(Job.id == job_id, Job.state == "queued").values(
            state="running", started_at=now, updated_at=now, worker=worker,
            stage="loading images", progress=0.0, attempts=Job.attempts + 1))
    db.session.commit()
    return bool(claimed.rowcount)


def report_progress(job_id: int, worker: str, **values) -> None:
    """Record the progress of the running job (on a connection of its own: the training
    thread holds no session transaction); raises JobCancelled if the job is no longer ours
    to run: cancel requested, deleted, or queued again because we were thought dead."""
    with db.engine.begin() as conn:
        row = conn.execute(sa.select(Job.cancel_requested, Job.state, Job.worker)
                           .where(Job.id == job_id)).first()
        if (row is None or row.cancel_requested or row.state != "running"
                or row.worker != worker):
            raise JobCancelled()
        conn.execute(sa.update(Job).where(Job.id == job_id).values(
            updated_at=utcnow(), **values))


def mark_succeeded(job_id: int, worker: str, **values) -> bool:
    """`running` (on `worker`, no cancel requested) -> `succeeded`, with `values`. Does not
    commit: the caller records the iteration in the same transaction, and rolls both back
    when this returns False (the job was cancelled or taken from us meanwhile)."""
    now = utcnow()
    finished = db.session.execute(
        sa.update(Job).where(Job.id == job_id, Job.state == "running", Job.worker == worker,
                             Job.cancel_requested.is_(False)).values(
            state="succeeded", active_project=None, finished_at=now, updated_at=now,
            stage="done", progress=1.0, **values))
    return bool(finished.rowcount)


def finish(job_id: int, state: str, *, error: str | None = None,
           from_states=("running",), owner: str | None = None, **values) -> bool:
    """Move the job to a final state if it is in `from_states` (and run by `owner`)."""
    now = utcnow()
    where = [Job.id == job_id, Job.state.in_(from_states)]
    if owner is not None:
        where.append(Job.worker == owner)
    result = db.session.execute(
        sa.update(Job).where(*where).values(
            state=state, active_project=None, error=error, finished_at=now, updated_at=now,
            stage=values.pop("stage", state), **values))
    db.session.commit()
    return bool(result.rowcount)


def cancel_queued(job_id: int) -> bool:
    """`queued` -> `cancelled`; False if the job is not queued."""
    now = utcnow()
    done = db.session.execute(
        sa.update(Job).where(Job.id == job_id, Job.state == "queued").values(
            state="cancelled", active_project=None, cancel_requested=True, stage="cancelled",
            finished_at=now, updated_at=now))
    db.session.commit()
    return bool(done.rowcount)


def request_cancel(job_id: int) -> bool:
    """Ask the worker of a running job to stop it (its progress report will raise
    JobCancelled); False if the job is not running."""
    requested = db.session.execute(
        sa.update(Job).where(Job.id == job_id, Job.state == "running").values(
            cancel_requested=True, stage="cancelling"))
    db.session.commit()
    return bool(requested.rowcount)


def back_to_queue(job_id: int, worker: str | None, *, counted: bool, why: str) -> bool:
    """`running` on `worker` (None: on no worker) -> `queued`, progress reset; an attempt
    `counted` stays counted, else it is given back. The caller puts a message on the queue."""
    values = {"state": "queued", "worker": None, "progress": 0.0, "done": None,
              "total": None, "stage": f"queued again: {why}", "started_at": None,
              "updated_at": utcnow()}
    if not counted:
        values["attempts"] = Job.attempts - 1
    ran_by = Job.worker == worker if worker else Job.worker.is_(None)
    moved = db.session.execute(sa.update(Job).where(
        Job.id == job_id, Job.state == "running", ran_by).values(**values))
    db.session.commit()
    return bool(moved.rowcount)


def mark_requeued(job_id: int, updated_at: datetime, now: datetime) -> bool:
    """Note that a queued job's lost message is being queued again, if the job is still as
    it was read (`updated_at`): of several processes noticing it, one wins."""
    touched = db.session.execute(sa.update(Job).where(
        Job.id == job_id, Job.state == "queued", Job.updated_at == updated_at).values(
        updated_at=now, stage="queued again: its queue message was lost"))
    db.session.commit()
    return bool(touched.rowcount)


def running_jobs() -> list:
    """(id, worker, attempts, updated_at) of every running job."""
    return db.session.execute(sa.select(Job.id, Job.worker, Job.attempts, Job.updated_at)
                              .where(Job.state == "running")).all()


def queued_before(cutoff: datetime) -> list:
    """(id, queue_id, updated_at) of the queued jobs last changed before `cutoff`."""
    return db.session.execute(sa.select(Job.id, Job.queue_id, Job.updated_at).where(
        Job.state == "queued", Job.updated_at < cutoff)).all()

"""The queue: the Huey instance, its tasks, and putting jobs on it and taking them off.

`Jobs` is the Flask extension (`app.extensions["transferlab.jobs"]`). The web process calls
`start_training` and `cancel`; the worker process runs the tasks registered here (a training
run per message, the housekeeping every 30 minutes) and `requeue`s a job taken from a dead
or stopping worker. A message carries only the job id: the job's state lives in the
database (`web.jobs.state`), so a lost or duplicate message is harmless. Methods need an
app context, except the tasks, which make their own.
"""
from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa

from web.db import Job, Project, ProjectImage, db
from web.jobs import state
from web.jobs.housekeeping import run_housekeeping
from web.jobs.state import worker_id
from web.jobs.training_run import run_training
from web.jobs.worker import recover_stale_jobs
from web.storage import Storage

log = logging.getLogger("transferlab.worker")

TRAIN_TASK = "transferlab.train"
BATCH_TASK = "transferlab.batch"  # a batch prediction (web.jobs.batch_run)
GC_TASK = "transferlab.gc"


class NotEnoughData(ValueError):
    """Training needs at least two classes with training images."""


class QueueUnavailable(RuntimeError):
    """The job could not be put on the queue (e.g. Redis is down)."""


def make_huey(config):
    """The queue: Redis when `REDIS_URL` is configured, else a SQLite file (no server)."""
    if config.get("REDIS_URL"):
        try:
            import redis  # noqa: F401
        except ImportError:
            raise RuntimeError("REDIS_URL is set but the redis package is missing: "
                               "pip install redis") from None
        from huey import RedisHuey

        return RedisHuey(config["HUEY_NAME"], url=config["REDIS_URL"], results=False)
    from huey import SqliteHuey

    path = Path(config["HUEY_DB"])
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(config["HUEY_NAME"], filename=str(path), results=False)


def class_counts(project_id: int, split: str = "train") -> dict[str, int]:
    rows = db.session.execute(
        sa.select(ProjectImage.label, sa.func.count())
        .where(ProjectImage.project_id == project_id, ProjectImage.split == split)
        .group_by(ProjectImage.label).order_by(ProjectImage.label))
    return {label: count for label, count in rows}


class Jobs:
    """The Flask extension: the Huey instance, its tasks, and the job operations."""

    def __init__(self, app):
        from huey import crontab
        from huey.signals import SIGNAL_INTERRUPTED

        self.app = app
        self.huey = make_huey(app.config)
        self.train_task = self.huey.task(name=TRAIN_TASK)(self._train_task)
        self.batch_task = self.huey.task(name=BATCH_TASK)(self._batch_task)
        self.gc_task = self.huey.periodic_task(crontab(minute="*/30"), name=GC_TASK)(
            self._gc_task)
        self.huey.signal(SIGNAL_INTERRUPTED)(self._on_interrupted)
        self.in_flight: set[int] = set()  # jobs this process is running (worker side)
        app.extensions["transferlab.jobs"] = self

    @property
    def storage(self) -> Storage:
        return self.app.extensions["transferlab.storage"]

    # -- web side ------------------------------------------------------------------------

    def start_training(self, project: Project) -> Job:
        """Queue a training job for `project`; raises NotEnoughData, JobConflict,
        QueueUnavailable."""
        counts = class_counts(project.id)
        if len(counts) < 2:
            have = ", ".join(f"{k} ({v})" for k, v in counts.items()) or "none"
            raise NotEnoughData(
                f"training needs at least 2 classes with training images; this project has "
                f"{len(counts)} ({have})")
        job = state.create(project, n_train=sum(counts.values()),
                           n_test=sum(class_counts(project.id, "test").values()))
        return self._enqueue_new(job)

    def start_batch(self, project: Project, iteration, folder: Path, total: int) -> Job:
        """Queue a batch prediction of `project` with `iteration` on the files stored in the
        temporary `folder` (`web.jobs.batch_run.store_batch`), which is moved to the job's
        batch folder; raises QueueUnavailable."""
        from web.jobs.batch_run import batch_relpath

        job = state.create_batch(project, iteration, total)
        try:
            self.storage.commit_dir(folder, batch_relpath(project.id, job.id))
        except OSError as exc:
            state.finish(job.id, "failed", error=f"could not store the files: {exc}",
                         from_states=("queued",))
            raise
        return self._enqueue_new(job)

    def _enqueue_new(self, job: Job) -> Job:
        try:
            self.enqueue(job.id)
        except Exception as exc:  # the queue is down: do not leave a job that never runs
            log.exception("could not enqueue job %s", job.id)
            state.finish(job.id, "failed", error=f"could not queue the job: {exc}",
                         from_states=("queued",))
            raise QueueUnavailable(f"could not queue the job: {exc}") from exc
        db.session.refresh(job)
        return job

    def enqueue(self, job_id: int) -> None:
        """Put a message for the (queued) job on the queue, as its kind's task, and remember
        its id."""
        kind = db.session.scalar(sa.select(Job.kind).where(Job.id == job_id))
        task = (self.batch_task if kind == "batch" else self.train_task).s(job_id)
        self.huey.enqueue(task)
        state.set_queue_id(job_id, task.id)

    def cancel(self, job: Job) -> str:
        """Cancel `job`: "cancelled" (it was queued: it will never run), "requested" (it is
        running: the worker stops it shortly) or "finished" (too late, nothing changed)."""
        if state.cancel_queued(job.id):
            if job.queue_id:
                try:
                    self.huey.revoke_by_id(job.queue_id, revoke_once=True)
                except Exception:  # the row already says cancelled; the worker checks it
                    log.warning("could not revoke queue message of job %s", job.id)
            db.session.refresh(job)
            return "cancelled"
        requested = state.request_cancel(job.id)
        db.session.refresh(job)
        return "requested" if requested else "finished"

    def requeue(self, job_id: int, worker: str, *, counted: bool, why: str) -> bool:
        """Queue job `job_id` again if it is still `running` on `worker` (so of several
        processes noticing the same dead worker, one wins); returns whether it did."""
        if not state.back_to_queue(job_id, worker, counted=counted, why=why):
            return False
        try:
            self.enqueue(job_id)
        except Exception as exc:
            log.exception("could not queue job %s again", job_id)
            state.finish(job_id, "failed", error=f"{why}, and it could not be queued again: "
                         f"{exc}", from_states=("queued",))
            return False
        return True

    def recover_stale_jobs(self, *, at_start: bool = False) -> dict[str, list[int]]:
        """See `web.jobs.worker.recover_stale_jobs`."""
        return recover_stale_jobs(self, at_start=at_start)

    # -- worker side ---------------------------------------------------------------------

    def _train_task(self, job_id: int) -> None:
        self._run_job(run_training, job_id)

    def _batch_task(self, job_id: int) -> None:
        from web.jobs.batch_run import run_batch

        self._run_job(run_batch, job_id)

    def _run_job(self, run, job_id: int) -> None:
        """`run(app, job_id)` in an app context, counted in `in_flight` while it runs."""
        self.in_flight.add(job_id)
        with self.app.app_context():
            try:
                run(self.app, job_id)
            finally:
                db.session.remove()
                self.in_flight.discard(job_id)

    def _gc_task(self) -> None:
        run_housekeeping(self.app)

    def _on_interrupted(self, signal_name, task, *args) -> None:
        """The worker is stopping while `task` runs (SIGINT, or SIGTERM's grace period is
        over): queue the job again for another worker; this stop is not counted as an
        attempt."""
        if getattr(task, "name", None) not in (TRAIN_TASK, BATCH_TASK) or not task.args:
            return
        with self.app.app_context():
            try:
                if self.requeue(task.args[0], worker_id(), counted=False,
                                why="its worker was stopped"):
                    log.warning("job %s queued again: this worker is stopping", task.args[0])
            finally:
                db.session.remove()

"""Training jobs on a Huey queue: enqueue and cancel from the web, run in a worker process.

Queue: `SqliteHuey` in the instance folder by default (no server to install), `RedisHuey` when
`REDIS_URL` is set (then workers on other machines can share the work: they need the same
database and storage folder). The queue only carries the job id; the job's state, progress,
stage and error live in the `jobs` table, written by the worker and read by the web process.

Lifecycle: `queued` -> `running` -> `succeeded` | `failed` | `cancelled`.
* The web process creates the row (`queued`) and enqueues the id. One active job per project
  is enforced by a unique column, so two simultaneous clicks cannot start two jobs.
* The worker claims the row with a conditional UPDATE (queued -> running). A job cancelled
  while queued is already `cancelled` (and its queue message revoked), so it never runs.
* Cancelling a running job sets `cancel_requested`; the training progress callback reads it
  and stops the run (features computed so far stay in the cache).
* A job left `running` by a worker that died (killed, machine lost) is queued again, up to
  `JOB_MAX_ATTEMPTS` starts in all, then failed with a message saying so. Every live worker
  looks for such jobs at each heartbeat: a worker is dead when its heartbeat stopped
  (`BEAT_TIMEOUT`), even if its pid still exists (a zombie, or a reused pid), or, on the same
  machine, when its process is gone or a zombie. So is a job that reported no progress for
  `JOB_STALL_SECONDS` (a hung worker whose heartbeat thread still runs). The retry is cheap:
  features computed before the crash are in the shared cache.
* Stopping a worker never loses its job: SIGTERM (`docker stop`, systemd) stops taking jobs
  and lets the running one finish within `WORKER_SHUTDOWN_SECONDS`, then queues it again (not
  counted as an attempt); SIGINT (Ctrl-C, and the `python app.py` supervisor) queues it again
  at once.

Run a worker with `python app.py worker` (`python app.py` starts one as a child process); run
as many as you like, on as many machines, with the same DATABASE_URL, REDIS_URL and storage.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sqlite3
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from models.result import summarize, views_extracted
from web.db import Blob, Iteration, Job, Project, ProjectImage, WorkerBeat, db, utcnow
from web.storage import (Storage, make_reserve, older_than, release_reserve,
                         remove_if_older)

log = logging.getLogger("transferlab.worker")

TRAIN_TASK = "transferlab.train"
GC_TASK = "transferlab.gc"
PARENT_PID_ENV = "TRANSFERLAB_PARENT_PID"
PROGRESS_SHARE = 0.97  # training's share of the bar; saving the iteration is the rest
BEAT_SECONDS = 5.0  # how often a worker says it is alive
BEAT_TIMEOUT = 30.0  # a worker silent this long is considered gone
LOST_MESSAGE_SECONDS = 60.0  # a job queued this long without a queue message is queued again
RESERVE_NAME = ".disk-reserve"  # next to the SQLite database: see housekeeping, give_up_reserve


class JobCancelled(Exception):
    """Raised inside the training run when the job was cancelled (or deleted)."""


class JobConflict(Exception):
    """A job for this project is already queued or running."""

    def __init__(self, job: Job | None):
        super().__init__("a training job for this project is already queued or running")
        self.job = job


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


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def class_counts(project_id: int, split: str = "train") -> dict[str, int]:
    rows = db.session.execute(
        sa.select(ProjectImage.label, sa.func.count())
        .where(ProjectImage.project_id == project_id, ProjectImage.split == split)
        .group_by(ProjectImage.label).order_by(ProjectImage.label))
    return {label: count for label, count in rows}


def active_job(project_id: int) -> Job | None:
    return db.session.scalar(sa.select(Job).where(Job.active_project == project_id))


@dataclass(frozen=True)
class StoredSample:
    """A project image as the engine's `train()` sees a `Sample`, read from storage lazily:
    bytes are only read (and decoded) when the feature cache misses."""

    sha256: str
    label: str
    source: str
    path: Path

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()

    def image(self):
        from models.images import decode_image

        return decode_image(self.data)


class Jobs:
    """The Flask extension: the Huey instance, its tasks, and the job operations."""

    def __init__(self, app):
        from huey import crontab
        from huey.signals import SIGNAL_INTERRUPTED

        self.app = app
        self.huey = make_huey(app.config)
        self.train_task = self.huey.task(name=TRAIN_TASK)(self._train_task)
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
        job = Job(project_id=project.id, state="queued", active_project=project.id,
                  backbones=list(project.backbones), progress=0.0, stage="queued",
                  n_train=sum(counts.values()), n_test=sum(class_counts(project.id, "test").values()))
        db.session.add(job)
        try:
            db.session.commit()
        except sa.exc.IntegrityError:
            db.session.rollback()
            raise JobConflict(active_job(project.id)) from None
        try:
            self._enqueue(job.id)
        except Exception as exc:  # the queue is down: do not leave a job that never runs
            log.exception("could not enqueue job %s", job.id)
            self._finish(job.id, "failed", error=f"could not queue the job: {exc}",
                         from_states=("queued",))
            raise QueueUnavailable(f"could not queue the job: {exc}") from exc
        db.session.refresh(job)
        return job

    def _enqueue(self, job_id: int) -> None:
        """Put a message for the (queued) job on the queue and remember its id."""
        task = self.train_task.s(job_id)
        self.huey.enqueue(task)
        db.session.execute(sa.update(Job).where(Job.id == job_id).values(queue_id=task.id))
        db.session.commit()

    def cancel(self, job: Job) -> str:
        """Cancel `job`: "cancelled" (it was queued: it will never run), "requested" (it is
        running: the worker stops it shortly) or "finished" (too late, nothing changed)."""
        now = utcnow()
        done = db.session.execute(
            sa.update(Job).where(Job.id == job.id, Job.state == "queued").values(
                state="cancelled", active_project=None, cancel_requested=True, stage="cancelled",
                finished_at=now, updated_at=now))
        if done.rowcount:
            db.session.commit()
            if job.queue_id:
                try:
                    self.huey.revoke_by_id(job.queue_id, revoke_once=True)
                except Exception:  # the row already says cancelled; the worker checks it
                    log.warning("could not revoke queue message of job %s", job.id)
            db.session.refresh(job)
            return "cancelled"
        requested = db.session.execute(
            sa.update(Job).where(Job.id == job.id, Job.state == "running").values(
                cancel_requested=True, stage="cancelling"))
        db.session.commit()
        db.session.refresh(job)
        return "requested" if requested.rowcount else "finished"

    # -- worker side ---------------------------------------------------------------------

    def _train_task(self, job_id: int) -> None:
        self.in_flight.add(job_id)
        with self.app.app_context():
            try:
                run_training(self.app, job_id)
            finally:
                db.session.remove()
                self.in_flight.discard(job_id)

    def _gc_task(self) -> None:
        housekeeping(self.app)

    def _on_interrupted(self, signal_name, task, *args) -> None:
        """The worker is stopping while `task` runs (SIGINT, or SIGTERM's grace period is
        over): queue the job again for another worker; this stop is not counted as an
        attempt."""
        if getattr(task, "name", None) != TRAIN_TASK or not task.args:
            return
        with self.app.app_context():
            try:
                if self.requeue(task.args[0], worker_id(), counted=False,
                                why="its worker was stopped"):
                    log.warning("job %s queued again: this worker is stopping", task.args[0])
            finally:
                db.session.remove()

    def requeue(self, job_id: int, worker: str, *, counted: bool, why: str) -> bool:
        """Queue job `job_id` again if it is still `running` on `worker` (so of several
        processes noticing the same dead worker, one wins); returns whether it did."""
        now = utcnow()
        values = dict(state="queued", worker=None, progress=0.0, done=None, total=None,
                      stage=f"queued again: {why}", started_at=None, updated_at=now)
        if not counted:
            values["attempts"] = Job.attempts - 1
        ran_by = Job.worker == worker if worker else Job.worker.is_(None)
        moved = db.session.execute(sa.update(Job).where(
            Job.id == job_id, Job.state == "running", ran_by).values(**values))
        db.session.commit()
        if not moved.rowcount:
            return False
        try:
            self._enqueue(job_id)
        except Exception as exc:
            log.exception("could not queue job %s again", job_id)
            self._finish(job_id, "failed", error=f"{why}, and it could not be queued again: "
                         f"{exc}", from_states=("queued",))
            return False
        return True

    def _requeue_lost_messages(self, now) -> list[int]:
        """Queued jobs whose message is not on the queue (a worker died between taking the
        message and starting the job, or the web process between saving the job and queueing
        it): queue a message again. A duplicate message is harmless: only one worker can
        claim a queued job."""
        old = db.session.execute(sa.select(Job.id, Job.queue_id, Job.updated_at).where(
            Job.state == "queued",
            Job.updated_at < now - timedelta(seconds=LOST_MESSAGE_SECONDS))).all()
        db.session.commit()
        if not old:
            return []
        waiting = {task.id for task in self.huey.pending()}
        found = []
        for job_id, queue_id, updated_at in old:
            if queue_id in waiting:
                continue
            touched = db.session.execute(sa.update(Job).where(  # one process wins
                Job.id == job_id, Job.state == "queued", Job.updated_at == updated_at).values(
                updated_at=now, stage="queued again: its queue message was lost"))
            db.session.commit()
            if touched.rowcount:
                self._enqueue(job_id)
                found.append(job_id)
        return found

    def recover_stale_jobs(self, *, at_start: bool = False) -> dict[str, list[int]]:
        """Queue again (or fail, after `JOB_MAX_ATTEMPTS` starts) the running jobs that are
        stuck; returns {"requeued": [ids], "failed": [ids]}.

        Also queues a message again for queued jobs whose message was lost.
        A job is stuck when `_why_stuck` gives a reason: its worker is gone, or it made no
        progress for `JOB_STALL_SECONDS` whatever its worker seems to be.
        """
        max_attempts = int(self.app.config["JOB_MAX_ATTEMPTS"])
        bounds = _Bounds(stale=timedelta(seconds=float(self.app.config["STALE_JOB_SECONDS"])),
                         stall=timedelta(seconds=float(self.app.config["JOB_STALL_SECONDS"])),
                         beat=timedelta(seconds=BEAT_TIMEOUT))
        now = utcnow()
        beats = {b.id: b.seen_at for b in db.session.scalars(sa.select(WorkerBeat))}
        out: dict[str, list[int]] = {"requeued": [], "failed": []}
        running = db.session.execute(sa.select(Job.id, Job.worker, Job.attempts, Job.updated_at)
                                     .where(Job.state == "running")).all()
        db.session.commit()
        out["requeued"] += self._requeue_lost_messages(now)
        for job_id, worker, attempts, updated_at in running:
            why = _why_stuck(worker, updated_at, beats.get(worker), now, bounds,
                             at_start=at_start)
            if why is None:
                continue
            if attempts < max_attempts and self.requeue(job_id, worker, counted=True, why=why):
                out["requeued"].append(job_id)
            elif attempts >= max_attempts and self._finish(
                    job_id, "failed", from_states=("running",), owner=worker, error=(
                        f"the worker running this job stopped or hung ({worker}): {why}; "
                        f"{attempts} time(s) out of the {max_attempts} allowed; train again")):
                out["failed"].append(job_id)
        return out

    def _finish(self, job_id: int, state: str, *, error: str | None = None,
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
        if (int(pid) == os.getpid() and at_start) or not _pid_alive(int(pid)):
            return f"its worker {worker} stopped"
        return None
    if seen_at is None and updated_at < now - bounds.stale:
        return f"its worker {worker} stopped (no heartbeat, no progress)"
    return None


def run_training(app, job_id: int) -> str:
    """Run one training job in this (worker) process; returns the job's final state."""
    jobs: Jobs = app.extensions["transferlab.jobs"]
    storage: Storage = app.extensions["transferlab.storage"]
    now = utcnow()
    me = worker_id()
    claimed = db.session.execute(
        sa.update(Job).where(Job.id == job_id, Job.state == "queued").values(
            state="running", started_at=now, updated_at=now, worker=me,
            stage="loading images", progress=0.0, attempts=Job.attempts + 1))
    db.session.commit()
    if not claimed.rowcount:
        log.info("job %s is not queued any more (cancelled?): skipped", job_id)
        return "skipped"
    job = db.session.get(Job, job_id)
    project = db.session.get(Project, job.project_id)
    log.info("job %s: training project %s", job_id, job.project_id)
    tmp: Path | None = None
    try:
        if project is None:
            raise JobCancelled()
        from models.backbones import load_backbone
        from models.features import FeatureCache
        from models.training import train

        rows = db.session.scalars(
            sa.select(ProjectImage).where(ProjectImage.project_id == project.id)
            .order_by(ProjectImage.id)).all()
        samples = {split: [StoredSample(r.sha256, r.label, r.name, storage.blob_path(r.sha256))
                           for r in rows if r.split == split] for split in ("train", "test")}
        backbones = list(job.backbones or project.backbones)
        fine_tune = bool(project.fine_tune)
        weights_dir = app.config.get("WEIGHTS_DIR")
        cache = FeatureCache(app.config["FEATURE_CACHE_DIR"])
        db.session.commit()  # end the read transaction: the progress callback writes

        shown = [0.0]  # the bar never moves backwards, whatever the stages report

        def on_progress(p) -> None:
            shown[0] = max(shown[0], round(PROGRESS_SHARE * float(p.fraction), 4))
            with db.engine.begin() as conn:
                row = conn.execute(sa.select(Job.cancel_requested, Job.state, Job.worker)
                                   .where(Job.id == job_id)).first()
                if (row is None or row.cancel_requested or row.state != "running"
                        or row.worker != me):  # queued again (we were thought dead)
                    raise JobCancelled()
                values = dict(progress=shown[0], stage=p.stage, updated_at=utcnow(),
                              features_computed=cache.computed)
                if p.total:
                    values.update(done=int(p.done), total=int(p.total))
                conn.execute(sa.update(Job).where(Job.id == job_id).values(**values))

        on_progress(_Start())
        result = train(samples["train"], backbones, cache,
                       lambda name: load_backbone(name, "imagenet", weights_dir),
                       test_samples=samples["test"], progress=on_progress,
                       fine_tune=fine_tune)
        on_progress(_Start("saving", 1.0))  # last chance to cancel
        report = result.report
        tmp = storage.temp_dir()
        result.save(tmp)
        number = (db.session.scalar(sa.select(sa.func.max(Iteration.number))
                                    .where(Iteration.project_id == project.id)) or 0) + 1
        relpath = storage.iteration_relpath(project.id, number)
        storage.commit_dir(tmp, relpath)
        tmp = None
        total = (report["n_train"] + report["n_test"]) * views_extracted(report, backbones)
        iteration = Iteration(
            project_id=project.id, number=number, job_id=job_id, folder=relpath,
            classes=report["classes"], backbones=backbones, n_train=report["n_train"],
            n_test=report["n_test"], features_computed=cache.computed, features_total=total,
            summary=summarize(report))
        db.session.add(iteration)
        db.session.flush()
        now = utcnow()
        finished = db.session.execute(
            sa.update(Job).where(Job.id == job_id, Job.state == "running", Job.worker == me,
                                 Job.cancel_requested.is_(False)).values(
                state="succeeded", active_project=None, finished_at=now, updated_at=now,
                stage="done", progress=1.0, iteration_id=iteration.id,
                features_computed=cache.computed, features_total=total,
                n_train=report["n_train"], n_test=report["n_test"]))
        if not finished.rowcount:  # cancelled (or marked failed) meanwhile: keep no iteration
            db.session.rollback()
            shutil.rmtree(storage.resolve(relpath), ignore_errors=True)
            raise JobCancelled()
        db.session.commit()
        log.info("job %s: iteration %s of project %s (%s of %s features computed)",
                 job_id, number, project.id, cache.computed, total)
        return "succeeded"
    except JobCancelled:
        db.session.rollback()
        jobs._finish(job_id, "cancelled", owner=me)
        log.info("job %s cancelled", job_id)
        return "cancelled"
    except Exception as exc:
        db.session.rollback()
        message = _error_message(exc)
        log.error("job %s failed: %s\n%s", job_id, message, traceback.format_exc())
        jobs._finish(job_id, "failed", error=message, owner=me)
        return "failed"
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class _Start:
    """A progress event of our own (before training starts / while saving)."""

    stage: str = "starting"
    fraction: float = 0.0
    done: int = 0
    total: int = 0


def _error_message(exc: Exception) -> str:
    from models.training import TrainingError
    from models.weights import WeightsNotFound

    if isinstance(exc, (TrainingError, WeightsNotFound)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# -- worker process ------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
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


def collect_garbage(storage: Storage, grace_seconds: float = 3600) -> int:
    """Delete stored images no project uses any more (spared for `grace_seconds` after their
    last upload, so a concurrent upload never loses a file); returns how many. Walks the
    database only: fast enough for a request (see `collect_orphan_files` for the disk)."""
    cutoff = utcnow() - timedelta(seconds=grace_seconds)
    orphans = db.session.scalars(
        sa.select(Blob.sha256).where(
            Blob.touched_at < cutoff,
            ~sa.exists().where(ProjectImage.sha256 == Blob.sha256))).all()
    for start in range(0, len(orphans), 500):
        chunk = orphans[start:start + 500]
        db.session.execute(sa.delete(Blob).where(
            Blob.sha256.in_(chunk), Blob.touched_at < cutoff,
            ~sa.exists().where(ProjectImage.sha256 == Blob.sha256)))
        db.session.commit()
        for sha in chunk:
            storage.delete_image_files(sha)
    return len(orphans)


def collect_orphan_files(storage: Storage, grace_seconds: float = 3600,
                         batch: int = 500) -> dict[str, int]:
    """Remove what no database row names and that is older than `grace_seconds` (by mtime):
    image files (originals, thumbnails, previews) without a `Blob` row, as a killed upload
    leaves them (it writes files before rows), project and iteration folders without their
    row, and temporary files and folders of crashed writes (see `Storage.temp_files`).
    Returns {"images": n, "folders": n, "temporary": n} removed.

    The disk is compared with the database `batch` names at a time, so memory stays bounded.
    Younger files are spared: an upload writes (or refreshes, when the file exists) its
    files before the rows that name them, so it is never harmed. Slow on a large disk: run
    by the worker (`housekeeping`), never in a request."""
    cutoff = older_than(grace_seconds)
    removed = {"images": 0, "folders": 0, "temporary": 0}
    for files in storage.image_file_batches(batch):
        known = set(db.session.scalars(sa.select(Blob.sha256).where(
            Blob.sha256.in_({sha for sha, _ in files}))))
        db.session.commit()  # no read transaction held across the walk
        removed["images"] += sum(remove_if_older(path, cutoff)
                                 for sha, path in files if sha not in known)
    removed["folders"] = _collect_project_folders(storage, cutoff)
    removed["temporary"] = sum(remove_if_older(path, cutoff) for path in storage.temp_files())
    return removed


def _collect_project_folders(storage: Storage, cutoff: float) -> int:
    """Remove project folders without a `Project` row (a crash between deleting the row and
    the folder) and iteration folders without an `Iteration` row (a crash between saving an
    iteration and recording it), older than `cutoff`; returns how many."""
    removed = 0
    for project_id, folder in storage.project_folders():
        if db.session.get(Project, project_id) is None:
            removed += remove_if_older(folder, cutoff)
            continue
        recorded = set(db.session.scalars(sa.select(Iteration.folder).where(
            Iteration.project_id == project_id)))
        removed += sum(remove_if_older(path, cutoff)
                       for relpath, path in storage.iteration_folders(project_id)
                       if relpath not in recorded)
        db.session.commit()
    db.session.commit()
    return removed


def reserve_path(config) -> Path | None:
    """The disk reserve's file, next to a SQLite database (None for other databases: their
    server's disk is not ours to manage)."""
    url = sa.engine.make_url(config["SQLALCHEMY_DATABASE_URI"])
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).parent / RESERVE_NAME


def give_up_reserve(config) -> bool:
    """Free the disk reserve so that a deletion can be recorded on a full disk; returns
    whether there was one. The housekeeping makes it again once there is room."""
    path = reserve_path(config)
    return path is not None and release_reserve(path)


def is_disk_full(exc: sa.exc.DBAPIError) -> bool:
    """Whether the database failed for want of disk space (SQLite's SQLITE_FULL,
    PostgreSQL's disk_full)."""
    orig = exc.orig
    return (getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            or getattr(orig, "pgcode", None) == "53100" or "disk is full" in str(orig))


def housekeeping(app) -> None:
    """Free what nothing uses: images no project holds (`collect_garbage`), then files and
    folders and temporary leftovers without database rows (`collect_orphan_files`), spared for
    `ORPHAN_GRACE_SECONDS`; then make the disk reserve (`DISK_RESERVE_BYTES`) if it is
    missing. Run at each worker's start and every 30 minutes."""
    grace = float(app.config["ORPHAN_GRACE_SECONDS"])
    storage: Storage = app.extensions["transferlab.storage"]
    reserve = reserve_path(app.config)
    with app.app_context():
        try:
            images = collect_garbage(storage, grace)
            orphans = collect_orphan_files(storage, grace)
            if reserve is not None:
                make_reserve(reserve, int(app.config["DISK_RESERVE_BYTES"]))
            if images or any(orphans.values()):
                log.info("housekeeping: removed %s unused image(s), %s file(s) and %s "
                         "folder(s) without a database row, %s temporary file(s)", images,
                         orphans["images"], orphans["folders"], orphans["temporary"])
        finally:
            db.session.remove()


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
            with app.app_context(), db.engine.begin() as conn:
                now = utcnow()
                if not conn.execute(sa.update(WorkerBeat).where(WorkerBeat.id == me)
                                    .values(seen_at=now)).rowcount:
                    conn.execute(sa.insert(WorkerBeat).values(id=me, started_at=started,
                                                              seen_at=now))
                conn.execute(sa.delete(WorkerBeat).where(  # forget long-gone workers
                    WorkerBeat.seen_at < now - timedelta(days=1)))
        except Exception as exc:  # a busy database must not kill the worker
            log.warning("heartbeat failed: %s", exc)
        _recover(app, jobs)
        time.sleep(BEAT_SECONDS)


def _recover(app, jobs: "Jobs", at_start: bool = False) -> None:
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


def _housekeep_once(app) -> None:
    try:
        housekeeping(app)
    except Exception as exc:  # a busy database or an odd file must not kill the worker
        log.warning("housekeeping failed: %s", exc)


def run_worker(app) -> None:
    """Run the Huey consumer for `app` in this process until SIGTERM (graceful: the running
    job may finish within WORKER_SHUTDOWN_SECONDS, else it is queued again) or SIGINT (the
    running job is queued again at once)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s worker %(levelname)s %(name)s: %(message)s")
    jobs: Jobs = app.extensions["transferlab.jobs"]
    _recover(app, jobs, at_start=True)
    threading.Thread(target=_housekeep_once, args=(app,), daemon=True,
                     name="housekeeping").start()  # what a crash left; jobs need not wait
    parent = os.environ.get(PARENT_PID_ENV)
    if parent and parent.isdigit():
        threading.Thread(target=_watch_parent, args=(int(parent),), daemon=True,
                         name="parent-watch").start()
    threading.Thread(target=_beat, args=(app,), daemon=True, name="heartbeat").start()
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
    with app.app_context():
        db.session.execute(sa.delete(WorkerBeat).where(WorkerBeat.id == worker_id()))
        db.session.commit()
        db.session.remove()
    if jobs.in_flight:
        # A training thread outlived the grace period (its job is queued again): end the
        # process now rather than wait for TensorFlow inside a daemon thread.
        log.info("worker %s stopped (job(s) %s queued again)", worker_id(),
                 sorted(jobs.in_flight))
        logging.shutdown()
        os._exit(0)
    log.info("worker %s stopped", worker_id())

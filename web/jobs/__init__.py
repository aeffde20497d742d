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

Modules, each the one home of its concept (importers may use the names below from `web.jobs`):
* `queue`: the Huey instance and the `Jobs` extension: start, enqueue, cancel, requeue.
* `state`: the `jobs` table's state transitions (claim, progress, finish, ...).
* `training_run`: load a project's samples -> train -> save an iteration.
* `worker`: the worker process: consumer, heartbeat, liveness, recovery of stuck jobs.
* `housekeeping`: garbage collection, the orphan-file sweep, the disk reserve.

"""
from web.jobs.housekeeping import (RESERVE_NAME, collect_garbage, collect_orphan_files,
                                   give_up_reserve, is_disk_full, run_housekeeping,
                                   reserve_path)
from web.jobs.queue import (GC_TASK, TRAIN_TASK, Jobs, NotEnoughData, QueueUnavailable,
                            class_counts, make_huey)
from web.jobs.state import JobCancelled, JobConflict, active_job, worker_id
from web.jobs.training_run import (PROGRESS_SHARE, StoredSample, load_samples, run_training,
                                   save_iteration, train_samples)
from web.jobs.worker import (BEAT_SECONDS, BEAT_TIMEOUT, LOST_MESSAGE_SECONDS, PARENT_PID_ENV,
                             live_workers, pid_alive, recover_stale_jobs, run_worker)

__all__ = [
    "BEAT_SECONDS", "BEAT_TIMEOUT", "GC_TASK", "LOST_MESSAGE_SECONDS", "PARENT_PID_ENV",
    "PROGRESS_SHARE", "RESERVE_NAME", "TRAIN_TASK", "JobCancelled", "JobConflict", "Jobs",
    "NotEnoughData", "QueueUnavailable", "StoredSample", "active_job", "class_counts",
    "collect_garbage", "collect_orphan_files", "give_up_reserve", "housekeeping",
    "is_disk_full", "live_workers", "load_samples", "make_huey", "pid_alive",
    "recover_stale_jobs", "reserve_path", "run_training", "run_worker", "save_iteration",
    "train_samples", "worker_id",
]

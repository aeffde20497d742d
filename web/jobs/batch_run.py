"""Batch prediction jobs: many images classified by one iteration, in the background, on the
same queue, jobs table and workers as training (job `kind` "batch").

Web side: `store_batch` writes the uploaded files into a temporary folder (each file under an
index, its name kept in `manifest.json` only as data), `Jobs.start_batch` records the job
(`state.create_batch`: the iteration it uses, never blocking a training) and moves the folder
to `batch_relpath(project, job)` before queuing it.

Worker side: `run_batch(app, job_id)` claims the job, loads the iteration's predictor (kept
loaded by the worker's `PredictionService` for the next batch), runs
`models.batch_predict.predict_batch` with a progress report after each forward pass (which
raises JobCancelled once the job is cancelled), writes `results.json` and `results.csv` next
to the inputs and marks the job succeeded; like `run_training`, it never raises for a failed
batch and returns the job's final state.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from web.db import Iteration, Job, Project, db
from web.jobs import state
from web.jobs.state import JobCancelled
from web.storage import Storage, atomic_write

log = logging.getLogger("transferlab.worker")

MANIFEST = "manifest.json"
RESULT_JSON = "results.json"
RESULT_CSV = "results.csv"
PROGRESS_SHARE = 0.98  # classifying's share of the bar; writing the results is the rest


def batch_relpath(project_id: int, job_id: int) -> str:
    """The batch's folder, relative to the storage root (inside the project's folder, so
    deleting the project deletes it)."""
    return f"projects/{int(project_id)}/batches/{int(job_id)}"


def store_batch(storage: Storage, uploads) -> tuple[Path, int]:
    """Write `uploads` (werkzeug FileStorage objects) into a new temporary folder as `0`, `1`,
    ... with a manifest of their names; returns (folder, how many images they may hold).
    The caller moves the folder into place (`Jobs.start_batch`) or removes it."""
    from models.batch_predict import count_candidates
    from models.datasets import stream_name

    folder = storage.temp_dir()
    try:
        names = []
        for index, upload in enumerate(uploads):
            with open(folder / str(index), "wb") as out:
                shutil.copyfileobj(upload.stream, out, 1024 * 1024)
            names.append(stream_name(upload.filename, index))
        atomic_write(folder / MANIFEST, json.dumps({"files": names}).encode())
        total = count_candidates(_batch_files(folder))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, total


def _batch_files(folder: Path) -> list:
    from models.batch_predict import BatchFile

    names = json.loads((folder / MANIFEST).read_text())["files"]
    return [BatchFile(folder / str(i), name) for i, name in enumerate(names)]


def read_result(storage: Storage, job: Job, kind: str = "json") -> Path:
    """The path of a finished batch's `results.json` (kind "json") or `results.csv`."""
    name = RESULT_JSON if kind == "json" else RESULT_CSV
    return storage.resolve(batch_relpath(job.project_id, job.id)) / name


def run_batch(app, job_id: int) -> str:
    """Run one batch job in this (worker) process; returns its final state."""
    return state.run_claimed(job_id, lambda job, me: _batch_job(app, job, me),
                             describe="batch prediction")


def _batch_job(app, job: Job, me: str) -> str:
    from models.batch_predict import predict_batch, result_csv

    storage: Storage = app.extensions["transferlab.storage"]
    job_id, project = job.id, db.session.get(Project, job.project_id)
    iteration = db.session.get(Iteration, job.iteration_id) if job.iteration_id else None
    if project is None or iteration is None:  # deleted meanwhile
        raise JobCancelled()
    folder = storage.resolve(batch_relpath(project.id, job_id))
    threshold, number = float(project.threshold or 0.0), iteration.number
    it_id, it_folder = iteration.id, storage.resolve(iteration.folder)
    files = _batch_files(folder)
    db.session.commit()  # end the read transaction: the progress reports write

    state.report_progress(job_id, me, stage="loading the model", progress=0.0)
    predictor = app.extensions["transferlab.prediction"].predictor(it_id, it_folder)

    def on_progress(done: int, total: int) -> None:
        state.report_progress(job_id, me, stage="classifying", done=done, total=total,
                              progress=round(PROGRESS_SHARE * done / max(total, 1), 4))

    result = predict_batch(predictor, files, threshold=threshold, progress=on_progress,
                           chunk=int(app.config.get("BATCH_PREDICT_CHUNK", 32)))
    state.report_progress(job_id, me, stage="saving", progress=PROGRESS_SHARE)
    result.update(job_id=job_id, project_id=project.id, iteration=number,
                  threshold=threshold)
    atomic_write(folder / RESULT_JSON, json.dumps(result).encode())
    atomic_write(folder / RESULT_CSV, result_csv(result).encode())
    if not state.mark_succeeded(job_id, me, done=result["n_images"] + result["n_rejected"],
                                total=result["n_images"] + result["n_rejected"]):
        db.session.rollback()
        raise JobCancelled()
    db.session.commit()
    log.info("job %s: %s image(s) classified, %s rejected, %.1f images/s in forward passes",
             job_id, result["n_images"], result["n_rejected"],
             result["timing"]["images_per_second"] or 0.0)
    return "succeeded"

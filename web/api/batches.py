"""Batch predictions: `POST …/predict` with a zip or several files queues a batch job
(`start_batch`, called by the predict route); `GET /batches/<job_id>` follows it and, once it
succeeded, gives every image's answers, the rejects and, when the images carried labels, the
evaluation; `GET /batches/<job_id>/results.csv|.json` download them; `GET
/projects/<id>/batches` lists a project's batches. A batch runs on the training queue's
workers (`web.jobs.batch_run`); its job is also readable and cancellable at `/jobs/<id>`.
"""
from __future__ import annotations

import json

import sqlalchemy as sa
from flask import jsonify, send_file, url_for

from web import auth
from web.api import bp
from web.api.errors import ApiError
from web.api.helpers import get_jobs, get_project, get_storage, release_connection
from web.api.serializers import job_json
from web.concurrency import offload
from web.db import Iteration, Job, Project, db
from web.inputs import MAX_ID
from web.jobs import QueueUnavailable
from web.jobs.batch_run import read_result, store_batch


def is_batch(uploads) -> bool:
    """Whether a predict request's files make a batch: several files, or one zip."""
    from models.datasets import looks_like_zip

    if len(uploads) > 1:
        return True
    if len(uploads) == 1:
        head = uploads[0].stream.read(4)
        uploads[0].stream.seek(0)
        return looks_like_zip(uploads[0].filename or "", head)
    return False


def start_batch(project: Project, iteration: Iteration, uploads):
    """Store the uploads and queue their batch job: 202 with the job and where to follow it."""
    project_id, iteration_id = project.id, iteration.id
    release_connection()  # storing the files may take a while
    folder, total = offload(store_batch, get_storage(), uploads)
    project, iteration = db.session.get(Project, project_id), db.session.get(Iteration, iteration_id)
    try:
        job = get_jobs().start_batch(project, iteration, folder, total)
    except QueueUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    response = jsonify(_batch_json(job))
    response.status_code = 202
    response.headers["Location"] = url_for("api.get_batch", job_id=job.id)
    return response


def _batch_json(job: Job) -> dict:
    return {"job_id": job.id, "project_id": job.project_id, "job": job_json(job),
            "iteration": job.iteration.number if job.iteration is not None else None,
            "url": url_for("api.get_batch", job_id=job.id),
            "downloads": {"csv": url_for("api.batch_download", job_id=job.id, fmt="csv"),
                          "json": url_for("api.batch_download", job_id=job.id, fmt="json")}}


def _get_batch(job_id: int) -> Job:
    """The caller's batch job `job_id` (404 for an unknown one, another user's, or a training
    job)."""
    job = None if job_id > MAX_ID else db.session.scalar(auth.owned(
        sa.select(Job).join(Project, Project.id == Job.project_id)
        .where(Job.id == job_id, Job.kind == "batch")))
    if job is None:
        raise ApiError(404, f"no batch prediction with id {job_id}")
    return job


def _finished(job: Job):
    if job.state != "succeeded":
        raise ApiError(409, f"batch {job.id} is {job.state}"
                            + (f": {job.error}" if job.error else "; its results are not ready"),
                       job=job_json(job))
    path = read_result(get_storage(), job, "json")
    if not path.exists():
        raise ApiError(404, f"batch {job.id}'s results are gone (its project's files were "
                            "removed)")
    return path


@bp.get("/batches/<int:job_id>")
def get_batch(job_id: int):
    job = _get_batch(job_id)
    body = _batch_json(job)
    if job.state == "succeeded":
        path = _finished(job)
        body.update(json.loads(offload(path.read_text)))
    return jsonify(body)


@bp.get("/batches/<int:job_id>/results.<fmt>")
def batch_download(job_id: int, fmt: str):
    if fmt not in ("csv", "json"):
        raise ApiError(404, f"no results.{fmt}: results.csv or results.json")
    job = _get_batch(job_id)
    _finished(job)
    path = read_result(get_storage(), job, fmt)
    return send_file(path, mimetype="text/csv" if fmt == "csv" else "application/json",
                     as_attachment=True, download_name=f"batch-{job.id}.{fmt}",
                     max_age=0)


@bp.get("/projects/<int:project_id>/batches")
def list_batches(project_id: int):
    get_project(project_id)
    jobs = db.session.scalars(sa.select(Job).where(Job.project_id == project_id,
                                                   Job.kind == "batch")
                              .order_by(Job.id.desc()).limit(100))
    return jsonify([_batch_json(j) for j in jobs])

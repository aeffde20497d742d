"""Training: start a project's training job (202, queued for the worker), list a project's
jobs, read one job, and cancel it.
"""
from __future__ import annotations

import sqlalchemy as sa
from flask import jsonify, url_for

from web import auth
from web.api import bp
from web.api.errors import ApiError
from web.api.helpers import get_jobs, get_project
from web.api.serializers import backbone_json, job_json
from web.db import Job, Project, db
from web.inputs import MAX_ID
from web.jobs import JobConflict, NotEnoughData, QueueUnavailable


@bp.post("/projects/<int:project_id>/train")
def train_project(project_id: int):
    project = get_project(project_id)
    try:
        job = get_jobs().start_training(project)
    except NotEnoughData as exc:
        raise ApiError(400, str(exc)) from None
    except JobConflict as exc:
        raise ApiError(409, str(exc), job=job_json(exc.job),
                       job_id=exc.job.id if exc.job else None) from None
    except QueueUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    unavailable = [b for b in (backbone_json(n) for n in project.backbones) if not b["available"]]
    body = {**job_json(job), "job_id": job.id,
            "warnings": [f"{b['name']}: {b['reason']} (the worker will try to download it)"
                         for b in unavailable]}
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = url_for("api.get_job", job_id=job.id)
    return response


@bp.get("/projects/<int:project_id>/jobs")
def list_jobs(project_id: int):
    get_project(project_id)
    jobs = db.session.scalars(sa.select(Job).where(Job.project_id == project_id)
                              .order_by(Job.id.desc()).limit(100))
    return jsonify([job_json(j) for j in jobs])


def _get_job(job_id: int) -> Job:
    job = None if job_id > MAX_ID else db.session.scalar(auth.owned(
        sa.select(Job).join(Project, Project.id == Job.project_id).where(Job.id == job_id)))
    if job is None:
        raise ApiError(404, f"no job with id {job_id}")
    return job


@bp.get("/jobs/<int:job_id>")
def get_job(job_id: int):
    return jsonify(job_json(_get_job(job_id)))


@bp.post("/jobs/<int:job_id>/cancel")
def cancel_job(job_id: int):
    job = _get_job(job_id)
    outcome = get_jobs().cancel(job)
    if outcome == "finished":
        raise ApiError(409, f"job {job_id} has already finished ({job.state})",
                       job=job_json(job))
    response = jsonify(job_json(job))
    response.status_code = 200 if outcome == "cancelled" else 202
    return response

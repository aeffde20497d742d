"""Training: start a project's training job (202, queued for the worker), list a project's
jobs, read one job, and cancel it.

Before queuing, `POST …/train` refuses a project whose backbones' weights are not here (422,
naming each backbone, its file and where to put it; unless `DOWNLOAD_WEIGHTS` is on) and
answers a retraining with nothing new (same images, labels, splits, backbones, settings and
recipe code as the latest iteration) at once: 200 with `"nothing_changed": true` and that
iteration. `{"force": true}` trains anyway.
"""
from __future__ import annotations

import sqlalchemy as sa
from flask import current_app, jsonify, request, url_for

from web import auth
from web.api import bp
from web.api.errors import ApiError
from web.api.helpers import get_jobs, get_predictions, get_project, get_storage, json_body
from web.api.serializers import backbone_json, iteration_json, job_json, missing_weights
from web.db import Iteration, Job, Project, db
from web.inputs import MAX_ID
from web.jobs import JobConflict, NotEnoughData, QueueUnavailable, active_job, load_samples
from web.jobs.training_run import training_fingerprint
from web.publishing import live_iteration


def _train_options() -> dict:
    """The optional JSON body of `POST …/train`: {"force": bool}."""
    if not request.content_length and not request.is_json:  # no body (curl -X POST)
        return {}
    body = json_body()
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise ApiError(400, f"invalid force {force!r}: true (train even when nothing changed "
                            "since the latest iteration) or false")
    return {"force": force}


def _refuse_missing_weights(project: Project) -> None:
    missing = missing_weights(project.backbones)
    if not missing or current_app.config.get("DOWNLOAD_WEIGHTS"):
        return
    details = "; ".join(f"{m['title']} needs {m['file']}: {m['remedy']}" for m in missing)
    raise ApiError(422, f"cannot train: weights missing for "
                        f"{', '.join(m['backbone'] for m in missing)}. {details}. Or change the "
                        "project's backbones to ones whose weights are here.",
                   kind="weights-missing", weights_missing=missing)


def _unchanged_iteration(project: Project) -> Iteration | None:
    """The latest iteration, if it was trained from exactly what training now would use."""
    latest = db.session.scalar(sa.select(Iteration).where(Iteration.project_id == project.id)
                               .order_by(Iteration.number.desc()).limit(1))
    if latest is None or not latest.fingerprint or active_job(project.id) is not None:
        return None
    samples = load_samples(get_storage(), project.id)
    now = training_fingerprint(samples, list(project.backbones),
                               fine_tune=bool(project.fine_tune))
    return latest if now == latest.fingerprint else None


@bp.post("/projects/<int:project_id>/train")
def train_project(project_id: int):
    project = get_project(project_id)
    options = _train_options()
    _refuse_missing_weights(project)
    unchanged = None if options.get("force") else _unchanged_iteration(project)
    if unchanged is not None:
        get_predictions().warm(unchanged.id, get_storage().resolve(unchanged.folder))
        return jsonify({
            "nothing_changed": True, "iteration": iteration_json(unchanged),
            "message": f"Nothing changed since iteration {unchanged.number} (same images, "
                       "labels, splits, backbones and settings): it is still the latest. "
                       "Send {\"force\": true} to train again anyway."})
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
    job = _get_job(job_id)
    warm_finished(job)
    return jsonify(job_json(job))


def warm_finished(job: Job | None) -> None:
    """Get this (web) process ready to predict with a job's iteration, in the background, as
    the job's status is polled: its backbones while it runs, once it succeeded the predictor
    (heads and one tiny image through it) of the project's live iteration (the new one, unless
    an earlier one is published). The first prediction then waits for
    neither."""
    if job is None or not current_app.config.get("WARM_PREDICTORS", True):
        return
    if job.state == "running":
        get_predictions().warm_backbones(job.backbones or [])
    elif job.state == "succeeded" and job.iteration is not None:
        live = live_iteration(db.session.get(Project, job.project_id)) or job.iteration
        get_predictions().warm(live.id, get_storage().resolve(live.folder))


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

"""Projects: list, create, read, change (name, backbones, threshold, fine-tuning, the published
iteration) and delete
the caller's projects, with the checks of those fields; and the backbones a project can use.
"""
from __future__ import annotations

import logging

import sqlalchemy as sa
from flask import jsonify, url_for

from models.registry import BACKBONES, default_backbones
from web import auth
from web.api import bp
from web.api.errors import ApiError, frees_space
from web.api.helpers import (
    get_jobs,
    get_predictions,
    get_project,
    get_storage,
    json_body,
    latest_job,
    project_iterations,
    weights_dir,
)
from web.api.serializers import backbone_json, missing_weights, project_json
from web.db import Iteration, Job, Project, ProjectImage, Upload, db, utcnow
from web.jobs import collect_garbage

log = logging.getLogger("transferlab.api")


def _check_name(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, "'name' must be a non-empty string")
    name = value.strip()
    if len(name) > 200:
        raise ApiError(400, "'name' is longer than 200 characters")
    return name


def _check_backbones(value) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ApiError(400, "'backbones' must be a non-empty list of backbone names; "
                            f"known: {', '.join(BACKBONES)}")
    unknown = [v for v in value if v not in BACKBONES]
    if unknown:
        raise ApiError(400, f"unknown backbone(s) {', '.join(map(repr, unknown))}; "
                            f"known: {', '.join(BACKBONES)}")
    return list(dict.fromkeys(value))


def _check_threshold(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ApiError(400, f"invalid threshold {value!r}: a number from 0 (always answer) "
                            "up to, not including, 1")
    return float(value)


def _check_fine_tune(value) -> bool:
    if not isinstance(value, bool):
        raise ApiError(400, f"invalid fine_tune {value!r}: true (also fine-tune the top of "
                            "EfficientNet-Lite backbones, kept where cross-validation prefers "
                            "it) or false")
    return value


def _check_published(project_id: int, value) -> int | None:
    """An iteration number of the project to publish, or null (serve the latest)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"invalid published_iteration {value!r}: an iteration number of "
                            "this project, or null to serve the latest")
    if db.session.scalar(sa.select(Iteration.id).where(Iteration.project_id == project_id,
                                                       Iteration.number == value)) is None:
        raise ApiError(404, f"project {project_id} has no iteration {value}")
    return value


@bp.get("/backbones")
def list_backbones():
    defaults = default_backbones(weights_dir())
    return jsonify([backbone_json(name, defaults) for name in BACKBONES])


@bp.get("/projects")
def list_projects():
    projects = db.session.scalars(auth.owned(sa.select(Project)).order_by(Project.id.desc())).all()
    return jsonify([project_json(p, full=False) for p in projects])


@bp.post("/projects")
def create_project():
    body = json_body()
    name = _check_name(body.get("name"))
    if "backbones" in body:
        backbones = _check_backbones(body["backbones"])
    else:  # the backbones whose weights are here (models.registry.default_backbones)
        backbones = default_backbones(weights_dir())
    project = Project(name=name, backbones=backbones, owner_id=auth.current_user().id)
    db.session.add(project)
    db.session.commit()
    response = jsonify(_with_warnings(project_json(project), backbones))
    response.status_code = 201
    response.headers["Location"] = url_for("api.get_project_route", project_id=project.id)
    return response


@bp.get("/projects/<int:project_id>")
def get_project_route(project_id: int):
    from web.api.training import warm_finished

    project = get_project(project_id)
    warm_finished(latest_job(project.id))
    return jsonify(project_json(project))


@bp.patch("/projects/<int:project_id>")
def update_project(project_id: int):
    project = get_project(project_id)
    body = json_body()
    if "name" in body:
        project.name = _check_name(body["name"])
    if "backbones" in body:
        project.backbones = _check_backbones(body["backbones"])
    if "threshold" in body:
        project.threshold = _check_threshold(body["threshold"])
    if "fine_tune" in body:
        project.fine_tune = _check_fine_tune(body["fine_tune"])
    if "published_iteration" in body:
        project.published_iteration = _check_published(project_id, body["published_iteration"])
    project.updated_at = utcnow()
    db.session.commit()
    return jsonify(_with_warnings(project_json(project), project.backbones))


def _with_warnings(body: dict, backbones: list[str]) -> dict:
    """Backbones without weights are allowed in a project (the file may be put in place
    later) but flagged: `weights_missing` lists them with the file and where to put it, and
    `warnings` says it in words; training is refused (422) until they are there."""
    missing = missing_weights(backbones)
    body["weights_missing"] = missing
    body["warnings"] = [f"{m['backbone']}: weights file {m['file']} is missing; {m['remedy']}. "
                        "Training is refused until it is there." for m in missing]
    return body


@bp.delete("/projects/<int:project_id>")
@frees_space
def delete_project(project_id: int):
    project = get_project(project_id)
    jobs = get_jobs()
    for job in db.session.scalars(sa.select(Job).where(Job.project_id == project_id,
                                                       Job.state.in_(("queued", "running")))):
        jobs.cancel(job)
    iteration_ids = [it.id for it in project_iterations(project_id)]
    db.session.execute(sa.update(Job).where(Job.project_id == project_id)
                       .values(iteration_id=None, active_project=None))
    for model in (Iteration, Job, Upload, ProjectImage):
        db.session.execute(sa.delete(model).where(model.project_id == project_id))
    db.session.delete(project)
    db.session.commit()
    get_predictions().forget(iteration_ids)
    get_storage().delete_project(project_id)
    try:
        collect_garbage(get_storage())
    except (OSError, sa.exc.OperationalError) as exc:  # done: the housekeeping retries it
        db.session.rollback()
        log.warning("project %s deleted; its unused images stay until the next "
                    "housekeeping: %s", project_id, exc)
    return jsonify({"deleted": project_id})

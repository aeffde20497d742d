"""What training produced, and using it: a trained iteration's report (`results`), the list of
iterations, publishing one (the live iteration, `web.publishing`), predicting one uploaded
image with a project's iteration (a zip or several files: a batch job, `web.api.batches`), and
predicting with the backbones' own ImageNet heads. Only the predict routes run TensorFlow, off
the gevent loop.
"""
from __future__ import annotations

import sqlalchemy as sa
from flask import current_app, jsonify, request

from models.registry import DEFAULT_BACKBONES, OFFLINE_BACKBONE
from models.result import prediction_rows, read_report
from web.api import bp
from web.api.curation import annotate_mislabelled
from web.api.errors import ApiError
from web.api.helpers import (
    get_predictions,
    get_project,
    get_storage,
    project_iterations,
    release_connection,
    requested_iteration,
    uploaded_files,
    uploaded_image,
    weights_dir,
)
from web.api.batches import is_batch, start_batch
from web.api.serializers import backbone_json, iteration_json, thumbnail_url
from web.concurrency import offload_tf
from web.db import Iteration, db, iso
from web.inputs import float_arg, int_arg
from web.prediction import BackboneUnavailable, imagenet_backbones, imagenet_candidates
from web.publishing import live_iteration


@bp.get("/projects/<int:project_id>/results")
def results(project_id: int):
    project = get_project(project_id)
    it = requested_iteration(project_id, default="latest")
    live = live_iteration(project)
    try:
        report = read_report(get_storage().resolve(it.folder))
    except (OSError, ValueError) as exc:
        raise ApiError(404, f"iteration {it.number} has no readable report: {exc}") from None
    pattern = thumbnail_url("0" * 64).replace("0" * 64, "{sha256}")
    for p in prediction_rows(report):
        p.setdefault("thumbnail", pattern.replace("{sha256}", p["sha256"]))
    annotate_mislabelled(project_id, report)
    report.update({
        "iteration": it.number, "iteration_id": it.id, "project_id": project_id,
        "job_id": it.job_id, "created_at": iso(it.created_at),
        "features_computed": it.features_computed, "features_total": it.features_total,
        "iterations": [i.number for i in project_iterations(project_id)],
        "thumbnail_url": pattern,
        "published_iteration": project.published_iteration,
        "live_iteration": live.number if live is not None else None,
    })
    return jsonify(report)


@bp.get("/projects/<int:project_id>/iterations")
def list_iterations(project_id: int):
    live = live_iteration(get_project(project_id))
    return jsonify([{**iteration_json(it), "live": live is not None and it.id == live.id}
                    for it in project_iterations(project_id)])


@bp.post("/projects/<int:project_id>/iterations/<int:number>/publish")
def publishrequested_iteration(project_id: int, number: int):
    """Pin iteration `number` as the one served when a request names none (a rollback
    when it is an earlier one); its predictor is warmed in the background."""
    project = get_project(project_id)
    it = db.session.scalar(sa.select(Iteration).where(Iteration.project_id == project_id,
                                                      Iteration.number == number))
    if it is None:
        raise ApiError(404, f"project {project_id} has no iteration {number}")
    project.published_iteration = it.number
    db.session.commit()
    warm_iteration(it)
    return jsonify({"project_id": project_id, "published_iteration": it.number,
                    "live_iteration": it.number, "iteration": iteration_json(it)})


def warm_iteration(it: Iteration | None) -> None:
    """Load `it`'s predictor in the background (unless warm-ups are off)."""
    if it is not None and current_app.config.get("WARM_PREDICTORS", True):
        get_predictions().warm(it.id, get_storage().resolve(it.folder))


# -- prediction ----------------------------------------------------------------------------


@bp.post("/projects/<int:project_id>/predict")
def predict(project_id: int):
    project = get_project(project_id)
    it = requested_iteration(project_id)
    uploads = uploaded_files()
    if is_batch(uploads):  # a zip or several files: a background job (web.api.batches)
        return start_batch(project, it, uploads)
    live = request.values.get("iteration") is None or it.id == getattr(
        live_iteration(project), "id", None)
    top_k = int_arg(request.values, "top_k", current_app.config["TOP_K"], 1, 20)
    threshold = float_arg(request.values, "threshold", project.threshold or 0.0, 0.0, 1.0)
    it_id, number, classes, folder = it.id, it.number, it.classes, get_storage().resolve(it.folder)
    release_connection()
    name, image = uploaded_image()
    try:
        answer = get_predictions().classify(it_id, folder, image, top_k, threshold)
    except BackboneUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    return jsonify({**answer, "name": name, "iteration": number, "classes": classes,
                    "live": live})


@bp.post("/imagenet/predict")
def imagenet_predict():
    raw = request.values.get("backbones")
    requested = [b.strip() for b in raw.split(",") if b.strip()] if raw else None
    try:
        backbones = imagenet_backbones(requested, weights_dir())
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    top_k = int_arg(request.values, "top_k", current_app.config["TOP_K"], 1, 20)
    name, image = uploaded_image()
    try:
        answers = offload_tf(get_predictions().imagenet, [image], backbones, top_k)
    except BackboneUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    return jsonify({**answers[0], "name": name, "mode": "imagenet"})


@bp.get("/imagenet/backbones")
def imagenet_backbone_list():
    from web.prediction import imagenet_unavailable_reason

    out = []
    for name in imagenet_candidates():
        reason = imagenet_unavailable_reason(name, weights_dir())
        out.append({**backbone_json(name), "available": reason is None,
                    "reason": reason or backbone_json(name)["reason"],
                    "default": name in DEFAULT_BACKBONES or name == OFFLINE_BACKBONE})
    return jsonify(out)

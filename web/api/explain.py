"""Why a trained iteration answers what it does for one uploaded image: a heat map of the regions
that drove the score and the nearest training images (`models.explain`), off the gevent loop.
"""
from __future__ import annotations

from flask import jsonify, request

from web.api import bp
from web.api.errors import ApiError
from web.api.helpers import (
    get_predictions,
    get_project,
    get_storage,
    release_connection,
    requested_iteration,
    uploaded_image,
)
from web.api.serializers import thumbnail_url
from web.prediction import BackboneUnavailable


@bp.post("/projects/<int:project_id>/explain")
def explain(project_id: int):
    get_project(project_id)
    it = requested_iteration(project_id)
    backbone = request.values.get("backbone") or None
    label = request.values.get("label") or None
    if backbone is not None and backbone not in (it.backbones or []):
        raise ApiError(400, f"backbone: {backbone!r} is not in iteration {it.number}; "
                            f"choose from {', '.join(it.backbones or [])}")
    if label is not None and label not in (it.classes or []):
        raise ApiError(400, f"label: {label!r} is not a class of iteration {it.number}")
    it_id, number, folder = it.id, it.number, get_storage().resolve(it.folder)
    release_connection()
    name, image = uploaded_image()
    try:
        answer = get_predictions().explain(it_id, folder, image, backbone, label)
    except BackboneUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    for n in answer["neighbours"]:
        n["thumbnail"] = thumbnail_url(n["sha256"])
    return jsonify({**answer, "name": name, "iteration": number})

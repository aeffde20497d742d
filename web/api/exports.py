"""Downloading a trained iteration as a portable model: one backbone's or the ensemble's, in
one of `models.exporting.formats.FORMATS`, zipped with labels.txt, model.json and predict.py
(`models.exporting.bundle`).

`GET /projects/<id>/export` exports the live iteration (the published one, else the latest;
`?iteration=` names another), as predictions do; `…/iterations/<n>/export` names it in the path.

A zip is built once, on the TensorFlow thread (`offload_tf`: seconds to minutes, the ONNX
conversion the slowest), and kept in the iteration's folder, so later downloads are a file read.
"""
from __future__ import annotations

import sqlalchemy as sa
from flask import request, send_file

from models.exporting.bundle import ENSEMBLE, cached_path, export_zip
from models.exporting.formats import FORMATS
from models.result import read_report
from web.api import bp
from web.api.errors import ApiError
from web.api.helpers import (
    get_predictions,
    get_project,
    get_storage,
    release_connection,
    requested_iteration,
)
from web.concurrency import offload_tf
from web.db import Iteration, db
from web.prediction import BackboneUnavailable


@bp.get("/projects/<int:project_id>/export")
@bp.get("/projects/<int:project_id>/iterations/<int:number>/export")
def export_iteration(project_id: int, number: int | None = None):
    project = get_project(project_id)
    if number is None:
        it = requested_iteration(project_id)
    else:
        it = db.session.scalar(sa.select(Iteration).where(Iteration.project_id == project_id,
                                                          Iteration.number == number))
        if it is None:
            raise ApiError(404, f"project {project_id} has no iteration {number}")
    number = it.number
    fmt = request.args.get("format", "")
    if fmt not in FORMATS:
        raise ApiError(400, f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    folder = get_storage().resolve(it.folder)
    try:
        backbones = list(read_report(folder)["backbones"])
    except (OSError, ValueError, KeyError) as exc:
        raise ApiError(404, f"iteration {number} has no readable report: {exc}") from None
    target = request.args.get("backbone", ENSEMBLE)
    if target not in [*backbones, ENSEMBLE]:
        raise ApiError(400, f"backbone must be one of {', '.join([*backbones, ENSEMBLE])}; "
                            f"got {target!r}")
    threshold = float(project.threshold or 0.0)
    release_connection()
    path = cached_path(folder, target, fmt, threshold)
    if not path.exists():
        service = get_predictions()
        try:
            # The service's loader: the same backbones (and weights) as /predict uses.
            path = offload_tf(export_zip, folder, target, fmt, service.make_backbone, threshold)
        except BackboneUnavailable as exc:
            raise ApiError(503, str(exc)) from None
        except ValueError as exc:  # a head the formats cannot express (the 'zoom' view)
            raise ApiError(422, f"{target} cannot be exported: {exc}") from None
    return send_file(path, mimetype="application/zip", as_attachment=True,
                     download_name=f"project{project_id}-iteration{number}-{target}-{fmt}.zip")

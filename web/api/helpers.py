"""What the API's route modules share: the app's services (storage, job queue, prediction,
weights folder), the caller's project (`get_project`, scoped by `web.auth.owned_project`),
the JSON body of a request (`json_body`), a project's iterations and latest job, the
iteration a request names (`requested_iteration`: the live one by default), a predict
request's uploads (`uploaded_files`, `uploaded_image`), and `release_connection` before slow
work.
"""
from __future__ import annotations

import sqlalchemy as sa
from flask import current_app, request

from models.datasets import stream_name
from web import auth
from web.api.errors import ApiError
from web.concurrency import offload
from web.db import Iteration, Job, Project, db
from web.inputs import int_arg, read_json_object
from web.jobs import Jobs
from web.prediction import PredictionService
from web.publishing import live_iteration
from web.storage import Storage


def get_storage() -> Storage:
    return current_app.extensions["transferlab.storage"]


def get_jobs() -> Jobs:
    return current_app.extensions["transferlab.jobs"]


def get_predictions() -> PredictionService:
    return current_app.extensions["transferlab.prediction"]


def weights_dir():
    return current_app.config.get("WEIGHTS_DIR")


def release_connection() -> None:
    """End the request's read transaction before slow work (decoding, storing, TensorFlow),
    so its pooled database connection serves other requests meanwhile (40 concurrent uploads
    and predictions each holding one for seconds would exhaust the pool of 5 + 10)."""
    db.session.commit()


def get_project(project_id: int) -> Project:
    """The caller's project `project_id`; 404 when it does not exist or is someone else's."""
    project = auth.owned_project(project_id)
    if project is None:
        raise ApiError(404, f"no project with id {project_id}")
    return project


def json_body() -> dict:
    """The request's JSON object (`web.inputs.read_json_object`): 400 naming the reason (its
    `BadInput`, answered by `web.api.errors`), 413 over MAX_JSON_BYTES. Every JSON route
    reads its body through this."""
    return read_json_object(request, current_app.config["MAX_JSON_BYTES"])


def project_iterations(project_id: int) -> list[Iteration]:
    return db.session.scalars(sa.select(Iteration).where(Iteration.project_id == project_id)
                              .order_by(Iteration.number)).all()


def latest_job(project_id: int) -> Job | None:
    """The project's latest training job (batch predictions are jobs too, of kind "batch")."""
    return db.session.scalar(sa.select(Job).where(Job.project_id == project_id,
                                                  Job.kind == "train")
                             .order_by(Job.id.desc()).limit(1))


def requested_iteration(project_id: int, *, default: str = "live") -> Iteration:
    """The iteration a request names with `?iteration=`, else `default`: "live" (the published
    one, or the latest when none is: `web.publishing.live_iteration`), which predictions and
    exports serve; or "latest", which the results page opens on. 404 when there is none."""
    number = int_arg(request.values, "iteration", None, 1)
    query = sa.select(Iteration).where(Iteration.project_id == project_id)
    if number is None:
        if default == "live":
            it = live_iteration(get_project(project_id))
        else:
            it = db.session.scalar(query.order_by(Iteration.number.desc()).limit(1))
        if it is None:
            raise ApiError(404, f"project {project_id} has no trained iteration yet: train it first")
    else:
        it = db.session.scalar(query.where(Iteration.number == number))
        if it is None:
            raise ApiError(404, f"project {project_id} has no iteration {number}")
    return it


def uploaded_files() -> list:
    """The request's multipart `file` fields that carry a file name (a predict request's)."""
    return [f for f in request.files.getlist("file") if f and f.filename is not None]


def uploaded_image():
    """The one image of a predict request, decoded (400 naming the file when unusable)."""
    files = uploaded_files()
    if not files:
        raise ApiError(400, "no file: send one image as multipart/form-data field 'file'")
    if len(files) > 1:
        raise ApiError(400, f"send one image per request, got {len(files)}")
    upload = files[0]
    name = stream_name(upload.filename, 0)
    data = upload.stream.read()
    from models.images import ImageRejected, decode_image

    try:
        return name, offload(decode_image, data)
    except ImageRejected as exc:
        raise ApiError(400, f"{name}: {exc.reason}", name=name, reason=exc.reason) from None

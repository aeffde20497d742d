"""The JSON API under /api/v1 (documented in docs/API.md). The pages use nothing else.

Errors are RFC 9457 problem details plus `{"error": "..."}` (`web.problems`): 400 bad input
(naming the file and the reason), 401 no or bad credentials, 403 refused, 404 unknown ids (and
other users' ids: every project query is scoped to the caller, see `web.auth.owned`), 409
conflicts, 413 too large, 503 queue/database/backbone unavailable, 507 no room. Nothing
here imports TensorFlow except the two predict routes, and those run it off the gevent loop.
"""
from __future__ import annotations

import errno
import functools
import logging

import sqlalchemy as sa
from flask import Blueprint, current_app, jsonify, request, send_file, url_for
from werkzeug.exceptions import HTTPException

from models.registry import BACKBONES, DEFAULT_BACKBONES, OFFLINE_BACKBONE, availability
from models.result import prediction_rows, read_report
from web import auth
from web.concurrency import offload, offload_tf
from web.db import Iteration, Job, Project, ProjectImage, Upload, db, iso, utcnow
from web.ingest import NOT_STORED, UploadError, check_label, check_split, ingest, upload_name
from web.inputs import BadInput, read_json_object
from web.jobs import (JobConflict, Jobs, NotEnoughData, QueueUnavailable, class_counts,
                      collect_garbage, give_up_reserve, is_disk_full, live_workers)
from web.near_duplicates import group_images, image_hashes, project_images
from web.prediction import (BackboneUnavailable, PredictionService, imagenet_backbones,
                            imagenet_candidates)
from web.problems import problem
from web.storage import Storage, is_sha256

bp = Blueprint("api", __name__, url_prefix="/api/v1")
log = logging.getLogger("transferlab.api")

IMMUTABLE = "private, max-age=31536000, immutable"
NO_ROOM = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # disk full, file size limit, quota


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def error_response(status: int, message: str, **extra):
    """Every JSON error of the API: `web.problems.problem` (`error`, `type`, `title`,
    `status`, `detail`, and `extra`'s fields)."""
    return problem(status, message, **extra)


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    return error_response(exc.status, exc.message, **exc.extra)


def _storage() -> Storage:
    return current_app.extensions["transferlab.storage"]


def _jobs() -> Jobs:
    return current_app.extensions["transferlab.jobs"]


def _predictions() -> PredictionService:
    return current_app.extensions["transferlab.prediction"]


def _release_connection() -> None:
    """End the request's read transaction before slow work (decoding, storing, TensorFlow),
    so its pooled database connection serves other requests meanwhile (40 concurrent uploads
    and predictions each holding one for seconds would exhaust the pool of 5 + 10)."""
    db.session.commit()


def _weights_dir():
    return current_app.config.get("WEIGHTS_DIR")


# -- helpers -----------------------------------------------------------------------------


def get_project(project_id: int) -> Project:
    """The caller's project `project_id`; 404 when it does not exist or is someone else's."""
    project = auth.owned_project(project_id)
    if project is None:
        raise ApiError(404, f"no project with id {project_id}")
    return project


def _json_body() -> dict:
    """The request's JSON object (`web.inputs.read_json_object`): 400 naming the reason,
    413 over MAX_JSON_BYTES. Every JSON route reads its body through this."""
    try:
        return read_json_object(request, current_app.config["MAX_JSON_BYTES"])
    except BadInput as exc:
        raise ApiError(400, str(exc)) from None


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


def _int_arg(name: str, default=None, minimum: int | None = None, maximum: int | None = None):
    raw = request.values.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name!r} must be an integer, got {raw!r}") from None
    maximum = auth.MAX_ID if maximum is None else maximum
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ApiError(400, f"{name!r} must be between {minimum} and {maximum}, got {value}")
    return value


def _float_arg(name: str, default: float, minimum: float, maximum: float) -> float:
    raw = request.values.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"{name!r} must be a number, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ApiError(400, f"{name!r} must be between {minimum} and {maximum}, got {value}")
    return value


def thumbnail_url(sha256: str) -> str:
    return url_for("api.image_thumbnail", sha256=sha256)


def image_url(sha256: str) -> str:
    return url_for("api.image_file", sha256=sha256)


def backbone_json(name: str) -> dict:
    spec = BACKBONES[name]
    status = availability(name, _weights_dir())
    return {
        "name": name, "title": spec.title, "available": status.available,
        "reason": status.reason, "input_size": spec.input_size,
        "feature_dim": spec.feature_dim, "default": name in DEFAULT_BACKBONES,
        "offline": spec.offline, "gflops": spec.gflops,
    }


def job_json(job: Job | None) -> dict | None:
    if job is None:
        return None
    return {
        "id": job.id, "job_id": job.id, "project_id": job.project_id, "state": job.state,
        "progress": round(float(job.progress or 0.0), 4), "stage": job.stage,
        "done": job.done, "total": job.total, "error": job.error,
        "iteration": job.iteration.number if job.iteration is not None else None,
        "cancel_requested": bool(job.cancel_requested), "backbones": job.backbones,
        "attempts": job.attempts, "worker": job.worker,
        "n_train": job.n_train, "n_test": job.n_test,
        "features_computed": job.features_computed, "features_total": job.features_total,
        "created_at": iso(job.created_at), "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at), "updated_at": iso(job.updated_at),
        # is any worker alive to run it? (queued/running jobs only; null otherwise)
        "worker_alive": bool(live_workers()) if job.state in ("queued", "running") else None,
    }


def iteration_json(it: Iteration) -> dict:
    ensemble = (it.summary or {}).get("ensemble", {})
    return {
        "number": it.number, "iteration": it.number, "id": it.id, "job_id": it.job_id,
        "created_at": iso(it.created_at), "classes": it.classes, "backbones": it.backbones,
        "n_train": it.n_train, "n_test": it.n_test,
        "features_computed": it.features_computed, "features_total": it.features_total,
        "cv_accuracy": ensemble.get("cv_accuracy"),
        "test_accuracy": ensemble.get("test_accuracy"),
        "summary": it.summary,
    }


def _iterations(project_id: int) -> list[Iteration]:
    return db.session.scalars(sa.select(Iteration).where(Iteration.project_id == project_id)
                              .order_by(Iteration.number)).all()


def _latest_job(project_id: int) -> Job | None:
    return db.session.scalar(sa.select(Job).where(Job.project_id == project_id)
                             .order_by(Job.id.desc()).limit(1))


def project_json(project: Project, *, full: bool = True) -> dict:
    train, test = class_counts(project.id, "train"), class_counts(project.id, "test")
    latest_job = _latest_job(project.id)
    iterations = _iterations(project.id)
    out = {
        "id": project.id, "name": project.name, "backbones": project.backbones,
        "threshold": project.threshold or 0.0,
        "fine_tune": bool(project.fine_tune),
        "created_at": iso(project.created_at), "updated_at": iso(project.updated_at),
        "classes": train, "test_classes": test,
        "n_classes": len(train), "n_train": sum(train.values()), "n_test": sum(test.values()),
        "latest_iteration": iterations[-1].number if iterations else None,
        "status": latest_job.state if latest_job else None,
        "latest_job": job_json(latest_job),
        "can_train": len(train) >= 2 and not (latest_job and latest_job.state in ("queued", "running")),
    }
    if full:
        out["backbone_status"] = [backbone_json(n) for n in project.backbones if n in BACKBONES]
        out["iterations"] = [iteration_json(it) for it in iterations]
    return out


def image_json(row: ProjectImage) -> dict:
    blob = row.blob
    return {
        "sha256": row.sha256, "label": row.label, "split": row.split, "name": row.name,
        "thumbnail": thumbnail_url(row.sha256), "url": image_url(row.sha256),
        "width": blob.width if blob else None, "height": blob.height if blob else None,
        "size": blob.size if blob else None,
        "content_type": blob.content_type if blob else None,
        "created_at": iso(row.created_at),
    }


# -- backbones -----------------------------------------------------------------------------


@bp.get("/backbones")
def list_backbones():
    return jsonify([backbone_json(name) for name in BACKBONES])


@bp.get("/status")
def status():
    """Whether the queue has a live worker; admins also see the queue's counts and the
    workers (other users' jobs and the deployment's hosts are not everyone's business)."""
    workers = live_workers()
    out = {"queue": "redis" if current_app.config.get("REDIS_URL") else "sqlite",
           "worker_alive": bool(workers), "full": bool(auth.current_user().is_admin)}
    if not out["full"]:
        return jsonify(out)
    jobs = _jobs()
    try:
        pending = jobs.huey.pending_count()
    except Exception as exc:  # the queue is down: say so rather than fail
        pending = None
        log.warning("queue unavailable: %s", exc)
    return jsonify({
        **out,
        "pending": pending,
        "workers": [{"id": w.id, "started_at": iso(w.started_at), "seen_at": iso(w.seen_at)}
                    for w in workers],
        "running": db.session.scalar(sa.select(sa.func.count()).select_from(Job)
                                     .where(Job.state == "running")),
        "queued": db.session.scalar(sa.select(sa.func.count()).select_from(Job)
                                    .where(Job.state == "queued")),
    })


# -- projects ------------------------------------------------------------------------------


@bp.get("/projects")
def list_projects():
    projects = db.session.scalars(auth.owned(sa.select(Project)).order_by(Project.id.desc())).all()
    return jsonify([project_json(p, full=False) for p in projects])


@bp.post("/projects")
def create_project():
    body = _json_body()
    name = _check_name(body.get("name"))
    backbones = _check_backbones(body.get("backbones", list(DEFAULT_BACKBONES)))
    project = Project(name=name, backbones=backbones, owner_id=auth.current_user().id)
    db.session.add(project)
    db.session.commit()
    response = jsonify(project_json(project))
    response.status_code = 201
    response.headers["Location"] = url_for("api.get_project_route", project_id=project.id)
    return response


@bp.get("/projects/<int:project_id>")
def get_project_route(project_id: int):
    return jsonify(project_json(get_project(project_id)))


@bp.patch("/projects/<int:project_id>")
def update_project(project_id: int):
    project = get_project(project_id)
    body = _json_body()
    if "name" in body:
        project.name = _check_name(body["name"])
    if "backbones" in body:
        project.backbones = _check_backbones(body["backbones"])
    if "threshold" in body:
        project.threshold = _check_threshold(body["threshold"])
    if "fine_tune" in body:
        project.fine_tune = _check_fine_tune(body["fine_tune"])
    project.updated_at = utcnow()
    db.session.commit()
    return jsonify(project_json(project))


def frees_space(route):
    """For a deleting route (which must work on a full disk, to free it): if the database's
    disk is full, give up the disk reserve and run it once more; if there is still no room,
    a 507 with everything rolled back (nothing deleted)."""
    @functools.wraps(route)
    def run(*args, **kwargs):
        try:
            return route(*args, **kwargs)
        except sa.exc.OperationalError as exc:
            full = exc
            db.session.rollback()
            if not is_disk_full(exc):
                raise
        if give_up_reserve(current_app.config):
            log.warning("disk full on %s %s: the disk reserve was given up", request.method,
                        request.path)
            try:
                return route(*args, **kwargs)
            except sa.exc.OperationalError as exc:
                full = exc
                db.session.rollback()
                if not is_disk_full(exc):
                    raise
        raise ApiError(507, f"the disk is full ({full.orig}): nothing was deleted; free some "
                       "space and retry")
    return run


@bp.delete("/projects/<int:project_id>")
@frees_space
def delete_project(project_id: int):
    project = get_project(project_id)
    jobs = _jobs()
    for job in db.session.scalars(sa.select(Job).where(Job.project_id == project_id,
                                                       Job.state.in_(("queued", "running")))):
        jobs.cancel(job)
    iteration_ids = [it.id for it in _iterations(project_id)]
    db.session.execute(sa.update(Job).where(Job.project_id == project_id)
                       .values(iteration_id=None, active_project=None))
    for model in (Iteration, Job, Upload, ProjectImage):
        db.session.execute(sa.delete(model).where(model.project_id == project_id))
    db.session.delete(project)
    db.session.commit()
    _predictions().forget(iteration_ids)
    _storage().delete_project(project_id)
    try:
        collect_garbage(_storage())
    except (OSError, sa.exc.OperationalError) as exc:  # done: the housekeeping retries it
        db.session.rollback()
        log.warning("project %s deleted; its unused images stay until the next "
                    "housekeeping: %s", project_id, exc)
    return jsonify({"deleted": project_id})


# -- images --------------------------------------------------------------------------------


@bp.post("/projects/<int:project_id>/images")
def upload_images(project_id: int):
    project = get_project(project_id)
    project_id = project.id
    _release_connection()  # before the body streams in: that may take minutes
    files = [f for f in request.files.getlist("file") if f and (f.filename or f.content_length)]
    if not files:
        raise ApiError(400, "no file: send images or zips as multipart/form-data field 'file'")
    try:
        label = check_label(request.form.get("label"))
        split = check_split(request.form.get("split"))
    except UploadError as exc:
        raise ApiError(400, str(exc)) from None
    report = ingest(project_id, files, label=label, split=split, storage=_storage(),
                    thumb_size=current_app.config["THUMBNAIL_SIZE"])
    for image in report["images"]:
        image["thumbnail"] = thumbnail_url(image["sha256"])
        image["url"] = image_url(image["sha256"])
    try:
        project.updated_at = utcnow()
        db.session.commit()
    except sa.exc.OperationalError:  # cosmetic; the upload's own outcome is in the report
        db.session.rollback()
    report["classes"] = class_counts(project_id, "train")
    report["test_classes"] = class_counts(project_id, "test")
    new = {image["sha256"] for image in report["images"]}
    report["near_duplicates"] = [g for g in _near_duplicates(project_id)
                                 if new & {i["sha256"] for i in g["images"]}]
    if report["accepted"] == 0 and not report["duplicates"] and report["rejected"]:
        first = sorted(report["rejected"], key=lambda r: not r["reason"].startswith(NOT_STORED))
        shown = "; ".join(f"{r['name']}: {r['reason']}" for r in first[:5])  # server faults first
        more = len(report["rejected"]) - 5
        message = f"no image accepted: {shown}" + (f"; and {more} more" if more > 0 else "")
        server_fault = first[0]["reason"].startswith(NOT_STORED)
        return error_response(507 if server_fault else 400, message, **report)
    return jsonify(report)


def _near_duplicates(project_id: int) -> list[dict]:
    rows = project_images(project_id)
    hashes = offload(image_hashes, _storage(), [r.sha256 for r in rows],
                     current_app.config["THUMBNAIL_SIZE"])
    groups = group_images(rows, hashes)
    for group in groups:
        for image in group["images"]:
            image["thumbnail"] = thumbnail_url(image["sha256"])
    return groups


@bp.get("/projects/<int:project_id>/near-duplicates")
def list_near_duplicates(project_id: int):
    """Groups of the project's images that look like one picture (perceptual hash)."""
    get_project(project_id)
    return jsonify({"groups": _near_duplicates(project_id)})


@bp.get("/projects/<int:project_id>/images")
def list_images(project_id: int):
    get_project(project_id)
    query = sa.select(ProjectImage).where(ProjectImage.project_id == project_id)
    label = request.args.get("label")
    if label:
        query = query.where(ProjectImage.label == label)
    split = request.args.get("split")
    if split:
        if split not in ("train", "test"):
            raise ApiError(400, f"invalid split {split!r}: use 'train' or 'test'")
        query = query.where(ProjectImage.split == split)
    query = query.order_by(ProjectImage.split.desc(), ProjectImage.label, ProjectImage.id)
    offset = _int_arg("offset", 0, 0)
    limit = _int_arg("limit", None, 1, 100_000)
    query = query.offset(offset)
    if limit:
        query = query.limit(limit)
    return jsonify([image_json(row) for row in db.session.scalars(query)])


def _project_image(project_id: int, sha256: str) -> ProjectImage:
    get_project(project_id)
    row = db.session.scalar(sa.select(ProjectImage).where(
        ProjectImage.project_id == project_id, ProjectImage.sha256 == sha256))
    if row is None:
        raise ApiError(404, f"no image {sha256} in project {project_id}")
    return row


@bp.patch("/projects/<int:project_id>/images/<sha256>")
def update_image(project_id: int, sha256: str):
    row = _project_image(project_id, sha256)
    body = _json_body()
    try:
        if "label" in body:
            label = check_label(body["label"] if isinstance(body["label"], str) else None)
            if label is None:
                raise UploadError("'label' must be a non-empty string")
            row.label = label
        if "split" in body:
            row.split = check_split(body["split"] if isinstance(body["split"], str) else "?")
    except UploadError as exc:
        raise ApiError(400, str(exc)) from None
    db.session.commit()
    return jsonify(image_json(row))


@bp.delete("/projects/<int:project_id>/images/<sha256>")
@frees_space
def delete_image(project_id: int, sha256: str):
    row = _project_image(project_id, sha256)
    db.session.delete(row)
    db.session.commit()
    return jsonify({"deleted": sha256, "classes": class_counts(project_id, "train"),
                    "test_classes": class_counts(project_id, "test")})


@bp.get("/projects/<int:project_id>/uploads")
def list_uploads(project_id: int):
    get_project(project_id)
    uploads = db.session.scalars(sa.select(Upload).where(Upload.project_id == project_id)
                                 .order_by(Upload.id.desc()).limit(50))
    return jsonify([{
        "id": u.id, "created_at": iso(u.created_at), "split": u.split, "label": u.label,
        "accepted": u.accepted, "files": u.files, "rejected": u.rejected,
        "duplicates": u.duplicates} for u in uploads])


def _served_image(sha256: str) -> None:
    """404 unless `sha256` is an image one of the caller's projects holds (nothing else is
    served)."""
    if not is_sha256(sha256) or db.session.scalar(auth.owned(
            sa.select(ProjectImage.id).join(Project, Project.id == ProjectImage.project_id)
            .where(ProjectImage.sha256 == sha256)).limit(1)) is None:
        raise ApiError(404, f"no image {sha256}")


def _send(path, mimetype: str, sha256: str, suffix: str = "", download_name: str | None = None):
    response = send_file(path, mimetype=mimetype, conditional=True, etag=f"{sha256}{suffix}",
                         max_age=31536000, download_name=download_name)
    response.headers["Cache-Control"] = IMMUTABLE
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


def _ensure_derived(sha256: str, path_of, size: int, put) -> None:
    storage = _storage()
    if path_of(sha256).is_file():
        return
    from models.images import ImageRejected, decode_image, thumbnail_jpeg

    def make():
        try:
            put(sha256, thumbnail_jpeg(decode_image(storage.read_blob(sha256)), size))
        except (ImageRejected, OSError) as exc:
            raise ApiError(404, f"image {sha256} is not readable: {exc}") from None

    offload(make)


@bp.get("/images/<sha256>")
def image_file(sha256: str):
    _served_image(sha256)
    storage = _storage()
    from web.db import Blob

    blob = db.session.get(Blob, sha256)
    path = storage.blob_path(sha256)
    if blob is None or not path.is_file():
        raise ApiError(404, f"image {sha256} is missing from storage")
    ext = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp",
           "image/bmp": ".bmp", "image/gif": ".gif", "image/tiff": ".tif"}.get(
               blob.content_type, "")
    return _send(path, blob.content_type, sha256, download_name=f"{sha256[:16]}{ext}")


@bp.get("/images/<sha256>/thumbnail")
def image_thumbnail(sha256: str):
    _served_image(sha256)
    storage = _storage()
    _ensure_derived(sha256, storage.thumb_path, current_app.config["THUMBNAIL_SIZE"],
                    storage.put_thumbnail)
    return _send(storage.thumb_path(sha256), "image/jpeg", sha256, "-thumb")


@bp.get("/images/<sha256>/preview")
def image_preview(sha256: str):
    """A JPEG no larger than PREVIEW_SIZE on its long side (browsers cannot show TIFF)."""
    _served_image(sha256)
    storage = _storage()
    _ensure_derived(sha256, storage.preview_path, current_app.config["PREVIEW_SIZE"],
                    storage.put_preview)
    return _send(storage.preview_path(sha256), "image/jpeg", sha256, "-preview")


# -- training ------------------------------------------------------------------------------


@bp.post("/projects/<int:project_id>/train")
def train_project(project_id: int):
    project = get_project(project_id)
    try:
        job = _jobs().start_training(project)
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
    job = None if job_id > auth.MAX_ID else db.session.scalar(auth.owned(
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
    outcome = _jobs().cancel(job)
    if outcome == "finished":
        raise ApiError(409, f"job {job_id} has already finished ({job.state})",
                       job=job_json(job))
    response = jsonify(job_json(job))
    response.status_code = 200 if outcome == "cancelled" else 202
    return response


# -- results -------------------------------------------------------------------------------


def _iteration(project_id: int) -> Iteration:
    number = _int_arg("iteration", None, 1)
    query = sa.select(Iteration).where(Iteration.project_id == project_id)
    if number is None:
        it = db.session.scalar(query.order_by(Iteration.number.desc()).limit(1))
        if it is None:
            raise ApiError(404, f"project {project_id} has no trained iteration yet: train it first")
    else:
        it = db.session.scalar(query.where(Iteration.number == number))
        if it is None:
            raise ApiError(404, f"project {project_id} has no iteration {number}")
    return it


@bp.get("/projects/<int:project_id>/results")
def results(project_id: int):
    get_project(project_id)
    it = _iteration(project_id)
    try:
        report = read_report(_storage().resolve(it.folder))
    except (OSError, ValueError) as exc:
        raise ApiError(404, f"iteration {it.number} has no readable report: {exc}") from None
    pattern = thumbnail_url("0" * 64).replace("0" * 64, "{sha256}")
    for p in prediction_rows(report):
        p.setdefault("thumbnail", pattern.replace("{sha256}", p["sha256"]))
    report.update({
        "iteration": it.number, "iteration_id": it.id, "project_id": project_id,
        "job_id": it.job_id, "created_at": iso(it.created_at),
        "features_computed": it.features_computed, "features_total": it.features_total,
        "iterations": [i.number for i in _iterations(project_id)],
        "thumbnail_url": pattern,
    })
    return jsonify(report)


@bp.get("/projects/<int:project_id>/iterations")
def list_iterations(project_id: int):
    get_project(project_id)
    return jsonify([iteration_json(it) for it in _iterations(project_id)])


# -- prediction ----------------------------------------------------------------------------


def _uploaded_image():
    """The one image of a predict request, decoded (400 naming the file when unusable)."""
    files = [f for f in request.files.getlist("file") if f and f.filename is not None]
    if not files:
        raise ApiError(400, "no file: send one image as multipart/form-data field 'file'")
    if len(files) > 1:
        raise ApiError(400, f"send one image per request, got {len(files)}")
    upload = files[0]
    name = upload_name(upload.filename, 0)
    data = upload.stream.read()
    from models.images import ImageRejected, decode_image

    try:
        return name, offload(decode_image, data)
    except ImageRejected as exc:
        raise ApiError(400, f"{name}: {exc.reason}", name=name, reason=exc.reason) from None


@bp.post("/projects/<int:project_id>/predict")
def predict(project_id: int):
    project = get_project(project_id)
    it = _iteration(project_id)
    top_k = _int_arg("top_k", current_app.config["TOP_K"], 1, 20)
    threshold = _float_arg("threshold", project.threshold or 0.0, 0.0, 1.0)
    it_id, number, classes, folder = it.id, it.number, it.classes, _storage().resolve(it.folder)
    _release_connection()
    name, image = _uploaded_image()
    try:
        answer = _predictions().classify(it_id, folder, image, top_k, threshold)
    except BackboneUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    return jsonify({**answer, "name": name, "iteration": number, "classes": classes})


@bp.post("/imagenet/predict")
def imagenet_predict():
    raw = request.values.get("backbones")
    requested = [b.strip() for b in raw.split(",") if b.strip()] if raw else None
    try:
        backbones = imagenet_backbones(requested, _weights_dir())
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    top_k = _int_arg("top_k", current_app.config["TOP_K"], 1, 20)
    name, image = _uploaded_image()
    try:
        answers = offload_tf(_predictions().imagenet, [image], backbones, top_k)
    except BackboneUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    return jsonify({**answers[0], "name": name, "mode": "imagenet"})


@bp.get("/imagenet/backbones")
def imagenet_backbone_list():
    from web.prediction import imagenet_unavailable_reason

    out = []
    for name in imagenet_candidates():
        reason = imagenet_unavailable_reason(name, _weights_dir())
        out.append({**backbone_json(name), "available": reason is None,
                    "reason": reason or backbone_json(name)["reason"],
                    "default": name in DEFAULT_BACKBONES or name == OFFLINE_BACKBONE})
    return jsonify(out)


# -- account: who am I, API tokens, the API's description -------------------------------------


@bp.get("/me")
def me():
    return jsonify(auth.user_json(auth.current_user()))


@bp.get("/tokens")
def list_tokens():
    return jsonify([auth.token_json(t) for t in auth.user_tokens(auth.current_user())])


@bp.post("/tokens")
def create_token():
    body = _json_body()
    try:
        row, secret = auth.issue_token(auth.current_user(), body.get("name"),
                                       body.get("expires_in_days"))
    except auth.AuthError as exc:
        raise ApiError(400, str(exc)) from None
    response = jsonify({**auth.token_json(row), "token": secret})
    response.status_code = 201
    return response


@bp.delete("/tokens/<int:token_id>")
def delete_token(token_id: int):
    if token_id > auth.MAX_ID or not auth.revoke_token(auth.current_user(), token_id):
        raise ApiError(404, f"no token with id {token_id}")
    return jsonify({"deleted": token_id})


OPENAPI_FILE = "docs/openapi.yaml"


@bp.get("/openapi.yaml")
def openapi():
    """This API's OpenAPI 3 description (public: it holds no data)."""
    import os

    path = os.path.join(os.path.dirname(current_app.root_path), OPENAPI_FILE)
    return send_file(path, mimetype="application/yaml", max_age=0)


def _too_large_message() -> str:
    """Which limit a 413 came from: the whole request's, or the form's (a field too big,
    or too many parts), with the number of bytes."""
    limit = request.max_content_length
    size = request.content_length
    if limit is not None and (size is None or size > limit):
        what = ("JSON body" if request.is_json else
                "form" if request.mimetype == "application/x-www-form-urlencoded" else "upload")
        return f"{what} too large: the limit is {limit} bytes" + (
            f", this request has {size}" if size is not None else "")
    return (f"a form field is too large or there are too many form parts: the limits are "
            f"{request.max_form_memory_size} bytes per non-file field and "
            f"{request.max_form_parts} parts")


def register_error_handlers(app) -> None:
    """JSON errors for every /api/ URL (including unknown routes), HTML elsewhere."""

    @app.errorhandler(OSError)
    def _no_room(exc: OSError):
        """A full disk (or file size limit) while receiving or storing a request: 507."""
        if exc.errno not in NO_ROOM:
            raise exc
        log.error("no room on %s %s: %s", request.method, request.path, exc)
        db.session.rollback()
        message = (f"the server has no room to store this ({exc.strerror}): what the answer "
                   "did not report as saved was not saved; retry once space is freed")
        if request.path.startswith("/api/"):
            return error_response(507, message)
        return message, 507, {"Content-Type": "text/plain; charset=utf-8"}

    @app.errorhandler(sa.exc.OperationalError)
    def _database_error(exc: sa.exc.OperationalError):
        """The database cannot be written (disk full, file locked, server down): its
        transaction is rolled back, so it holds what was committed before, nothing half."""
        db.session.rollback()
        log.error("database error on %s %s: %s", request.method, request.path, exc.orig)
        message = (f"the database could not be used ({exc.orig}): nothing of the failed step "
                   "was saved; retry once the server has room")
        if request.path.startswith("/api/"):
            return error_response(503, message)
        return message, 503, {"Content-Type": "text/plain; charset=utf-8"}

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if request.path.startswith("/api/"):
            message = exc.description or exc.name
            if exc.code == 413:
                message = _too_large_message()
            elif exc.code == 404 and request.url_rule is None:
                message = f"not found: {request.path}"
            elif exc.code == 500:
                message = "internal error (see the server log)"
            elif exc.code == 405:
                message = f"method {request.method} not allowed on {request.path}"
            response = error_response(exc.code or 500, message)
            if exc.code == 405 and hasattr(exc, "valid_methods") and exc.valid_methods:
                response.headers["Allow"] = ", ".join(exc.valid_methods)
            return response
        return exc


__all__ = ["bp", "register_error_handlers"]

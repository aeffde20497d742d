"""A project's images: upload (images and zips, with the near-duplicates they make), list,
relabel or move between splits, delete, the recent uploads and the near-duplicate groups;
and serving an image's bytes, thumbnail and preview to its owner (immutable, sandboxed).
"""
from __future__ import annotations

import sqlalchemy as sa
from flask import current_app, jsonify, request, send_file

from web import auth
from web.api import bp
from web.api.errors import ApiError, error_response, frees_space
from web.api.helpers import get_project, get_storage, json_body, release_connection
from web.api.serializers import image_json, image_url, thumbnail_url
from web.concurrency import offload
from web.db import Project, ProjectImage, Upload, db, iso, utcnow
from web.ingest import NOT_STORED, UploadError, check_label, check_split, ingest
from web.inputs import int_arg
from web.jobs import class_counts
from web.near_duplicates import group_images, image_hashes, project_images
from web.storage import is_sha256

IMMUTABLE = "private, max-age=31536000, immutable"


@bp.post("/projects/<int:project_id>/images")
def upload_images(project_id: int):
    project = get_project(project_id)
    project_id = project.id
    release_connection()  # before the body streams in: that may take minutes
    files = [f for f in request.files.getlist("file") if f and (f.filename or f.content_length)]
    if not files:
        raise ApiError(400, "no file: send images or zips as multipart/form-data field 'file'")
    try:
        label = check_label(request.form.get("label"))
        split = check_split(request.form.get("split"))
    except UploadError as exc:
        raise ApiError(400, str(exc)) from None
    report = ingest(project_id, files, label=label, split=split, storage=get_storage(),
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
    hashes = offload(image_hashes, get_storage(), [r.sha256 for r in rows],
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
    offset = int_arg(request.values, "offset", 0, 0)
    limit = int_arg(request.values, "limit", None, 1, 100_000)
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
    body = json_body()
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


# -- serving image files -------------------------------------------------------------------


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


def _ensure_derived(sha256: str, path_of, make, size: int) -> None:
    """Make the thumbnail or preview `path_of(sha256)` with `make` (`Storage.ensure_thumbnail`
    or `.ensure_preview`) off the gevent loop when missing; 404 when the image is unreadable."""
    if path_of(sha256).is_file():
        return
    from models.images import ImageRejected

    def run():
        try:
            make(sha256, size)
        except (ImageRejected, OSError) as exc:
            raise ApiError(404, f"image {sha256} is not readable: {exc}") from None

    offload(run)


@bp.get("/images/<sha256>")
def image_file(sha256: str):
    _served_image(sha256)
    storage = get_storage()
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
    storage = get_storage()
    _ensure_derived(sha256, storage.thumb_path, storage.ensure_thumbnail,
                    current_app.config["THUMBNAIL_SIZE"])
    return _send(storage.thumb_path(sha256), "image/jpeg", sha256, "-thumb")


@bp.get("/images/<sha256>/preview")
def image_preview(sha256: str):
    """A JPEG no larger than PREVIEW_SIZE on its long side (browsers cannot show TIFF)."""
    _served_image(sha256)
    storage = get_storage()
    _ensure_derived(sha256, storage.preview_path, storage.ensure_preview,
                    current_app.config["PREVIEW_SIZE"])
    return _send(storage.preview_path(sha256), "image/jpeg", sha256, "-preview")

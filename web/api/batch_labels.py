"""Labelling a batch's images (active suggestions, `models.active`): `GET
/batches/<id>/images/<index>/thumbnail` shows one of its images, `POST /batches/<id>/label`
adds some of them to the batch's project as labelled training images.

Contract of `POST /batches/<id>/label`: body {"images": [{"index": row index | "sha256":
id, "label": class}, ...], "split": "train" (default) | "test"}. Every item is checked before
anything is stored: the image must be one of this batch's rows (by its index in `images`, or
its sha256), the label a valid class name (an existing class or a new one); a problem is a
400 naming the item and field, an unknown or another user's batch a 404, a batch without
results a 409. The images are copied server-side from the batch's stored files (no
re-upload) into the project's storage, as an upload would store them; an image already in
the project is reported under `duplicates` (with its class there) and left as it is. The
answer: {"added": [{"index", "sha256", "label", "split", "name"}], "duplicates": [...],
"classes", "test_classes"}.
"""
from __future__ import annotations

import json

from flask import current_app, send_file

from web.api import bp
from web.api.batches import _finished, _get_batch
from web.api.errors import ApiError
from web.api.helpers import get_storage, json_body, release_connection
from web.concurrency import offload
from web.db import Project, db, utcnow
from web.ingest import LIMITS, NOT_STORED, FileStore, UploadError, add_to_project, check_label, \
    check_split
from web.jobs import class_counts
from web.jobs.batch_run import batch_files, batch_relpath
from web.storage import atomic_write, is_sha256

MAX_LABELS = 500  # images in one request


def _result(job) -> dict:
    return json.loads(offload(_finished(job).read_text))


def _row(rows: list[dict], index) -> dict:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(rows):
        raise ApiError(404, f"no image {index!r} in this batch: it has {len(rows)} "
                            f"(indexes 0 to {len(rows) - 1})")
    return rows[index]


def _image_bytes(job, row: dict) -> bytes:
    from models.batch_predict import read_image

    folder = get_storage().resolve(batch_relpath(job.project_id, job.id))
    try:
        return offload(read_image, batch_files(folder), row, LIMITS)
    except (LookupError, OSError) as exc:
        raise ApiError(409, f"image {row['name']} of batch {job.id} cannot be read back: "
                            f"{exc}") from None


@bp.get("/batches/<int:job_id>/images/<int:index>/thumbnail")
def batch_thumbnail(job_id: int, index: int):
    """A JPEG thumbnail of the batch's image `index` (made once, kept with the batch)."""
    from models.images import ImageRejected, decode_image, thumbnail_jpeg

    job = _get_batch(job_id)
    row = _row(_result(job)["images"], index)
    path = get_storage().resolve(batch_relpath(job.project_id, job.id)) / "thumbs" / f"{index}.jpg"
    if not path.is_file():
        data, size = _image_bytes(job, row), current_app.config["THUMBNAIL_SIZE"]

        def make() -> None:  # off the loop, so outside the app context
            path.parent.mkdir(exist_ok=True)
            atomic_write(path, thumbnail_jpeg(decode_image(data), size))
        try:
            offload(make)
        except ImageRejected as exc:
            raise ApiError(409, f"image {row['name']} is not readable: {exc}") from None
    response = send_file(path, mimetype="image/jpeg", max_age=3600, conditional=True)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


def _items(body: dict, rows: list[dict]) -> list[tuple[int, str]]:
    """[(row index, label)] of the body, every item checked (400 naming the first problem)."""
    items = body.get("images")
    if not isinstance(items, list) or not items:
        raise ApiError(400, "'images' must be a non-empty list of {\"index\" or \"sha256\", "
                            "\"label\"}")
    if len(items) > MAX_LABELS:
        raise ApiError(400, f"'images' lists {len(items)} images; at most {MAX_LABELS} at once")
    by_sha = {}
    for i, row in enumerate(rows):
        by_sha.setdefault(row["sha256"], i)
    out: dict[int, str] = {}
    for n, item in enumerate(items):
        where = f"images[{n}]"
        if not isinstance(item, dict):
            raise ApiError(400, f"{where} must be an object with \"index\" or \"sha256\", and "
                                "\"label\"")
        if ("index" in item) == ("sha256" in item):
            raise ApiError(400, f"{where}: name the image by either \"index\" or \"sha256\"")
        if "index" in item:
            index = item["index"]
            if isinstance(index, bool) or not isinstance(index, int) \
                    or not 0 <= index < len(rows):
                raise ApiError(400, f"{where}.index: {index!r} is not an image of this batch "
                                    f"(it has {len(rows)}, indexes 0 to {len(rows) - 1})")
        else:
            sha = item["sha256"]
            if not (isinstance(sha, str) and is_sha256(sha)) or sha not in by_sha:
                raise ApiError(400, f"{where}.sha256: {str(sha)[:80]!r} is not an image of "
                                    "this batch")
            index = by_sha[sha]
        raw = item.get("label")
        try:
            label = check_label(raw if isinstance(raw, str) else None)
        except UploadError as exc:
            raise ApiError(400, f"{where}.label: {exc}") from None
        if label is None:
            raise ApiError(400, f"{where}.label must be a class name: an existing class or a "
                                "new one")
        sha = rows[index]["sha256"]
        earlier = next((j for j, lab in out.items() if rows[j]["sha256"] == sha), None)
        if earlier is not None and out[earlier] != label:
            raise ApiError(400, f"{where}: the same image is already labelled "
                                f"{out[earlier]!r} in this request")
        if earlier is None:
            out[index] = label
    return list(out.items())


@bp.post("/batches/<int:job_id>/label")
def label_batch(job_id: int):
    from models.datasets import Sample
    from models.images import ImageRejected, decode_image

    body = json_body()  # a malformed body is a 400 whatever the batch
    job = _get_batch(job_id)
    split = body.get("split", "train")
    try:
        split = check_split(split if isinstance(split, str) else repr(split))
    except UploadError as exc:
        raise ApiError(400, f"split: {exc}") from None
    rows = _result(job)["images"]
    items = _items(body, rows)
    project_id, storage = job.project_id, get_storage()
    store = FileStore(storage, current_app.config["THUMBNAIL_SIZE"])
    data = {index: _image_bytes(job, rows[index]) for index, _ in items}
    release_connection()  # decoding and writing may take a while

    def write() -> None:
        for index, label in items:
            row = rows[index]
            try:
                image = decode_image(data[index])
            except ImageRejected as exc:
                raise ApiError(409, f"image {row['name']} is not readable: {exc}") from None
            store(Sample(row["sha256"], label, row["name"], data[index]), image)
        storage.sync()
    offload(write)
    if store.rejected:
        raise ApiError(507, f"{NOT_STORED}: " + "; ".join(f"{r.source}: {r.reason}"
                                                        for r in store.rejected[:5]))
    added, duplicates = add_to_project(project_id, store.stored, split)
    project = db.session.get(Project, project_id)
    if project is not None:
        project.updated_at = utcnow()
    db.session.commit()
    index_of = {rows[i]["sha256"]: i for i, _ in items}
    for entry in [*added, *duplicates]:
        entry["index"] = index_of[entry["sha256"]]
    return {"added": added, "duplicates": duplicates,
            "classes": class_counts(project_id, "train"),
            "test_classes": class_counts(project_id, "test")}

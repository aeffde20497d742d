"""Bulk changes to a project's images, and their undo: `POST /projects/<id>/images/bulk`.

Contract:
- The body names an `action` and what it applies to: `images` (a list of sha256, the ids
  the API uses for a project's images) or `class` (every image with that label, optionally
  of one `split`).
    relabel  `label`: the new class. With `class` this renames the class, or merges it into
             `label` when that class exists (`merged: true` in the answer).
    move     `split`: "train" or "test".
    delete   removes the images from the project. The stored files are touched, so garbage
             collection spares them for ORPHAN_GRACE_SECONDS: an undo within that time
             brings them back.
    undo     `token`: an `undo` token an earlier answer gave.
- All or nothing: the whole action runs in one database transaction, after every id has
  been checked. An id that is not an image of this project (unknown, or in another user's
  project) is a 404 naming it, a malformed one a 400, and nothing changes.
- Every answer carries `undo`: {"action": "undo", "token": ...} puts every image it touched
  back as it was before (label, split, or present at all); undoing answers with a token
  that redoes. A token is signed with the app's secret key for this project (it cannot be
  forged or replayed on another project) and expires after ORPHAN_GRACE_SECONDS (410),
  after which deleted files may be gone. Undoing a delete whose file has since been
  collected is a 409 and restores nothing. `undo` is null with `undo_unavailable` saying
  why when the token would exceed MAX_JSON_BYTES (a request could not carry it back).
"""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from flask import current_app, jsonify
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from web.api import bp
from web.api.errors import ApiError, frees_space
from web.api.helpers import get_project, get_storage, json_body
from web.db import Blob, ProjectImage, db, iso, utcnow
from web.ingest import UploadError, check_label, check_split
from web.jobs import class_counts
from web.storage import is_sha256

ACTIONS = ("relabel", "move", "delete", "undo")
MAX_IMAGES = 10_000  # ids in one request (what a page can select; keeps the token bounded)
SHOWN_IDS = 5  # ids named in an error message

# A row's state in a token: None (not in the project) or [label, split, name, created_at].
State = list | None


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt="transferlab.images.undo")


def _grace() -> int:
    return int(current_app.config.get("ORPHAN_GRACE_SECONDS", 3600))


def _listed(text: list[str]) -> str:
    more = len(text) - SHOWN_IDS
    return ", ".join(text[:SHOWN_IDS]) + (f" and {more} more" if more > 0 else "")


def _check_ids(value) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ApiError(400, "'images' must be a non-empty list of image ids (sha256)")
    if len(value) > MAX_IMAGES:
        raise ApiError(400, f"'images' lists {len(value)} images; at most {MAX_IMAGES} at once")
    bad = [repr(v)[:80] for v in value if not (isinstance(v, str) and is_sha256(v))]
    if bad:
        raise ApiError(400, f"'images' holds {len(bad)} malformed id(s) (not a sha256): "
                            f"{_listed(bad)}; nothing was changed")
    return list(dict.fromkeys(value))


def _selected(project_id: int, body: dict) -> list[ProjectImage]:
    """The rows the body selects (`images` xor `class`), every one checked to be here."""
    if ("images" in body) == ("class" in body):
        raise ApiError(400, "name the images: either 'images' (a list of ids) or 'class' "
                            "(every image of that class)")
    query = sa.select(ProjectImage).where(ProjectImage.project_id == project_id)
    if "class" in body:
        label = body["class"]
        if not isinstance(label, str) or not label:
            raise ApiError(400, "'class' must be the name of one of the project's classes")
        query = query.where(ProjectImage.label == label)
        if "split" in body and body.get("action") != "move":
            query = query.where(ProjectImage.split == _split(body["split"]))
        rows = db.session.scalars(query.order_by(ProjectImage.id)).all()
        if not rows:
            raise ApiError(404, f"no class {label!r} in project {project_id}")
        return rows
    ids = _check_ids(body["images"])
    rows = {r.sha256: r for r in db.session.scalars(query.where(ProjectImage.sha256.in_(ids)))}
    missing = [sha for sha in ids if sha not in rows]
    if missing:
        raise ApiError(404, f"{len(missing)} of the images are not in project {project_id}: "
                            f"{_listed(missing)}; nothing was changed", missing=missing)
    return [rows[sha] for sha in ids]


def _split(value) -> str:
    try:
        return check_split(value if isinstance(value, str) else "?")
    except UploadError as exc:
        raise ApiError(400, str(exc)) from None


def _label(value) -> str:
    try:
        label = check_label(value if isinstance(value, str) else None)
    except UploadError as exc:
        raise ApiError(400, str(exc)) from None
    if label is None:
        raise ApiError(400, "'label' must be a non-empty string: the new class")
    return label


def _state(row: ProjectImage | None) -> State:
    return None if row is None else [row.label, row.split, row.name, iso(row.created_at)]


def _touch(shas: list[str]) -> None:
    """Garbage collection spares recently touched files: that keeps undoing a delete possible."""
    if shas:
        db.session.execute(sa.update(Blob).where(Blob.sha256.in_(shas)).values(touched_at=utcnow()))


def _token(project_id: int, before: dict[str, State]) -> tuple[dict | None, str | None]:
    token = _serializer().dumps({"project": project_id, "images": before})
    if len(token) + 100 > current_app.config["MAX_JSON_BYTES"]:
        return None, (f"too many images ({len(before)}) for an undo token a request can carry "
                      "(MAX_JSON_BYTES)")
    return {"action": "undo", "token": token}, None


def _restore(project_id: int, token) -> tuple[dict[str, State], dict[str, State]]:
    """Apply an undo token: (the states before, the states it sets), all checked first."""
    if not isinstance(token, str) or not token:
        raise ApiError(400, "'token' must be the undo token an earlier answer gave")
    try:
        data = _serializer().loads(token, max_age=_grace())
    except SignatureExpired:
        raise ApiError(410, f"this undo has expired: undo is possible for {_grace()} s after "
                            "an action") from None
    except BadSignature:
        raise ApiError(400, "'token' is not an undo token of this server") from None
    if data.get("project") != project_id:
        raise ApiError(400, "'token' is an undo token of another project")
    wanted: dict[str, State] = data["images"]
    rows = {r.sha256: r for r in db.session.scalars(sa.select(ProjectImage).where(
        ProjectImage.project_id == project_id, ProjectImage.sha256.in_(list(wanted))))}
    back = [sha for sha, state in wanted.items() if state is not None and sha not in rows]
    if back:
        stored = set(db.session.scalars(sa.select(Blob.sha256).where(Blob.sha256.in_(back))))
        storage = get_storage()
        gone = [sha for sha in back if sha not in stored or not storage.blob_path(sha).is_file()]
        if gone:
            raise ApiError(409, f"{len(gone)} deleted image(s) are no longer stored, so they "
                                f"cannot come back: {_listed(gone)}; nothing was changed",
                           missing=gone)
    before = {sha: _state(rows.get(sha)) for sha in wanted}
    _touch([sha for sha, state in wanted.items() if state is None and sha in rows])
    for sha, state in wanted.items():
        row = rows.get(sha)
        if state is None:
            if row is not None:
                db.session.delete(row)
            continue
        label, split, name, created = state
        if row is None:
            row = ProjectImage(project_id=project_id, sha256=sha, name=name or sha[:16],
                               label=label, split=split)
            if created:
                row.created_at = datetime.fromisoformat(created.rstrip("Z"))
            db.session.add(row)
        else:
            row.label, row.split = label, split
    return before, wanted


@bp.post("/projects/<int:project_id>/images/bulk")
@frees_space
def bulk_images(project_id: int):
    project = get_project(project_id)
    body = json_body()
    action = body.get("action")
    if action not in ACTIONS:
        raise ApiError(400, f"invalid action {action!r}: use one of {', '.join(ACTIONS)}")
    merged = False
    if action == "undo":
        before, after = _restore(project_id, body.get("token"))
        changed = sum(before[sha] != after[sha] for sha in after)
    else:
        label = _label(body.get("label")) if action == "relabel" else None
        split = _split(body.get("split")) if action == "move" else None
        rows = _selected(project_id, body)
        before = {r.sha256: _state(r) for r in rows}
        if action == "relabel" and "class" in body:
            merged = label != body["class"] and db.session.scalar(
                sa.select(ProjectImage.id).where(ProjectImage.project_id == project_id,
                                                 ProjectImage.label == label).limit(1)) is not None
        changed = 0
        for row in rows:
            if action == "delete":
                db.session.delete(row)
            elif action == "relabel":
                changed += row.label != label
                row.label = label
            else:
                changed += row.split != split
                row.split = split
        if action == "delete":
            changed = len(rows)
            _touch(list(before))
    project.updated_at = utcnow()
    db.session.commit()
    undo, why = _token(project_id, before)
    out = {"action": action, "changed": changed, "images": list(before), "undo": undo,
           "classes": class_counts(project_id, "train"),
           "test_classes": class_counts(project_id, "test")}
    if why:
        out["undo_unavailable"] = why
    if action == "relabel" and "class" in body:
        out["merged"] = merged
    return jsonify(out)

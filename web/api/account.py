"""The caller and the service: who am I (`/me`), the caller's API tokens (list, create,
revoke), the queue's status (more for admins), and the API's own OpenAPI description.
"""
from __future__ import annotations

import logging
import os

import sqlalchemy as sa
from flask import current_app, jsonify, send_file

from web import auth
from web.api import bp
from web.api.errors import ApiError
from web.api.helpers import get_jobs, json_body
from web.db import Job, db, iso
from web.inputs import MAX_ID
from web.jobs import live_workers

log = logging.getLogger("transferlab.api")

OPENAPI_FILE = "docs/openapi.yaml"


@bp.get("/me")
def me():
    return jsonify(auth.user_json(auth.current_user()))


@bp.get("/tokens")
def list_tokens():
    return jsonify([auth.token_json(t) for t in auth.user_tokens(auth.current_user())])


@bp.post("/tokens")
def create_token():
    body = json_body()
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
    if token_id > MAX_ID or not auth.revoke_token(auth.current_user(), token_id):
        raise ApiError(404, f"no token with id {token_id}")
    return jsonify({"deleted": token_id})


@bp.get("/status")
def status():
    """Whether the queue has a live worker; admins also see the queue's counts and the
    workers (other users' jobs and the deployment's hosts are not everyone's business)."""
    workers = live_workers()
    out = {"queue": "redis" if current_app.config.get("REDIS_URL") else "sqlite",
           "worker_alive": bool(workers), "full": bool(auth.current_user().is_admin)}
    if not out["full"]:
        return jsonify(out)
    jobs = get_jobs()
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


@bp.get("/openapi.yaml")
def openapi():
    """This API's OpenAPI 3 description (public: it holds no data)."""
    path = os.path.join(os.path.dirname(current_app.root_path), OPENAPI_FILE)
    return send_file(path, mimetype="application/yaml", max_age=0)

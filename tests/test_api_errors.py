"""The API's description is valid OpenAPI, its errors are RFC 9457 problem details (plus
`error`) from every source, and /api/v1/status shows job counts and workers to admins only.

In-process with Flask's test client on a temporary instance (real database, SQLite queue,
no worker).
"""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from helpers import api_token, logged_in
from openapi_spec_validator import validate
from werkzeug.http import HTTP_STATUS_CODES

from web import create_app
from web.problems import KINDS, TYPE_PREFIX

pytestmark = pytest.mark.unit

OPENAPI = Path(__file__).resolve().parents[1] / "docs/openapi.yaml"


@pytest.fixture
def app(tmp_path):
    return create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "TESTING": True,
                       "MAX_JSON_BYTES": 5000})


def test_openapi_description_is_valid_openapi():
    spec = yaml.safe_load(OPENAPI.read_text())
    validate(spec)  # raises, naming the first invalid part


def test_openapi_documents_503_and_507_where_routes_give_them():
    paths = yaml.safe_load(OPENAPI.read_text())["paths"]
    for path, item in paths.items():
        for method, op in item.items():
            if method == "parameters":
                continue
            if method in ("post", "patch", "delete", "put"):  # a write can meet a broken database
                assert "503" in op["responses"], (method, path)
                assert "403" in op["responses"], (method, path)  # the Origin check
            if "multipart/form-data" in op.get("requestBody", {}).get("content", {}):
                assert "507" in op["responses"], (method, path)  # no room to receive it
    error = yaml.safe_load(OPENAPI.read_text())["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"error", "type", "title", "status", "detail"}


def assert_problem(response, status: int, kind: str, text: str = ""):
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/json"
    body = response.json
    assert body["type"] == TYPE_PREFIX + kind, body
    assert body["title"] == HTTP_STATUS_CODES[status] and body["status"] == status
    assert body["detail"] == body["error"] and text in body["detail"], body
    return body


def test_every_kind_of_api_error_is_a_problem_document(client, app):
    assert_problem(client.get("/api/v1/projects/42"), 404, "not-found", "no project with id 42")
    assert_problem(client.get("/api/v1/no-such-route"), 404, "not-found", "/api/v1/no-such-route")
    assert_problem(client.put("/api/v1/projects"), 405, "method-not-allowed", "PUT")
    assert_problem(client.post("/api/v1/projects", json={"name": ""}), 400, "bad-request", "'name'")
    assert_problem(client.post("/api/v1/projects", json={"name": "x" * 6000}), 413, "too-large",
                   "JSON body too large")
    assert_problem(app.test_client().get("/api/v1/projects"), 401, "unauthorized", "log in")
    assert_problem(app.test_client().get("/api/v1/me", headers={"Authorization": "Bearer tl_nope"}),
                   401, "unauthorized", "invalid API token")
    no_csrf = logged_in(app.test_client(), "bob")
    del no_csrf.environ_base["HTTP_X_CSRFTOKEN"]
    assert_problem(no_csrf.post("/api/v1/projects", json={"name": "x"}), 400, "csrf", "CSRF")


def test_problem_keeps_the_extra_fields_of_an_error(client, app, web_photos):
    """A conflict still carries the job in the way; a failed upload its report."""
    pid = client.post("/api/v1/projects", json={"name": "p", "backbones": ["efficientnet_lite0"]}).json["id"]
    for label in ("cat", "coffee"):
        client.post(f"/api/v1/projects/{pid}/images", content_type="multipart/form-data",
                    data={"file": [(io.BytesIO(web_photos[label][0]), f"{label}.jpg")], "label": label})
    first = client.post(f"/api/v1/projects/{pid}/train")
    assert first.status_code == 202
    body = assert_problem(client.post(f"/api/v1/projects/{pid}/train"), 409, "conflict")
    assert body["job"]["id"] == first.json["id"] == body["job_id"]
    r = client.post(f"/api/v1/projects/{pid}/images", content_type="multipart/form-data",
                    data={"file": [(io.BytesIO(b"not an image"), "bad.jpg")], "label": "cat"})
    body = assert_problem(r, 400, "bad-request", "no image accepted")
    assert body["accepted"] == 0 and body["rejected"][0]["name"] == "bad.jpg"


def test_problem_fields_are_not_overridden_by_extra_fields(app):
    from web.problems import problem

    with app.test_request_context():
        body = problem(409, "busy", type="x", title="y", error="z", job_id=3).json
    assert body == {"error": "busy", "detail": "busy", "status": 409, "title": "Conflict",
                    "type": TYPE_PREFIX + KINDS[409], "job_id": 3}


# -- /api/v1/status -----------------------------------------------------------------------------


def test_status_shows_counts_and_workers_to_admins_only(app, client):
    admin = client.get("/api/v1/status").json  # "ann", the first account, is the admin
    assert admin["full"] is True
    assert {"pending", "running", "queued", "workers"} <= set(admin)
    bob = logged_in(app.test_client(), "bob")
    reduced = bob.get("/api/v1/status")
    assert reduced.status_code == 200
    assert reduced.json == {"queue": "sqlite", "worker_alive": False, "full": False}
    token = api_token(app, "bob")
    r = app.test_client().get("/api/v1/status", headers={"Authorization": f"Bearer {token}"})
    assert r.json == reduced.json

"""Input shapes that used to crash the server (500) answer 400 with the reason, on every route.

The JSON routes and the routes with integer path ids are taken from docs/openapi.yaml, so a
route added there is covered here without editing this file. Each answer must also be one
the description documents for that operation, with the Error schema's fields. The same app,
real database and real test client as the other API tests.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import yaml
from helpers import api_token, logged_in

from web import create_app
from web.inputs import MAX_ID, MAX_JSON_DEPTH

pytestmark = pytest.mark.unit

SPEC = yaml.safe_load((Path(__file__).resolve().parents[1] / "docs/openapi.yaml").read_text())
HUGE_ID = 1180591620717411303424  # 2**70: overflows SQLite's 64-bit integers
ERROR_FIELDS = {"error", "type", "title", "status", "detail"}


def _operations():
    for path, item in SPEC["paths"].items():
        for method, op in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                yield path, method, op


JSON_OPERATIONS = [(path, method, op["operationId"]) for path, method, op in _operations()
                   if "application/json" in op.get("requestBody", {}).get("content", {})]
ID_OPERATIONS = [(path, method, op["operationId"]) for path, method, op in _operations()
                 if re.search(r"\{(project_id|job_id|token_id)\}", path)]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, web_photos):
    """An app with one project holding one image, and a token of its owner."""
    app = create_app({"INSTANCE_PATH": str(tmp_path_factory.mktemp("hostile")), "TESTING": True})
    auth = {"Authorization": f"Bearer {api_token(app)}"}
    client = app.test_client()
    pid = client.post("/api/v1/projects", json={"name": "seed"}, headers=auth).json["id"]
    r = client.post(f"/api/v1/projects/{pid}/images", headers=auth, content_type="multipart/form-data",
                    data={"file": [(io.BytesIO(web_photos["cat"][0]), "c.jpg")], "label": "cat"})
    assert r.status_code == 200 and r.json["accepted"] == 1, r.json
    return {"app": app, "client": client, "auth": auth, "pid": pid,
            "sha256": r.json["images"][0]["sha256"]}


def _url(path: str, seeded, **ids) -> str:
    values = {"project_id": seeded["pid"], "job_id": 1, "token_id": 1, "number": 1,
              "sha256": seeded["sha256"],
              **ids}
    return "/api/v1" + re.sub(r"\{(\w+)\}", lambda m: str(values[m.group(1)]), path)


def assert_documented_400(response, path, method, reason):
    assert response.status_code == 400, (response.status_code, response.get_data(as_text=True)[:300])
    assert "400" in SPEC["paths"][path][method]["responses"], f"{method} {path} does not document 400"
    body = response.json
    assert ERROR_FIELDS <= set(body) and body["status"] == 400, body
    assert reason in body["error"], body


@pytest.mark.parametrize("path,method,op", JSON_OPERATIONS, ids=[o for _, _, o in JSON_OPERATIONS])
def test_lone_surrogate_in_a_json_body_is_a_400(seeded, path, method, op):
    for field in ("name", "label", "x"):  # known and unknown fields alike
        r = seeded["client"].open(_url(path, seeded), method=method.upper(), headers=seeded["auth"],
                                  data='{"%s": "a\\ud800b"}' % field, content_type="application/json")
        assert_documented_400(r, path, method, "lone surrogate")
        assert f"'{field}'" in r.json["error"]
    r = seeded["client"].open(_url(path, seeded), method=method.upper(), headers=seeded["auth"],
                              data='{"a": {"\\udfff": 1}}', content_type="application/json")
    assert_documented_400(r, path, method, "lone surrogate")


@pytest.mark.parametrize("path,method,op", JSON_OPERATIONS, ids=[o for _, _, o in JSON_OPERATIONS])
def test_deeply_nested_json_body_is_a_400(seeded, path, method, op):
    for body in ("[" * 100_000, '{"name": ' + "[" * 100_000 + "]" * 100_000 + "}"):
        r = seeded["client"].open(_url(path, seeded), method=method.upper(), headers=seeded["auth"],
                                  data=body, content_type="application/json")
        assert_documented_400(r, path, method, "nested too deeply")


def test_json_nesting_limit_is_exact(seeded):
    """MAX_JSON_DEPTH levels are read (the extra field is ignored); one more is refused."""
    def nested(levels):  # the body object is level 1
        return json.dumps({"name": "deep", "extra": json.loads("[" * (levels - 1) + "]" * (levels - 1))})

    client, auth = seeded["client"], seeded["auth"]
    r = client.post("/api/v1/projects", data=nested(MAX_JSON_DEPTH), content_type="application/json",
                    headers=auth)
    assert r.status_code == 201, r.json
    r = client.post("/api/v1/projects", data=nested(MAX_JSON_DEPTH + 1),
                    content_type="application/json", headers=auth)
    assert r.status_code == 400 and "nested too deeply" in r.json["error"]


def test_json_bodies_that_are_not_objects_say_why(seeded):
    client, auth = seeded["client"], seeded["auth"]
    cases = [(b"", "text/plain", "Content-Type: application/json"),
             (b"", "application/json", "the body is empty"),
             (b'{"name": ', "application/json", "not valid JSON"),
             (b'"\xff\xfe"', "application/json", "not valid JSON"),
             (b"[1, 2]", "application/json", "must be an object")]
    for data, mimetype, reason in cases:
        r = client.post("/api/v1/tokens", data=data, content_type=mimetype, headers=auth)
        assert r.status_code == 400 and reason in r.json["error"], (data, r.json)


def test_lone_surrogate_is_not_stored_and_valid_unicode_is(seeded):
    client, auth = seeded["client"], seeded["auth"]
    before = client.get("/api/v1/tokens", headers=auth).json
    r = client.post("/api/v1/tokens", data='{"name": "\\ud83d"}', content_type="application/json",
                    headers=auth)
    assert r.status_code == 400
    assert client.get("/api/v1/tokens", headers=auth).json == before
    r = client.post("/api/v1/tokens", data='{"name": "\\ud83d\\ude00 bot"}',  # a surrogate pair
                    content_type="application/json", headers=auth)
    assert r.status_code == 201 and r.json["name"] == "\U0001F600 bot"


@pytest.mark.parametrize("path,method,op", ID_OPERATIONS, ids=[o for _, _, o in ID_OPERATIONS])
def test_path_id_too_large_for_the_database_is_a_400(seeded, path, method, op):
    name = re.search(r"\{(project_id|job_id|token_id)\}", path).group(1)
    kwargs = {"json": {}} if "requestBody" in SPEC["paths"][path][method] else {}
    r = seeded["client"].open(_url(path, seeded, **{name: HUGE_ID}), method=method.upper(),
                              headers=seeded["auth"], **kwargs)
    assert_documented_400(r, path, method, f"the id {HUGE_ID} in the URL is too large")
    r = seeded["client"].open(_url(path, seeded, **{name: MAX_ID}), method=method.upper(),
                              headers=seeded["auth"], **kwargs)
    assert r.status_code == 404, r.json  # the largest possible id is an ordinary unknown one


def test_html_routes_answer_400_to_a_huge_id(seeded):
    """The account page's revoke form (POST) and the project page (GET)."""
    client = logged_in(seeded["app"].test_client())
    r = client.post(f"/account/tokens/{HUGE_ID}/delete")
    assert r.status_code == 400 and f"the id {HUGE_ID} in the URL is too large" in r.get_data(as_text=True)
    r = client.get(f"/projects/{HUGE_ID}")
    assert r.status_code == 400 and "too large" in r.get_data(as_text=True)
    assert client.post(f"/account/tokens/{MAX_ID}/delete").status_code == 302  # nothing to revoke

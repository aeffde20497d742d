"""Property-based fuzzing of the JSON API against its OpenAPI description (docs/openapi.yaml).

Schemathesis generates requests for every operation from the description (path ids,
query strings, JSON bodies, multipart uploads of random bytes) and sends them in-process
to the real app (a temporary instance with a seeded project, SQLite queue, no worker),
authenticated with an API token. Every answer must be no 5xx, a documented status code,
of the documented content type and conform to the documented schema. Bounded: at most
FUZZ_EXAMPLES generated cases per operation (env TRANSFERLAB_FUZZ_EXAMPLES), derandomized
so CI runs are repeatable.
"""
from __future__ import annotations

import atexit
import collections
import io
import os
import shutil
import tempfile

import pytest
import schemathesis
from helpers import api_token, make_zip
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

from web import create_app

pytestmark = pytest.mark.integration

FUZZ_EXAMPLES = int(os.environ.get("TRANSFERLAB_FUZZ_EXAMPLES", "10"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, ignored_auth]
SEEN: collections.Counter = collections.Counter()  # status code -> answers, for the summary


# Schemathesis binds the schema to the app when the module loads (its lazy, fixture-based
# schemas do not work with this pytest), so the app lives in a temporary folder made here.
_INSTANCE = tempfile.mkdtemp(prefix="transferlab-fuzz-")
atexit.register(shutil.rmtree, _INSTANCE, ignore_errors=True)
APP = create_app({"INSTANCE_PATH": _INSTANCE, "TESTING": True,  # limits far above the examples
                  "TOKEN_LIMIT": "100000/hour", "UPLOAD_LIMIT": "100000/hour",
                  "PREDICT_LIMIT": "100000/hour"})
schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.yaml", APP)


@pytest.fixture(scope="module")
def fuzz_app(web_photos):
    """A token, and project 1 (the description's example id) with a few images and a queued
    job, so examples reach past the 404s."""
    auth = {"Authorization": f"Bearer {api_token(APP)}"}
    client = APP.test_client()
    pid = client.post("/api/v1/projects", json={"name": "seed", "backbones": ["efficientnet_lite0"]},
                      headers=auth).json["id"]
    z = make_zip({f"{label}/{i}.jpg": web_photos[label][i] for label in ("cat", "coffee") for i in range(2)})
    client.post(f"/api/v1/projects/{pid}/images", data={"file": (io.BytesIO(z), "d.zip")}, headers=auth)
    client.post(f"/api/v1/projects/{pid}/train", headers=auth)
    return {"app": APP, "auth": auth}


@schema.parametrize()
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_description(case, fuzz_app):
    response = case.call_and_validate(headers=fuzz_app["auth"], checks=CHECKS)
    SEEN[response.status_code] += 1


def test_fuzz_summary():
    """Runs after the fuzzing above (file order): it did run, and no answer was a 5xx."""
    total = sum(SEEN.values())
    print(f"\nfuzz: {total} requests, status codes {dict(sorted(SEEN.items()))}")
    if total == 0:
        pytest.skip("run with the fuzz cases (the whole file)")
    assert not [code for code in SEEN if code >= 500], SEEN
    assert SEEN[200] + SEEN[201] + SEEN[202] > 0, "the seeded project was never reached"


# -- shapes random generation rarely reaches, sent to every operation they apply to ------------

HUGE_ID = 2**70  # beyond SQLite's 64-bit integers
HOSTILE_BODIES = {
    "lone-surrogate": b'{"name": "\\ud800", "label": "\\udfff"}',
    "surrogate-key": b'{"\\ud800": 1}',
    "deep-nesting": b"[" * 100_000,
    "deep-nesting-in-a-field": b'{"name": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}
OPERATIONS = [result.ok() for result in schema.get_all_operations()]
JSON_OPERATIONS = [op for op in OPERATIONS if any(b.media_type == "application/json" for b in op.body)]
ID_OPERATIONS = [op for op in OPERATIONS
                 if {p.name for p in op.path_parameters} & {"project_id", "job_id", "token_id"}]


@pytest.fixture(scope="module")
def target(fuzz_app, web_photos):
    """A project of its own with one image (the fuzzing above may have deleted project 1),
    so the hostile cases below reach each route's body and id checks."""
    client, auth = APP.test_client(), fuzz_app["auth"]
    pid = client.post("/api/v1/projects", json={"name": "target"}, headers=auth).json["id"]
    r = client.post(f"/api/v1/projects/{pid}/images", headers=auth, data={
        "file": (io.BytesIO(web_photos["cat"][0]), "c.jpg"), "label": "cat"})
    return {**fuzz_app, "project_id": pid, "sha256": r.json["images"][0]["sha256"]}


def _path_values(operation, target, **override):
    """Path parameters that reach the route's own checks: the target project and its image."""
    values = {"job_id": 1, "token_id": 1, "number": 1, **target, **override}
    return {p.name: values[p.name] for p in operation.path_parameters}


@pytest.mark.parametrize("shape", sorted(HOSTILE_BODIES))
@pytest.mark.parametrize("operation", JSON_OPERATIONS, ids=lambda op: op.label)
def test_hostile_json_bodies_are_documented_400s(operation, shape, target):
    case = operation.Case(path_parameters=_path_values(operation, target),
                          body=HOSTILE_BODIES[shape], media_type="application/json")
    response = case.call_and_validate(headers=target["auth"], checks=CHECKS)
    SEEN[response.status_code] += 1
    assert response.status_code == 400, response.text
    assert ("lone surrogate" if "surrogate" in shape else "nested too deeply") in response.json()["error"]


@pytest.mark.parametrize("operation", ID_OPERATIONS, ids=lambda op: op.label)
def test_path_ids_beyond_64_bits_are_documented_400s(operation, target):
    for name in {p.name for p in operation.path_parameters} & {"project_id", "job_id", "token_id"}:
        body = {} if any(b.media_type == "application/json" for b in operation.body) else None
        kwargs = {"body": body, "media_type": "application/json"} if body is not None else {}
        case = operation.Case(path_parameters=_path_values(operation, target, **{name: HUGE_ID}),
                              **kwargs)
        response = case.call_and_validate(headers=target["auth"], checks=CHECKS)
        SEEN[response.status_code] += 1
        assert response.status_code == 400 and "too large" in response.json()["error"], response.text

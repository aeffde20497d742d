"""web/security.py: the headers every answer carries, and the Origin check on cookie writes.

In-process with Flask's test client on a temporary instance (real database, real login):
the browser half (the pages still work under the policy) is in tests/test_ui_app.py.
"""
from __future__ import annotations

import io

import pytest
from helpers import TEST_PASSWORD, api_token, page_csrf_token
from PIL import Image

from web.security import PAGE_POLICY, PERMISSIONS_POLICY

pytestmark = pytest.mark.unit

SITE = "http://localhost"  # the test client's host


def _directives(policy: str) -> dict[str, list[str]]:
    out = {}
    for part in policy.split(";"):
        name, *values = part.split()
        out[name] = values
    return out


def test_pages_carry_a_strict_content_security_policy(client):
    pid = client.post("/api/v1/projects", json={"name": "p"}).json["id"]
    for url in ("/", f"/projects/{pid}", "/imagenet", "/account", "/projects/999"):
        r = client.get(url)
        assert r.mimetype == "text/html", url
        policy = _directives(r.headers["Content-Security-Policy"])
        assert policy["script-src"] == ["'self'"], url  # no inline script, no eval
        assert policy["default-src"] == ["'self'"] and policy["style-src"] == ["'self'"]
        assert policy["frame-ancestors"] == ["'none'"] and policy["object-src"] == ["'none'"]
        assert policy["img-src"] == ["'self'", "blob:"]  # previews of dropped images
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "same-origin"
        assert r.headers["Permissions-Policy"] == PERMISSIONS_POLICY  # camera: this site only
        assert "camera=(self)" in PERMISSIONS_POLICY and "microphone=()" in PERMISSIONS_POLICY
    anonymous = client.application.test_client()
    r = anonymous.get("/login")
    assert r.status_code == 200 and r.headers["Content-Security-Policy"] == PAGE_POLICY


def test_templates_have_no_inline_script_style_or_handlers(app):
    """What the policy would block: kept out of the templates rather than allowed."""
    import re
    from pathlib import Path

    for template in Path(app.template_folder).glob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), template.name
        assert not re.search(r"\sstyle\s*=", text), template.name
        assert not re.search(r"\son[a-z]+\s*=", text), template.name
        assert "javascript:" not in text, template.name


def test_api_answers_and_static_files_carry_nosniff_and_no_framing(client, app):
    token = api_token(app)
    for r in (client.get("/api/v1/projects"), client.get("/api/v1/nothing-here"),
              app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}),
              app.test_client().get("/api/v1/me"), client.get("/static/js/api.js"),
              client.get("/healthz")):
        assert r.headers["X-Content-Type-Options"] == "nosniff", r.request.path
        assert r.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]


def test_served_images_keep_their_sandbox_policy(client):
    pid = client.post("/api/v1/projects", json={"name": "p"}).json["id"]
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buf, "PNG")
    r = client.post(f"/api/v1/projects/{pid}/images", content_type="multipart/form-data",
                    data={"file": [(io.BytesIO(buf.getvalue()), "r.png")], "label": "red"})
    image = r.json["images"][0]
    for url in (image["url"], image["thumbnail"]):
        r = client.get(url)
        assert r.status_code == 200
        assert r.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
        assert r.headers["X-Content-Type-Options"] == "nosniff"


# -- the Origin check ------------------------------------------------------------------------


def _names(client):
    return [p["name"] for p in client.get("/api/v1/projects").json]


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "https://localhost"},  # another scheme is another origin
    {"Origin": "http://localhost:8080"},
    {"Origin": "null"},  # a sandboxed frame or a cross-site redirect
    {"Referer": "http://evil.example/page"},  # no Origin: the Referer tells
    {"Origin": "http://evil.example", "Referer": f"{SITE}/"},  # Origin wins
])
def test_cookie_writes_from_another_origin_are_refused(client, headers):
    r = client.post("/api/v1/projects", json={"name": "forged"}, headers=headers)
    assert r.status_code == 403, r.json
    assert r.json["type"] == "urn:transferlab:problem:cross-origin"
    assert "cross-origin request refused" in r.json["error"] and SITE in r.json["error"]
    assert "forged" not in _names(client)


@pytest.mark.parametrize("headers", [
    {"Origin": SITE}, {"Origin": "HTTP://LOCALHOST"}, {"Referer": f"{SITE}/projects/1"},
    {},  # neither header: allowed (non-browser client; the CSRF token still applies)
])
def test_cookie_writes_from_this_site_pass(client, headers):
    r = client.post("/api/v1/projects", json={"name": "mine"}, headers=headers)
    assert r.status_code == 201, r.json


def test_the_csrf_token_is_still_needed_from_this_site(client):
    del client.environ_base["HTTP_X_CSRFTOKEN"]
    r = client.post("/api/v1/projects", json={"name": "x"}, headers={"Origin": SITE})
    assert r.status_code == 400 and r.json["type"] == "urn:transferlab:problem:csrf"


def test_reads_and_token_writes_are_not_origin_checked(client, app):
    assert client.get("/api/v1/projects", headers={"Origin": "http://evil.example"}).status_code == 200
    token = api_token(app)
    r = app.test_client().post("/api/v1/projects", json={"name": "scripted"},
                               headers={"Authorization": f"Bearer {token}",
                                        "Origin": "http://evil.example"})
    assert r.status_code == 201


def test_html_form_writes_from_another_origin_are_refused(client):
    """The account page's forms (and the login form: no login CSRF) are checked too."""
    r = client.post("/account/tokens", data={"name": "forged"},
                    headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-origin request refused" in r.get_data(as_text=True)
    assert "forged" not in client.get("/account").get_data(as_text=True)
    r = client.post("/account/tokens", data={"name": "mine"}, headers={"Origin": SITE})
    assert r.status_code == 200 and "mine" in r.get_data(as_text=True)
    stranger = client.application.test_client()
    csrf = page_csrf_token(stranger.get("/login").get_data(as_text=True))
    r = stranger.post("/login", data={"username": "ann", "password": TEST_PASSWORD,
                                      "csrf_token": csrf}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "user_id" not in _session_of(stranger)


def _session_of(client) -> dict:
    with client.session_transaction() as session:
        return dict(session)

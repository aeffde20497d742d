"""Accounts and access (web/auth.py): strangers get nowhere and lose nothing.

First-run setup (only with the setup code), login/logout (sessions kept on the server, so a
saved cookie dies with them), disabled accounts, session cookie flags, the instance secret
key, CSRF on cookie-authenticated writes, API tokens (hashed, revocable, expiring, no
fallback to the cookie),
every project/job/image route scoped to its owner (another user's id is a 404), the
command line, and no password or token in the logs. Flask's test client on a temporary
instance; the CLI runs as the real `python app.py`.
"""
from __future__ import annotations

import html
import io
import logging
import os
import re
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from helpers import REPO, TEST_PASSWORD, api_token, logged_in, make_zip, page_csrf_token

from web import create_app
from web.db import ApiToken, Iteration, Job, LoginSession, Project, User, db, utcnow


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def setup_code(app) -> str:
    """The setup code, read as the person running the server does (its instance folder)."""
    return (Path(app.instance_path) / "setup_code").read_text().strip()


# -- first run, login, logout ------------------------------------------------------------------


@pytest.mark.unit
def test_first_visit_creates_the_admin_account(app):
    client = app.test_client()
    r = client.get("/")
    assert r.status_code == 302 and r.headers["Location"].endswith("/setup")
    assert client.get("/login").headers["Location"].endswith("/setup")
    r = client.get("/api/v1/projects")
    assert r.status_code == 401 and r.is_json and "Bearer" in r.json["error"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer")

    token = page_csrf_token(client.get("/setup").get_data(as_text=True))
    form = {"username": "ann", "password": "short", "confirm": "short", "csrf_token": token,
            "setup_code": setup_code(app)}
    r = client.post("/setup", data=form)
    assert r.status_code == 400 and b"at least 8 characters" in r.data
    form.update(password=TEST_PASSWORD, confirm=TEST_PASSWORD + "x")
    assert b"differ" in client.post("/setup", data=form).data
    form.update(confirm=TEST_PASSWORD)
    r = client.post("/setup", data=form)
    assert r.status_code == 302 and r.headers["Location"] == "/"
    assert client.get("/").status_code == 200
    assert client.get("/api/v1/me").json["username"] == "ann"
    assert client.get("/api/v1/me").json["is_admin"] is True

    # once an account exists the setup page is closed, to everyone
    stranger = app.test_client()
    assert stranger.get("/setup").headers["Location"].endswith("/login")
    token = page_csrf_token(stranger.get("/login").get_data(as_text=True))
    r = stranger.post("/setup", data={**form, "username": "mallory", "csrf_token": token})
    assert r.status_code == 302 and r.headers["Location"].endswith("/login")
    with app.app_context():
        assert [u.username for u in db.session.scalars(db.select(User))] == ["ann"]


@pytest.mark.unit
def test_setup_adopts_projects_made_before_accounts_existed(app):
    with app.app_context():
        db.session.add(Project(name="old", backbones=["efficientnet_lite0"]))
        db.session.commit()
    client = app.test_client()
    token = page_csrf_token(client.get("/setup").get_data(as_text=True))
    client.post("/setup", data={"username": "ann", "password": TEST_PASSWORD,
                                "confirm": TEST_PASSWORD, "csrf_token": token,
                                "setup_code": setup_code(app)})
    assert [p["name"] for p in client.get("/api/v1/projects").json] == ["old"]


def _setup_form(client, **fields) -> dict:
    token = page_csrf_token(client.get("/setup").get_data(as_text=True))
    return {"username": "ann", "password": TEST_PASSWORD, "confirm": TEST_PASSWORD,
            "csrf_token": token, **fields}


@pytest.mark.unit
def test_setup_from_another_address_needs_the_setup_code(app):
    """A stranger who reaches a fresh server first cannot take the admin account."""
    stranger = app.test_client()
    stranger.environ_base["REMOTE_ADDR"] = "10.1.2.3"
    page = stranger.get("/setup").get_data(as_text=True)
    assert 'name="setup_code"' in page and "the server's log" in page  # the field and its hint
    path = Path(app.instance_path) / "setup_code"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    code = setup_code(app)
    assert len(code) >= 16
    for given in (None, "", "0" * len(code), code[:-1], code + "0", "ü" * len(code)):
        form = _setup_form(stranger, username="mallory")
        if given is not None:
            form["setup_code"] = given
        r = stranger.post("/setup", data=form)
        assert r.status_code == 403 and b"Wrong or missing setup code" in r.data, given
        assert b"nothing was created" in r.data
    with app.app_context():
        assert db.session.scalar(db.select(User)) is None
    assert stranger.get("/api/v1/me").status_code == 401
    assert setup_code(app) == code  # a wrong guess changes nothing

    r = stranger.post("/setup", data=_setup_form(stranger, setup_code=f"  {code}\n"))
    assert r.status_code == 302 and stranger.get("/api/v1/me").json["is_admin"] is True
    assert not path.exists()  # used up: setup is closed


@pytest.mark.unit
def test_setup_needs_the_code_from_loopback_too(app):
    """Behind a reverse proxy on the same host every visitor comes from 127.0.0.1."""
    client = app.test_client()
    assert client.environ_base.get("REMOTE_ADDR", "127.0.0.1") == "127.0.0.1"
    assert client.post("/setup", data=_setup_form(client)).status_code == 403
    with app.app_context():
        assert db.session.scalar(db.select(User)) is None


@pytest.mark.unit
def test_no_setup_code_is_needed_once_the_admin_was_made_on_the_command_line(app):
    from web.auth import create_user

    client = app.test_client()
    form = _setup_form(client, username="mallory")  # the code exists now
    form["setup_code"] = setup_code(app)
    with app.app_context():
        create_user("root", TEST_PASSWORD, admin=True)
    assert not (Path(app.instance_path) / "setup_code").exists()
    r = client.post("/setup", data=form)
    assert r.status_code == 302 and r.headers["Location"].endswith("/login")
    assert logged_in(client, "root", create=False).get("/api/v1/me").json["username"] == "root"


@pytest.mark.unit
def test_login_logout_and_redirects(app):
    logged_in(app.test_client())  # creates ann
    client = app.test_client()
    r = client.get("/projects/1?x=1")
    assert r.status_code == 302 and "/login?next=" in r.headers["Location"]
    token = page_csrf_token(client.get("/login").get_data(as_text=True))
    r = client.post("/login", data={"username": "ann", "password": "wrong password",
                                    "csrf_token": token})
    assert r.status_code == 401 and b"Wrong user name or password" in r.data
    r = client.post("/login", data={"username": "nobody", "password": "wrong password",
                                    "csrf_token": token})
    assert r.status_code == 401 and b"Wrong user name or password" in r.data  # same answer
    assert client.get("/api/v1/me").status_code == 401
    for target, expected in [("/imagenet", "/imagenet"), ("//evil.example/x", "/"),
                             ("https://evil.example/", "/"), ("/\\evil.example", "/")]:
        c = app.test_client()
        t = page_csrf_token(c.get("/login").get_data(as_text=True))
        r = c.post("/login", query_string={"next": target},
                   data={"username": "ann", "password": TEST_PASSWORD, "csrf_token": t})
        assert r.status_code == 302 and r.headers["Location"] == expected, target
    client = logged_in(app.test_client(), create=False)
    assert client.get("/api/v1/me").status_code == 200
    assert client.post("/logout").status_code == 302
    assert client.get("/api/v1/me").status_code == 401
    assert client.get("/").headers["Location"].startswith("/login")


@pytest.mark.unit
def test_logout_needs_the_csrf_token(app):
    client = logged_in(app.test_client())
    del client.environ_base["HTTP_X_CSRFTOKEN"]
    assert client.post("/logout").status_code == 400  # a cross-site form cannot log you out
    assert client.get("/api/v1/me").status_code == 200


@pytest.mark.unit
def test_changing_the_password_logs_out_other_sessions(app):
    first = logged_in(app.test_client())
    second = logged_in(app.test_client(), create=False)
    new = "another good password"
    r = first.post("/account/password", data={"current": TEST_PASSWORD, "password": new,
                                              "confirm": new})
    assert r.status_code == 302
    assert first.get("/api/v1/me").status_code == 200  # the session that changed it stays
    assert second.get("/api/v1/me").status_code == 401
    assert logged_in(app.test_client(), password=new, create=False).get("/api/v1/me").status_code == 200


@pytest.mark.unit
def test_admin_adds_accounts_others_cannot(app):
    admin = logged_in(app.test_client())
    admin.post("/account/users", data={"username": "bob", "password": TEST_PASSWORD})
    bob = logged_in(app.test_client(), "bob", create=False)
    assert bob.get("/api/v1/me").json["is_admin"] is False
    bob.post("/account/users", data={"username": "eve", "password": TEST_PASSWORD})
    with app.app_context():
        assert sorted(u.username for u in db.session.scalars(db.select(User))) == ["ann", "bob"]


def _copy_of_cookie(client):
    """Another client holding a copy of `client`'s session cookie (and its CSRF header)."""
    copy = client.application.test_client()
    copy.set_cookie("transferlab_session", client.get_cookie("transferlab_session").value)
    copy.environ_base["HTTP_X_CSRFTOKEN"] = client.environ_base["HTTP_X_CSRFTOKEN"]
    return copy


def _session_rows(app, username="ann") -> int:
    with app.app_context():
        return db.session.scalar(db.select(db.func.count()).select_from(LoginSession)
                                 .join(User).where(User.username == username))


@pytest.mark.unit
def test_a_cookie_saved_before_logout_is_refused_after_it(app):
    client = logged_in(app.test_client())
    other_browser = logged_in(app.test_client(), create=False)
    saved = _copy_of_cookie(client)
    assert saved.get("/api/v1/me").status_code == 200
    assert client.post("/logout").status_code == 302
    assert saved.get("/api/v1/me").status_code == 401
    r = saved.post("/api/v1/tokens", json={"name": "after logout"})
    assert r.status_code == 401
    assert saved.get("/account").headers["Location"].startswith("/login")
    assert other_browser.get("/api/v1/me").status_code == 200  # logging out here only ends this one
    assert _session_rows(app) == 1
    with app.app_context():
        assert db.session.scalar(db.select(ApiToken)) is None


@pytest.mark.unit
def test_a_cookie_saved_before_a_password_change_is_refused_after_it(app):
    client = logged_in(app.test_client())
    saved = _copy_of_cookie(client)
    new = "another good password"
    client.post("/account/password", data={"current": TEST_PASSWORD, "password": new,
                                           "confirm": new})
    assert client.get("/api/v1/me").status_code == 200  # the browser that changed it stays
    assert saved.get("/api/v1/me").status_code == 401
    assert saved.post("/api/v1/tokens", json={"name": "stolen"}).status_code == 401
    assert _session_rows(app) == 1


@pytest.mark.unit
def test_sessions_expire_on_the_server_and_slide_with_use(app):
    from web import auth

    client = logged_in(app.test_client())
    with app.app_context():
        row = db.session.scalar(db.select(LoginSession))
        lifetime = app.permanent_session_lifetime
        assert abs(row.expires_at - (utcnow() + lifetime)) < timedelta(minutes=1)
        # used a while ago: the next request moves the expiry on
        row.last_seen_at = utcnow() - timedelta(seconds=auth.SESSION_TOUCH_SECONDS + 5)
        row.expires_at = utcnow() + timedelta(hours=1)
        db.session.commit()
    assert client.get("/api/v1/me").status_code == 200
    with app.app_context():
        row = db.session.scalar(db.select(LoginSession))
        assert row.expires_at > utcnow() + lifetime - timedelta(minutes=1)
        row.expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    assert client.get("/api/v1/me").status_code == 401
    logged_in(app.test_client(), create=False)  # a new login sweeps the expired row away
    assert _session_rows(app) == 1


@pytest.mark.unit
def test_admin_disables_and_enables_an_account(app):
    admin = logged_in(app.test_client())
    admin.post("/account/users", data={"username": "bob", "password": TEST_PASSWORD})
    bob = logged_in(app.test_client(), "bob", create=False)
    bob_token = api_token(app, "bob")
    with app.app_context():
        bob_id = db.session.scalar(db.select(User.id).where(User.username == "bob"))
        ann_id = db.session.scalar(db.select(User.id).where(User.username == "ann"))
    page = admin.get("/account").get_data(as_text=True)
    assert re.search(rf'data-id="{bob_id}">\s*<td>bob</td>\s*<td class="account-status">active', page)
    # only an admin may, and not on their own account
    assert bob.post(f"/account/users/{ann_id}/disable").status_code == 302
    assert admin.post(f"/account/users/{ann_id}/disable").status_code == 302
    assert "cannot disable your own" in admin.get("/account").get_data(as_text=True)
    assert admin.get("/api/v1/me").status_code == 200
    assert admin.post("/account/users/999999/disable").status_code == 302
    assert "no account with id 999999" in admin.get("/account").get_data(as_text=True)

    assert admin.post(f"/account/users/{bob_id}/disable").status_code == 302
    assert "disabled" in admin.get("/account").get_data(as_text=True)
    assert bob.get("/api/v1/me").status_code == 401
    assert bob.post("/api/v1/projects", json={"name": "x"}).status_code == 401
    r = app.test_client().get("/api/v1/me", headers=bearer(bob_token))
    assert r.status_code == 401 and r.json["error"] == "account disabled"
    stranger = app.test_client()
    t = page_csrf_token(stranger.get("/login").get_data(as_text=True))
    r = stranger.post("/login", data={"username": "bob", "password": TEST_PASSWORD, "csrf_token": t})
    assert r.status_code == 401 and b"This account is disabled" in r.data
    assert stranger.get("/api/v1/me").status_code == 401
    assert _session_rows(app, "bob") == 0

    assert admin.post(f"/account/users/{bob_id}/enable").status_code == 302
    assert app.test_client().get("/api/v1/me", headers=bearer(bob_token)).status_code == 200
    assert bob.get("/api/v1/me").status_code == 401  # its old sessions stay ended
    assert logged_in(app.test_client(), "bob", create=False).get("/api/v1/me").status_code == 200


# -- session cookie and secret key ---------------------------------------------------------------


def _session_cookie(response) -> str:
    cookies = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("transferlab_session=")]
    assert cookies, response.headers
    return cookies[-1]


def _login_response(client, base_url="http://localhost", origin=None):
    token = page_csrf_token(client.get("/login", base_url=base_url).get_data(as_text=True))
    return client.post("/login", base_url=base_url, headers={"Referer": (origin or base_url) + "/login"},
                       data={"username": "ann", "password": TEST_PASSWORD, "csrf_token": token})


@pytest.mark.unit
def test_session_cookie_is_httponly_lax_and_secure_over_https(tmp_path):
    app = create_app({"INSTANCE_PATH": str(tmp_path / "i")})
    logged_in(app.test_client())
    cookie = _session_cookie(_login_response(app.test_client()))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    cookie = _session_cookie(_login_response(app.test_client(), "https://localhost"))
    assert "Secure" in cookie
    forced = create_app({"INSTANCE_PATH": str(tmp_path / "i"), "SESSION_COOKIE_SECURE": True})
    assert "Secure" in _session_cookie(_login_response(forced.test_client()))


@pytest.mark.unit
def test_https_behind_a_trusted_proxy_gets_a_secure_cookie(tmp_path):
    app = create_app({"INSTANCE_PATH": str(tmp_path / "i"), "TRUSTED_PROXIES": 1})
    logged_in(app.test_client())
    client = app.test_client()
    client.environ_base["HTTP_X_FORWARDED_PROTO"] = "https"
    # (over HTTPS, Flask-WTF also checks that the Referer is this site)
    assert "Secure" in _session_cookie(_login_response(client, origin="https://localhost"))


@pytest.mark.unit
def test_secret_key_is_generated_once_into_the_instance_folder(tmp_path):
    instance = tmp_path / "i"
    first = create_app({"INSTANCE_PATH": str(instance)})
    path = instance / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text()
    assert len(key) == 64 and int(key, 16) and first.secret_key == key
    # a restart keeps it, so logins survive
    client = logged_in(first.test_client())
    again = create_app({"INSTANCE_PATH": str(instance)})
    assert again.secret_key == key
    again_client = again.test_client()
    again_client.set_cookie("transferlab_session", client.get_cookie("transferlab_session").value)
    assert again_client.get("/api/v1/me").status_code == 200
    # configured keys win, and then no file is written
    other = tmp_path / "j"
    assert create_app({"INSTANCE_PATH": str(other), "SECRET_KEY": "x" * 40}).secret_key == "x" * 40
    assert not (other / "secret_key").exists()


# -- CSRF ----------------------------------------------------------------------------------------


@pytest.mark.unit
def test_cookie_authenticated_writes_need_the_csrf_token(app):
    client = logged_in(app.test_client())
    pid = client.post("/api/v1/projects", json={"name": "mine"}).json["id"]
    good = client.environ_base.pop("HTTP_X_CSRFTOKEN")
    for method, url, kwargs in [
            ("post", "/api/v1/projects", lambda: {"json": {"name": "forged"}}),
            ("patch", f"/api/v1/projects/{pid}", lambda: {"json": {"name": "forged"}}),
            ("delete", f"/api/v1/projects/{pid}", dict),
            ("post", f"/api/v1/projects/{pid}/train", dict),
            ("post", f"/api/v1/projects/{pid}/images",
             lambda: {"data": {"file": (io.BytesIO(b"x"), "a.jpg")}}),
            ("post", "/api/v1/tokens", lambda: {"json": {"name": "forged"}})]:
        r = getattr(client, method)(url, **kwargs())
        assert r.status_code == 400 and "CSRF token is missing" in r.json["error"], (method, url)
        r = getattr(client, method)(url, headers={"X-CSRFToken": good[:-2] + "xx"}, **kwargs())
        assert r.status_code == 400 and "CSRF" in r.json["error"], (method, url)
    # nothing happened
    assert [p["name"] for p in client.get("/api/v1/projects").json] == ["mine"]
    assert client.get("/api/v1/tokens").json == []
    # the login form needs it too (no login CSRF)
    stranger = app.test_client()
    r = stranger.post("/login", data={"username": "ann", "password": TEST_PASSWORD})
    assert r.status_code == 400 and b"form had expired" in r.data  # the form again, with a new token
    assert stranger.get("/api/v1/me").status_code == 401


@pytest.mark.unit
def test_token_authenticated_writes_need_no_csrf_token(app):
    client = app.test_client()
    r = client.post("/api/v1/projects", json={"name": "by token"}, headers=bearer(api_token(app)))
    assert r.status_code == 201


# -- API tokens ----------------------------------------------------------------------------------


@pytest.mark.unit
def test_api_tokens_are_hashed_listed_and_revocable(app, tmp_path):
    client = logged_in(app.test_client())
    r = client.post("/api/v1/tokens", json={"name": "backup script"})
    assert r.status_code == 201
    secret, token_id = r.json["token"], r.json["id"]
    page = client.post("/account/tokens", data={"name": "from the page"})
    assert page.headers["Cache-Control"] == "no-store" and b"tl_" in page.data
    page_token_id = re.findall(r'class="token-row" data-id="(\d+)"', page.get_data(as_text=True))[-1]
    assert client.post(f"/account/tokens/{page_token_id}/delete").status_code == 302
    assert secret.startswith("tl_") and len(secret) > 40
    listed = client.get("/api/v1/tokens").json
    assert [t["name"] for t in listed] == ["backup script"] and "token" not in listed[0]
    assert listed[0]["prefix"] == secret[:10] and listed[0]["last_used_at"] is None
    with app.app_context():
        row = db.session.get(ApiToken, token_id)
        assert row.token_hash != secret and secret not in row.token_hash
    db_bytes = (tmp_path / "instance" / "transferlab.db").read_bytes()
    assert secret.encode() not in db_bytes

    api = app.test_client()
    assert api.get("/api/v1/me", headers=bearer(secret)).json["username"] == "ann"
    assert client.get("/api/v1/tokens").json[0]["last_used_at"] is not None
    assert "Set-Cookie" not in api.get("/api/v1/projects", headers=bearer(secret)).headers
    for header in ["Bearer tl_wrong", f"Basic {secret}", "Bearer", f"Bearer {secret}x", "Bearer " + "a" * 5000]:
        r = api.get("/api/v1/me", headers={"Authorization": header})
        assert r.status_code == 401 and r.json["error"] == "invalid API token", header
    assert client.delete(f"/api/v1/tokens/{token_id}").json == {"deleted": token_id}
    assert api.get("/api/v1/me", headers=bearer(secret)).status_code == 401
    assert client.delete(f"/api/v1/tokens/{token_id}").status_code == 404
    assert client.post("/api/v1/tokens", json={"name": ""}).status_code == 400
    assert client.post("/api/v1/tokens", json={"name": "x" * 101}).status_code == 400


@pytest.mark.unit
def test_tokens_can_expire(app):
    client = logged_in(app.test_client())
    r = client.post("/api/v1/tokens", json={"name": "for a month", "expires_in_days": 30})
    assert r.status_code == 201
    secret, token_id = r.json["token"], r.json["id"]
    expires = r.json["expires_at"]
    with app.app_context():
        row = db.session.get(ApiToken, token_id)
        assert abs(row.expires_at - (utcnow() + timedelta(days=30))) < timedelta(minutes=1)
        assert expires == row.expires_at.replace(microsecond=0).isoformat() + "Z"
    forever = client.post("/api/v1/tokens", json={"name": "forever"}).json
    assert forever["expires_at"] is None
    api = app.test_client()
    assert api.get("/api/v1/me", headers=bearer(secret)).status_code == 200
    with app.app_context():
        row = db.session.get(ApiToken, token_id)
        row.expires_at, row.last_used_at = utcnow() - timedelta(seconds=1), None
        db.session.commit()
    r = api.get("/api/v1/me", headers=bearer(secret))
    assert r.status_code == 401 and r.json["error"] == "token expired"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert api.get("/api/v1/me", headers=bearer(forever["token"])).status_code == 200
    listed = {t["id"]: t for t in client.get("/api/v1/tokens").json}
    assert listed[token_id]["last_used_at"] is None  # a refused use is not a use


@pytest.mark.unit
@pytest.mark.parametrize("days", [0, -1, 3651, 10**12, 1.5, 2.0, "30", "", True, [], {}])
def test_expires_in_days_must_be_a_bounded_whole_number(app, days):
    client = logged_in(app.test_client())
    r = client.post("/api/v1/tokens", json={"name": "x", "expires_in_days": days})
    assert r.status_code == 400 and "'expires_in_days' must be a whole number of days from 1 to 3650" \
        in r.json["error"], days
    assert client.get("/api/v1/tokens").json == []


@pytest.mark.unit
def test_account_page_sets_and_shows_token_expiry_and_last_use(app):
    client = logged_in(app.test_client())
    page = client.post("/account/tokens", data={"name": "weekly", "expires_in_days": "7"})
    assert page.status_code == 200
    secret = re.search(r'<code id="new-token">([^<]+)</code>', page.get_data(as_text=True)).group(1)
    app.test_client().get("/api/v1/me", headers=bearer(secret))
    client.post("/account/tokens", data={"name": "forever", "expires_in_days": ""})
    with app.app_context():
        week = db.session.scalar(db.select(ApiToken).where(ApiToken.name == "weekly"))
        expiry, used = (week.expires_at.strftime("%Y-%m-%d %H:%M"),
                        week.last_used_at.strftime("%Y-%m-%d %H:%M"))
    page = client.get("/account").get_data(as_text=True)
    rows = dict(re.findall(r'<td>(weekly|forever)</td>(.*?)</tr>', page, re.S))
    assert f'<td class="token-expires">{expiry}</td>' in rows["weekly"]
    assert f'<td class="token-last-used">{used}</td>' in rows["weekly"]
    assert '<td class="token-expires">never</td>' in rows["forever"]
    assert '<td class="token-last-used">never</td>' in rows["forever"]
    for bad in ("0", "3651", "-2", "1e3", "x"):
        r = client.post("/account/tokens", data={"name": "bad", "expires_in_days": bad})
        assert r.status_code == 302
        shown = html.unescape(client.get("/account").get_data(as_text=True))
        assert re.search(rf"'expires_in_days' must be a whole number of days from 1 to 3650 "
                         rf"\(or left out: never expires\), got '?{re.escape(bad)}'?<", shown), bad
    assert [t["name"] for t in client.get("/api/v1/tokens").json] == ["weekly", "forever"]


@pytest.mark.unit
def test_a_bad_token_never_falls_back_to_the_session_cookie(app):
    client = logged_in(app.test_client())
    assert client.get("/api/v1/me").status_code == 200
    r = client.get("/api/v1/me", headers=bearer("tl_not-a-token"))
    assert r.status_code == 401


@pytest.mark.unit
def test_users_cannot_see_or_revoke_each_others_tokens(app):
    ann = logged_in(app.test_client())
    token_id = ann.post("/api/v1/tokens", json={"name": "ann's"}).json["id"]
    bob = bearer(api_token(app, "bob"))
    client = app.test_client()
    assert [t["name"] for t in client.get("/api/v1/tokens", headers=bob).json] == ["tests"]
    assert client.delete(f"/api/v1/tokens/{token_id}", headers=bob).status_code == 404
    assert len(ann.get("/api/v1/tokens").json) == 1


# -- projects are their owner's ------------------------------------------------------------------


@pytest.fixture
def two_users(app, web_photos):
    """ann's project with images, a queued job and an iteration row; bob's token."""
    ann, bob = bearer(api_token(app, "ann")), bearer(api_token(app, "bob"))
    client = app.test_client()
    pid = client.post("/api/v1/projects", json={"name": "ann's", "backbones": ["efficientnet_lite0"]},
                      headers=ann).json["id"]
    z = make_zip({f"{label}/{i}.jpg": web_photos[label][i] for label in ("cat", "coffee") for i in range(2)})
    body = client.post(f"/api/v1/projects/{pid}/images", data={"file": (io.BytesIO(z), "d.zip")},
                       headers=ann).json
    sha = body["images"][0]["sha256"]
    job_id = client.post(f"/api/v1/projects/{pid}/train", headers=ann).json["job_id"]
    with app.app_context():
        storage = app.extensions["transferlab.storage"]
        db.session.add(Iteration(project_id=pid, number=1, folder=storage.iteration_relpath(pid, 1),
                                 classes=["cat", "coffee"], backbones=["efficientnet_lite0"],
                                 n_train=4, n_test=0, summary={}))
        db.session.commit()
    return {"client": client, "ann": ann, "bob": bob, "pid": pid, "sha": sha, "job": job_id}


@pytest.mark.unit
def test_another_users_ids_are_404_and_change_nothing(app, two_users):
    c, ann, bob = two_users["client"], two_users["ann"], two_users["bob"]
    pid, sha, job = two_users["pid"], two_users["sha"], two_users["job"]
    def snapshot():
        """The project as its owner sees it, less the server's clock (it ticks every second)."""
        project = c.get(f"/api/v1/projects/{pid}", headers=ann).json
        (project.get("latest_job") or {}).pop("server_time", None)
        return project

    before = snapshot()
    assert c.get("/api/v1/projects", headers=bob).json == []
    image = (io.BytesIO(b"x"), "a.jpg")
    routes = [
        ("get", f"/api/v1/projects/{pid}", {}),
        ("patch", f"/api/v1/projects/{pid}", {"json": {"name": "pwned"}}),
        ("delete", f"/api/v1/projects/{pid}", {}),
        ("get", f"/api/v1/projects/{pid}/images", {}),
        ("post", f"/api/v1/projects/{pid}/images", {"data": {"file": image, "label": "x"}}),
        ("patch", f"/api/v1/projects/{pid}/images/{sha}", {"json": {"label": "pwned"}}),
        ("delete", f"/api/v1/projects/{pid}/images/{sha}", {}),
        ("get", f"/api/v1/projects/{pid}/uploads", {}),
        ("post", f"/api/v1/projects/{pid}/train", {}),
        ("get", f"/api/v1/projects/{pid}/jobs", {}),
        ("get", f"/api/v1/projects/{pid}/results", {}),
        ("get", f"/api/v1/projects/{pid}/iterations", {}),
        ("post", f"/api/v1/projects/{pid}/predict", {"data": {"file": (io.BytesIO(b"x"), "a.jpg")}}),
        ("get", f"/api/v1/jobs/{job}", {}),
        ("post", f"/api/v1/jobs/{job}/cancel", {}),
        ("get", f"/api/v1/images/{sha}", {}),
        ("get", f"/api/v1/images/{sha}/thumbnail", {}),
        ("get", f"/api/v1/images/{sha}/preview", {}),
    ]
    for method, url, kwargs in routes:
        if "data" in kwargs:  # a fresh stream per request
            kwargs = {"data": {**kwargs["data"], "file": (io.BytesIO(b"x"), "a.jpg")}}
        r = getattr(c, method)(url, headers=bob, **kwargs)
        assert r.status_code == 404, (method, url, r.status_code, r.get_data()[:200])
        assert r.is_json and "error" in r.json
        unknown = getattr(c, method)(url.replace(f"/{pid}", "/999999").replace(f"/{job}", "/999999")
                                     .replace(sha, "f" * 64), headers=ann,
                                     **({"data": {**kwargs["data"], "file": (io.BytesIO(b"x"), "a.jpg")}}
                                        if "data" in kwargs else kwargs))
        assert unknown.status_code == 404, url  # the same answer as for an id that does not exist
    assert snapshot() == before
    assert c.get(f"/api/v1/jobs/{job}", headers=ann).json["state"] == "queued"
    assert c.get(f"/api/v1/images/{sha}", headers=ann).status_code == 200
    with app.app_context():
        assert db.session.get(Job, job).cancel_requested is False


@pytest.mark.unit
def test_ids_beyond_64_bits_are_400_not_a_database_error(app, two_users):
    c, ann, pid = two_users["client"], two_users["ann"], two_users["pid"]
    huge = "9" * 30
    for url in [f"/api/v1/projects/{huge}", f"/api/v1/jobs/{huge}", f"/api/v1/projects/{huge}/images"]:
        assert c.get(url, headers=ann).status_code == 400, url
    assert c.delete(f"/api/v1/tokens/{huge}", headers=ann).status_code == 400
    page = logged_in(app.test_client(), create=False)
    assert page.get(f"/projects/{huge}").status_code == 400
    for query in [f"offset={huge}", f"iteration={huge}"]:
        url = f"/api/v1/projects/{pid}/{'images' if 'offset' in query else 'results'}?{query}"
        assert c.get(url, headers=ann).status_code == 400, url


@pytest.mark.unit
def test_another_users_project_page_is_a_404(app, two_users):
    bob = logged_in(app.test_client(), "bob", create=False, password=TEST_PASSWORD)
    assert bob.get(f"/projects/{two_users['pid']}").status_code == 404
    ann = logged_in(app.test_client(), "ann", create=False)
    assert ann.get(f"/projects/{two_users['pid']}").status_code == 200


@pytest.mark.unit
def test_the_same_photo_in_two_users_projects_stays_private_to_each(app, two_users, web_photos):
    """Images are stored once by content; a user reaches one only through their own project."""
    c, bob = two_users["client"], two_users["bob"]
    pid = c.post("/api/v1/projects", json={"name": "bob's"}, headers=bob).json["id"]
    r = c.post(f"/api/v1/projects/{pid}/images", headers=bob,
               data={"file": (io.BytesIO(web_photos["cat"][0]), "c.jpg"), "label": "cat"})
    sha = r.json["images"][0]["sha256"]
    assert c.get(f"/api/v1/images/{sha}", headers=bob).status_code == 200
    c.delete(f"/api/v1/projects/{pid}/images/{sha}", headers=bob)
    assert c.get(f"/api/v1/images/{sha}", headers=bob).status_code == 404
    assert c.get(f"/api/v1/images/{sha}", headers=two_users["ann"]).status_code == 200


@pytest.mark.unit
def test_unauthenticated_requests_reach_nothing(app, two_users):
    c = app.test_client()
    pid, sha = two_users["pid"], two_users["sha"]
    for url in ["/api/v1/projects", f"/api/v1/projects/{pid}", f"/api/v1/images/{sha}",
                "/api/v1/backbones", "/api/v1/status", "/api/v1/imagenet/backbones",
                "/api/v1/no-such-route"]:
        r = c.get(url)
        assert r.status_code == 401 and r.is_json, url
    assert c.post("/api/v1/imagenet/predict", data={"file": (io.BytesIO(b"x"), "a.jpg")}).status_code == 401
    assert c.delete(f"/api/v1/projects/{pid}").status_code == 401
    for url in ["/", f"/projects/{pid}", "/imagenet", "/account"]:
        assert c.get(url).headers["Location"].startswith("/login"), url
    assert c.get("/api/v1/openapi.yaml").status_code == 200  # the description holds no data
    assert c.get("/static/style.css").status_code == 200
    assert c.get(f"/api/v1/projects/{pid}", headers=two_users["ann"]).status_code == 200


# -- sizes ---------------------------------------------------------------------------------------


@pytest.mark.unit
def test_oversized_requests_are_413_json_naming_the_limit(tmp_path, web_photos):
    app = create_app({"INSTANCE_PATH": str(tmp_path / "i"), "MAX_CONTENT_LENGTH": 200_000,
                      "MAX_FORM_MEMORY_SIZE": 10_000, "MAX_JSON_BYTES": 5_000})
    auth = bearer(api_token(app))
    c = app.test_client()
    pid = c.post("/api/v1/projects", json={"name": "p"}, headers=auth).json["id"]
    r = c.post(f"/api/v1/projects/{pid}/images", headers=auth,
               data={"file": (io.BytesIO(b"\0" * 300_000), "big.zip")})
    assert r.status_code == 413 and r.is_json
    assert "200000 bytes" in r.json["error"] and "upload" in r.json["error"]
    r = c.post(f"/api/v1/projects/{pid}/images", headers=auth,
               data={"file": (io.BytesIO(web_photos["cat"][0]), "c.jpg"), "label": "x" * 50_000})
    assert r.status_code == 413 and "10000 bytes per non-file field" in r.json["error"]
    r = c.post("/api/v1/projects", headers=auth, json={"name": "x" * 10_000})
    assert r.status_code == 413 and "JSON body" in r.json["error"] and "5000 bytes" in r.json["error"]
    r = c.patch(f"/api/v1/projects/{pid}", headers=auth, json={"name": "y" * 10_000})
    assert r.status_code == 413
    assert c.get(f"/api/v1/projects/{pid}", headers=auth).json["name"] == "p"  # nothing changed
    # a huge login form field is refused before any password hashing
    client = app.test_client()
    token = page_csrf_token(client.get("/login").get_data(as_text=True))
    r = client.post("/login", data={"username": "ann", "password": "p" * 50_000, "csrf_token": token})
    assert r.status_code == 413


# -- uploaded models and pickles are never loaded ------------------------------------------------


class _Boom:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.unit
def test_models_and_pickles_in_an_upload_are_rejected_never_loaded(app, tmp_path, web_photos):
    import pickle

    import numpy as np

    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Boom(marker))
    npy = io.BytesIO()
    np.save(npy, np.array([_Boom(marker)], dtype=object), allow_pickle=True)
    z = make_zip({"cat/model.keras": make_zip({"config.json": b"{}", "model.weights.h5": b"x"}),
                  "cat/weights.h5": b"\x89HDF\r\n\x1a\n" + b"\0" * 100,
                  "cat/model.pkl": evil, "cat/features.npy": npy.getvalue(),
                  "cat/state.pth": evil, "cat/ok.jpg": web_photos["cat"][0]})
    client = app.test_client()
    auth = bearer(api_token(app))
    pid = client.post("/api/v1/projects", json={"name": "p"}, headers=auth).json["id"]
    r = client.post(f"/api/v1/projects/{pid}/images", headers=auth, data={"file": (io.BytesIO(z), "m.zip")})
    assert r.status_code == 200 and r.json["accepted"] == 1, r.json
    rejected = {x["name"].rsplit("/", 1)[-1]: x["reason"] for x in r.json["rejected"]}
    assert set(rejected) == {"model.keras", "weights.h5", "model.pkl", "features.npy", "state.pth"}
    # the same files sent loose, and as the image to classify
    for name, data in [("model.pkl", evil), ("features.npy", npy.getvalue())]:
        r = client.post(f"/api/v1/projects/{pid}/images", headers=auth,
                        data={"file": (io.BytesIO(data), name), "label": "cat"})
        assert r.status_code == 400 and r.json["rejected"][0]["name"].endswith(name)
        r = client.post("/api/v1/imagenet/predict", headers=auth,
                        data={"file": (io.BytesIO(data), name)})
        assert r.status_code == 400 and name in r.json["error"]
    assert not marker.exists()


@pytest.mark.unit
def test_no_code_path_can_unpickle():
    """Every np.load in the code passes allow_pickle=False; Keras files are loaded in safe
    mode; pickle is only used by the restricted unpickler of the installed weights wheels."""
    import ast

    sources = [p for folder in ("models", "web") for p in (REPO / folder).rglob("*.py")]
    sources.append(REPO / "app.py")
    for path in sources:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if name.endswith("np.load") or name == "numpy.load":
                assert keywords.get("allow_pickle") == "False", f"{path}:{node.lineno}"
            if name.endswith("load_model"):
                assert keywords.get("safe_mode") == "True", f"{path}:{node.lineno}"
            if name in ("pickle.load", "pickle.loads", "joblib.load", "torch.load"):
                pytest.fail(f"{path}:{node.lineno} unpickles: {name}")
        if "Unpickler" in path.read_text():
            assert path.name == "torch_pickle.py", path


# -- command line --------------------------------------------------------------------------------


@pytest.mark.integration
def test_command_line_creates_users_and_tokens(tmp_path):
    env = {**os.environ, "TRANSFERLAB_INSTANCE_PATH": str(tmp_path / "instance")}

    def run(*args, stdin=""):
        return subprocess.run([sys.executable, str(REPO / "app.py"), *args], input=stdin, env=env,
                              capture_output=True, text=True, cwd=REPO, timeout=120, check=False)

    out = run("create-user", "root", "--admin", "--password-stdin", stdin=TEST_PASSWORD + "\n")
    assert out.returncode == 0, out.stderr
    assert TEST_PASSWORD not in out.stdout + out.stderr
    taken = run("create-user", "root", "--password-stdin", stdin=TEST_PASSWORD + "\n")
    assert taken.returncode == 1 and "taken" in taken.stderr
    out = run("create-token", "root", "--name", "ci")
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert token.startswith("tl_") and "\n" not in token
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance")})
    me = app.test_client().get("/api/v1/me", headers=bearer(token)).json
    assert me["username"] == "root" and me["is_admin"] is True
    browser = logged_in(app.test_client(), "root", create=False)
    new = "the new password!"
    assert run("set-password", "root", "--password-stdin", stdin=new + "\n").returncode == 0
    assert browser.get("/api/v1/me").status_code == 401  # a reset ends every session
    assert logged_in(app.test_client(), "root", new, create=False).get("/api/v1/me").status_code == 200

    out = run("disable-user", "root")
    assert out.returncode == 0 and "account 'root' disabled" in out.stdout, out.stderr
    assert app.test_client().get("/api/v1/me", headers=bearer(token)).json["error"] == "account disabled"
    assert run("enable-user", "root").returncode == 0
    assert app.test_client().get("/api/v1/me", headers=bearer(token)).status_code == 200
    assert run("disable-user", "nobody").returncode == 1
    out = run("create-token", "root", "--expires-in-days", "0")
    assert out.returncode == 1 and "expires_in_days" in out.stderr
    out = run("create-token", "root", "--expires-in-days", "2")
    assert out.returncode == 0, out.stderr
    expiring = app.test_client().get("/api/v1/tokens", headers=bearer(out.stdout.strip())).json[-1]
    assert expiring["expires_at"] is not None


# -- no secrets in logs --------------------------------------------------------------------------


@pytest.mark.unit
def test_passwords_and_tokens_never_reach_the_logs(app, caplog):
    caplog.set_level(logging.DEBUG)
    client = app.test_client()
    csrf = page_csrf_token(client.get("/setup").get_data(as_text=True))
    client.post("/setup", data={"username": "ann", "password": TEST_PASSWORD,
                                "confirm": TEST_PASSWORD, "csrf_token": csrf,
                                "setup_code": setup_code(app)})
    client.environ_base["HTTP_X_CSRFTOKEN"] = page_csrf_token(client.get("/").get_data(as_text=True))
    secret = client.post("/api/v1/tokens", json={"name": "logged?"}).json["token"]
    other = app.test_client()
    wrong = "a wrong password 12345"
    t = page_csrf_token(other.get("/login").get_data(as_text=True))
    other.post("/login", data={"username": "ann", "password": wrong, "csrf_token": t})
    other.get("/api/v1/projects", headers=bearer(secret))
    other.get("/api/v1/projects", headers=bearer(secret + "zz"))
    client.post("/account/password", data={"current": wrong, "password": "x" * 9, "confirm": "x" * 9})
    logged = caplog.text
    assert "failed login" in logged and "account 'ann' created" in logged  # logging works
    for secret_text in (TEST_PASSWORD, wrong, secret, secret[3:], secret + "zz", app.secret_key):
        assert secret_text not in logged


@pytest.mark.unit
def test_health_check_is_public_and_says_nothing_private(tmp_path):
    from web import create_app

    client = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "TESTING": True}).test_client()
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json == {"ok": True}

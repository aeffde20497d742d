"""Abuse (security issues #12): slow request bodies and password guessing.

Slow bodies run against a real `python app.py` (gevent, no worker) on loopback with raw
sockets (bench/abuse.py, the same code as the benchmark); the rate limits run in-process with
the Flask test client, one test against a real Redis shared by two app instances.
"""
from __future__ import annotations

import io
import json
import re
import socket
import time
from pathlib import Path

import pytest
import requests
from helpers import TEST_PASSWORD, api_token, logged_in, page_csrf_token
from servers import RedisServer

from bench.abuse import (
    ATTACKERS,
    VICTIM,
    bearer,
    make_accounts,
    projects_for,
    slow_bodies,
    start_app,
    stop_app,
    wrong_logins,
)
from web import create_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def jpeg(color=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, "JPEG")
    return buf.getvalue()


# -- slow request bodies --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real server with the default limits; {name: token} for ann and three attackers."""
    tmp = tmp_path_factory.mktemp("abuse")
    tokens = make_accounts(tmp / "instance", (VICTIM, *ATTACKERS))
    proc, base = start_app(tmp / "instance", tmp / "server.log")
    yield {"base": base, "tokens": tokens, "log": tmp / "server.log", "proc": proc}
    stop_app(proc)


@pytest.mark.integration
def test_50_slow_uploaders_leave_other_users_fast(server):
    """50 uploads that send one byte per second (3 accounts) used to hold the pool of 15
    database connections: /healthz 503 and everyone else 500 after 30 s. Now every other
    request answers in < 2 s, uploads beyond 4 per account are 429 at once, and the attackers'
    slots are free again once they hang up."""
    base, tokens = server["base"], server["tokens"]
    targets = projects_for(base, tokens, ATTACKERS)
    result = slow_bodies(base, targets, connections=50, seconds=12.0, probe_timeout=5.0, probe_urls={
        "healthz": (f"{base}/healthz", requests.Session()),
        "other_user": (f"{base}/api/v1/projects", bearer(tokens[VICTIM]))})
    print(json.dumps(result))
    for kind, probe in result["probes"].items():
        assert probe["n"] >= 10 and not probe["errors"], (kind, probe)
        assert probe["max_ms"] < 2000, (kind, probe)
    # 4 running uploads per account (UPLOADS_PER_USER) hold on; the 38 others were refused
    assert result["attackers_got"] == {"429": 50 - 4 * len(ATTACKERS), "open": 4 * len(ATTACKERS)}
    token, pid = targets[0]
    deadline = time.monotonic() + 10
    while True:  # the closed connections' slots come back as the server notices
        r = bearer(token).post(f"{base}/api/v1/projects/{pid}/images", timeout=30,
                               files={"file": ("red.jpg", jpeg())}, data={"label": "red"})
        if r.status_code != 429 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    assert server["proc"].poll() is None


@pytest.mark.integration
def test_an_upload_beyond_the_cap_is_429_with_retry_after_before_its_body(server):
    base, token = server["base"], server["tokens"]["eve"]
    pid = projects_for(base, server["tokens"], ["eve"])[0][1]
    host, port = base.removeprefix("http://").split(":")
    held = []
    try:
        for _ in range(4):  # four uploads in progress (headers sent, body not)
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(_upload_head(pid, token, 10_000_000))
            held.append(s)
        time.sleep(0.5)
        fifth = socket.create_connection((host, int(port)), timeout=10)
        fifth.sendall(_upload_head(pid, token, 10_000_000))  # no body byte ever sent
        answer = _read_answer(fifth)
        fifth.close()
    finally:
        for s in held:
            s.close()
    assert answer.startswith(b"HTTP/1.1 429"), answer[:300]
    head, body = answer.split(b"\r\n\r\n", 1)
    assert re.search(rb"\r\nRetry-After: [1-9]\d*\r\n", head), head
    assert b"too many uploads at once" in body and b"UPLOADS_PER_USER" in body


@pytest.mark.integration
def test_a_refused_upload_awaiting_100_continue_is_answered_and_closed(server):
    """The client holds its body back until `100 Continue`; refused at once (a bad token), it
    gets the 401 and the connection closes: no late `100 Continue`, no wait for the body."""
    host, port = server["base"].removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(_upload_head(1, "tl_not-a-token", 5_000_000).replace(
        b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
    began = time.monotonic()
    answer = _read_answer(s, timeout=8)
    s.settimeout(3)
    closed = s.recv(1) == b""
    s.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer[:300]
    assert b"100 Continue" not in answer and closed and time.monotonic() - began < 3, answer


def _upload_head(pid: int, token: str, length: int, boundary: str = "b0undary") -> bytes:
    return (f"POST /api/v1/projects/{pid}/images HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def _read_answer(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """What the server sends until it closes the connection or `timeout` passes."""
    sock.settimeout(0.5)
    data, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if b"\r\n\r\n" in data and _complete(data):
                break
            continue
        if not chunk:
            break
        data += chunk
    return data


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    found = re.search(rb"Content-Length: (\d+)", head, re.IGNORECASE)
    return bool(found) and len(body) >= int(found.group(1))


@pytest.mark.integration
def test_20_slow_json_bodies_hold_no_database_connection(server):
    """A small body (JSON, forms) is read whole before the app runs, so 20 PATCHes trickling
    their JSON in cannot hold the pool's connections (the upload cap does not apply to them)."""
    base, tokens = server["base"], server["tokens"]
    pid = projects_for(base, tokens, ["trudy"])[0][1]
    host, port = base.removeprefix("http://").split(":")
    socks = []
    for _ in range(20):
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall((f"PATCH /api/v1/projects/{pid} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Authorization: Bearer {tokens['trudy']}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: 100000\r\n\r\n{{\"name\": \"").encode())
        socks.append(s)
    try:
        time.sleep(1.0)
        slowest = 0.0
        for _ in range(8):
            for s in socks:
                s.send(b"x")
            for url, session in ((f"{base}/healthz", requests.Session()),
                                 (f"{base}/api/v1/projects", bearer(tokens[VICTIM]))):
                began = time.monotonic()
                assert session.get(url, timeout=10).status_code == 200
                slowest = max(slowest, time.monotonic() - began)
            time.sleep(0.5)
    finally:
        for s in socks:
            s.close()
    assert slowest < 2.0, slowest


@pytest.fixture
def impatient_server(tmp_path):
    """A real server that wants 64 KiB/s after 1 s and closes connections silent for 3 s."""
    tokens = make_accounts(tmp_path / "instance", (VICTIM,))
    proc, base = start_app(tmp_path / "instance", tmp_path / "server.log",
                           TRANSFERLAB_BODY_GRACE_SECONDS=1, TRANSFERLAB_BODY_MIN_RATE=65536,
                           TRANSFERLAB_SOCKET_TIMEOUT=3)
    yield {"base": base, "token": tokens[VICTIM], "instance": tmp_path / "instance"}
    stop_app(proc)


@pytest.mark.integration
def test_a_too_slow_upload_ends_408_and_stores_nothing(impatient_server):
    base, token = impatient_server["base"], impatient_server["token"]
    pid = projects_for(base, {VICTIM: token}, [VICTIM])[0][1]
    host, port = base.removeprefix("http://").split(":")
    image = jpeg()
    part = (b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n"
            b"Content-Type: image/jpeg\r\n\r\n" + image + b"\r\n--b0undary\r\n"
            b"Content-Disposition: form-data; name=\"file\"; filename=\"b.jpg\"\r\n\r\n")
    s = socket.create_connection((host, int(port)), timeout=10)
    began = time.monotonic()
    s.sendall(_upload_head(pid, token, len(part) + 200_000) + part)
    s.setblocking(False)
    answer = b""
    while time.monotonic() - began < 15 and not answer:
        try:
            s.send(b"\xff")  # a byte every 0.2 s: far below 64 KiB/s
        except OSError:
            pass
        time.sleep(0.2)
        try:
            answer = s.recv(65536)
        except BlockingIOError:
            pass
    s.setblocking(True)
    answer += _read_answer(s, timeout=5)
    s.close()
    took = time.monotonic() - began
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert took < 6, took  # the deadline: 1 s grace + 64 KiB at 64 KiB/s, plus slack
    head, body = answer.split(b"\r\n\r\n", 1)
    assert b"Connection: close" in head, head
    error = json.loads(body)["error"]
    assert "arrived too slowly" in error and "nothing of this request was stored" in error, error
    # the first, complete image of that upload was not stored either
    listed = bearer(token).get(f"{base}/api/v1/projects/{pid}/images", timeout=10).json()
    assert listed == [], listed
    blobs = [p for p in (impatient_server["instance"]).rglob("*") if p.is_file()
             and p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")]
    assert blobs == [], blobs
    # and the server is fine: a normal upload works
    r = bearer(token).post(f"{base}/api/v1/projects/{pid}/images", timeout=30,
                           files={"file": ("red.jpg", image)}, data={"label": "red"})
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text


@pytest.mark.integration
def test_a_silent_connection_is_closed_after_the_socket_timeout(impatient_server):
    host, port = impatient_server["base"].removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the headers never end
    began = time.monotonic()
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass
    took = time.monotonic() - began
    s.close()
    assert 2.5 < took < 6, took


@pytest.mark.unit
def test_the_guard_returns_its_connection_and_keeps_the_user_savable(tmp_path):
    """After authentication no pooled connection is held (a body may stream in next), and the
    user object is still loaded and attached: a change to it is saved."""
    from flask import g

    from web.db import User, db

    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "TESTING": True})
    token = api_token(app, "bob")
    with app.test_request_context("/api/v1/projects/1/images", method="POST",
                                  headers={"Authorization": f"Bearer {token}"}):
        assert app.preprocess_request() is None
        assert db.engine.pool.checkedout() == 0
        assert "username" in g.user.__dict__  # loaded, not expired
        g.user.is_admin = True
        db.session.commit()
    with app.app_context():
        assert db.session.scalar(db.select(User).where(User.username == "bob")).is_admin


@pytest.mark.unit
def test_no_database_connection_is_held_while_a_password_is_hashed(tmp_path, monkeypatch):
    """Hashing waits its turn (two at a time) and takes ~0.1 s: 20 guesses holding a pooled
    connection each meanwhile would exhaust the pool again."""
    from web.auth import accounts as auth
    from web.db import db

    app = _app(tmp_path)
    seen = []

    def spying(real):
        def hashing(*args):
            seen.append(db.engine.pool.checkedout())
            return real(*args)
        return hashing

    monkeypatch.setattr(auth, "check_password_hash", spying(auth.check_password_hash))
    monkeypatch.setattr(auth, "generate_password_hash", spying(auth.generate_password_hash))
    api_token(app, "ann")  # create_user hashes
    assert _login(app.test_client(), "ann", "wrong password").status_code == 401
    assert _login(app.test_client(), "ann", TEST_PASSWORD).status_code == 302
    assert seen == [0, 0, 0]


# -- rate limits ----------------------------------------------------------------------------------


def _login(client, username, password, address="127.0.0.1"):
    token = page_csrf_token(client.get("/login", environ_base={"REMOTE_ADDR": address}).text)
    return client.post("/login", data={"username": username, "password": password,
                                       "csrf_token": token},
                       environ_base={"REMOTE_ADDR": address})


def _app(tmp_path, **config):
    return create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "TESTING": True, **config})


@pytest.mark.unit
def test_the_wrong_login_past_the_limit_is_429_with_retry_after(tmp_path):
    app = _app(tmp_path, LOGIN_LIMIT="3/minute")
    api_token(app, "ann"), api_token(app, "bob")
    client = app.test_client()
    for i in range(3):
        assert _login(client, "ann", f"wrong-{i}", "10.0.0.1").status_code == 401
    r = _login(client, "ann", "wrong-3", "10.0.0.1")
    assert r.status_code == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert "Too many failed logins" in r.text and "retry in" in r.text  # the form, with why
    assert 'name="password"' in r.text
    # the right password from that address is refused too (a guesser cannot tell)
    assert _login(client, "ann", TEST_PASSWORD, "10.0.0.1").status_code == 429
    # another user from another address is unaffected
    assert _login(app.test_client(), "bob", "wrong", "10.0.0.2").status_code == 401
    assert _login(app.test_client(), "bob", TEST_PASSWORD, "10.0.0.2").status_code == 302
    # the guessed user name is limited from every address; its owner's new address too
    assert _login(app.test_client(), "ann", "wrong", "10.0.0.3").status_code == 429
    # the guessing address is limited for every user name
    assert _login(app.test_client(), "bob", "wrong", "10.0.0.1").status_code == 429


@pytest.mark.unit
def test_successful_logins_do_not_count(tmp_path):
    app = _app(tmp_path, LOGIN_LIMIT="2/minute")
    api_token(app, "ann")
    for _ in range(5):
        assert _login(app.test_client(), "ann", TEST_PASSWORD).status_code == 302


@pytest.mark.unit
def test_setup_password_and_token_forms_are_limited_with_a_page(tmp_path):
    app = _app(tmp_path, SETUP_LIMIT="2/minute", PASSWORD_LIMIT="2/minute",
               TOKEN_LIMIT="2/minute")
    client = app.test_client()
    token = page_csrf_token(client.get("/setup").text)
    code = (Path(app.instance_path) / "setup_code").read_text().strip()
    form = {"username": "ann", "password": TEST_PASSWORD, "confirm": "different!",
            "csrf_token": token, "setup_code": code}
    assert [client.post("/setup", data=form).status_code for _ in range(3)] == [400, 400, 429]
    r = client.post("/setup", data=form)
    assert r.status_code == 429 and "Too many setup attempts" in r.text and r.headers["Retry-After"]

    client = logged_in(app.test_client())
    codes = [client.post("/account/password", data={"current": "wrong password",
                                                    "password": "x" * 10, "confirm": "x" * 10}
                         ).status_code for _ in range(3)]
    assert codes == [302, 302, 429]
    r = client.post("/account/tokens", data={"name": "a"})
    assert r.status_code == 200
    assert client.post("/account/tokens", data={"name": "b"}).status_code == 200
    r = client.post("/account/tokens", data={"name": "c"})
    assert r.status_code == 429 and "Too many new API tokens" in r.text
    assert int(r.headers["Retry-After"]) >= 1


@pytest.mark.unit
def test_api_limits_answer_429_json_per_account_and_address(tmp_path, web_photos):
    app = _app(tmp_path, TOKEN_LIMIT="2/minute", UPLOAD_LIMIT="2/minute",
               PREDICT_LIMIT="2/minute")
    client = app.test_client()
    ann = {"Authorization": f"Bearer {api_token(app, 'ann')}"}
    bob = {"Authorization": f"Bearer {api_token(app, 'bob')}"}
    codes = [client.post("/api/v1/tokens", json={"name": f"t{i}"}, headers=ann).status_code
             for i in range(3)]
    assert codes == [201, 201, 429]
    r = client.post("/api/v1/tokens", json={"name": "t"}, headers=ann)
    assert r.status_code == 429 and r.is_json
    assert "too many new API tokens" in r.json["error"] and r.json["retry_after"] >= 1
    assert r.headers["Retry-After"] == str(r.json["retry_after"])
    # bob, from another address, is unaffected
    other = {"REMOTE_ADDR": "10.0.0.9"}
    assert client.post("/api/v1/tokens", json={"name": "b"}, headers=bob,
                       environ_base=other).status_code == 201

    pid = client.post("/api/v1/projects", json={"name": "p", "backbones": ["efficientnet_lite0"]},
                      headers=ann).json["id"]
    codes = [client.post(f"/api/v1/projects/{pid}/images", headers=ann, data={
        "file": (io.BytesIO(web_photos["cat"][i]), f"{i}.jpg"), "label": "cat"}).status_code
        for i in range(3)]
    assert codes == [200, 200, 429]
    listed = client.get(f"/api/v1/projects/{pid}/images", headers=ann).json
    assert len(listed) == 2, listed  # not stored
    # predictions (no trained iteration yet: 4xx, but counted)
    codes = [client.post(f"/api/v1/projects/{pid}/predict", headers=ann, data={
        "file": (io.BytesIO(web_photos["cat"][5]), "c.jpg")}).status_code for _ in range(3)]
    assert codes[2] == 429 and codes[0] != 429 and codes[1] != 429, codes


@pytest.mark.servers
def test_redis_shares_the_counts_between_two_app_instances(tmp_path):
    import redis

    server = RedisServer().start()
    try:
        config = {"LOGIN_LIMIT": "3/minute", "REDIS_URL": server.url}
        first = _app(tmp_path / "a", **config)
        second = _app(tmp_path / "b", **config)
        for app in (first, second):
            api_token(app, "ann")
            assert app.config["RATELIMIT_STORAGE_URI"] == server.url
        assert _login(first.test_client(), "ann", "wrong-1").status_code == 401
        assert _login(second.test_client(), "ann", "wrong-2").status_code == 401
        assert _login(first.test_client(), "ann", "wrong-3").status_code == 401
        r = _login(second.test_client(), "ann", "wrong-4")
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert redis.Redis.from_url(server.url).keys("*LOGIN_LIMIT*")
    finally:
        server.stop()


@pytest.mark.unit
def test_with_redis_down_the_limits_count_in_memory(tmp_path):
    """REDIS_URL set but nothing listening: logins still work, and are still limited."""
    app = _app(tmp_path, LOGIN_LIMIT="2/minute", REDIS_URL="redis://127.0.0.1:1/0")
    api_token(app, "ann")
    codes = [_login(app.test_client(), "ann", f"wrong-{i}").status_code for i in range(3)]
    assert codes == [401, 401, 429]
    assert _login(app.test_client(), "bob", "wrong", "10.0.0.5").status_code == 401
    assert _login(app.test_client(), "ann", TEST_PASSWORD, "10.0.0.5").status_code == 429
    api_token(app, "bob")
    assert _login(app.test_client(), "bob", TEST_PASSWORD, "10.0.0.6").status_code == 302


# -- password guessing against a real server ----------------------------------------------------


@pytest.mark.integration
def test_20_threads_of_wrong_logins_leave_healthz_fast(server):
    """20 threads guessing passwords used to stall every request (hashing on the gevent loop:
    /healthz median 1.6 s). Now the guesses beyond LOGIN_LIMIT are 429 and cost nothing."""
    result = wrong_logins(server["base"], threads=20, seconds=8.0, username="eve")
    print(json.dumps(result))
    assert result["attackers_got"].get("429", 0) > result["attackers_got"].get("401", 0)
    # failed logins counted per address: 10 a minute, plus those in flight when it was hit
    assert 10 <= result["attackers_got"]["401"] <= 10 + 20
    probe = result["probes"]["healthz"]
    assert probe["n"] >= 10 and not probe["errors"] and probe["median_ms"] < 250, probe


@pytest.mark.integration
def test_password_hashing_runs_off_the_event_loop(tmp_path):
    """With the rate limits off, every guess is hashed: /healthz stays fast while 20 threads
    guess (hashing runs in gevent's thread pool, two at a time, with no pooled connection held
    meanwhile; on the loop it made the median 1.6 s)."""
    make_accounts(tmp_path / "instance", (VICTIM,))
    proc, base = start_app(tmp_path / "instance", tmp_path / "server.log",
                           TRANSFERLAB_RATELIMIT_ENABLED="false")
    try:
        result = wrong_logins(base, threads=20, seconds=8.0)
    finally:
        stop_app(proc)
    print(json.dumps(result))
    assert set(result["attackers_got"]) == {"401"} and result["attempts"] >= 20
    probe = result["probes"]["healthz"]
    assert probe["n"] >= 10 and not probe["errors"] and probe["median_ms"] < 250, probe

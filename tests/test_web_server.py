"""The web process: no TensorFlow for pages and listings, ImageNet mode offline, and the real
`python app.py` (gevent server + worker child) staying responsive while TensorFlow works."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid

import pytest
from helpers import REPO, api_token, free_port, logged_in, start_app

from web import create_app

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


def cat_jpeg() -> bytes:
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_pages_and_listings_do_not_import_tensorflow(tmp_path):
    """Render every page and call the listing/upload/queue APIs in a fresh interpreter, then
    look at sys.modules: TensorFlow and Keras must not be there."""
    script = textwrap.dedent(f"""
        import io, json, sys, zipfile
        sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'tests')!r})
        from helpers import logged_in
        from web import create_app
        app = create_app({{"INSTANCE_PATH": {str(tmp_path / 'instance')!r}, "TESTING": True}})
        c = logged_in(app.test_client())
        def ok(r, *codes):
            assert r.status_code in (codes or (200,)), (r.status_code, r.get_data(as_text=True)[:300])
            return r
        ok(c.get("/api/v1/backbones")); ok(c.get("/api/v1/imagenet/backbones"))
        pid = ok(c.post("/api/v1/projects", json={{"name": "p", "backbones": ["efficientnet_lite0"]}}), 201).json["id"]
        from PIL import Image
        def jpeg(color):
            b = io.BytesIO(); Image.new("RGB", (64, 48), color).save(b, "JPEG"); return b.getvalue()
        z = io.BytesIO()
        with zipfile.ZipFile(z, "w") as f:
            f.writestr("red/1.jpg", jpeg((250, 0, 0))); f.writestr("red/2.jpg", jpeg((240, 9, 9)))
            f.writestr("blue/1.jpg", jpeg((0, 0, 250))); f.writestr("blue/2.jpg", jpeg((9, 9, 240)))
        body = ok(c.post(f"/api/v1/projects/{{pid}}/images", data={{"file": (io.BytesIO(z.getvalue()), "d.zip")}})).json
        sha = body["images"][0]["sha256"]
        ok(c.get(f"/api/v1/images/{{sha}}/thumbnail")); ok(c.get(f"/api/v1/images/{{sha}}"))
        for url in ["/", f"/projects/{{pid}}", "/imagenet", "/api/v1/projects",
                    f"/api/v1/projects/{{pid}}", f"/api/v1/projects/{{pid}}/images",
                    f"/api/v1/projects/{{pid}}/iterations", f"/api/v1/projects/{{pid}}/uploads",
                    "/api/v1/status"]:
            ok(c.get(url))
        job = ok(c.post(f"/api/v1/projects/{{pid}}/train"), 202).json
        ok(c.get(f"/api/v1/jobs/{{job['job_id']}}")); ok(c.post(f"/api/v1/jobs/{{job['job_id']}}/cancel"))
        ok(c.get(f"/api/v1/projects/{{pid}}/results"), 404)
        # a finished iteration (as a worker leaves it) is shown without TensorFlow too
        from web.db import Iteration, db
        with app.app_context():
            storage = app.extensions["transferlab.storage"]
            folder = storage.resolve(storage.iteration_relpath(pid, 1))
            folder.mkdir(parents=True)
            entry = {{"cv_accuracy": 1.0, "per_class": {{}}, "confusion": {{"labels": [], "matrix": []}},
                     "predictions": {{"cv": [{{"sha256": sha, "true": "red", "pred": "red"}}]}}}}
            (folder / "report.json").write_text(json.dumps({{"classes": ["blue", "red"],
                "backbones": {{"efficientnet_lite0": entry}}, "ensemble": entry}}))
            db.session.add(Iteration(project_id=pid, number=1, folder=storage.iteration_relpath(pid, 1),
                classes=["blue", "red"], backbones=["efficientnet_lite0"], n_train=4, n_test=0,
                summary={{}}))
            db.session.commit()
        res = ok(c.get(f"/api/v1/projects/{{pid}}/results")).json
        assert res["iteration"] == 1 and res["backbones"]["efficientnet_lite0"]["predictions"]["cv"][0]["thumbnail"]
        ok(c.get(f"/api/v1/projects/{{pid}}/iterations")); ok(c.get(f"/api/v1/projects/{{pid}}"))
        ok(c.get(f"/projects/{{pid}}"))
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
        print(json.dumps(heavy[:5]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_imagenet_mode_classifies_the_cat_offline(tmp_path, empty_keras_home):
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "TESTING": True})
    client = logged_in(app.test_client())
    r = client.post("/api/v1/imagenet/predict",
                    data={"file": (io.BytesIO(cat_jpeg()), "chelsea.jpg")})
    assert r.status_code == 200, r.json
    body = r.json
    # only EfficientNet-Lite0 has weights here: the default Keras backbones are left out
    assert list(body["backbones"]) == ["efficientnet_lite0"]
    top = body["backbones"]["efficientnet_lite0"]
    assert len(top) == 3 and top[0]["label"] in CATS, top
    assert body["ensemble"]["label"] in CATS and body["ensemble"]["method"] == "majority vote"
    assert body["ensemble"]["votes"] == {top[0]["label"]: 1}
    r = client.post("/api/v1/imagenet/predict?backbones=efficientnet_lite0&top_k=5",
                    data={"file": (io.BytesIO(cat_jpeg()), "chelsea.jpg")})
    assert r.status_code == 200 and len(r.json["backbones"]["efficientnet_lite0"]) == 5


# -- python app.py ---------------------------------------------------------------------------


AUTH: dict[str, str] = {}  # the API token header every request below sends (see `bearer`)


@pytest.fixture
def bearer(tmp_path):
    """An account and an API token on tmp_path/instance, sent by the helpers below."""
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance")})
    AUTH["Authorization"] = f"Bearer {api_token(app)}"
    yield AUTH["Authorization"]
    AUTH.clear()


def _get(url, timeout=30):
    with urllib.request.urlopen(urllib.request.Request(url, headers=AUTH), timeout=timeout) as r:
        return r.status, r.read()


def _post_file(url, name, data, timeout=120, fields=None):
    boundary = uuid.uuid4().hex
    body = b"".join(
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
        for k, v in (fields or {}).items())
    body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
             f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    body += data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}", **AUTH})
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return r.status, json.loads(r.read())


def _post_json(url, payload, timeout=30):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **AUTH})
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return r.status, json.loads(r.read())


def _stop_app(proc, log_path) -> None:
    """SIGTERM `python app.py`; it must exit, and so must its worker child."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("python app.py did not stop on SIGTERM:\n" + log_path.read_text())
    text = log_path.read_text()
    assert "worker started (pid" in text, text
    child = int(text.split("worker started (pid ")[1].split(")")[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the worker child outlived the server")


def _get_json(url, timeout=30):
    status, body = _get(url, timeout=timeout)
    return status, json.loads(body)


def test_app_py_serves_with_gevent_and_starts_a_worker(tmp_path, web_photos, bearer):
    """The whole product path: `python app.py` serves, its worker child trains, and page
    requests stay fast while the web process runs TensorFlow for a prediction. Stopped with
    SIGTERM and started again on the same instance folder, the trained project is all there."""
    from helpers import make_zip

    port = free_port()
    log_path = tmp_path / "server.log"
    proc = start_app(tmp_path, port, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        assert _get(f"{base}/")[0] == 200
        status, project = _post_json(f"{base}/api/v1/projects",
                                     {"name": "live", "backbones": ["efficientnet_lite0"]})
        assert status == 201
        pid = project["id"]
        members = {f"{label}/{i}.jpg": web_photos[label][i]
                   for label in ("cat", "coffee") for i in range(4)}
        status, body = _post_file(f"{base}/api/v1/projects/{pid}/images", "d.zip",
                                  make_zip(members))
        assert status == 200 and body["classes"] == {"cat": 4, "coffee": 4}
        status, body = _post_file(f"{base}/api/v1/projects/{pid}/images", "t.jpg",
                                  web_photos["cat"][9], fields={"label": "cat", "split": "test"})
        assert status == 200 and body["test_classes"] == {"cat": 1}
        status, job = _post_json(f"{base}/api/v1/projects/{pid}/train", {})
        assert status == 202

        # classify in the background (loads TensorFlow in the web process's thread pool) ...
        import threading

        answers = {}
        threads = [threading.Thread(target=lambda i=i: answers.update({i: _post_file(
            f"{base}/api/v1/imagenet/predict", "cat.jpg", cat_jpeg())})) for i in range(2)]
        for thread in threads:  # two at once: TensorFlow calls must not deadlock each other
            thread.start()
        # ... while other requests are answered quickly
        time.sleep(0.5)
        slowest = 0.0
        while any(thread.is_alive() for thread in threads):
            began = time.monotonic()
            assert _get(f"{base}/api/v1/projects", timeout=10)[0] == 200
            slowest = max(slowest, time.monotonic() - began)
            time.sleep(0.2)
        for thread in threads:
            thread.join()
        for status, body in answers.values():
            assert status == 200 and body["backbones"]["efficientnet_lite0"][0]["label"] in CATS
        assert len(answers) == 2
        assert slowest < 2.0, f"a page request took {slowest:.1f} s while TensorFlow ran"

        deadline = time.monotonic() + 180  # the worker child trains the project
        while True:
            state = json.loads(_get(f"{base}/api/v1/jobs/{job['job_id']}")[1])
            if state["state"] not in ("queued", "running"):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"{state}\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        assert state["state"] == "succeeded" and state["iteration"] == 1, state
        status, answer = _post_file(f"{base}/api/v1/projects/{pid}/predict", "c.jpg",
                                    web_photos["cat"][11])
        assert status == 200 and answer["ensemble"]["label"] == "cat"
        before = _get_json(f"{base}/api/v1/projects/{pid}/results")[1]
        assert before["ensemble"]["cv_accuracy"] is not None, before["ensemble"]
        assert "ready (queue" in log_path.read_text()
    finally:
        _stop_app(proc, log_path)

    # Restart on the same instance folder (a new port): the finished project is all there.
    port = free_port()
    log_path = tmp_path / "server-2.log"
    proc = start_app(tmp_path, port, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        status, again = _get_json(f"{base}/api/v1/projects/{pid}")
        assert status == 200 and again["name"] == "live", again
        assert again["classes"] == {"cat": 4, "coffee": 4} and again["test_classes"] == {"cat": 1}
        assert again["latest_iteration"] == 1 and again["status"] == "succeeded", again
        assert [p["id"] for p in _get_json(f"{base}/api/v1/projects")[1]] == [pid]
        status, after = _get_json(f"{base}/api/v1/projects/{pid}/results")
        assert status == 200 and after["iteration"] == 1 and after["iterations"] == [1]
        assert (after["backbones"]["efficientnet_lite0"]["cv_accuracy"]
                == before["backbones"]["efficientnet_lite0"]["cv_accuracy"])
        assert after["ensemble"]["cv_accuracy"] == before["ensemble"]["cv_accuracy"]
        assert _get(f"{base}/projects/{pid}")[0] == 200
        status, answer = _post_file(f"{base}/api/v1/projects/{pid}/predict", "c.jpg",
                                    web_photos["cat"][11])
        assert status == 200 and answer["ensemble"]["label"] == "cat"
        # a new worker child is up, and its start-up left the finished job alone
        deadline = time.monotonic() + 60
        while "ready (queue" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        assert _get_json(f"{base}/api/v1/jobs/{job['job_id']}")[1]["state"] == "succeeded"
    finally:
        _stop_app(proc, log_path)

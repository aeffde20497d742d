"""Faults (issue #6): the worker killed mid-job, the web process killed mid-job, two trainings
at once, a full disk, an unusable instance folder. Each must end in a clear state, lose nothing
that was saved, never poison the feature cache, and leave the project trainable.

Real components: a Huey worker subprocess (`python app.py worker`), the real `python app.py`
server, SQLite files on disk. The module shares one instance folder and one worker (tests run
in order and hand the worker on in `env`).

Every HTTP call goes through `_client()` (in-process) or `_session()` (real server): the two
places to add authentication.
"""
from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from helpers import REPO, Server, bearer_session, free_port, logged_in, make_zip, photo_variants

from web import create_app

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

BACKBONE = "efficientnet_lite0"
FINAL = ("succeeded", "failed", "cancelled")


def _client(app):
    """In-process HTTP client: logged in, sending the pages' CSRF token."""
    return logged_in(app.test_client())


def _session(instance) -> requests.Session:
    """HTTP session for the real server on `instance`, with an API token."""
    return bearer_session(instance)


@pytest.fixture(scope="module")
def env(tmp_path_factory, start_worker):
    instance = tmp_path_factory.mktemp("faults") / "instance"
    app = create_app({"INSTANCE_PATH": str(instance), "TESTING": True})
    worker = start_worker(instance).wait_ready()
    return {"app": app, "client": _client(app), "worker": worker, "instance": instance,
            "start_worker": start_worker}


def fresh_zip(seed: int, per_class: int, photos=("astronaut", "chelsea")) -> bytes:
    """Images no other test uploads (so the feature cache misses on them)."""
    from skimage import data

    members = {}
    for k, photo in enumerate(photos):
        for i, im in enumerate(photo_variants(getattr(data, photo)(), per_class, seed + k)):
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=85)
            members[f"{photo}/{i}.jpg"] = buf.getvalue()
    return make_zip(members)


def new_project(client, name: str, zip_bytes: bytes) -> int:
    pid = client.post("/api/v1/projects", json={"name": name, "backbones": [BACKBONE]}).json["id"]
    r = client.post(f"/api/v1/projects/{pid}/images",
                    data={"file": (io.BytesIO(zip_bytes), "d.zip")},
                    content_type="multipart/form-data")
    assert r.status_code == 200, r.json
    return pid


def wait_for(env, job_id, done, timeout=240.0, interval=0.02) -> dict:
    """Poll the job until `done(job)`; fails (with the worker's log) on timeout."""
    client = env["client"]
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}").json
        if done(job):
            return job
        time.sleep(interval)
    pytest.fail(f"job {job_id}: {job}\n{env['worker'].log()[-3000:]}")


def restart_worker(env) -> None:
    env["worker"] = env["start_worker"](env["instance"]).wait_ready()


def check_cache(root: Path) -> int:
    """Every cache entry under a real name loads as a finite float32 vector; returns how many.
    Temporary files of an interrupted write may remain (never under an entry's name)."""
    entries = 0
    for path in root.rglob("*"):
        if path.is_file():
            if path.suffix == ".npy":
                vector = np.load(path, allow_pickle=False)
                assert vector.dtype == np.float32 and vector.ndim == 1 and vector.size > 100
                assert np.isfinite(vector).all(), path
                entries += 1
            else:
                assert path.suffix == ".tmp", path  # mkstemp's name: never read as an entry
    return entries


def cache_root(env) -> Path:
    return Path(env["app"].config["FEATURE_CACHE_DIR"])


# -- the worker killed in the middle of a job --------------------------------------------------


def test_worker_killed_during_feature_extraction(env):
    client = env["client"]
    pid = new_project(client, "extract", fresh_zip(12_000, 10))
    env["pid"] = pid
    job_id = client.post(f"/api/v1/projects/{pid}/train").json["job_id"]
    job = wait_for(env, job_id, lambda j: j["state"] in FINAL or (
        j["stage"].startswith("extracting") and (j["features_computed"] or 0) > 0))
    assert job["state"] == "running", job
    env["worker"].stop(sig=signal.SIGKILL)
    killed_at = job["features_computed"]
    good = check_cache(cache_root(env))  # what the killed run left: only readable entries
    assert good >= killed_at > 0  # what the run reported done is on disk, and readable

    restart_worker(env)  # a starting worker takes the dead worker's job over (attempt 2)
    job = wait_for(env, job_id, lambda j: j["state"] in FINAL)
    assert job["state"] == "succeeded" and job["attempts"] == 2 and job["iteration"] == 1, job
    # only what the killed run had not finished went through the backbone again
    assert job["features_computed"] == job["features_total"] - good
    assert check_cache(cache_root(env)) == job["features_total"]


def test_worker_killed_during_head_fitting(env):
    client, pid = env["client"], env["pid"]
    storage = env["app"].extensions["transferlab.storage"]
    before = check_cache(cache_root(env))
    # force: the project is unchanged since the fixture trained it (else "nothing changed")
    job_id = client.post(f"/api/v1/projects/{pid}/train", json={"force": True}).json["job_id"]
    job = wait_for(env, job_id, lambda j: j["state"] in FINAL
                   or j["stage"].startswith("fitting head"), interval=0.005)
    assert job["state"] == "running", job  # all features cached: the run is all head fitting
    env["worker"].stop(sig=signal.SIGKILL)
    assert [i["number"] for i in client.get(f"/api/v1/projects/{pid}/iterations").json] == [1]
    assert client.get(f"/api/v1/projects/{pid}/results").json["iteration"] == 1  # still served

    restart_worker(env)  # the job is taken over (attempt 2) and fits its heads again
    job = wait_for(env, job_id, lambda j: j["state"] in FINAL)
    assert job["state"] == "succeeded" and job["attempts"] == 2 and job["iteration"] == 2, job
    assert job["features_computed"] == 0  # every feature came from the cache
    assert [i["number"] for i in client.get(f"/api/v1/projects/{pid}/iterations").json] == [1, 2]
    assert not (storage.project_dir(pid) / "iterations" / "3").exists()  # no half iteration
    assert check_cache(cache_root(env)) == before


def test_a_class_with_one_image_trains(env, web_photos):
    client = env["client"]
    members = {"solo/1.jpg": web_photos["rocket"][0],
               **{f"many/{i}.jpg": web_photos["coffee"][i] for i in range(3)}}
    pid = new_project(client, "solo", make_zip(members))
    r = client.post(f"/api/v1/projects/{pid}/train")
    job = wait_for(env, r.json["job_id"], lambda j: j["state"] in FINAL)
    assert job["state"] == "succeeded", job
    results = client.get(f"/api/v1/projects/{pid}/results").json
    assert results["classes"] == ["many", "solo"] and results["cv_folds"] is None
    assert "at least 2 images per class" in results["cv_note"]


# -- the real server -----------------------------------------------------------------------------


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_web_process_killed_while_the_worker_trains(env):
    """The web process (no worker of its own) is SIGKILLed mid-job and started again: the job
    goes on in the separate worker and succeeds; uploads and projects are all there."""
    server = Server(env["instance"], TRANSFERLAB_WORKER="false").start()
    try:
        pid = server.post("/api/v1/projects", json={"name": "web-restart",
                                                    "backbones": [BACKBONE]}).json()["id"]
        r = server.post(f"/api/v1/projects/{pid}/images",
                        files={"file": ("d.zip", fresh_zip(13_000, 8))})
        assert r.status_code == 200 and r.json()["accepted"] == 16
        job_id = server.post(f"/api/v1/projects/{pid}/train").json()["job_id"]
        server.wait_job(job_id, lambda j: j["state"] in FINAL or j["stage"].startswith("extr"))
    finally:
        server.stop(sig=signal.SIGKILL)
    assert env["worker"].alive
    server = Server(env["instance"], TRANSFERLAB_WORKER="false").start()
    try:
        job = server.wait_job(job_id, lambda j: j["state"] in FINAL)
        assert job["state"] == "succeeded" and job["iteration"] == 1, job
        project = server.get(f"/api/v1/projects/{pid}").json()
        assert project["n_train"] == 16 and project["latest_iteration"] == 1
        assert len(server.get(f"/api/v1/projects/{pid}/images").json()) == 16
    finally:
        server.stop()


def test_two_trainings_at_once_for_one_project_one_runs_the_others_409(env):
    server = Server(env["instance"], TRANSFERLAB_WORKER="false").start()
    try:
        pid = env["pid"]  # all its features are cached: the job is short
        barrier = threading.Barrier(8)
        answers = []

        def train():
            session = _session(server.instance)
            barrier.wait()
            r = session.post(f"{server.url}/api/v1/projects/{pid}/train", json={"force": True},
                             timeout=60)
            answers.append((r.status_code, r.json()))

        threads = [threading.Thread(target=train) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        codes = sorted(code for code, _ in answers)
        assert codes == [202] + [409] * 7, answers
        (winner,) = [body for code, body in answers if code == 202]
        for code, body in answers:
            if code == 409:
                assert body["job_id"] == winner["job_id"] and "already" in body["error"]
        job = server.wait_job(winner["job_id"], lambda j: j["state"] in FINAL)
        assert job["state"] == "succeeded", job
        jobs = server.get(f"/api/v1/projects/{pid}/jobs").json()
        assert [j["state"] for j in jobs].count("succeeded") == 3  # 2 earlier + this one
    finally:
        server.stop()


def test_app_py_killed_mid_job_then_restarted(tmp_path):
    """`python app.py` (server + worker child) is SIGKILLed while training: the orphaned worker
    stops itself and puts the job back on the queue, nothing uploaded is lost, and after a
    restart the job resumes and finishes."""
    instance = tmp_path / "instance"
    server = Server(instance).start(wait_worker=True)
    try:
        pid = server.post("/api/v1/projects", json={"name": "crash",
                                                    "backbones": [BACKBONE]}).json()["id"]
        r = server.post(f"/api/v1/projects/{pid}/images",
                        files={"file": ("d.zip", fresh_zip(14_000, 6))})
        assert r.status_code == 200 and r.json()["accepted"] == 12
        job_id = server.post(f"/api/v1/projects/{pid}/train").json()["job_id"]
        job = server.wait_job(job_id, lambda j: j["state"] in FINAL or j["state"] == "running")
        assert job["state"] == "running", job
        child = server.worker_pid()
    finally:
        server.stop(sig=signal.SIGKILL)
    assert _gone(child, 30), "the worker child outlived its server"
    server = Server(instance).start(wait_worker=True)
    try:
        job = server.wait_job(job_id, lambda j: j["state"] in FINAL)
        assert job["state"] == "succeeded" and job["iteration"] == 1, (job, server.log()[-3000:])
        project = server.get(f"/api/v1/projects/{pid}").json()
        assert project["n_train"] == 12 and project["latest_iteration"] == 1
        assert project["can_train"] is True
    finally:
        server.stop()


# -- a full disk, an unusable instance folder -----------------------------------------------------


def _noise_png(seed: int, side: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def test_full_disk_gives_clear_errors_and_an_intact_database(tmp_path):
    """RLIMIT_FSIZE makes every file the server writes stop at 2 MiB (EFBIG, as a full disk
    would; it works as root, unlike a read-only folder). An upload too big to receive is a 507;
    a database that cannot grow is a 503; the database stays consistent throughout."""
    limit = 2 * 1024 * 1024
    instance = tmp_path / "instance"
    server = Server(instance, file_size_limit=limit, TRANSFERLAB_WORKER="false").start()
    saved = []
    try:
        pid = server.post("/api/v1/projects", json={"name": "full",
                                                    "backbones": [BACKBONE]}).json()["id"]

        def upload(name, data, **form):
            r = server.post(f"/api/v1/projects/{pid}/images", files={"file": (name, data)},
                            data=form)
            if r.status_code == 200:
                saved.extend(image["sha256"] for image in r.json()["images"])
            return r

        assert upload("small.png", _noise_png(1, 16), label="a").status_code == 200
        big = _noise_png(2, 1000)
        assert len(big) > limit
        r = upload("big.png", big, label="a")
        assert r.status_code == 507, r.text
        assert "no room" in r.json()["error"] and "File too large" in r.json()["error"]
        assert upload("small2.png", _noise_png(3, 16), label="a").status_code == 200
        # fill the database: uploads whose report (many rejected members) is large; the
        # answer always tells exactly what was kept
        for i in range(80):
            members = {f"junk{i}/{j}-{'x' * 200}.jpg": b"junk" for j in range(300)}
            members[f"ok/{i}.png"] = _noise_png(100 + i, 16)
            r = upload("z.zip", make_zip(members))
            if r.status_code != 200:
                break
        assert r.status_code == 507, r.text
        assert r.json()["error"].startswith(f"no image accepted: z.zip:ok/{i}.png: not stored: "
                                            "the server could not write it (database: ")
        assert server.get(f"/api/v1/projects/{pid}").status_code in (200, 503)
    finally:
        server.stop()

    with sqlite3.connect(instance / "transferlab.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    server = Server(instance, TRANSFERLAB_WORKER="false").start()  # room again
    try:
        listed = {i["sha256"] for i in server.get(f"/api/v1/projects/{pid}/images").json()}
        assert listed == set(saved) and len(saved) > 3  # every image reported saved is there
        for sha in saved:
            assert server.get(f"/api/v1/images/{sha}").status_code == 200
        r = server.post(f"/api/v1/projects/{pid}/images",
                        files={"file": ("after.png", _noise_png(4, 16))}, data={"label": "a"})
        assert r.status_code == 200 and r.json()["accepted"] == 1
    finally:
        server.stop()


def test_unusable_instance_folder_stops_app_py_with_a_clear_message(tmp_path):
    not_a_folder = tmp_path / "instance"
    not_a_folder.write_text("a file where the instance folder should be")
    for env in ({"TRANSFERLAB_INSTANCE_PATH": str(not_a_folder)},
                {"TRANSFERLAB_INSTANCE_PATH": str(tmp_path / "ok"),
                 "TRANSFERLAB_STORAGE_DIR": str(not_a_folder / "storage")}):
        out = subprocess.run([sys.executable, str(REPO / "app.py")], cwd=REPO,
                             env={**os.environ, "TRANSFERLAB_PORT": str(free_port()), **env},
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 2, out.stderr
        assert "cannot start: the instance folder, storage folder or database is not usable" \
            in out.stderr and str(not_a_folder) in out.stderr
        assert "Traceback" not in out.stderr


def test_storage_folder_broken_while_running_is_a_507_and_nothing_half_saved(tmp_path):
    import shutil

    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "TESTING": True})
    client = _client(app)
    pid = client.post("/api/v1/projects", json={"name": "p", "backbones": [BACKBONE]}).json["id"]
    r = client.post(f"/api/v1/projects/{pid}/images", data={
        "file": (io.BytesIO(_noise_png(1, 16)), "a.png"), "label": "a"})
    assert r.status_code == 200
    blobs = Path(app.config["STORAGE_DIR"]) / "blobs"
    shutil.rmtree(blobs)
    blobs.write_text("not a folder any more")
    r = client.post(f"/api/v1/projects/{pid}/images", data={
        "file": (io.BytesIO(_noise_png(2, 16)), "b.png"), "label": "a"})
    assert r.status_code == 507
    assert r.json["error"] == ("no image accepted: b.png: not stored: the server could not "
                               "write it (Not a directory)")
    assert client.get(f"/api/v1/projects/{pid}").json["n_train"] == 1

"""Uploads built to blow up server memory: peak RSS of the real processes stays bounded.

Two threats (issue #12, case 2): a zip member whose headers declare 100 bytes while its
deflate data expands to 2 GiB, and a 6300x6300 RGBA PNG that is under the pixel limit but
costs hundreds of MiB to decode and convert. The web side runs `python app.py` (no worker)
and uploads over HTTP, reading the server's peak RSS (VmHWM, reset through
/proc/<pid>/clear_refs before each measurement); the worker side decodes a stored image for
feature extraction (`FeatureCache` with every view) in a child process that reports its own
VmHWM growth. Each test takes seconds; the bomb zip is built once, in bounded memory, in a tmp
folder (2 MB on disk).
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import zipfile
import zlib
from pathlib import Path

import pytest
from helpers import REPO, bearer_session, declare_member_size, free_port, make_zip, start_app
from PIL import Image

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
BOUND = 200 * 10**6  # bytes: the most these uploads may add to a process's peak RSS
BOMB_MEMBER = "cats/bomb.png"
DECLARED = 100
INFLATED = 2047 * MIB  # zipfile refuses to write a 2 GiB member without zip64 records


def lying_zip(path: Path, good: dict[str, bytes]) -> None:
    """Write `good` members, then BOMB_MEMBER: deflate data of INFLATED zero bytes whose
    local and central headers are patched to declare DECLARED bytes (with that many zeros'
    CRC, so a reader that trusts the header sees a consistent member). Built in 1 MiB chunks."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in good.items():
            archive.writestr(member, data)
        info = zipfile.ZipInfo(BOMB_MEMBER)
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w") as out:
            chunk = bytes(MIB)
            for _ in range(INFLATED // MIB):
                out.write(chunk)
    declare_member_size(path, BOMB_MEMBER, DECLARED, zlib.crc32(bytes(DECLARED)))


def png(size, mode="RGB", color=(10, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


GOOD = {"cats/ok.png": png((40, 30)), "dogs/ok.png": png((30, 40), color=(200, 10, 10))}


@pytest.fixture(scope="module")
def bomb_zip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    lying_zip(path, GOOD)
    assert path.stat().st_size < 3 * MIB
    return path


@pytest.fixture(scope="module")
def big_rgba_png() -> bytes:
    """6300x6300 RGBA (39.7 Mpixel, under the 40 Mpixel limit), half-transparent red."""
    return png((6300, 6300), "RGBA", (200, 30, 30, 128))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python app.py` without a worker: (base URL, its pid, an authenticated session)."""
    tmp = tmp_path_factory.mktemp("server")
    session = bearer_session(tmp / "instance")
    port = free_port()
    proc = start_app(tmp, port, tmp / "server.log", TRANSFERLAB_WORKER="false")
    try:
        yield f"http://127.0.0.1:{port}", proc.pid, session
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _peak_rss(pid: int) -> int:
    """VmHWM of process `pid`, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def _reset_peak_rss(pid: int) -> int:
    """Reset VmHWM to the current RSS (Linux clear_refs 5) and return it."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _peak_rss(pid)


def _project(base, session, name) -> int:
    r = session.post(f"{base}/api/v1/projects", json={"name": name,
                                                      "backbones": ["efficientnet_lite0"]})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _upload(base, session, pid, name, data, **form):
    r = session.post(f"{base}/api/v1/projects/{pid}/images", files={"file": (name, data)},
                     data=form, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _uploads_growth(base, pid_server, session, uploads) -> tuple[int, list]:
    """Run `uploads` [(project, name, bytes, form)] at once; (peak RSS growth, bodies)."""
    bodies = [None] * len(uploads)

    def send(i, project, name, data, form):
        bodies[i] = _upload(base, session, project, name, data, **form)

    threads = [threading.Thread(target=send, args=(i, *u)) for i, u in enumerate(uploads)]
    before = _reset_peak_rss(pid_server)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    growth = _peak_rss(pid_server) - before
    print(f"\n{len(uploads)} upload(s): server peak RSS +{growth / MIB:.0f} MiB")
    return growth, bodies


def _warm_up(base, session, pid):
    """One ordinary upload first, so imports and caches are not counted as growth."""
    body = _upload(base, session, pid, "warm.zip", make_zip({"a/1.png": png((50, 50)),
                                                           "b/1.png": png((50, 40))}))
    assert body["accepted"] == 2, body


def _assert_bomb_rejected_rest_kept(body):
    reasons = {r["name"]: r["reason"] for r in body["rejected"]}
    assert reasons == {f"bomb.zip:{BOMB_MEMBER}":
                       f"declares {DECLARED} bytes but holds more"}, body["rejected"]
    assert sorted(i["name"] for i in body["images"]) == [f"bomb.zip:{m}" for m in sorted(GOOD)]


def test_zip_member_lying_about_its_size_is_rejected_in_bounded_memory(server, bomb_zip):
    base, server_pid, session = server
    pid = _project(base, session, "bomb-one")
    _warm_up(base, session, pid)
    growth, [body] = _uploads_growth(base, server_pid, session,
                                     [(pid, "bomb.zip", bomb_zip.read_bytes(), {})])
    assert growth < BOUND, f"one lying zip: +{growth / MIB:.0f} MiB"
    _assert_bomb_rejected_rest_kept(body)


def test_three_lying_zips_at_once_stay_bounded(server, bomb_zip):
    base, server_pid, session = server
    projects = [_project(base, session, f"bomb-{i}") for i in range(3)]
    _warm_up(base, session, projects[0])
    data = bomb_zip.read_bytes()
    growth, bodies = _uploads_growth(base, server_pid, session,
                                     [(p, "bomb.zip", data, {}) for p in projects])
    assert growth < BOUND, f"three lying zips at once: +{growth / MIB:.0f} MiB"
    for body in bodies:
        _assert_bomb_rejected_rest_kept(body)


def test_large_rgba_png_upload_is_stored_whole_in_bounded_memory(server, big_rgba_png):
    base, server_pid, session = server
    pid = _project(base, session, "big-png")
    _warm_up(base, session, pid)
    growth, [body] = _uploads_growth(base, server_pid, session,
                                     [(pid, "big.png", big_rgba_png, {"label": "red"})])
    assert body["accepted"] == 1 and body["rejected"] == [], body
    sha = body["images"][0]["sha256"]
    listed = {i["sha256"]: i for i in session.get(f"{base}/api/v1/projects/{pid}/images").json()}
    assert (listed[sha]["width"], listed[sha]["height"]) == (6300, 6300)
    assert session.get(f"{base}/api/v1/images/{sha}").content == big_rgba_png  # original kept
    thumb = Image.open(io.BytesIO(session.get(f"{base}/api/v1/images/{sha}/thumbnail").content))
    assert max(thumb.size) == 160
    red = thumb.convert("RGB").getpixel((80, 80))  # half-transparent red on white
    assert all(abs(a - b) <= 3 for a, b in zip(red, (227, 142, 142))), red
    assert growth < BOUND, f"6300x6300 RGBA PNG: +{growth / MIB:.0f} MiB"


_WORKER_DECODE = """
import json, sys
from pathlib import Path
import numpy as np
from models.features import VIEWS, FeatureCache, Item
from web.jobs import StoredSample

class PixelMeans:  # stands in for a backbone: the decoding around it is what is measured
    input_size = 299
    def features(self, pixels, batch_size=32):
        return pixels.reshape(len(pixels), -1, 3).mean(axis=1)

path = Path(sys.argv[1])
sample = StoredSample("0" * 64, "red", path.name, path)
def peak_rss():  # VmHWM: ru_maxrss would carry the forking test process's peak over exec
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) * 1024

sample.data  # the file's bytes are read in the base line: only decoding is measured
Path("/proc/self/clear_refs").write_text("5")
before = peak_rss()
vectors = FeatureCache(sys.argv[2]).get_or_compute_views(
    "pixel-means", [Item(sample.sha256, sample.image)], PixelMeans, tuple(VIEWS))
growth = peak_rss() - before
print(json.dumps({"growth": growth, "orig": vectors["orig"][0].tolist()}))
"""


def test_worker_decodes_a_large_rgba_png_for_features_in_bounded_memory(tmp_path, big_rgba_png):
    path = tmp_path / "big.png"
    path.write_bytes(big_rgba_png)
    done = subprocess.run([sys.executable, "-c", _WORKER_DECODE, str(path), str(tmp_path / "f")],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\nworker decode of 6300x6300 RGBA: peak RSS +{result['growth'] / MIB:.0f} MiB")
    assert all(abs(a - b) <= 2 for a, b in zip(result["orig"], (227, 142, 142))), result
    assert result["growth"] < BOUND, f"worker: +{result['growth'] / MIB:.0f} MiB"

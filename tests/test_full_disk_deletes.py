"""Deleting on a full disk (issue #8): deleting is how a user frees space, so deleting an image
or a project must work when the disk is full, or fail cleanly (507, nothing deleted, nothing
lost). The database is SQLite on a real, small tmpfs filled up to the last byte.

The disk reserve (DISK_RESERVE_BYTES, made by the worker's housekeeping) is what lets the
database record a deletion there: without it, the same deletion is a clean 507.
Mounting a tmpfs needs root (CAP_SYS_ADMIN), as the test containers run.
"""
from __future__ import annotations

import io
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import logged_in, make_zip

from web import create_app
from web.jobs import RESERVE_NAME, run_housekeeping

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

RESERVE = 512 * 1024


@pytest.fixture
def disk(tmp_path):
    """A fresh 8 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def _png(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _project(disk: Path, reserve: int):
    """An app on `disk` with a project of 12 images and an iteration folder, then the
    housekeeping run (it makes the reserve)."""
    app = create_app({"INSTANCE_PATH": str(disk / "instance"), "TESTING": True,
                      "DISK_RESERVE_BYTES": reserve})
    client = logged_in(app.test_client())
    pid = client.post("/api/v1/projects", json={"name": "p",
                                                "backbones": ["efficientnet_lite0"]}).json["id"]
    members = {f"{c}/{i}.png": _png(10 * ord(c) + i) for c in "ab" for i in range(6)}
    r = client.post(f"/api/v1/projects/{pid}/images",
                    data={"file": (io.BytesIO(make_zip(members)), "d.zip")})
    assert r.status_code == 200 and r.json["accepted"] == 12
    folder = app.extensions["transferlab.storage"].project_dir(pid) / "iterations" / "1"
    folder.mkdir(parents=True)
    (folder / "report.json").write_text("{}")
    run_housekeeping(app)
    return app, client, pid, [image["sha256"] for image in r.json["images"]], folder


def _fill(disk: Path) -> Path:
    """Write a file until the disk has no byte left; returns it."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == 28  # ENOSPC
    assert shutil.disk_usage(disk).free < 4096
    return filler


def _integrity(disk: Path) -> None:
    with sqlite3.connect(disk / "instance" / "transferlab.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_deleting_an_image_and_a_project_on_a_full_disk_works(disk):
    app, client, pid, shas, folder = _project(disk, RESERVE)
    reserve = disk / "instance" / RESERVE_NAME
    assert reserve.stat().st_size == RESERVE
    filler = _fill(disk)

    r = client.delete(f"/api/v1/projects/{pid}/images/{shas[0]}")
    assert r.status_code == 200, r.json
    assert not reserve.exists()  # given up to record the deletion
    listed = {i["sha256"] for i in client.get(f"/api/v1/projects/{pid}/images").json}
    assert listed == set(shas[1:])
    r = client.delete(f"/api/v1/projects/{pid}")
    assert r.status_code == 200 and r.json == {"deleted": pid}, r.json
    assert client.get(f"/api/v1/projects/{pid}").status_code == 404
    assert not folder.exists() and not list((disk / "instance" / "tmp").glob("*"))
    _integrity(disk)

    filler.unlink()  # room again: the housekeeping makes the reserve again
    run_housekeeping(app)
    assert reserve.stat().st_size == RESERVE


def test_a_deletion_with_no_room_at_all_is_a_507_and_loses_nothing(disk):
    app, client, pid, shas, folder = _project(disk, 0)  # no reserve
    assert not (disk / "instance" / RESERVE_NAME).exists()
    filler = _fill(disk)

    for path in (f"/api/v1/projects/{pid}/images/{shas[0]}", f"/api/v1/projects/{pid}"):
        r = client.delete(path)
        assert r.status_code == 507, r.json
        assert r.json["error"].startswith("the disk is full (database or disk is full): "
                                          "nothing was deleted; free some space and retry")
    listed = {i["sha256"] for i in client.get(f"/api/v1/projects/{pid}/images").json}
    assert listed == set(shas) and (folder / "report.json").read_text() == "{}"
    assert client.get(f"/api/v1/projects/{pid}").json["n_train"] == 12
    _integrity(disk)

    filler.unlink()
    assert client.delete(f"/api/v1/projects/{pid}").status_code == 200
    assert client.get(f"/api/v1/projects/{pid}").status_code == 404 and not folder.exists()

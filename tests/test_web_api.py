"""The JSON API without training: projects, backbones, uploads, image serving, errors, jobs.

Everything runs in-process with Flask's test client on a temporary instance folder; no worker
is started here (jobs stay queued), see test_web_training.py for the real worker.
"""
from __future__ import annotations

import io
import json

import pytest
import sqlalchemy as sa
from helpers import logged_in, make_zip
from PIL import Image

from web import create_app
from web.db import Job, db

pytestmark = pytest.mark.unit


def new_project(client, name="Pets", backbones=("efficientnet_lite0",)) -> int:
    r = client.post("/api/v1/projects", json={"name": name, "backbones": list(backbones)})
    assert r.status_code == 201, r.json
    return r.json["id"]


def upload(client, project_id, files, **form):
    """POST files ([(name, bytes)]) as repeated multipart 'file' fields."""
    data = {"file": [(io.BytesIO(b), name) for name, b in files], **form}
    return client.post(f"/api/v1/projects/{project_id}/images", data=data,
                       content_type="multipart/form-data")


def png_bytes(color=(200, 30, 30), size=(40, 30), mode="RGB", fmt="PNG"):
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt)
    return buf.getvalue()


# -- backbones and projects ------------------------------------------------------------------


def test_backbones_availability(client, empty_keras_home):
    r = client.get("/api/v1/backbones")
    assert r.status_code == 200
    by_name = {b["name"]: b for b in r.json}
    assert set(by_name) >= {"resnet50", "vgg16", "xception", "efficientnet_lite0"}
    for b in r.json:
        assert set(b) >= {"name", "available", "reason", "input_size"}
    lite = by_name["efficientnet_lite0"]
    assert lite["available"] is True and lite["input_size"] == 224
    resnet = by_name["resnet50"]
    assert resnet["available"] is False
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in resnet["reason"]
    assert str(empty_keras_home) in resnet["reason"]  # says where to put it
    assert resnet["weights_file"] == "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert str(empty_keras_home) in resnet["remedy"] and lite["remedy"] is None
    # offline, the defaults are the backbones whose weights are here: EfficientNet-Lite0/1/2
    assert {b["name"] for b in r.json if b["default"]} == {
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}


TRIO_FILES = [f"{n}_weights_tf_dim_ordering_tf_kernels_notop.h5"
              for n in ("resnet50", "vgg16", "xception")]


def test_defaults_are_the_trio_when_its_weights_are_here(tmp_path, empty_keras_home):
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in TRIO_FILES:
        (weights / name).write_bytes(b"x")
    app = create_app({"INSTANCE_PATH": str(tmp_path / "i"), "WEIGHTS_DIR": str(weights),
                      "TESTING": True})
    client = logged_in(app.test_client())
    listed = client.get("/api/v1/backbones").json
    assert {b["name"] for b in listed if b["default"]} == {"resnet50", "vgg16", "xception"}
    r = client.post("/api/v1/projects", json={"name": "online"})
    assert r.status_code == 201 and r.json["backbones"] == ["resnet50", "vgg16", "xception"]
    assert r.json["warnings"] == [] and r.json["weights_missing"] == []
    # one of the trio missing: the others and the offline Lite backbones
    (weights / TRIO_FILES[1]).unlink()
    r = client.post("/api/v1/projects", json={"name": "partial"})
    assert r.json["backbones"] == ["resnet50", "xception", "efficientnet_lite0",
                                   "efficientnet_lite1", "efficientnet_lite2"]


def test_weights_dir_config_makes_a_backbone_available(tmp_path, empty_keras_home):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"x")
    app = create_app({"INSTANCE_PATH": str(tmp_path / "i"), "WEIGHTS_DIR": str(weights)})
    by_name = {b["name"]: b for b in logged_in(app.test_client()).get("/api/v1/backbones").json}
    assert by_name["vgg16"]["available"] is True
    assert by_name["resnet50"]["available"] is False


def test_create_list_get_update_delete_project(client, empty_keras_home):
    r = client.post("/api/v1/projects", json={"name": "  Birds  "})
    assert r.status_code == 201
    body = r.json
    assert body["name"] == "Birds"
    # the defaults: offline, the backbones whose weights are here
    assert body["backbones"] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert body["warnings"] == []
    assert [b["name"] for b in body["backbone_status"]] == body["backbones"]
    assert r.headers["Location"].endswith(f"/api/v1/projects/{body['id']}")
    assert body["classes"] == {} and body["iterations"] == [] and body["latest_job"] is None

    pid = new_project(client, "Pets")
    listed = client.get("/api/v1/projects").json
    assert [p["name"] for p in listed] == ["Pets", "Birds"]

    r = client.patch(f"/api/v1/projects/{pid}", json={"name": "Pets 2",
                                                       "backbones": ["efficientnet_lite0", "vgg16"]})
    # allowed, but flagged: the file, where to put it, and that training waits for it
    assert r.status_code == 200 and r.json["backbones"] == ["efficientnet_lite0", "vgg16"]
    [missing] = r.json["weights_missing"]
    assert missing["backbone"] == "vgg16" and missing["file"] == TRIO_FILES[1]
    assert str(empty_keras_home) in missing["remedy"]
    assert TRIO_FILES[1] in r.json["warnings"][0] and "refused" in r.json["warnings"][0]
    assert client.get(f"/api/v1/projects/{pid}").json["name"] == "Pets 2"

    assert client.delete(f"/api/v1/projects/{pid}").status_code == 200
    assert client.get(f"/api/v1/projects/{pid}").status_code == 404
    assert len(client.get("/api/v1/projects").json) == 1


@pytest.mark.parametrize("body, fragment", [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": 3}, "name"),
    ({"name": "x" * 201}, "200"),
    ({"name": "ok", "backbones": []}, "backbones"),
    ({"name": "ok", "backbones": ["mobilenet"]}, "mobilenet"),
    ({"name": "ok", "backbones": "resnet50"}, None),  # a comma list is accepted
])
def test_create_project_validation(client, body, fragment, empty_keras_home):
    r = client.post("/api/v1/projects", json=body)
    if fragment is None:
        assert r.status_code == 201 and r.json["backbones"] == ["resnet50"]
        assert r.json["weights_missing"][0]["file"] == TRIO_FILES[0]  # allowed, flagged
        return
    assert r.status_code == 400
    assert fragment in r.json["error"]


def test_create_project_needs_json(client):
    r = client.post("/api/v1/projects", data="name=x")
    assert r.status_code == 400 and "JSON" in r.json["error"]
    r = client.post("/api/v1/projects", json=["x"])
    assert r.status_code == 400


def test_unknown_ids_are_404_json(client):
    for method, url in [("get", "/api/v1/projects/999"), ("delete", "/api/v1/projects/999"),
                        ("get", "/api/v1/projects/999/images"),
                        ("post", "/api/v1/projects/999/images"),
                        ("post", "/api/v1/projects/999/train"),
                        ("get", "/api/v1/projects/999/results"),
                        ("get", "/api/v1/projects/999/iterations"),
                        ("post", "/api/v1/projects/999/predict"),
                        ("get", "/api/v1/jobs/999"), ("post", "/api/v1/jobs/999/cancel"),
                        ("get", "/api/v1/images/" + "a" * 64),
                        ("get", "/api/v1/images/" + "a" * 64 + "/thumbnail"),
                        ("get", "/api/v1/images/not-a-hash/thumbnail"),
                        ("get", "/api/v1/no/such/route")]:
        r = getattr(client, method)(url)
        assert r.status_code == 404, (method, url, r.status_code)
        assert r.is_json and r.json["error"], url
    r = client.put("/api/v1/projects")
    assert r.status_code == 405 and r.is_json


# -- uploads -----------------------------------------------------------------------------------


def test_upload_zip_of_class_folders_with_a_bad_member(client, web_photos):
    pid = new_project(client)
    members = {f"data/{label}/{i}.jpg": b for label in ("cat", "coffee")
               for i, b in enumerate(web_photos[label][:4])}
    members["data/cat/broken.jpg"] = web_photos["cat"][5][:300]  # truncated JPEG
    members["data/coffee/notes.txt"] = b"hello"
    members["../evil.jpg"] = web_photos["cat"][6]
    r = upload(client, pid, [("photos.zip", make_zip(members))])
    assert r.status_code == 200, r.json
    body = r.json
    assert body["accepted"] == 8
    assert body["classes"] == {"cat": 4, "coffee": 4}
    reasons = {x["name"]: x["reason"] for x in body["rejected"]}
    assert reasons["photos.zip:data/cat/broken.jpg"] == "truncated or corrupt image"
    assert reasons["photos.zip:data/coffee/notes.txt"] == "not an image"
    assert reasons["photos.zip:../evil.jpg"] == "unsafe path"
    assert body["files"] == [{"name": "photos.zip", "accepted": 8, "rejected": 3,
                              "duplicates": 0}]
    assert all(im["thumbnail"].endswith(f"/images/{im['sha256']}/thumbnail")
               for im in body["images"])

    project = client.get(f"/api/v1/projects/{pid}").json
    assert project["classes"] == {"cat": 4, "coffee": 4} and project["n_train"] == 8
    assert project["can_train"] is True
    uploads = client.get(f"/api/v1/projects/{pid}/uploads").json
    assert uploads[0]["accepted"] == 8 and len(uploads[0]["rejected"]) == 3


def test_upload_one_zip_per_class_loose_image_and_test_set(client, web_photos):
    pid = new_project(client)
    cats = make_zip({f"{i}.jpg": b for i, b in enumerate(web_photos["cat"][:3])})
    r = upload(client, pid, [("whatever.zip", cats)], label="cat")
    assert r.status_code == 200 and r.json["classes"] == {"cat": 3}
    # a zip of loose images without a label: the class is the zip's name
    rockets = make_zip({f"r{i}.png": b for i, b in enumerate(web_photos["rocket"][:2])})
    r = upload(client, pid, [("rocket.zip", rockets)])
    assert r.json["classes"] == {"cat": 3, "rocket": 2}
    # several loose images in one request, into one class
    r = upload(client, pid, [("a.jpg", web_photos["coffee"][0]),
                             ("b.jpg", web_photos["coffee"][1])], label="coffee")
    assert r.status_code == 200 and r.json["accepted"] == 2
    assert r.json["classes"] == {"cat": 3, "coffee": 2, "rocket": 2}
    # a test set
    test_zip = make_zip({f"{label}/t{i}.jpg": web_photos[label][10 + i]
                         for label in ("cat", "coffee") for i in range(2)})
    r = upload(client, pid, [("test.zip", test_zip)], split="test")
    assert r.status_code == 200
    assert r.json["test_classes"] == {"cat": 2, "coffee": 2}
    assert r.json["classes"] == {"cat": 3, "coffee": 2, "rocket": 2}

    listed = client.get(f"/api/v1/projects/{pid}/images").json
    assert len(listed) == 11
    assert set(listed[0]) >= {"sha256", "label", "split", "thumbnail", "url", "name"}
    tests = client.get(f"/api/v1/projects/{pid}/images?split=test").json
    assert len(tests) == 4 and {i["split"] for i in tests} == {"test"}
    cats = client.get(f"/api/v1/projects/{pid}/images?label=cat&split=train").json
    assert len(cats) == 3 and {i["label"] for i in cats} == {"cat"}
    assert client.get(f"/api/v1/projects/{pid}/images?split=nope").status_code == 400
    project = client.get(f"/api/v1/projects/{pid}").json
    assert project["test_classes"] == {"cat": 2, "coffee": 2} and project["n_test"] == 4


def test_all_formats_and_duplicates(client, web_photos):
    pid = new_project(client)
    rgba = png_bytes((10, 200, 10, 128), mode="RGBA")
    files = [("x.png", png_bytes()), ("x.webp", png_bytes((1, 2, 3), fmt="WEBP")),
             ("x.bmp", png_bytes((4, 5, 6), fmt="BMP")), ("x.gif", png_bytes((7, 8, 9), fmt="GIF")),
             ("x.tif", png_bytes((9, 9, 9), fmt="TIFF")), ("y.png", rgba),
             ("x.jpg", web_photos["cat"][0])]
    r = upload(client, pid, files, label="misc")
    assert r.status_code == 200 and r.json["accepted"] == 7, r.json
    types = {im["name"]: im["content_type"]
             for im in client.get(f"/api/v1/projects/{pid}/images").json}
    assert types == {"x.png": "image/png", "x.webp": "image/webp", "x.bmp": "image/bmp",
                     "x.gif": "image/gif", "x.tif": "image/tiff", "y.png": "image/png",
                     "x.jpg": "image/jpeg"}
    # the same image again, into another class: reported as a duplicate, not added
    r = upload(client, pid, [("again.jpg", web_photos["cat"][0])], label="other")
    assert r.status_code == 200 and r.json["accepted"] == 0
    (dup,) = r.json["duplicates"]
    assert dup["name"] == "again.jpg" and dup["kept_label"] == "misc"
    assert "already in the project" in dup["reason"]
    # duplicates inside one zip
    z = make_zip({"a/1.jpg": web_photos["cat"][1], "b/1.jpg": web_photos["cat"][1]})
    r = upload(client, pid, [("d.zip", z)])
    assert r.json["accepted"] == 1 and len(r.json["duplicates"]) == 1


def test_upload_bad_input_is_400_naming_file_and_reason(client, web_photos):
    pid = new_project(client)
    r = client.post(f"/api/v1/projects/{pid}/images")
    assert r.status_code == 400 and "file" in r.json["error"]
    r = upload(client, pid, [("notes.txt", b"just text")], label="cat")
    assert r.status_code == 400
    assert "notes.txt" in r.json["error"] and "not an image" in r.json["error"]
    assert r.json["rejected"] == [{"name": "notes.txt", "reason": "not an image"}]
    r = upload(client, pid, [("fake.zip", b"PK\x03\x04 broken")])
    assert r.status_code == 400 and "fake.zip" in r.json["error"]
    r = upload(client, pid, [("cat.jpg", web_photos["cat"][0])])  # an image needs a label
    assert r.status_code == 400 and "cat.jpg" in r.json["error"] and "label" in r.json["error"]
    r = upload(client, pid, [("cat.jpg", web_photos["cat"][0])], label="a/b")
    assert r.status_code == 400 and "label" in r.json["error"]
    r = upload(client, pid, [("cat.jpg", web_photos["cat"][0])], label="cat", split="valid")
    assert r.status_code == 400 and "split" in r.json["error"]
    # one good file and one bad one: the good one is kept
    r = upload(client, pid, [("bad.jpg", b"\xff\xd8\xff broken"),
                             ("good.jpg", web_photos["cat"][0])], label="cat")
    assert r.status_code == 200 and r.json["accepted"] == 1
    assert r.json["rejected"] == [{"name": "bad.jpg", "reason": "truncated or corrupt image"}]


def test_upload_too_large_is_413(tmp_path, web_photos):
    app = create_app({"INSTANCE_PATH": str(tmp_path / "i"), "MAX_CONTENT_LENGTH": 50_000})
    client = logged_in(app.test_client())
    pid = new_project(client)
    big = make_zip({f"cat/{i}.jpg": b for i, b in enumerate(web_photos["cat"][:8])})
    assert len(big) > 50_000
    r = upload(client, pid, [("big.zip", big)])
    assert r.status_code == 413 and r.is_json and "too large" in r.json["error"]
    assert client.get(f"/api/v1/projects/{pid}").json["n_train"] == 0


def test_upload_escapes_nothing_but_keeps_names_as_data(client, web_photos):
    pid = new_project(client)
    name = '<img src=x onerror=alert(1)>'
    z = make_zip({f"{name}/1.jpg": web_photos["cat"][0], "ok/1.jpg": web_photos["cat"][1]})
    r = upload(client, pid, [("x.zip", z)])
    assert r.status_code == 200 and name in r.json["classes"]  # JSON carries it verbatim
    assert r.headers["Content-Type"].startswith("application/json")


# -- serving images --------------------------------------------------------------------------


def test_image_files_and_thumbnails(client, web_photos):
    pid = new_project(client)
    r = upload(client, pid, [("c.jpg", web_photos["cat"][0]), ("p.png", png_bytes())],
               label="cat")
    shas = {im["name"]: im["sha256"] for im in r.json["images"]}
    jpg, png = shas["c.jpg"], shas["p.png"]

    r = client.get(f"/api/v1/images/{jpg}")
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
    assert r.data == web_photos["cat"][0]
    assert "max-age=31536000" in r.headers["Cache-Control"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get(f"/api/v1/images/{png}").mimetype == "image/png"

    r = client.get(f"/api/v1/images/{jpg}/thumbnail")
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
    thumb = Image.open(io.BytesIO(r.data))
    assert max(thumb.size) <= 160
    etag = r.headers["ETag"]
    r2 = client.get(f"/api/v1/images/{jpg}/thumbnail", headers={"If-None-Match": etag})
    assert r2.status_code == 304

    r = client.get(f"/api/v1/images/{png}/preview")
    assert r.status_code == 200 and r.mimetype == "image/jpeg"

    # an image that is in no project any more is not served
    assert client.delete(f"/api/v1/projects/{pid}/images/{jpg}").status_code == 200
    assert client.get(f"/api/v1/images/{jpg}").status_code == 404
    assert client.get(f"/api/v1/images/{jpg}/thumbnail").status_code == 404
    assert client.get(f"/api/v1/projects/{pid}").json["classes"] == {"cat": 1}


def test_relabel_and_move_image(client, web_photos):
    pid = new_project(client)
    r = upload(client, pid, [("c.jpg", web_photos["cat"][0])], label="cat")
    sha = r.json["images"][0]["sha256"]
    r = client.patch(f"/api/v1/projects/{pid}/images/{sha}", json={"label": "kitty",
                                                                    "split": "test"})
    assert r.status_code == 200 and r.json["label"] == "kitty" and r.json["split"] == "test"
    assert client.get(f"/api/v1/projects/{pid}").json["test_classes"] == {"kitty": 1}
    r = client.patch(f"/api/v1/projects/{pid}/images/{sha}", json={"split": "both"})
    assert r.status_code == 400


# -- training requests (no worker: jobs stay queued) -------------------------------------------


def test_train_needs_two_classes(client, web_photos):
    pid = new_project(client)
    r = client.post(f"/api/v1/projects/{pid}/train")
    assert r.status_code == 400 and "2 classes" in r.json["error"]
    upload(client, pid, [("c.jpg", web_photos["cat"][0])], label="cat")
    r = client.post(f"/api/v1/projects/{pid}/train")
    assert r.status_code == 400 and "cat (1)" in r.json["error"]


def test_train_is_refused_before_queuing_when_weights_are_missing(app, client, web_photos,
                                                                  empty_keras_home):
    pid = new_project(client, backbones=("efficientnet_lite0", "vgg16"))
    upload(client, pid, [("c.jpg", web_photos["cat"][0])], label="cat")
    upload(client, pid, [("k.jpg", web_photos["coffee"][0])], label="coffee")
    r = client.post(f"/api/v1/projects/{pid}/train")
    assert r.status_code == 422
    assert r.json["type"] == "urn:transferlab:problem:weights-missing"
    assert "vgg16" in r.json["error"] and TRIO_FILES[1] in r.json["error"]
    assert str(empty_keras_home) in r.json["error"]  # where to put it
    [missing] = r.json["weights_missing"]
    assert missing["backbone"] == "vgg16" and missing["file"] == TRIO_FILES[1]
    assert client.get(f"/api/v1/projects/{pid}/jobs").json == []  # nothing was queued
    assert app.extensions["transferlab.jobs"].huey.pending_count() == 0
    # the file put in place: training is queued
    (empty_keras_home / "models").mkdir()
    (empty_keras_home / "models" / TRIO_FILES[1]).write_bytes(b"x")
    assert client.post(f"/api/v1/projects/{pid}/train").status_code == 202


def test_train_with_downloads_on_queues_with_warnings(tmp_path, empty_keras_home, web_photos):
    app = create_app({"INSTANCE_PATH": str(tmp_path / "i"), "TESTING": True,
                      "DOWNLOAD_WEIGHTS": True})
    client = logged_in(app.test_client())
    pid = new_project(client, backbones=("vgg16",))
    upload(client, pid, [("c.jpg", web_photos["cat"][0])], label="cat")
    upload(client, pid, [("k.jpg", web_photos["coffee"][0])], label="coffee")
    r = client.post(f"/api/v1/projects/{pid}/train")
    assert r.status_code == 202 and "vgg16" in r.json["warnings"][0]


def _fake_iteration(app, pid, *, number=1, job_id=None, fingerprint=None):
    """An iteration row as a finished training leaves it (no files: nothing loads it)."""
    from web.db import Iteration, Project
    from web.jobs import load_samples
    from web.jobs.training_run import training_fingerprint

    with app.app_context():
        project = db.session.get(Project, pid)
        if fingerprint is None:
            samples = load_samples(app.extensions["transferlab.storage"], pid)
            fingerprint = training_fingerprint(samples, list(project.backbones),
                                               fine_tune=bool(project.fine_tune))
        it = Iteration(project_id=pid, number=number, job_id=job_id, folder=f"p{pid}/it{number}",
                       classes=["cat", "coffee"], backbones=list(project.backbones), n_train=2,
                       n_test=0, summary={}, fingerprint=fingerprint)
        db.session.add(it)
        db.session.commit()
        return it.id


@pytest.fixture
def warmed(app, monkeypatch):
    """The iterations and backbones the web process was asked to warm (recorded, not loaded)."""
    calls = {"iterations": [], "backbones": []}
    service = app.extensions["transferlab.prediction"]
    monkeypatch.setattr(service, "warm", lambda i, folder: calls["iterations"].append(i))
    monkeypatch.setattr(service, "warm_backbones", lambda names: calls["backbones"].append(names))
    return calls


def test_retraining_with_nothing_new_answers_at_once(app, client, web_photos, warmed):
    pid = new_project(client)
    upload(client, pid, [("c.jpg", web_photos["cat"][0])], label="cat")
    upload(client, pid, [("k.jpg", web_photos["coffee"][0])], label="coffee")
    it_id = _fake_iteration(app, pid)
    r = client.post(f"/api/v1/projects/{pid}/train")
    assert r.status_code == 200 and r.json["nothing_changed"] is True
    assert r.json["iteration"]["number"] == 1 and "Nothing changed" in r.json["message"]
    assert client.get(f"/api/v1/projects/{pid}/jobs").json == []  # no job
    assert warmed["iterations"] == [it_id]
    assert client.post(f"/api/v1/projects/{pid}/train", json={"force": "yes"}).status_code == 400

    # each change makes it train: a setting, the backbones, a split, a label, an image
    sha = client.get(f"/api/v1/projects/{pid}/images").json
    sha = (sha["images"] if isinstance(sha, dict) else sha)[0]["sha256"]
    changes = [
        (f"/api/v1/projects/{pid}", {"fine_tune": True}, {"fine_tune": False}),
        (f"/api/v1/projects/{pid}", {"backbones": ["efficientnet_lite1"]},
         {"backbones": ["efficientnet_lite0"]}),
        (f"/api/v1/projects/{pid}/images/{sha}", {"label": "kitty"}, {"label": "cat"}),
    ]
    for url, change, undo in changes:
        assert client.patch(url, json=change).status_code == 200, change
        r = client.post(f"/api/v1/projects/{pid}/train")
        assert r.status_code == 202, change
        client.post(f"/api/v1/jobs/{r.json['job_id']}/cancel")
        assert client.patch(url, json=undo).status_code == 200
        assert client.post(f"/api/v1/projects/{pid}/train").json["nothing_changed"] is True
    upload(client, pid, [("k2.jpg", web_photos["coffee"][1])], label="coffee")
    r = client.post(f"/api/v1/projects/{pid}/train")
    assert r.status_code == 202
    client.post(f"/api/v1/jobs/{r.json['job_id']}/cancel")
    # force: trains anyway
    r = client.post(f"/api/v1/projects/{pid}/train", json={"force": True})
    assert r.status_code == 202


def test_an_iteration_without_fingerprint_or_another_recipe_trains_again(app, client,
                                                                         web_photos, warmed):
    pid = new_project(client)
    upload(client, pid, [("c.jpg", web_photos["cat"][0])], label="cat")
    upload(client, pid, [("k.jpg", web_photos["coffee"][0])], label="coffee")
    _fake_iteration(app, pid, fingerprint="0" * 64)  # e.g. trained by an older recipe
    r = client.post(f"/api/v1/projects/{pid}/train")
    assert r.status_code == 202 and "nothing_changed" not in r.json


def test_polling_a_job_warms_its_backbones_then_its_iteration(app, client, web_photos, warmed):
    pid = new_project(client)
    upload(client, pid, [("c.jpg", web_photos["cat"][0])], label="cat")
    upload(client, pid, [("k.jpg", web_photos["coffee"][0])], label="coffee")
    job_id = client.post(f"/api/v1/projects/{pid}/train").json["job_id"]
    client.get(f"/api/v1/jobs/{job_id}")
    assert warmed == {"iterations": [], "backbones": []}  # queued: nothing yet
    with app.app_context():
        db.session.execute(sa.update(Job).where(Job.id == job_id).values(state="running"))
        db.session.commit()
    client.get(f"/api/v1/jobs/{job_id}")
    assert warmed["backbones"] == [["efficientnet_lite0"]]
    it_id = _fake_iteration(app, pid, job_id=job_id)
    with app.app_context():
        db.session.execute(sa.update(Job).where(Job.id == job_id).values(
            state="succeeded", iteration_id=it_id, active_project=None))
        db.session.commit()
    client.get(f"/api/v1/jobs/{job_id}")
    assert warmed["iterations"] == [it_id]
    client.get(f"/api/v1/projects/{pid}")  # the project's page polls this too
    assert warmed["iterations"] == [it_id, it_id]  # (warm itself skips a loaded one)


def test_train_conflict_and_cancel_queued(app, client, web_photos):
    pid = new_project(client)
    upload(client, pid, [("c.jpg", web_photos["cat"][0])], label="cat")
    upload(client, pid, [("k.jpg", web_photos["coffee"][0])], label="coffee")
    r = client.post(f"/api/v1/projects/{pid}/train")
    assert r.status_code == 202
    job_id = r.json["job_id"]
    assert r.headers["Location"].endswith(f"/api/v1/jobs/{job_id}")
    job = client.get(f"/api/v1/jobs/{job_id}").json
    assert job["state"] == "queued" and job["progress"] == 0 and job["iteration"] is None
    assert job["worker_alive"] is False  # no worker in this test: the page can say so
    assert set(job) >= {"state", "progress", "stage", "error", "iteration"}
    # the page's clock for "how long ago": the server's time; not started yet, so no elapsed time
    assert job["server_time"].endswith("Z") and job["elapsed_seconds"] is None

    r = client.post(f"/api/v1/projects/{pid}/train")
    assert r.status_code == 409 and r.json["job_id"] == job_id
    project = client.get(f"/api/v1/projects/{pid}").json
    assert project["status"] == "queued" and project["latest_job"]["id"] == job_id
    assert project["can_train"] is False

    r = client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json["state"] == "cancelled"
    assert r.json["started_at"] is None
    r = client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert r.status_code == 409
    # the queue message is revoked, and a worker would skip the row anyway
    jobs = app.extensions["transferlab.jobs"]
    assert jobs.huey.pending_count() == 1
    with app.app_context():
        from web.jobs import run_training

        assert run_training(app, job_id) == "skipped"
        assert db.session.get(Job, job_id).state == "cancelled"
    # a new job can be queued now
    r = client.post(f"/api/v1/projects/{pid}/train")
    assert r.status_code == 202 and r.json["job_id"] != job_id
    assert [j["state"] for j in client.get(f"/api/v1/projects/{pid}/jobs").json] == [
        "queued", "cancelled"]


def test_results_and_predict_before_training(client, web_photos):
    pid = new_project(client)
    r = client.get(f"/api/v1/projects/{pid}/results")
    assert r.status_code == 404 and "train" in r.json["error"]
    assert client.get(f"/api/v1/projects/{pid}/iterations").json == []
    r = client.post(f"/api/v1/projects/{pid}/predict",
                    data={"file": (io.BytesIO(web_photos["cat"][0]), "c.jpg")})
    assert r.status_code == 404
    assert client.get(f"/api/v1/projects/{pid}/results?iteration=x").status_code == 400


def test_imagenet_predict_bad_input(client, empty_keras_home):
    r = client.post("/api/v1/imagenet/predict")
    assert r.status_code == 400 and "file" in r.json["error"]
    r = client.post("/api/v1/imagenet/predict",
                    data={"file": (io.BytesIO(b"GIF89a broken"), "anim.gif")})
    assert r.status_code == 400
    assert r.json["error"] == "anim.gif: truncated or corrupt image"
    r = client.post("/api/v1/imagenet/predict?backbones=resnet50",
                    data={"file": (io.BytesIO(png_bytes()), "p.png")})
    assert r.status_code == 400 and "resnet50" in r.json["error"]
    assert "resnet50_weights_tf_dim_ordering_tf_kernels" in r.json["error"]
    r = client.post("/api/v1/imagenet/predict?backbones=nope",
                    data={"file": (io.BytesIO(png_bytes()), "p.png")})
    assert r.status_code == 400 and "unknown backbone" in r.json["error"]
    listed = {b["name"]: b for b in client.get("/api/v1/imagenet/backbones").json}
    assert listed["efficientnet_lite0"]["available"] is True
    assert listed["vgg16"]["available"] is False


# -- the worker's bookkeeping (unit level) ---------------------------------------------------


def test_stale_running_jobs_out_of_attempts_are_failed(app, client, web_photos):
    import os
    import socket

    pid = new_project(client)
    upload(client, pid, [("c.jpg", web_photos["cat"][0])], label="cat")
    upload(client, pid, [("k.jpg", web_photos["coffee"][0])], label="coffee")
    job_id = client.post(f"/api/v1/projects/{pid}/train").json["job_id"]
    other = new_project(client, "other")
    upload(client, other, [("c.jpg", web_photos["cat"][1])], label="cat")
    upload(client, other, [("k.jpg", web_photos["coffee"][1])], label="coffee")
    alive_id = client.post(f"/api/v1/projects/{other}/train").json["job_id"]
    with app.app_context():
        dead = db.session.get(Job, job_id)
        dead.state, dead.worker = "running", f"{socket.gethostname()}:{2**22 + 12345}"
        dead.attempts = app.config["JOB_MAX_ATTEMPTS"]  # (retries: tests/test_scaleout.py)
        alive = db.session.get(Job, alive_id)  # a live worker of this host: left alone
        alive.state, alive.worker = "running", f"{socket.gethostname()}:{os.getppid()}"
        db.session.commit()
        recovered = app.extensions["transferlab.jobs"].recover_stale_jobs(at_start=True)
        assert recovered == {"requeued": [], "failed": [job_id]}
    job = client.get(f"/api/v1/jobs/{job_id}").json
    assert job["state"] == "failed" and "worker running this job stopped" in job["error"]
    assert client.get(f"/api/v1/jobs/{alive_id}").json["state"] == "running"
    # the project can be trained again
    assert client.post(f"/api/v1/projects/{pid}/train").status_code == 202


def test_config_from_environment_and_instance_file(tmp_path, monkeypatch):
    instance = tmp_path / "inst"
    instance.mkdir()
    (instance / "config.py").write_text("THUMBNAIL_SIZE = 99\nPORT = 7000\n")
    monkeypatch.setenv("TRANSFERLAB_INSTANCE_PATH", str(instance))
    monkeypatch.setenv("TRANSFERLAB_PORT", "8123")
    monkeypatch.setenv("TRANSFERLAB_MAX_CONTENT_LENGTH", "1000")
    monkeypatch.setenv("TRANSFERLAB_WORKER", "false")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    app = create_app()
    assert app.instance_path == str(instance)
    assert app.config["THUMBNAIL_SIZE"] == 99  # instance file
    assert app.config["PORT"] == 8123  # environment beats the instance file
    assert app.config["MAX_CONTENT_LENGTH"] == 1000 and app.config["WORKER"] is False
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'other.db'}"
    assert app.config["HUEY_DB"] == str(instance / "huey.db")
    assert app.config["FEATURE_CACHE_DIR"] == str(instance / "features")
    assert (tmp_path / "other.db").exists()


def test_status_endpoint(client):
    body = client.get("/api/v1/status").json
    assert body["queue"] == "sqlite" and body["pending"] == 0 and body["running"] == 0
    assert body["worker_alive"] is False and body["workers"] == []


def test_json_everywhere_under_api(client):
    r = client.get("/api/v1/projects/abc")
    assert r.status_code == 404 and json.loads(r.data)["error"]


def test_redis_queue_when_redis_url_is_set(tmp_path, monkeypatch, web_photos):
    """REDIS_URL selects RedisHuey; with Redis down, training answers 503 and leaves no job
    that would never run."""
    from huey import RedisHuey

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens on port 1
    app = create_app({"INSTANCE_PATH": str(tmp_path / "i"), "TESTING": True})
    assert isinstance(app.extensions["transferlab.jobs"].huey, RedisHuey)
    client = logged_in(app.test_client())
    pid = new_project(client)
    upload(client, pid, [("c.jpg", web_photos["cat"][0])], label="cat")
    upload(client, pid, [("k.jpg", web_photos["coffee"][0])], label="coffee")
    r = client.post(f"/api/v1/projects/{pid}/train")
    assert r.status_code == 503 and "could not queue" in r.json["error"]
    job = client.get(f"/api/v1/projects/{pid}").json["latest_job"]
    assert job["state"] == "failed" and "could not queue" in job["error"]
    status = client.get("/api/v1/status").json
    assert status["queue"] == "redis" and status["pending"] is None


def test_near_duplicates_are_listed_at_upload_including_across_train_and_test(client, web_photos):
    pid = new_project(client)
    original = web_photos["cat"][0]
    im = Image.open(io.BytesIO(original)).convert("RGB")
    copy = io.BytesIO()
    im.resize((im.width * 2, im.height * 2)).save(copy, "JPEG", quality=70)  # another file
    r = upload(client, pid, [("cat.jpg", original), ("coffee.jpg", web_photos["coffee"][0])],
               label="cat")
    assert r.status_code == 200 and r.json["near_duplicates"] == []
    r = upload(client, pid, [("cat-big.jpg", copy.getvalue())], label="cat", split="test")
    assert r.status_code == 200 and r.json["accepted"] == 1
    (group,) = r.json["near_duplicates"]
    assert {(i["name"], i["split"]) for i in group["images"]} == {("cat.jpg", "train"),
                                                                  ("cat-big.jpg", "test")}
    assert group["straddles_splits"] and not group["mixed_labels"]
    assert all(i["thumbnail"].endswith("/thumbnail") for i in group["images"])
    listed = client.get(f"/api/v1/projects/{pid}/near-duplicates").json["groups"]
    assert [sorted(i["name"] for i in g["images"]) for g in listed] == [["cat-big.jpg", "cat.jpg"]]


# -- the published (live) iteration ------------------------------------------------------------


def test_publish_pins_the_live_iteration_and_rolls_back(app, client, web_photos, warmed):
    pid = new_project(client)
    upload(client, pid, [("c.jpg", web_photos["cat"][0])], label="cat")
    first = _fake_iteration(app, pid, number=1)
    second = _fake_iteration(app, pid, number=2)
    project = client.get(f"/api/v1/projects/{pid}").json
    # nothing published: the latest is live
    assert project["published_iteration"] is None and project["live_iteration"] == 2
    assert [i["live"] for i in client.get(f"/api/v1/projects/{pid}/iterations").json] == [
        False, True]

    r = client.post(f"/api/v1/projects/{pid}/iterations/1/publish")  # roll back
    assert r.status_code == 200, r.json
    assert r.json["published_iteration"] == 1 and r.json["iteration"]["number"] == 1
    assert warmed["iterations"][-1] == first  # the rolled-back one is loaded ahead
    project = client.get(f"/api/v1/projects/{pid}").json
    assert project["published_iteration"] == 1 and project["live_iteration"] == 1
    assert [i["live"] for i in client.get(f"/api/v1/projects/{pid}/iterations").json] == [
        True, False]
    # a third training does not go live while 1 is pinned; a restart warms the pinned one
    _fake_iteration(app, pid, number=3)
    assert client.get(f"/api/v1/projects/{pid}").json["live_iteration"] == 1
    from web.prediction import warm_recent_iterations

    warm_recent_iterations(app, count=5)
    assert warmed["iterations"][-1] == first

    # PATCH publishes too, and null goes back to serving the latest
    r = client.patch(f"/api/v1/projects/{pid}", json={"published_iteration": 2})
    assert r.status_code == 200 and r.json["live_iteration"] == 2
    with app.app_context():
        job = Job(project_id=pid, state="succeeded", backbones=["efficientnet_lite0"],
                  iteration_id=first)
        db.session.add(job)
        db.session.commit()
        job_id = job.id
    client.get(f"/api/v1/jobs/{job_id}")  # a finished job's poll warms the live one
    assert warmed["iterations"][-1] == second
    r = client.patch(f"/api/v1/projects/{pid}", json={"published_iteration": None})
    assert r.status_code == 200 and r.json["published_iteration"] is None
    assert r.json["live_iteration"] == 3


def test_publish_errors_and_other_users_projects(app, client, web_photos):
    pid = new_project(client)
    r = client.post(f"/api/v1/projects/{pid}/iterations/1/publish")
    assert r.status_code == 404 and "no iteration 1" in r.json["error"]
    _fake_iteration(app, pid, number=1)
    for bad in ("1", True, 1.5):
        r = client.patch(f"/api/v1/projects/{pid}", json={"published_iteration": bad})
        assert r.status_code == 400 and "published_iteration" in r.json["error"], bad
    r = client.patch(f"/api/v1/projects/{pid}", json={"published_iteration": 7})
    assert r.status_code == 404 and "no iteration 7" in r.json["error"]
    assert client.post(f"/api/v1/projects/999/iterations/1/publish").status_code == 404

    bob = logged_in(app.test_client(), "bob")
    r = bob.post(f"/api/v1/projects/{pid}/iterations/1/publish")
    assert r.status_code == 404 and r.json["error"] == f"no project with id {pid}"
    assert bob.patch(f"/api/v1/projects/{pid}", json={"published_iteration": 1}).status_code == 404
    assert client.get(f"/api/v1/projects/{pid}").json["published_iteration"] is None


# -- batch predictions (queued here: test_batch_predict.py runs them through the worker) ------


def test_a_zip_sent_to_predict_queues_a_batch_job_beside_training(app, client, web_photos):
    pid = new_project(client)
    upload(client, pid, [("c.jpg", web_photos["cat"][0])], label="cat")
    upload(client, pid, [("k.jpg", web_photos["coffee"][0])], label="coffee")
    _fake_iteration(app, pid, number=1)
    batch = make_zip({"cat/1.jpg": web_photos["cat"][1], "coffee/2.jpg": web_photos["coffee"][2]})
    r = client.post(f"/api/v1/projects/{pid}/predict",
                    data={"file": (io.BytesIO(batch), "mixed.zip")})
    assert r.status_code == 202, r.json
    job_id = r.json["job_id"]
    assert r.json["job"]["kind"] == "batch" and r.json["job"]["state"] == "queued"
    assert r.json["job"]["total"] == 2 and r.json["iteration"] == 1
    jobs = app.extensions["transferlab.jobs"]
    assert [t.name for t in jobs.huey.pending()] == ["transferlab.batch"]
    # not ready yet: the results say so instead of answering something half done
    r = client.get(f"/api/v1/batches/{job_id}/results.csv")
    assert r.status_code == 409 and "queued" in r.json["error"]
    assert client.get(f"/api/v1/batches/{job_id}").json["job"]["state"] == "queued"
    # a batch is not the project's training job: the project can still train
    project = client.get(f"/api/v1/projects/{pid}").json
    assert project["latest_job"] is None and project["can_train"] is True
    r = client.post(f"/api/v1/projects/{pid}/train", json={"force": True})
    assert r.status_code == 202
    assert client.get(f"/api/v1/batches/{r.json['job_id']}").status_code == 404  # training's
    # many loose files make a batch too; one image is still an ordinary prediction
    r = client.post(f"/api/v1/projects/{pid}/predict", content_type="multipart/form-data",
                    data={"file": [(io.BytesIO(web_photos["cat"][3]), "a.jpg"),
                                   (io.BytesIO(web_photos["cat"][4]), "b.jpg")]})
    assert r.status_code == 202 and r.json["job"]["total"] == 2
    # cancelled while queued: it never runs
    r = client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json["state"] == "cancelled"
    r = client.get(f"/api/v1/batches/{job_id}/results.json")
    assert r.status_code == 409 and "cancelled" in r.json["error"]
    with app.app_context():
        from web.jobs.batch_run import run_batch

        assert run_batch(app, job_id) == "skipped"


def test_a_batch_needs_a_trained_iteration(client, web_photos):
    pid = new_project(client)
    z = make_zip({"cat/1.jpg": web_photos["cat"][1]})
    r = client.post(f"/api/v1/projects/{pid}/predict", data={"file": (io.BytesIO(z), "b.zip")})
    assert r.status_code == 404 and "train it first" in r.json["error"]
    r = client.post(f"/api/v1/projects/{pid}/predict?iteration=3",
                    data={"file": (io.BytesIO(z), "b.zip")})
    assert r.status_code == 404 and "no iteration 3" in r.json["error"]

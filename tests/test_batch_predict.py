"""The live (published) iteration and batch prediction, with real models and the REAL worker.

One instance folder (SQLite database + SQLite queue) is shared by the in-process test app and
a worker subprocess (`python app.py worker`). Project "Pinned" gets two real iterations,
trained here with EfficientNet-Lite0 on the image alone (one pass per image, to stay quick):
iteration 1 knows cat and coffee, iteration 2 also rocket, so which one answered shows in
the classes of the answer. Batch jobs go through the worker as training jobs do.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import time
import zipfile

import pytest
from helpers import logged_in, make_zip

from web import create_app

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

BACKBONE = "efficientnet_lite0"


@pytest.fixture(scope="module")
def env(tmp_path_factory, start_worker):
    instance = tmp_path_factory.mktemp("batch") / "instance"
    app = create_app({"INSTANCE_PATH": str(instance), "TESTING": True})
    # small forward passes, so a batch reports progress (and notices a cancel) every 4 images
    worker = start_worker(instance, TRANSFERLAB_BATCH_PREDICT_CHUNK=4)
    return {"app": app, "client": logged_in(app.test_client()), "worker": worker}


def _train_iteration(app, pid, samples, cache) -> int:
    """Train on `samples` in this process and record the result as the next iteration."""
    from models.backbones import load_backbone
    from models.training import train
    from web.db import db
    from web.jobs import save_iteration

    result = train(samples, [BACKBONE], cache, load_backbone, view_policies=("none",))
    with app.app_context():
        it = save_iteration(app.extensions["transferlab.storage"], pid, result, [BACKBONE],
                            features_computed=0)
        db.session.commit()
        return it.number


@pytest.fixture(scope="module")
def pinned(env, photo_folder, tmp_path_factory):
    """Project "Pinned" with iteration 1 (cat, coffee) and iteration 2 (cat, coffee, rocket)."""
    from models.datasets import read_dataset
    from models.features import FeatureCache

    client, app = env["client"], env["app"]
    pid = client.post("/api/v1/projects", json={"name": "Pinned", "backbones": [BACKBONE]}).json["id"]
    samples = read_dataset(photo_folder).samples
    cache = FeatureCache(tmp_path_factory.mktemp("cache"))
    assert _train_iteration(app, pid, [s for s in samples if s.label != "rocket"], cache) == 1
    assert _train_iteration(app, pid, samples, cache) == 2
    return pid


@pytest.fixture(scope="module")
def test_images(photo_test_folder):
    """{label: [JPEG bytes, ...]}: 3 held-out images per class."""
    return {d.name: [p.read_bytes() for p in sorted(d.iterdir())]
            for d in sorted(photo_test_folder.iterdir())}


def png_bytes(color=(20, 160, 90), size=(64, 48)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def predict(client, pid, data: bytes, query=""):
    r = client.post(f"/api/v1/projects/{pid}/predict{query}",
                    data={"file": (io.BytesIO(data), "q.jpg")})
    assert r.status_code == 200, r.json
    return r.json


def test_predict_uses_the_published_iteration_not_the_latest(env, pinned, test_images):
    client, pid, cat = env["client"], pinned, test_images["cat"][0]
    body = predict(client, pid, cat)  # nothing published: the latest
    assert body["iteration"] == 2 and body["classes"] == ["cat", "coffee", "rocket"]
    assert body["live"] is True

    assert client.post(f"/api/v1/projects/{pid}/iterations/1/publish").status_code == 200
    body = predict(client, pid, cat)  # rolled back: iteration 1 answers
    assert body["iteration"] == 1 and body["classes"] == ["cat", "coffee"] and body["live"]
    assert set(body["backbones"][BACKBONE][0]) == {"label", "score"}
    assert body["ensemble"]["label"] == "cat"
    body = predict(client, pid, cat, "?iteration=2")  # a named one still answers
    assert body["iteration"] == 2 and body["live"] is False

    # an export without an iteration is of the live one too
    r = client.get(f"/api/v1/projects/{pid}/export?format=keras&backbone={BACKBONE}")
    assert r.status_code == 200, r.get_data()[:300]
    assert "iteration1" in r.headers["Content-Disposition"]
    with zipfile.ZipFile(io.BytesIO(r.get_data())) as archive:
        assert archive.read("labels.txt").decode().split() == ["cat", "coffee"]

    client.patch(f"/api/v1/projects/{pid}", json={"published_iteration": None})
    assert predict(client, pid, cat)["iteration"] == 2
    r = client.get(f"/api/v1/projects/{pid}/export?format=keras&backbone={BACKBONE}")
    assert r.status_code == 200 and "iteration2" in r.headers["Content-Disposition"]


def wait_batch(env, job_id, timeout=240):
    client, seen = env["client"], []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/batches/{job_id}").json
        job = body["job"]
        seen.append((job["state"], job["stage"], job["progress"], job["done"], job["total"]))
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return body, seen
        if not env["worker"].alive:
            pytest.fail(f"worker died:\n{env['worker'].log()[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"batch {job_id} still {seen[-1]}; worker log:\n{env['worker'].log()[-3000:]}")


def post_batch(client, pid, files, query=""):
    """POST files ([(name, bytes)]) to predict as repeated multipart 'file' fields."""
    return client.post(f"/api/v1/projects/{pid}/predict{query}",
                       data={"file": [(io.BytesIO(b), name) for name, b in files]},
                       content_type="multipart/form-data")


def test_batch_zip_with_labels_runs_through_the_worker(env, pinned, test_images):
    client, pid = env["client"], pinned
    members = {f"batch/{label}/{label}_{i}.jpg": data
               for label, images in test_images.items() for i, data in enumerate(images)}
    members["batch/cat/broken.jpg"] = test_images["cat"][0][:200]  # truncated
    members["batch/coffee/notes.txt"] = b"not an image"
    members["batch/rocket/zz_again.jpg"] = test_images["rocket"][0]  # an exact copy
    members["batch/zebra/z.png"] = png_bytes()  # a class the project lacks
    r = post_batch(client, pid, [("held-out.zip", make_zip(members))])
    assert r.status_code == 202, r.json
    job_id = r.json["job_id"]
    assert r.headers["Location"].endswith(f"/api/v1/batches/{job_id}")
    assert r.json["iteration"] == 2 and r.json["job"]["kind"] == "batch"
    # a batch is not the project's training job: training stays possible
    project = client.get(f"/api/v1/projects/{pid}").json
    assert project["latest_job"] is None

    body, seen = wait_batch(env, job_id)
    assert body["job"]["state"] == "succeeded", (body["job"], env["worker"].log()[-3000:])
    progress = [p for _, _, p, _, _ in seen]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert body["n_images"] == 11 and body["n_rejected"] == 2  # 9 + the copy + zebra
    reasons = {r["name"]: r["reason"] for r in body["rejected"]}
    assert reasons == {"held-out.zip:batch/cat/broken.jpg": "truncated or corrupt image",
                       "held-out.zip:batch/coffee/notes.txt": "not an image"}
    rows = {row["name"]: row for row in body["images"]}
    copy = rows["held-out.zip:batch/rocket/zz_again.jpg"]
    assert copy["duplicate_of"] == "held-out.zip:batch/rocket/rocket_0.jpg"
    assert copy["ensemble"] == rows[copy["duplicate_of"]]["ensemble"]
    zebra = rows["held-out.zip:batch/zebra/z.png"]
    assert zebra["label"] is None  # not a project class
    # a flat picture is unlike every class: the batch says so as /predict does
    alone = predict(client, pid, png_bytes())
    assert zebra["prediction"] == alone["ensemble"]["label"] == "unknown"
    assert zebra["ensemble"]["reason"] == "unlike any class" and zebra["ensemble"]["unknown"]
    assert rows["held-out.zip:batch/cat/cat_0.jpg"]["label"] == "cat"
    assert body["labelled"] == 10
    # only the image without a true label is suggested for labelling
    assert [s["name"] for s in body["suggestions"]] == ["held-out.zip:batch/zebra/z.png"]
    evaluation = body["evaluation"]
    assert evaluation["n"] == 10 and evaluation["confusion"]["labels"] == ["cat", "coffee", "rocket"]
    matrix = evaluation["confusion"]["matrix"]
    assert [sum(row) for row in matrix] == [3, 3, 4]
    correct = sum(r["correct"] for r in body["images"] if r["correct"] is not None)
    assert evaluation["accuracy"] == pytest.approx(correct / 10)
    assert evaluation["accuracy"] >= 0.8
    assert set(evaluation["backbones"]) == {BACKBONE}
    assert body["timing"]["images_per_second"] > 0

    # each answer is the one /predict gives that image alone
    for name in ("held-out.zip:batch/cat/cat_0.jpg", "held-out.zip:batch/rocket/rocket_2.jpg"):
        label, file = name.split("/")[-2:]
        alone = predict(client, pid, test_images[label][int(file.split("_")[1][0])])
        row = rows[name]
        assert row["prediction"] == alone["ensemble"]["label"]
        assert row["score"] == pytest.approx(alone["ensemble"]["score"], abs=2e-4)
        assert row["backbones"][BACKBONE]["label"] == alone["backbones"][BACKBONE][0]["label"]

    r = client.get(body["downloads"]["csv"])
    assert r.status_code == 200 and r.mimetype == "text/csv"
    assert f"batch-{job_id}.csv" in r.headers["Content-Disposition"]
    table = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert len(table) == 13  # 11 answered, 2 rejected
    by_name = {t["name"]: t for t in table}
    cat0 = by_name["held-out.zip:batch/cat/cat_0.jpg"]
    assert cat0["true_label"] == "cat" and cat0["prediction"] == rows[cat0["name"]]["prediction"]
    assert cat0[BACKBONE] == rows[cat0["name"]]["backbones"][BACKBONE]["label"]
    assert by_name["held-out.zip:batch/coffee/notes.txt"]["rejected"] == "not an image"
    r = client.get(body["downloads"]["json"])
    assert r.status_code == 200 and r.mimetype == "application/json"
    assert json.loads(r.get_data())["images"] == body["images"]
    listed = client.get(f"/api/v1/projects/{pid}/batches").json
    assert [b["job_id"] for b in listed] == [job_id]


def test_batch_of_loose_files_without_labels_keeps_the_good_ones(env, pinned, test_images):
    client, pid = env["client"], pinned
    files = [("a.jpg", test_images["coffee"][0]), ("b.jpg", test_images["rocket"][1]),
             ("=HYPERLINK(1).jpg", test_images["cat"][2]), ("bad.jpg", b"\xff\xd8\xff broken")]
    r = post_batch(client, pid, files, "?iteration=1")
    assert r.status_code == 202, r.json
    assert r.json["iteration"] == 1
    body, _ = wait_batch(env, r.json["job_id"])
    assert body["job"]["state"] == "succeeded", body["job"]
    assert body["classes"] == ["cat", "coffee"] and body["iteration"] == 1
    assert [row["name"] for row in body["images"]] == ["a.jpg", "b.jpg", "=HYPERLINK(1).jpg"]
    assert all(row["label"] is None and row["correct"] is None for row in body["images"])
    assert body["evaluation"] is None and body["labelled"] == 0
    assert body["rejected"] == [{"name": "bad.jpg", "reason": "truncated or corrupt image"}]
    assert body["images"][0]["prediction"] == "coffee"
    text = client.get(body["downloads"]["csv"]).get_data(as_text=True)
    assert "\n'=HYPERLINK(1).jpg," in text  # a spreadsheet shows it, never runs it


def test_batches_are_the_callers_own(env, pinned, test_images):
    client, app = env["client"], env["app"]
    r = post_batch(client, pinned, [("one.zip", make_zip({"x.jpg": test_images["cat"][0]}))])
    job_id = r.json["job_id"]
    wait_batch(env, job_id)
    bob = logged_in(app.test_client(), "bob")
    for url in (f"/api/v1/batches/{job_id}", f"/api/v1/batches/{job_id}/results.csv",
                f"/api/v1/batches/{job_id}/results.json", f"/api/v1/projects/{pinned}/batches"):
        assert bob.get(url).status_code == 404, url
        assert app.test_client().get(url).status_code == 401, url
    assert post_batch(bob, pinned, [("one.zip", b"PK\x03\x04")]).status_code == 404
    assert client.get(f"/api/v1/batches/{job_id}/results.xml").status_code == 404


def test_a_running_batch_is_cancelled(env, pinned):
    """Cancelling a running batch stops it at its next forward pass: no results, and the
    worker takes the next job."""
    from helpers import photo_variants
    from skimage import data

    client = env["client"]
    members = {}
    for i, im in enumerate(photo_variants(data.chelsea(), 80, 7)):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        members[f"cat/{i}.jpg"] = buf.getvalue()
    r = post_batch(client, pinned, [("many.zip", make_zip(members))])
    job_id = r.json["job_id"]
    deadline = time.monotonic() + 180
    while True:
        job = client.get(f"/api/v1/jobs/{job_id}").json
        if job["state"] == "running" and (job["done"] or 0) > 0:
            break
        assert job["state"] in ("queued", "running"), job
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 202
    body, _ = wait_batch(env, job_id)
    assert body["job"]["state"] == "cancelled" and body["job"]["done"] < 80
    r = client.get(f"/api/v1/batches/{job_id}/results.csv")
    assert r.status_code == 409 and "cancelled" in r.json["error"]
    # the worker is free for the next one
    r = post_batch(client, pinned, [("one.zip", make_zip({"cat/x.jpg": members["cat/0.jpg"]}))])
    assert wait_batch(env, r.json["job_id"])[0]["job"]["state"] == "succeeded"


def test_suggestions_of_an_unlabelled_batch_are_labelled_into_the_project(env, pinned,
                                                                          test_images):
    """A zip of loose images (its name is no class): every image is unlabelled, suggested
    least certain first; labelling two adds them to the project's training images with
    those labels, copied from the batch's stored zip."""
    client, app, pid = env["client"], env["app"], pinned
    members = {f"shots/{label}_{i}.jpg": data
               for label, images in test_images.items() for i, data in enumerate(images)}
    members["shots/again.jpg"] = test_images["cat"][0]  # a copy is never suggested twice
    r = post_batch(client, pid, [("unsorted.zip", make_zip(members))])
    body, _ = wait_batch(env, r.json["job_id"])
    job_id = body["job_id"]
    assert body["job"]["state"] == "succeeded" and body["labelled"] == 0
    suggestions = body["suggestions"]
    assert len(suggestions) == 9  # every first copy (20 at most)
    rows = body["images"]
    for s in suggestions:
        row = rows[s["index"]]
        assert (s["name"], s["sha256"], s["prediction"]) == (row["name"], row["sha256"],
                                                             row["prediction"])
        assert row["duplicate_of"] is None and s["in_project"] is None
        assert s["margin"] == pytest.approx(s["top"][0]["score"] - s["top"][1]["score"], abs=2e-4)
    assert suggestions[0]["margin"] == min(s["margin"] for s in suggestions)

    # a thumbnail to label it by, read back from the stored zip
    r = client.get(f"/api/v1/batches/{job_id}/images/{suggestions[0]['index']}/thumbnail")
    assert r.status_code == 200 and r.mimetype == "image/jpeg" and r.data[:2] == b"\xff\xd8"

    first, second = suggestions[0], suggestions[1]
    r = client.post(f"/api/v1/batches/{job_id}/label", json={"images": [
        {"index": first["index"], "label": "cat"}, {"sha256": second["sha256"], "label": "Mug"}]})
    assert r.status_code == 200, r.json
    assert {(a["sha256"], a["label"], a["split"]) for a in r.json["added"]} == {
        (first["sha256"], "cat", "train"), (second["sha256"], "Mug", "train")}
    assert r.json["classes"]["cat"] == 1 and r.json["classes"]["Mug"] == 1
    images = {i["sha256"]: i for i in client.get(f"/api/v1/projects/{pid}/images").json}
    assert images[first["sha256"]]["label"] == "cat" and images[first["sha256"]]["split"] == "train"
    assert images[second["sha256"]]["name"] == second["name"]
    stored = client.get(f"/api/v1/images/{first['sha256']}")
    assert stored.status_code == 200
    assert hashlib.sha256(stored.data).hexdigest() == first["sha256"]  # the very file
    # the batch now says which suggestions are in the project
    marked = {s["sha256"]: s["in_project"]
              for s in client.get(f"/api/v1/batches/{job_id}").json["suggestions"]}
    assert marked[first["sha256"]] == {"label": "cat", "split": "train"}
    assert marked[suggestions[2]["sha256"]] is None
    # labelling it again changes nothing: it is a duplicate, with its class in the project
    r = client.post(f"/api/v1/batches/{job_id}/label",
                    json={"images": [{"index": first["index"], "label": "coffee"}]})
    assert r.status_code == 200 and r.json["added"] == []
    assert r.json["duplicates"][0]["kept_label"] == "cat" and r.json["classes"]["cat"] == 1

    # bad requests: 400 naming the item and the problem; nothing is added
    def bad(payload, words):
        r = client.post(f"/api/v1/batches/{job_id}/label", json=payload)
        assert r.status_code == 400, r.json
        for w in words:
            assert w in r.json["error"], (w, r.json["error"])
    third = suggestions[2]
    bad({"images": [{"index": third["index"], "label": "cat"},
                    {"index": suggestions[3]["index"], "label": "../etc"}]}, ["images[1].label"])
    bad({"images": [{"index": third["index"], "label": ""}]}, ["images[0].label"])
    bad({"images": [{"index": 99, "label": "cat"}]},
        ["images[0].index", "not an image of this batch"])
    bad({"images": [{"sha256": "0" * 64, "label": "cat"}]}, ["images[0].sha256"])
    bad({"images": [{"index": 0, "sha256": rows[0]["sha256"], "label": "cat"}]}, ["either"])
    bad({"images": []}, ["'images'"])
    bad({"images": [{"index": third["index"], "label": "cat"}], "split": "validation"}, ["split"])
    assert client.get(f"/api/v1/projects/{pid}/images").json.__len__() == 2

    # another user's batch is not found; no session is 401
    bob = logged_in(app.test_client(), "bob")
    payload = {"images": [{"index": third["index"], "label": "cat"}]}
    assert bob.post(f"/api/v1/batches/{job_id}/label", json=payload).status_code == 404
    assert bob.get(f"/api/v1/batches/{job_id}/images/0/thumbnail").status_code == 404
    anonymous = app.test_client().post(f"/api/v1/batches/{job_id}/label", json=payload)
    assert anonymous.status_code == 401
    assert client.get(f"/api/v1/batches/{job_id}/images/99/thumbnail").status_code == 404

"""POST /projects/<id>/images/bulk (web/api/manage.py): relabel, move and delete many
images in one transaction, class rename and merge, and undo; with the test client on a real
SQLite database and storage."""
from __future__ import annotations

import io

import pytest
from helpers import logged_in, make_zip

from web.db import db

pytestmark = pytest.mark.unit


@pytest.fixture
def project(client, web_photos):
    """A project with cat (3 train + 1 test) and coffee (3 train): {"id", "cat", "coffee", "test"}."""
    pid = client.post("/api/v1/projects", json={"name": "P", "backbones": ["efficientnet_lite0"]}).json["id"]
    members = {f"{label}/{i}.jpg": web_photos[label][i] for label in ("cat", "coffee") for i in range(3)}
    r = client.post(f"/api/v1/projects/{pid}/images", content_type="multipart/form-data",
                    data={"file": [(io.BytesIO(make_zip(members)), "p.zip")]})
    assert r.status_code == 200 and r.json["accepted"] == 6, r.json
    r = client.post(f"/api/v1/projects/{pid}/images", content_type="multipart/form-data",
                    data={"file": [(io.BytesIO(web_photos["cat"][5]), "t.jpg")],
                          "label": "cat", "split": "test"})
    assert r.json["accepted"] == 1
    images = client.get(f"/api/v1/projects/{pid}/images").json
    by = lambda label, split="train": [i["sha256"] for i in images if i["label"] == label and i["split"] == split]  # noqa: E731
    return {"id": pid, "cat": by("cat"), "coffee": by("coffee"), "test": by("cat", "test")}


def bulk(client, pid, **body):
    return client.post(f"/api/v1/projects/{pid}/images/bulk", json=body)


def state(client, pid):
    """{sha256: (label, split)} of the project's images."""
    return {i["sha256"]: (i["label"], i["split"]) for i in client.get(f"/api/v1/projects/{pid}/images").json}


def test_relabel_some_images_then_undo_then_redo(client, project):
    pid, cats = project["id"], project["cat"]
    before = state(client, pid)
    r = bulk(client, pid, action="relabel", images=cats[:2], label="coffee")
    assert r.status_code == 200, r.json
    assert r.json["changed"] == 2 and r.json["classes"] == {"cat": 1, "coffee": 5}
    assert r.json["undo"]["action"] == "undo"
    after = state(client, pid)
    assert all(after[s] == ("coffee", "train") for s in cats[:2])
    undo = bulk(client, pid, **r.json["undo"])
    assert undo.status_code == 200 and undo.json["changed"] == 2
    assert state(client, pid) == before
    redo = bulk(client, pid, **undo.json["undo"])  # undoing the undo does it again
    assert redo.status_code == 200 and state(client, pid) == after


def test_move_between_training_and_test(client, project):
    pid = project["id"]
    r = bulk(client, pid, action="move", images=project["coffee"][:1] + project["test"], split="test")
    assert r.status_code == 200 and r.json["changed"] == 1  # the test image was there already
    assert r.json["test_classes"] == {"cat": 1, "coffee": 1} and r.json["classes"] == {"cat": 3, "coffee": 2}
    bulk(client, pid, **r.json["undo"])
    assert state(client, pid)[project["coffee"][0]] == ("coffee", "train")
    assert state(client, pid)[project["test"][0]] == ("cat", "test")


def test_delete_then_undo_brings_the_images_back_with_their_files(app, client, project):
    pid, cats = project["id"], project["cat"]
    before = client.get(f"/api/v1/projects/{pid}/images").json
    r = bulk(client, pid, action="delete", images=cats)
    assert r.status_code == 200 and r.json["changed"] == 3 and r.json["classes"] == {"coffee": 3}
    assert client.get(f"/api/v1/images/{cats[0]}").status_code == 404  # no longer the user's
    # The housekeeping's garbage collection runs now and spares the files (just touched).
    from web.jobs import collect_garbage

    with app.app_context():
        assert collect_garbage(app.extensions["transferlab.storage"]) == 0
    r = bulk(client, pid, **r.json["undo"])
    assert r.status_code == 200 and r.json["changed"] == 3
    assert client.get(f"/api/v1/projects/{pid}/images").json == before  # names and dates too
    assert client.get(f"/api/v1/images/{cats[0]}").status_code == 200


def test_undo_of_a_delete_whose_files_are_gone_restores_nothing(app, client, project):
    pid, cats = project["id"], project["cat"]
    r = bulk(client, pid, action="delete", images=cats)
    from web.jobs import collect_garbage

    with app.app_context():
        assert collect_garbage(app.extensions["transferlab.storage"], grace_seconds=-1) == 3
    undo = bulk(client, pid, **r.json["undo"])
    assert undo.status_code == 409 and "no longer stored" in undo.json["error"]
    assert set(undo.json["missing"]) == set(cats)
    assert client.get(f"/api/v1/projects/{pid}").json["classes"] == {"coffee": 3}


def test_rename_and_merge_a_class(client, project):
    pid = project["id"]
    r = bulk(client, pid, action="relabel", **{"class": "coffee"}, label="espresso")
    assert r.status_code == 200 and r.json["merged"] is False
    assert r.json["classes"] == {"cat": 3, "espresso": 3}
    # Merging: cat (training and test images) into espresso.
    r = bulk(client, pid, action="relabel", **{"class": "cat"}, label="espresso")
    assert r.status_code == 200 and r.json["merged"] is True and r.json["changed"] == 4
    assert r.json["classes"] == {"espresso": 6} and r.json["test_classes"] == {"espresso": 1}
    undo = bulk(client, pid, **r.json["undo"])  # the merge undone: cat is back, espresso intact
    assert undo.json["classes"] == {"cat": 3, "espresso": 3} and undo.json["test_classes"] == {"cat": 1}
    # Only one split of a class.
    r = bulk(client, pid, action="relabel", **{"class": "cat", "split": "test"}, label="cat?")
    assert r.json["classes"] == {"cat": 3, "espresso": 3} and r.json["test_classes"] == {"cat?": 1}
    assert bulk(client, pid, action="relabel", **{"class": "nope"}, label="x").status_code == 404


def test_a_bad_id_in_the_list_changes_nothing(client, project):
    pid = project["id"]
    before = state(client, pid)
    unknown = "0" * 64
    for action, extra in (("relabel", {"label": "dog"}), ("move", {"split": "test"}), ("delete", {})):
        r = bulk(client, pid, action=action, images=project["cat"] + [unknown], **extra)
        assert r.status_code == 404, r.json
        assert unknown in r.json["error"] and "nothing was changed" in r.json["error"]
        assert r.json["missing"] == [unknown]
        r = bulk(client, pid, action=action, images=project["cat"] + ["../etc/passwd"], **extra)
        assert r.status_code == 400 and "malformed" in r.json["error"]
        assert state(client, pid) == before


@pytest.mark.parametrize("body, fragment", [
    ({"action": "rename", "images": []}, "invalid action"),
    ({"action": "relabel", "label": "x"}, "either 'images'"),
    ({"action": "relabel", "images": [], "label": "x"}, "non-empty list"),
    ({"action": "relabel", "images": "abc", "label": "x"}, "non-empty list"),
    ({"action": "relabel", "images": ["0" * 64], "label": ""}, "'label'"),
    ({"action": "relabel", "images": ["0" * 64], "label": 5}, "'label'"),
    ({"action": "move", "images": ["0" * 64], "split": "validation"}, "invalid split"),
    ({"action": "undo", "token": "forged"}, "not an undo token"),
    ({"action": "undo"}, "'token'"),
    ({"action": "relabel", "images": ["0" * 64] * 10_001, "label": "x"}, "at most 10000"),
])
def test_bad_bodies_are_400_naming_the_field(client, project, body, fragment):
    r = bulk(client, project["id"], **body)
    assert r.status_code == 400 and fragment in r.json["error"], r.json


def test_other_users_images_and_projects_are_404(app, client, project):
    other = logged_in(app.test_client(), "bob")
    theirs = other.post("/api/v1/projects", json={"name": "Bob's", "backbones": ["efficientnet_lite0"]}).json["id"]
    # bob names ann's images in his own project: not his, nothing changes
    r = bulk(other, theirs, action="delete", images=project["cat"])
    assert r.status_code == 404
    # and ann's project is not there for him at all
    assert bulk(other, project["id"], action="delete", images=project["cat"]).status_code == 404
    assert len(state(client, project["id"])) == 7
    # ann's undo token is refused on bob's project
    token = bulk(client, project["id"], action="move", images=project["cat"][:1], split="test").json["undo"]
    r = bulk(other, theirs, **token)
    assert r.status_code == 400 and "another project" in r.json["error"]


def test_an_expired_undo_is_410(app, client, project):
    app.config["ORPHAN_GRACE_SECONDS"] = -1
    r = bulk(client, project["id"], action="move", images=project["cat"][:1], split="test")
    undo = bulk(client, project["id"], **r.json["undo"])
    assert undo.status_code == 410 and "expired" in undo.json["error"]
    assert state(client, project["id"])[project["cat"][0]] == ("cat", "test")


def test_a_database_failure_halfway_changes_nothing(app, client, project):
    """The database refuses the third image's change (a trigger, i.e. a real failure inside
    the transaction, after the first two rows were written): the answer is an error and all
    the images keep their labels; the same change then succeeds once the fault is gone."""
    pid, cats = project["id"], project["cat"]
    before = state(client, pid)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # answer the failure as a server would
    with app.app_context():
        with db.engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE UPDATE ON project_images "
                f"WHEN NEW.sha256 = '{cats[2]}' BEGIN SELECT RAISE(ABORT, 'disk gone'); END")
    for action, extra in (("relabel", {"label": "dog"}), ("move", {"split": "test"})):
        r = bulk(client, pid, action=action, images=cats, **extra)
        assert r.status_code >= 500 and r.is_json, (r.status_code, r.get_data(as_text=True)[:300])
        assert state(client, pid) == before
    with app.app_context():
        with db.engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER refuse")
    assert bulk(client, pid, action="relabel", images=cats, label="dog").json["changed"] == 3

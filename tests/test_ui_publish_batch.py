"""Browser tests of the live iteration and batch prediction: Playwright driving Debian's
Chromium against a live `python app.py` and a real worker (the fixtures of test_ui_app.py).

Project "Pinned" gets two real iterations, trained in this process on the server's instance
folder (EfficientNet-Lite0, the image alone: quick): iteration 1 knows cat and coffee,
iteration 2 also rocket. The user rolls back to iteration 1 with one click on the results
page, then drops a zip of held-out images with class folders on "Test your model" and reads
the table, its filters, the accuracy and the downloads.
"""
from __future__ import annotations

import csv
import io
import shutil

import pytest
from helpers import logged_in, make_zip
from test_ui_app import (  # noqa: F401  (fixtures)
    TIMEOUT,
    browser,
    drop_files,
    live,
    session,
    worker,
)

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

BACKBONE = "efficientnet_lite0"


@pytest.fixture(scope="module")
def pinned(session, live, photo_folder, tmp_path_factory):
    """Project "Pinned" of the signed-in user, with iterations 1 (cat, coffee) and 2 (cat,
    coffee, rocket): its id."""
    from models.backbones import load_backbone
    from models.datasets import read_dataset
    from models.features import FeatureCache
    from models.training import train
    from web import create_app
    from web.db import db
    from web.jobs import save_iteration

    app = create_app({"INSTANCE_PATH": str(live.instance), "TESTING": True})
    client = logged_in(app.test_client(), create=False)
    pid = client.post("/api/v1/projects", json={"name": "Pinned", "backbones": [BACKBONE]}).json["id"]
    samples = read_dataset(photo_folder).samples
    cache = FeatureCache(tmp_path_factory.mktemp("cache"))
    for subset in ([s for s in samples if s.label != "rocket"], samples):
        result = train(subset, [BACKBONE], cache, load_backbone, view_policies=("none",))
        with app.app_context():
            save_iteration(app.extensions["transferlab.storage"], pid, result, [BACKBONE],
                           features_computed=0)
            db.session.commit()
    return pid


def test_publish_an_earlier_iteration_in_one_click(session, pinned):
    page = session.page
    page.goto(f"/projects/{pinned}")
    page.wait_for_selector("#results .model-card")
    # the latest is live while nothing is published
    assert page.input_value("#iteration") == "2"
    assert page.is_visible("#live-badge") and page.is_visible("#publish-btn")
    assert "live as the latest" in page.inner_text("#live-status")
    assert "(the live one)" in page.inner_text("#classify-hint")

    page.select_option("#iteration", "1")  # look at the earlier one: not live
    page.wait_for_function("() => document.querySelector('#live-badge').hidden")
    assert "Predictions use iteration 2 (the latest)" in page.inner_text("#live-status")
    page.click("#publish-btn")  # roll back
    page.wait_for_function("() => !document.querySelector('#live-badge').hidden")
    assert "Iteration 1 is published" in page.inner_text("#live-status")
    assert page.is_hidden("#publish-btn")
    assert "live" in page.inner_text("#iteration option[value='1']")
    assert "Uses iteration 1" in page.inner_text("#classify-hint")
    project = page.request.get(f"/api/v1/projects/{pinned}").json()
    assert project["published_iteration"] == 1 and project["live_iteration"] == 1

    page.reload()  # the page opens on the latest and says which one is live
    page.wait_for_selector("#results .model-card")
    assert page.input_value("#iteration") == "2" and page.is_hidden("#live-badge")
    assert "Predictions use iteration 1 (published)" in page.inner_text("#live-status")
    session.assert_clean()


def test_drop_a_zip_to_classify_every_image(session, pinned, worker, photo_test_folder):
    page = session.page
    page.goto(f"/projects/{pinned}")
    page.wait_for_selector("#results .model-card")
    members = {f"held-out/{d.name}/{p.name}": p.read_bytes()
               for d in sorted(photo_test_folder.iterdir()) if d.name != "rocket"
               for p in sorted(d.iterdir())}
    members["held-out/cat/readme.txt"] = b"<img src=x onerror=alert(1)> not an image"
    drop_files(page, "#classify-drop", [("held-out.zip", make_zip(members), "application/zip")])
    rows = page.locator(".batch-table tbody tr")
    rows.first.wait_for(timeout=180_000)  # the worker loads TensorFlow and the model first
    assert rows.count() == 6
    assert page.get_attribute("#batch .batch-progress", "value") == "100"
    # published iteration 1 answered: its two classes, and the zip's folders measure it
    assert "iteration 1" in page.inner_text("#batch .batch-stage")
    accuracy = page.inner_text(".batch-accuracy")
    assert "on 6 labelled images" in accuracy and "Accuracy" in accuracy
    assert page.locator(".batch-confusion tbody tr").count() == 2
    assert "readme.txt" in page.inner_text(".batch-rejects") and "not an image" in page.inner_text(".batch-rejects")

    # filters: by true label, by confidence; sorting by confidence, highest first
    page.select_option(".batch-filter-label", "coffee")
    assert rows.count() == 3
    page.select_option(".batch-filter-label", "")
    page.fill(".batch-filter-min", "101")
    assert rows.count() == 0 and page.inner_text(".batch-count") == "0 of 6 images"
    page.fill(".batch-filter-min", "0")
    page.click(".batch-table th[data-key=score] button")
    scores = [float(t.rstrip("%")) for t in page.locator(".batch-table td.num").all_inner_texts()]
    assert len(scores) == 6 and scores == sorted(scores, reverse=True)
    assert page.get_attribute(".batch-table th[data-key=score]", "aria-sort") == "descending"

    csv_url = page.get_attribute(".batch-csv", "href")
    r = page.request.get(csv_url)
    assert r.status == 200 and "text/csv" in r.headers["content-type"]
    table = list(csv.DictReader(io.StringIO(r.text())))
    assert len(table) == 7 and {t["true_label"] for t in table if not t["rejected"]} == {"cat", "coffee"}
    session.assert_clean()


def test_label_the_suggestions_of_an_unlabelled_zip(session, pinned, worker, photo_test_folder):
    """A zip of loose images (no class folders): the batch lists the images worth labelling
    with thumbnails; the user picks a class for one, a new class for another, adds them, and
    the project's training images of those classes grow (copied from the batch)."""
    page = session.page
    page.goto(f"/projects/{pinned}")
    page.wait_for_selector("#results .model-card")
    before = page.request.get(f"/api/v1/projects/{pinned}/images?split=train").json()
    count = lambda images, label: sum(i["label"] == label for i in images)  # noqa: E731
    members = {f"{d.name}_{p.name}": p.read_bytes()
               for d in sorted(photo_test_folder.iterdir()) for p in sorted(d.iterdir())}
    drop_files(page, "#classify-drop", [("unsorted.zip", make_zip(members), "application/zip")])
    items = page.locator(".batch-active .active-item")
    items.first.wait_for(timeout=180_000)
    assert items.count() == 9  # every image: fewer than the 20 suggested at most
    assert page.locator(".batch-evaluation").count() == 0  # no labels, no accuracy
    assert "Label these to improve the model" in page.inner_text(".batch-active h4")
    # the thumbnails come from the batch's stored zip
    page.wait_for_function("() => [...document.querySelectorAll('.active-thumb')]"
                           ".every((i) => i.complete && i.naturalWidth > 0)")
    assert "model: " in items.first.inner_text()

    page.click(".active-add")  # nothing chosen yet: says so, adds nothing
    assert "Choose a class" in page.inner_text(".active-status")
    first, second = items.nth(0), items.nth(1)
    first.locator(".active-label").select_option("cat")
    second.locator(".active-label").select_option(label="New class…")
    second.locator(".active-new-label").fill("Mug")
    page.click(".active-add")
    page.wait_for_function(
        "() => /Added 2 images/.test(document.querySelector('.active-status').textContent)")
    assert "In the project as cat" in first.inner_text()
    assert "In the project as Mug" in second.inner_text()
    assert first.locator(".active-label").is_disabled()

    after = page.request.get(f"/api/v1/projects/{pinned}/images?split=train").json()
    assert count(after, "cat") == count(before, "cat") + 1
    assert count(after, "Mug") == count(before, "Mug") + 1 and len(after) == len(before) + 2
    # the page's class list shows them (refreshed after adding)
    page.wait_for_selector(".class-card[data-label='Mug']")
    assert "1 image" in page.inner_text(".class-card[data-label='Mug'] .class-count")
    # a reload of the batch says they are in the project
    job_id = page.request.get(f"/api/v1/projects/{pinned}/batches").json()[0]["job_id"]
    suggestions = page.request.get(f"/api/v1/batches/{job_id}").json()["suggestions"]
    labelled = sorted(s["in_project"]["label"] for s in suggestions if s["in_project"])
    assert labelled == ["Mug", "cat"]
    session.assert_clean()


def test_choose_a_folder_to_classify_every_image_in_it(session, pinned, worker,
                                                        photo_test_folder, tmp_path):
    """"Choose a folder…" (a webkitdirectory input) sends every image under the folder, its
    class subfolders included and hidden files left out, as one batch."""
    folder = tmp_path / "to-sort"
    shutil.copytree(photo_test_folder, folder)
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    expected = sorted(p.name for p in folder.rglob("*.jpg"))
    page = session.page
    page.goto(f"/projects/{pinned}")
    page.wait_for_selector("#results .model-card")
    assert page.is_enabled("#classify-drop .pick-folder")
    page.set_input_files("#classify-drop input[webkitdirectory]", folder)
    rows = page.locator(".batch-table tbody tr")
    rows.first.wait_for(timeout=180_000)
    page.wait_for_function(f"() => document.querySelectorAll('.batch-table tbody tr').length === {len(expected)}")
    batch_id = page.locator(".batch-csv").get_attribute("href").split("/batches/")[1].split("/")[0]
    body = page.request.get(f"/api/v1/batches/{batch_id}").json()
    assert sorted(r["name"] for r in body["images"]) == expected
    assert body["rejected"] == []  # .DS_Store never left the browser
    session.assert_clean()

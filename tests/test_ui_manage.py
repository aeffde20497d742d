"""Browser tests of managing a project from its page (static/js/manage.js, dialogs.js):
select several images, relabel them and undo; move and delete with a confirmation; rename
and merge a class; relabel then retrain (a real EfficientNet-Lite0 training job run by the
server's worker child); rename the project, and delete it after a confirmation. Every
change is checked through the API as well as on the page.

The tests run in file order as one user's session (as in test_ui_app.py)."""
from __future__ import annotations

import pytest
from helpers import make_zip
from test_ui_app import TRAIN_TIMEOUT, Session, class_card, drop_files, new_context, sign_in, start_live
from test_ui_app import browser  # noqa: F401  (the fixture: Chromium with the standard flags)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """`python app.py` with its worker child, as a user runs it."""
    live = start_live(tmp_path_factory.mktemp("manage"))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def session(browser, live):
    context = new_context(browser, live)
    s = Session(context.new_page())
    sign_in(s.page, live)
    yield s
    context.close()


def api_get(page, path):
    response = page.request.get(f"/api/v1{path}")
    return response.status, (response.json() if response.ok else None)


def labels(page, pid):
    """{sha256: (label, split)} of the project's images, from the API."""
    return {i["sha256"]: (i["label"], i["split"]) for i in api_get(page, f"/projects/{pid}/images")[1]}


def train_count(page, label, n):
    page.wait_for_selector(f".class-card[data-label='{label}'] .class-count:text-is('{n} images')")


def grid_shows(page, n, label=None):
    """Wait until the panel's grid shows `n` images (all of class `label`, when given)."""
    page.wait_for_function("""([n, label]) => {
        const items = [...document.querySelectorAll('#manage-grid .manage-item')];
        return !document.querySelector('#manage-grid[aria-busy]') && items.length === n
            && (label === null || items.every((i) => i.querySelector('.manage-label').textContent === label));
    }""", arg=[n, label])


def dialog(page):
    box = page.locator("dialog.dialog[open]")
    box.wait_for()
    return box


def test_setup_project_with_images(session, web_photos):
    page = session.page
    page.goto("/")
    page.wait_for_selector("#backbone-list input[value=efficientnet_lite0]")
    for other in ("efficientnet_lite1", "efficientnet_lite2", "resnet50", "vgg16", "xception"):
        page.uncheck(f"#bb-{other}")
    page.check("#bb-efficientnet_lite0")
    page.fill("#project-name", "Manage me")
    page.click("#create-btn")
    page.wait_for_url("**/projects/*")
    session.pid = int(page.url.rstrip("/").rsplit("/", 1)[1])
    members = {f"{label}/{label}_{i}.jpg": web_photos[label][i] for label in ("cat", "coffee") for i in range(5)}
    drop_files(page, "#train-drop", [("photos.zip", make_zip(members), "application/zip")])
    train_count(page, "cat", 5)
    test = make_zip({f"{label}/t.jpg": web_photos[label][8] for label in ("cat", "coffee")})
    drop_files(page, "#test-drop", [("test.zip", test, "application/zip")])
    page.wait_for_function("() => document.querySelectorAll('.class-count.test').length === 2")
    session.assert_clean()
    session.passed.add("setup")


def test_select_several_relabel_then_undo(session):
    session.needs("setup")
    page, pid = session.page, session.pid
    original = labels(page, pid)
    page.click("#manage-panel summary")
    grid_shows(page, 12)
    page.select_option("#manage-class", "cat")
    page.select_option("#manage-split", "train")
    grid_shows(page, 5, "cat")
    assert page.is_disabled("#manage-relabel")
    boxes = page.locator("#manage-grid input[type=checkbox]")
    boxes.nth(0).click()
    boxes.nth(2).click(modifiers=["Shift"])  # a range: the first three
    assert page.inner_text("#manage-count") == "3 selected"
    chosen = [boxes.nth(i).get_attribute("value") for i in range(3)]
    page.fill("#manage-label", "coffee")
    page.click("#manage-relabel")
    page.wait_for_selector("#manage-undo-text:has-text('Relabelled 3 images as coffee')")
    train_count(page, "cat", 2)
    train_count(page, "coffee", 8)
    now = labels(page, pid)
    assert [now[s] for s in chosen] == [("coffee", "train")] * 3
    grid_shows(page, 2, "cat")

    page.click("#manage-undo-btn")
    page.wait_for_selector("#manage-undo-text:text-is('Undone.')")
    train_count(page, "cat", 5)
    assert labels(page, pid) == original
    assert page.inner_text("#manage-undo-btn") == "Redo"
    session.assert_clean()
    session.passed.add("relabel")


def test_move_to_test_and_delete_after_confirmation_then_undo(session):
    session.needs("relabel")
    page, pid = session.page, session.pid
    page.select_option("#manage-class", "coffee")
    grid_shows(page, 5, "coffee")
    boxes = page.locator("#manage-grid input[type=checkbox]")
    moved = boxes.nth(0).get_attribute("value")
    boxes.nth(0).click()
    page.click("#manage-to-test")
    page.wait_for_selector("#manage-undo-text:has-text('Moved 1 image to the test set')")
    page.wait_for_selector(".class-card[data-label=coffee] .class-count.test:text-is('2 test')")
    assert labels(page, pid)[moved] == ("coffee", "test")

    page.select_option("#manage-split", "")
    grid_shows(page, 6, "coffee")
    page.click("#manage-select-all")
    assert page.inner_text("#manage-count") == "6 selected"
    page.click("#manage-delete")
    box = dialog(page)
    assert "Delete 6 images?" in box.inner_text()
    box.locator(".dialog-cancel").click()  # cancelled: nothing deleted
    page.wait_for_selector("dialog.dialog", state="detached")
    assert len(labels(page, pid)) == 12
    page.click("#manage-delete")
    dialog(page).locator(".dialog-ok").click()
    page.wait_for_selector("#manage-undo-text:has-text('Deleted 6 images')")
    page.wait_for_function("() => !document.querySelector(\".class-card[data-label='coffee']\")")
    assert {label for label, _ in labels(page, pid).values()} == {"cat"}
    page.click("#manage-undo-btn")
    page.wait_for_selector("#manage-undo-text:text-is('Undone.')")
    train_count(page, "coffee", 4)
    assert len(labels(page, pid)) == 12
    session.assert_clean()
    session.passed.add("delete")


def test_rename_a_class_and_merge_after_confirmation(session):
    session.needs("delete")
    page, pid = session.page, session.pid
    page.select_option("#class-rename-from", "coffee")
    page.fill("#class-rename-to", "espresso")
    page.click("#class-rename-btn")  # a new name: no question asked
    page.wait_for_selector("#manage-undo-text:has-text('Renamed class coffee to espresso')")
    train_count(page, "espresso", 4)
    assert class_card(page, "coffee").count() == 0
    status, project = api_get(page, f"/projects/{pid}")
    assert project["classes"] == {"cat": 5, "espresso": 4} and project["test_classes"] == {"cat": 1, "espresso": 2}
    # An existing class: a merge, asked first; cancelled, nothing changes.
    page.select_option("#class-rename-from", "espresso")
    page.fill("#class-rename-to", "cat")
    page.click("#class-rename-btn")
    box = dialog(page)
    assert "Merge “espresso” into “cat”?" in box.inner_text()
    box.locator(".dialog-cancel").click()
    page.wait_for_selector("dialog.dialog", state="detached")
    assert api_get(page, f"/projects/{pid}")[1]["classes"] == {"cat": 5, "espresso": 4}
    session.assert_clean()
    session.passed.add("rename-class")


def test_relabel_then_retrain_runs_a_real_training(session):
    session.needs("rename-class")
    page, pid = session.page, session.pid
    page.click("#train-btn")
    page.wait_for_selector("#job-state:has-text('Done')", timeout=TRAIN_TIMEOUT)
    page.wait_for_selector(".model-card.ensemble")
    # Two cat images relabelled espresso, then Retrain: a new job, a new iteration.
    page.select_option("#manage-class", "cat")
    page.select_option("#manage-split", "train")
    grid_shows(page, 5, "cat")
    boxes = page.locator("#manage-grid input[type=checkbox]")
    boxes.nth(0).click()
    boxes.nth(1).click()
    page.fill("#manage-label", "espresso")
    page.click("#manage-relabel")
    train_count(page, "espresso", 6)
    assert page.inner_text("#train-btn") == "Retrain"
    page.click("#train-btn")
    page.wait_for_selector("#job-state:not(:has-text('Done'))")  # a job, not "nothing changed"
    page.wait_for_selector("#job-state:has-text('Done')", timeout=TRAIN_TIMEOUT)
    page.wait_for_function("() => document.querySelectorAll('#iteration option').length === 2")
    assert page.locator(".alert-success:has-text('Nothing changed')").count() == 0
    _, report = api_get(page, f"/projects/{pid}/results")
    assert report["iteration"] == 2 and report["counts"] == {"cat": 3, "espresso": 6}, report.get("counts")
    _, first = api_get(page, f"/projects/{pid}/results?iteration=1")
    assert first["counts"] == {"cat": 5, "espresso": 4}
    session.assert_clean()
    session.passed.add("retrain")


def test_rename_the_project(session):
    session.needs("setup")
    page, pid = session.page, session.pid
    page.click("#project-rename-btn")
    box = dialog(page)
    assert page.input_value("#dialog-input") == "Manage me"
    page.fill("#dialog-input", "Cats & espresso")
    box.locator(".dialog-ok").click()
    page.wait_for_selector("#project-title:text-is('Cats & espresso')")
    assert api_get(page, f"/projects/{pid}")[1]["name"] == "Cats & espresso"
    assert page.title().startswith("Cats & espresso")
    session.assert_clean()


def test_delete_the_project_after_confirmation(session, live):
    session.needs("setup")
    page, pid = session.page, session.pid
    page.click("#project-delete-btn")
    box = dialog(page)
    assert "cannot be undone" in box.inner_text()
    box.locator(".dialog-cancel").click()
    page.wait_for_selector("dialog.dialog", state="detached")
    assert api_get(page, f"/projects/{pid}")[0] == 200
    page.click("#project-delete-btn")
    box = dialog(page)
    assert "12 images" in box.inner_text()
    box.locator(".dialog-ok").click()
    page.wait_for_url(f"{live.url}/")
    page.wait_for_selector("#project-list:not([aria-busy=true])")
    assert page.locator(".project-link", has_text="Cats & espresso").count() == 0
    assert api_get(page, f"/projects/{pid}")[0] == 404
    session.assert_clean()

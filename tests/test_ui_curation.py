"""Browser test of curating from the results (issue 16): the "Likely mislabelled" list finds
two planted mistakes, relabels one and removes the other through the image API in one click
each (with undo and a confirming second click), retraining then suggests neither; and the
learning-curve chart renders with its extrapolation and the classes that would gain most.

Its own `python app.py` and Huey worker (real EfficientNet-Lite0, offline), driven by
Playwright on Debian's Chromium, as tests/test_ui_app.py does (whose helpers it uses).
"""
from __future__ import annotations

import hashlib

import pytest
from helpers import make_zip
from test_ui_app import (TIMEOUT, TRAIN_TIMEOUT, Session, browser, class_card,  # noqa: F401
                         drop_files, new_context, sign_in, start_live)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    live = start_live(tmp_path_factory.mktemp("ui_curation"), TRANSFERLAB_WORKER="false")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def session(browser, live, start_worker):  # noqa: F811  (browser: the imported fixture)
    worker = start_worker(live.instance, KERAS_HOME=str(live.keras_home))
    context = new_context(browser, live)
    s = Session(context.new_page())
    sign_in(s.page, live)
    s.worker = worker
    yield s
    context.close()


def train_and_wait(page, worker, iterations):
    worker.wait_ready()
    page.click("#train-btn")
    page.wait_for_selector("#job-state:has-text('Done')", timeout=TRAIN_TIMEOUT)
    page.wait_for_function(f"() => document.querySelectorAll('#iteration option').length === {iterations}")
    page.wait_for_selector(".curation-grid", timeout=TIMEOUT)


def test_mislabelled_images_are_fixed_from_the_results_and_retraining_agrees(session, web_photos):
    page = session.page
    cat, coffee = web_photos["cat"], web_photos["coffee"]
    members = {f"p/cat/cat_{i}.jpg": cat[i] for i in range(6)}
    members.update({f"p/coffee/coffee_{i}.jpg": coffee[i] for i in range(6)})
    members["p/cat/odd_coffee.jpg"] = coffee[7]  # a coffee photo filed under cat
    members["p/coffee/odd_cat.jpg"] = cat[7]  # and a cat photo filed under coffee
    coffee_as_cat = hashlib.sha256(coffee[7]).hexdigest()
    cat_as_coffee = hashlib.sha256(cat[7]).hexdigest()

    page.goto("/")
    page.wait_for_selector("#backbone-list input[value=efficientnet_lite0]")
    for name in ("efficientnet_lite1", "efficientnet_lite2"):
        page.uncheck(f"#bb-{name}")
    page.fill("#project-name", "Curation")
    page.click("#create-btn")
    page.wait_for_url("**/projects/*")
    drop_files(page, "#train-drop", [("p.zip", make_zip(members), "application/zip")])
    page.wait_for_selector(".upload-report")
    class_card(page, "cat").locator(".class-count", has_text="7 images").wait_for()
    train_and_wait(page, session.worker, 1)

    # The ranking: both planted mistakes, each with the label it should have.
    panel = page.locator(".mislabelled")
    rows = panel.locator(".suspect")
    shown = [rows.nth(i).get_attribute("data-sha256") for i in range(rows.count())]
    assert set(shown[:2]) == {coffee_as_cat, cat_as_coffee}, shown
    odd_coffee = panel.locator(f".suspect[data-sha256='{coffee_as_cat}']")
    odd_cat = panel.locator(f".suspect[data-sha256='{cat_as_coffee}']")
    assert odd_coffee.locator(".suspect-given").inner_text() == "cat"
    assert odd_coffee.locator(".suspect-suggested").inner_text() == "coffee"
    assert odd_cat.locator(".suspect-suggested").inner_text() == "cat"
    page.wait_for_function("""() => [...document.querySelectorAll('.suspect img')]
        .every((i) => i.complete && i.naturalWidth > 0)""")

    # The learning curve: four measured points, the expected figure at twice the images.
    series = page.locator(".learning-curve .lc-series[data-backbone=efficientnet_lite0]")
    assert series.locator(".lc-point").count() == 4
    assert series.locator(".lc-expected").count() == 1 and series.locator(".lc-band").count() == 1
    expectation = page.inner_text(".lc-expectation")
    assert "28 training images (twice as many)" in expectation and "90% band" in expectation
    assert page.locator(".lc-classes").inner_text().strip()

    # Relabel in one click; undo; relabel again. The class counts follow each time.
    odd_coffee.locator(".suspect-relabel").click()
    odd_coffee.locator(".suspect-status", has_text="Relabelled as coffee").wait_for()
    class_card(page, "coffee").locator(".class-count", has_text="8 images").wait_for()
    odd_coffee.locator("button", has_text="Undo").click()
    class_card(page, "cat").locator(".class-count", has_text="7 images").wait_for()
    odd_coffee.locator(".suspect-relabel").click()
    odd_coffee.locator(".suspect-status", has_text="Relabelled as coffee").wait_for()
    # Remove asks for a second click first.
    remove = odd_cat.locator(".suspect-remove")
    remove.click()
    assert remove.inner_text() == "Confirm remove"
    class_card(page, "coffee").locator(".class-count", has_text="8 images").wait_for()
    remove.click()
    odd_cat.locator(".suspect-status", has_text="Removed").wait_for()
    class_card(page, "coffee").locator(".class-count", has_text="7 images").wait_for()
    class_card(page, "cat").locator(".class-count", has_text="6 images").wait_for()

    # Retrain: the model now agrees with every label.
    train_and_wait(page, session.worker, 2)
    # (iteration 1's panel stays on the page until iteration 2's results have drawn)
    page.wait_for_selector(".results-about:has-text('13 training images')", timeout=TIMEOUT)
    page.wait_for_selector(".mislabelled:has-text('agrees with every')", timeout=TIMEOUT)
    assert page.locator(".mislabelled .suspect").count() == 0
    # The first iteration's list remembers what became of its suggestions.
    page.select_option("#iteration", "1")
    page.wait_for_selector(".results-about:has-text('14 training images')")
    settled = page.locator(f".suspect[data-sha256='{coffee_as_cat}'] .suspect-status")
    assert settled.inner_text() == "Now labelled coffee."
    gone = page.locator(f".suspect[data-sha256='{cat_as_coffee}'] .suspect-status")
    assert "Removed from the project" in gone.inner_text()
    assert page.locator(".suspect.suspect-done button").count() == 0
    session.assert_clean()

"""Browser tests of the pages: Playwright driving Debian's Chromium against a live server.

One server (`python app.py`, gevent, no worker child) and one Huey worker subprocess share a
temporary instance folder. The tests run in file order as one user's session: create a
project with EfficientNet-Lite0 (real offline weights), drop a zip, pick files, train (and
cancel), read the results, click a confusion cell, classify a dropped image, use the
ImageNet page. Class and file names carrying HTML must show up as text, never as markup.

Skipped when Chromium or Playwright is missing. Nothing here reaches the network: the
browser only talks to 127.0.0.1 and the server processes get a dead proxy.
"""
from __future__ import annotations

import base64
import io
import itertools
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
from helpers import free_port, make_zip  # noqa: E402
from playwright import sync_api  # noqa: E402

pytestmark = pytest.mark.browser

if not Path(CHROMIUM).exists():  # a missing browser is a broken set-up, never a skip
    pytest.fail("Debian's chromium is not installed: apt-get install chromium", pytrace=False)

REPO = Path(__file__).resolve().parents[1]
XSS = "<img src=x onerror=alert(1)>"
PROJECT = "Cats & <i>coffee</i>"  # the name is rendered by Jinja and by JS: text both times
TIMEOUT = 20_000  # ms, for ordinary UI waits
TRAIN_TIMEOUT = 150_000  # ms, worker start + feature extraction + fitting

DROP_JS = """([selector, files]) => {
  const dt = new DataTransfer();
  for (const f of files) {
    const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
    dt.items.add(new File([bytes], f.name, { type: f.type }));
  }
  const target = document.querySelector(selector);
  for (const type of ["dragenter", "dragover", "drop"]) {
    target.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: dt }));
  }
}"""


CSP_LISTENER_JS = """document.addEventListener("securitypolicyviolation", (e) =>
  window.__reportCspViolation(`${e.violatedDirective} blocked ${e.blockedURI || "inline"} on ${e.documentURI}`));"""


def drop_files(page, selector, files):
    """Dispatch real dragenter/dragover/drop events carrying Files built in the page."""
    payload = [{"name": name, "type": mime, "b64": base64.b64encode(data).decode()}
               for name, data, mime in files]
    page.evaluate(DROP_JS, [selector, payload])


def _offline_env(instance: Path, keras_home: Path) -> dict:
    dead = "http://127.0.0.1:9"
    return {**os.environ, "TRANSFERLAB_INSTANCE_PATH": str(instance), "KERAS_HOME": str(keras_home),
            "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1",
            "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead,
            "NO_PROXY": "", "no_proxy": ""}


class Live:
    """A running `python app.py`: proc, url, instance, keras_home, log_path."""

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_live(root: Path, **env) -> Live:
    """`python app.py` on a free loopback port with its instance folder and an empty Keras
    home (the Keras backbones are unavailable, EfficientNet-Lite is not) under `root`."""
    instance, keras_home = root / "instance", root / "keras_home"
    instance.mkdir()
    keras_home.mkdir()
    port = free_port()
    env = {**_offline_env(instance, keras_home), "TRANSFERLAB_PORT": str(port),
           "TRANSFERLAB_HOST": "127.0.0.1", **env}
    env.pop("TRANSFERLAB_WEIGHTS_DIR", None)
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/api/v1/openapi.yaml", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.2)
    live = Live()
    live.proc, live.url, live.instance, live.keras_home, live.log_path = (
        proc, url, instance, keras_home, log_path)
    return live


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The server of the flow below, without a worker child (see `worker`)."""
    live = start_live(tmp_path_factory.mktemp("ui"), TRANSFERLAB_WORKER="false")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def worker(live, start_worker):
    """Started on first use, so a job can first be cancelled while it is still queued."""
    return start_worker(live.instance, KERAS_HOME=str(live.keras_home))


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        yield browser
        browser.close()


class Session:
    """One user's tab, plus everything that must never happen in it."""

    def __init__(self, page):
        self.page = page
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.csp_violations: list[str] = []
        self.project_url: str | None = None
        self.passed: set[str] = set()
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        # Both ways a blocked script, style or image shows: the console error Chromium
        # writes, and the page's securitypolicyviolation event (reported through a binding,
        # which the policy cannot block and which survives navigations).
        page.on("console", lambda m: self.csp_violations.append(m.text)
                if m.type == "error" and "Content Security Policy" in m.text else None)
        page.expose_function("__reportCspViolation", lambda text: self.csp_violations.append(text))
        page.add_init_script(CSP_LISTENER_JS)
        page.set_default_timeout(TIMEOUT)

    def needs(self, *steps):
        """Skip (rather than time out) when a step this test builds on has failed."""
        missing = [s for s in steps if s not in self.passed]
        if missing:
            pytest.skip(f"needs the earlier step(s) {', '.join(missing)}")

    def assert_clean(self):
        assert self.dialogs == [], f"a dialog fired: {self.dialogs}"
        assert self.errors == [], f"JavaScript errors: {self.errors}"
        assert self.csp_violations == [], f"Content-Security-Policy violations: {self.csp_violations}"
        injected = self.page.evaluate("document.querySelectorAll('img[src=\"x\"], [onerror]').length")
        assert injected == 0, "markup from a class or file name was injected into the page"


def new_context(browser, live, width=1400, height=1000):
    context = browser.new_context(viewport={"width": width, "height": height}, base_url=live.url)
    # Belt and braces: the page may only ever talk to the live server.
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(live.url)
                  else route.abort())
    return context


PASSWORD = "correct horse battery staple"


def sign_in(page, live, username="ann", password=PASSWORD):
    """Open the site as a user does: the first visit creates the admin account on the setup
    page, with the setup code the server printed in its log; later visits log in on the login
    page. Ends on the projects page."""
    page.goto("/")
    if "/setup" in page.url:
        logged = re.search(r"setup code: ([0-9a-f]+)", live.log_path.read_text(errors="replace"))
        assert logged, "the server did not log the setup code"
        page.fill("#setup-code", logged.group(1))
        page.fill("#username", username)
        page.fill("#password", password)
        page.fill("#confirm", password)
        page.click("#setup-btn")
    else:
        assert "/login" in page.url, page.url
        page.fill("#username", username)
        page.fill("#password", password)
        page.click("#login-btn")
    page.wait_for_selector("#account-link")
    assert page.inner_text("#account-link") == username


@pytest.fixture(scope="module")
def session(browser, live):
    context = new_context(browser, live)
    s = Session(context.new_page())
    sign_in(s.page, live)  # the first visit: creates the admin account
    yield s
    context.close()


@pytest.fixture(scope="module")
def data(web_photos):
    cat, coffee, rocket = web_photos["cat"], web_photos["coffee"], web_photos["rocket"]
    members = {f"photos/cat/cat_{i}.jpg": cat[i] for i in range(6)}
    members.update({f"photos/coffee/coffee_{i}.jpg": coffee[i] for i in range(6)})
    members["photos/cat/bad.jpg"] = b"this is a text file, not a JPEG\n"
    test_members = {f"cat/t{i}.jpg": cat[6 + i] for i in range(2)}
    test_members.update({f"coffee/t{i}.jpg": coffee[6 + i] for i in range(2)})
    return {
        "train_zip": make_zip(members),
        "test_zip": make_zip(test_members),
        "xss_images": rocket[:3],
        "query": cat[11],
        "whole_cat": _jpeg_of_chelsea(),
    }


def _jpeg_of_chelsea() -> bytes:
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buf, "JPEG", quality=90)
    return buf.getvalue()


SHOTS_ENV = "TRANSFERLAB_UI_SCREENSHOTS"
SHOT_WIDTH = 1280
SHOT_MAX_BYTES = 300_000
# Transient toasts (fixed, top right) and the text caret stay out of the pictures.
SHOT_STYLE = "#alerts { display: none !important; } * { caret-color: transparent !important; }"


def screenshot(page, name: str, selector: str | None = None) -> Path | None:
    """For the README: save `name` into $TRANSFERLAB_UI_SCREENSHOTS (nothing when unset), at
    SHOT_WIDTH px wide, of the element `selector` or else of the whole page; once every image
    on the page has loaded. A PNG over SHOT_MAX_BYTES is re-compressed, and if still too
    large reduced to a 256-colour palette."""
    folder = os.environ.get(SHOTS_ENV)
    if not folder:
        return None
    from PIL import Image

    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    page.set_viewport_size({"width": SHOT_WIDTH, "height": size["height"]})
    try:
        page.mouse.move(0, 0)  # no hover state
        page.wait_for_function("() => [...document.images].every((i) => i.complete)")
        target = page.locator(selector) if selector else page
        options = {"path": str(path), "animations": "disabled", "style": SHOT_STYLE}
        if not selector:
            options["full_page"] = True
        target.screenshot(**options)
    finally:
        page.set_viewport_size(size)
    if path.stat().st_size > SHOT_MAX_BYTES:
        with Image.open(path) as im:
            im = im.convert("RGB")
        im.save(path, optimize=True)
        if path.stat().st_size > SHOT_MAX_BYTES:
            im.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


def class_card(page, label):
    return page.locator(".class-card").filter(has=page.locator(".class-name", has_text=label))


# ---- the flow -------------------------------------------------------------------------------


def test_home_lists_backbones_and_creates_project(session, live):
    page = session.page
    page.goto("/")
    page.wait_for_selector("#backbone-list input[value=efficientnet_lite0]")
    # Offline, the backbones whose weights are here are pre-selected (EfficientNet-Lite0/1/2);
    # the others are off, and each says which file is missing and where to put it.
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        assert page.is_checked(f"#bb-{name}"), name
    for name in ("resnet50", "vgg16", "xception"):
        assert not page.is_checked(f"#bb-{name}"), name
    resnet = page.locator(".backbone-option", has=page.locator("#bb-resnet50"))
    assert "weights missing" in resnet.inner_text()
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in resnet.inner_text()
    assert str(live.keras_home) in resnet.inner_text()
    assert "Pre-selected" in page.inner_text("#backbone-defaults-note")
    assert page.is_hidden("#backbone-warning")  # nothing chosen lacks weights
    lite = page.locator(".backbone-option", has=page.locator("#bb-efficientnet_lite0"))
    assert "available" in lite.inner_text()
    page.check("#bb-resnet50")
    assert page.is_visible("#backbone-warning")  # choosing one without weights: said at once
    assert "refused" in page.inner_text("#backbone-warning")
    page.uncheck("#bb-resnet50")

    page.uncheck("#bb-efficientnet_lite2")  # two real backbones: the ensemble has a vote
    assert page.is_hidden("#backbone-warning")
    page.fill("#project-name", PROJECT)
    page.click("#create-btn")
    page.wait_for_url("**/projects/*")
    page.wait_for_selector("#project-meta:has-text('EfficientNet')")
    assert page.inner_text("#project-title") == PROJECT
    assert page.locator("#project-title i").count() == 0
    assert page.title().startswith(PROJECT)
    session.project_url = page.url
    assert "EfficientNet-Lite0, EfficientNet-Lite1" in page.inner_text("#project-meta")
    assert page.is_disabled("#train-btn")
    session.assert_clean()
    session.passed.add("create")


def test_fine_tune_checkbox_is_saved_on_the_project(session):
    session.needs("create")
    page = session.page
    assert not page.is_checked("#fine-tune")
    page.check("#fine-tune")
    page.wait_for_selector("#fine-tune-status:has-text('also fine-tunes')")
    page.reload()
    page.wait_for_function("() => document.querySelector('#fine-tune').checked === true")
    page.uncheck("#fine-tune")
    page.wait_for_selector("#fine-tune-status:has-text('frozen backbones only')")
    session.assert_clean()


def test_drop_zip_shows_classes_thumbnails_and_rejects(session, data):
    session.needs("create")
    page = session.page
    drop_files(page, "#train-drop", [("photos.zip", data["train_zip"], "application/zip")])
    report = page.wait_for_selector(".upload-report")
    assert page.evaluate("document.querySelector('#upload-progress').value") == 100
    text = report.inner_text()
    assert "12 images added" in text and "1 rejected" in text
    reject = page.locator(".rejects li", has_text="bad.jpg")
    assert reject.count() == 1 and reject.locator(".reject-reason").inner_text().strip()
    for label in ("cat", "coffee"):
        card = class_card(page, label)
        card.wait_for()
        assert "6 images" in card.locator(".class-count").first.inner_text()
    # Thumbnails are fetched lazily and really decode.
    page.wait_for_function("""() => {
        const imgs = [...document.querySelectorAll('.class-card .thumb-sm')];
        return imgs.length === 12 && imgs.every((i) => i.complete && i.naturalWidth > 0);
    }""")
    assert page.is_enabled("#train-btn")
    session.assert_clean()
    session.passed.add("drop")


def test_file_picker_adds_test_set_and_html_class_name_stays_text(session, data):
    session.needs("drop")
    page = session.page
    # The picker path, by keyboard: focus "Choose files…", press Space, pick the test-set zip.
    # (Space, not Enter: a synthetic Enter carries no user activation in headless Chromium,
    # so no file chooser may open; a real key press does.)
    page.focus("#test-drop .pick")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    assert chooser.value.is_multiple()
    chooser.value.set_files(files=[
        {"name": "test.zip", "mimeType": "application/zip", "buffer": data["test_zip"]}])
    page.wait_for_selector(".class-card .class-count.test")
    assert "2 test" in class_card(page, "cat").inner_text()
    assert "4 test images" in page.inner_text("#dataset-summary")

    # Loose images with a class name that is HTML: shown as text, nothing injected.
    page.fill("#train-label", XSS)
    page.set_input_files("#train-drop input[type=file]", files=[
        {"name": f"r{i}.jpg", "mimeType": "image/jpeg", "buffer": b} for i, b in enumerate(data["xss_images"])])
    card = class_card(page, "onerror")
    card.wait_for()
    assert card.locator(".class-name").inner_text() == XSS
    assert "3 images" in card.inner_text()
    page.wait_for_function("() => document.querySelectorAll('.class-card').length === 3")
    page.fill("#train-label", "")
    session.assert_clean()
    session.passed.add("picker")


def test_train_cancel_while_queued(session):
    session.needs("picker")
    page = session.page
    # No worker yet: the job waits in the queue, and Cancel takes it out.
    page.click("#train-btn")
    page.wait_for_selector("#job-state:has-text('Queued')")
    assert page.is_visible("#cancel-btn")
    assert page.is_disabled("#train-btn")
    # A reload finds the job again and keeps following it.
    page.reload()
    page.wait_for_selector("#job-state:has-text('Queued')")
    assert page.inner_text("#job-stage")
    assert page.is_disabled("#train-btn")
    page.click("#cancel-btn")
    page.wait_for_selector("#job-state:has-text('Cancelled')")
    assert page.is_hidden("#cancel-btn")
    assert page.is_enabled("#train-btn")
    session.assert_clean()
    session.passed.add("cancel")


def test_train_progress_reaches_results(session, worker):
    session.needs("picker")
    page = session.page
    worker.wait_ready()
    page.click("#train-btn")
    page.wait_for_selector("#job-state:not(:has-text('Cancelled'))")
    # Progress is polled and drawn while the page stays usable, and the status line never
    # sits still for more than ~2 s: stage, done/total, an ETA, or the seconds in the stage.
    seen = set()
    lines = []  # (time, the whole status line) at each change
    deadline = time.monotonic() + TRAIN_TIMEOUT / 1000
    while time.monotonic() < deadline:
        state, stage, line = page.evaluate("""() => [document.querySelector('#job-state').textContent,
            document.querySelector('#job-stage').textContent, document.querySelector('#job .job-line').textContent]""")
        seen.add((state, stage))
        if state in ("Done", "Failed", "Cancelled"):
            break
        if not lines or lines[-1][1] != line:
            lines.append((time.monotonic(), line))
        page.wait_for_timeout(100)
    assert page.inner_text("#job-state") == "Done", f"{seen}\n{worker.log()[-3000:]}"
    assert any(state == "Training" for state, _ in seen), seen
    lines.append((time.monotonic(), "done"))
    still = max(b[0] - a[0] for a, b in itertools.pairwise(lines))
    print(f"progress text: {len(lines)} changes, longest still {still:.2f} s")
    assert still < 2.5, f"the progress text sat still for {still:.1f} s: {lines}"
    assert any("left" in line for _, line in lines), "no ETA was ever shown"
    assert page.evaluate("document.querySelector('#job-progress').value") == 100
    page.wait_for_selector(".model-card.ensemble", timeout=TIMEOUT)
    session.assert_clean()
    session.passed.add("train")


def test_results_show_honest_metrics_and_heatmaps(session):
    session.needs("train")
    page = session.page
    cards = page.locator(".model-card")
    assert cards.count() == 3  # EfficientNet-Lite0, -Lite1 and the ensemble, side by side
    tops = [c.bounding_box()["y"] for c in cards.all()]
    assert max(tops) - min(tops) < 5, "the model cards should sit in one row"
    assert page.locator(".summary tbody tr").count() == 3
    lite = page.locator(".model-card[data-model=efficientnet_lite0]")
    text = lite.inner_text()
    assert "cross-validated accuracy" in text and "%" in text and "±" in text
    assert "test-set accuracy" in text
    assert "Training-set score" in text and "not an accuracy estimate" in text
    assert "Training time" in text
    # Per-class table, and the heatmap says which data it shows (a test set exists).
    assert lite.locator(".per-class tbody tr").count() == 3
    assert "Confusion matrix · test set" in lite.locator(".heatmap-title").first.inner_text()
    assert lite.locator(".heatmap").first.locator("button.cell").count() == 9
    assert "Training-set confusion matrix" in text
    assert page.locator("#iteration option").count() == 1  # the cancelled job made none
    # The HTML class name is text in the per-class table and the heatmap headers.
    assert lite.locator(".per-class tbody th", has_text="onerror").inner_text() == XSS
    assert lite.locator(".heatmap .row-label", has_text="onerror").first.inner_text() == XSS
    # The ensemble: majority vote by default, mean probability on request.
    ensemble = page.locator(".model-card.ensemble")
    assert "cross-validated accuracy" in ensemble.inner_text()
    ensemble.locator(".method-picker select").select_option("mean")
    assert "Ensemble (mean probability)" in page.inner_text(".summary")
    session.assert_clean()
    session.passed.add("results")


def test_confusion_cell_shows_its_images(session):
    session.needs("train")
    page = session.page
    lite = page.locator(".model-card[data-model=efficientnet_lite0]")
    cell = lite.locator(".heatmap").first.locator("button.cell[data-true=cat][data-pred=cat]")
    count = int(cell.get_attribute("data-count"))
    assert count >= 1
    cell.click()
    panel = page.locator("#cell-detail")
    panel.wait_for()
    assert "test set" in panel.inner_text() and "cat" in panel.inner_text()
    assert panel.locator(".thumb img").count() == count
    page.wait_for_function("""() => [...document.querySelectorAll('#cell-detail .thumb img')]
        .every((i) => i.complete && i.naturalWidth > 0)""")
    # The training-set matrix is there too, and its cells open the training images.
    lite.locator("details.more", has_text="Training-set").locator("summary").click()
    train_cell = lite.locator(".heatmap[data-source=train] button.cell[data-true=coffee][data-pred=coffee]")
    train_cell.click()
    assert "training set" in panel.inner_text()
    assert panel.locator(".thumb img").count() == int(train_cell.get_attribute("data-count"))
    session.assert_clean()
    session.passed.add("cell")


def test_drop_image_to_classify(session, data):
    session.needs("train")
    page = session.page
    drop_files(page, "#classify-drop", [("query.jpg", data["query"], "image/jpeg")])
    answer = page.wait_for_selector(".ensemble-answer, #alerts .alert-error", timeout=60_000)
    assert page.locator("#alerts .alert-error").count() == 0, page.inner_text("#alerts")
    assert page.locator("#classify-result .prediction-image img").count() == 1
    assert page.locator(".answer-label").inner_text() == "cat"
    assert "votes" in answer.inner_text()
    per_backbone = page.locator(".backbone-answer")
    assert per_backbone.count() == 2
    assert "EfficientNet-Lite0" in per_backbone.first.inner_text()
    assert "EfficientNet-Lite1" in per_backbone.last.inner_text()
    for answer_box in per_backbone.all():
        assert answer_box.locator(".score-row").count() == 3
        assert answer_box.locator(".score-fill").count() == 3
    session.assert_clean()
    session.passed.add("classify")



def test_threshold_setting_makes_unsure_answers_not_sure(session):
    session.needs("classify")
    page = session.page
    gray = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(gray, "PNG")  # no class in particular

    def classify_gray():
        page.evaluate("document.querySelector('#classify-result').replaceChildren()")
        drop_files(page, "#classify-drop", [("gray.png", gray.getvalue(), "image/png")])
        return page.wait_for_selector(".ensemble-answer", timeout=60_000)

    answer = classify_gray()
    assert "unsure" not in (answer.get_attribute("class") or "")
    page.fill("#threshold", "99")
    page.click("#threshold-form button[type=submit]")
    page.wait_for_selector("#threshold-status:has-text('below 99%')")
    answer = classify_gray()
    assert page.locator(".answer-label").inner_text() == "Not sure"
    assert "below the 99.0%" in answer.inner_text()
    page.reload()
    page.wait_for_function("() => document.querySelector('#threshold').value === '99'")
    page.fill("#threshold", "0")
    page.click("#threshold-form button[type=submit]")
    page.wait_for_selector("#threshold-status:has-text('always answers')")
    session.assert_clean()

def test_project_page_with_results_fits_a_phone(session, tmp_path):
    """A phone, 420 px wide: nothing on the project page with results overflows it."""
    session.needs("train")
    page = session.page
    page.set_viewport_size({"width": 420, "height": 900})
    try:
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth")
        page.screenshot(path=str(tmp_path / "project-narrow.png"), full_page=True)
    finally:
        page.set_viewport_size({"width": 1400, "height": 1000})
    assert overflow <= 0
    assert (tmp_path / "project-narrow.png").stat().st_size > 10_000
    session.passed.add("narrow")


def test_reload_keeps_rejects_and_results(session):
    session.needs("train")
    page = session.page
    page.reload()
    page.wait_for_selector(".model-card.ensemble")
    assert page.locator(".rejects li", has_text="bad.jpg").count() == 1
    assert page.locator(".class-card").count() == 3
    session.assert_clean()
    session.passed.add("reload")


def test_retrain_adds_an_iteration_and_earlier_ones_stay_viewable(session, web_photos):
    session.needs("train")
    page = session.page
    # One more coffee image, then retrain: the features of the others come from the cache.
    page.fill("#train-label", "coffee")
    page.set_input_files("#train-drop input[type=file]", files=[
        {"name": "more.jpg", "mimeType": "image/jpeg", "buffer": web_photos["coffee"][10]}])
    page.wait_for_selector(".class-card[data-label=coffee] .class-count:has-text('7 images')")
    page.fill("#train-label", "")
    page.click("#train-btn")
    page.wait_for_selector("#job-state:has-text('Done')", timeout=TRAIN_TIMEOUT)
    page.wait_for_function("() => document.querySelectorAll('#iteration option').length === 2")
    assert page.input_value("#iteration") == "2"
    page.wait_for_selector(".results-about:has-text('16 training images')")
    page.select_option("#iteration", "1")
    page.wait_for_selector(".results-about:has-text('15 training images')")
    assert page.locator(".model-card").count() == 3
    # Training again with nothing new: answered at once, no job, iteration 2 still the latest.
    page.click("#train-btn")
    page.wait_for_selector(".alert-success:has-text('Nothing changed since iteration 2')")
    assert page.is_hidden("#job")
    assert page.locator("#iteration option").count() == 2
    session.assert_clean()
    session.passed.add("retrain")


def test_unknown_project_is_a_404_page(session, live):
    page = session.page
    response = page.goto("/projects/999999")
    assert response.status == 404
    assert "Not found" in page.inner_text("h1")
    page.goto(session.project_url or "/")


def test_all_rejected_upload_shows_error_and_reasons(session):
    session.needs("create")
    page = session.page
    page.set_input_files("#train-drop input[type=file]", files=[
        {"name": f"{XSS}.jpg", "mimeType": "image/jpeg", "buffer": b"not an image"}])
    page.wait_for_selector(".alert-error")
    assert "No image was accepted" in page.inner_text("#alerts")
    first = page.locator(".upload-report").first
    assert XSS in first.locator(".reject-name").inner_text()
    page.locator("#alerts .alert-close").first.click()
    session.assert_clean()
    session.passed.add("rejected")


def test_missing_weights_refuse_training_in_one_message_never_another_backbone(session, data):
    """A project on ResNet50 without its weights file: training is refused before it queues,
    and the page says which file is missing and where it goes, once, in one place; nothing
    is swapped in silently."""
    page = session.page
    page.goto("/")
    page.wait_for_selector("#bb-resnet50")
    page.check("#bb-resnet50")
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        page.uncheck(f"#bb-{name}")
    page.fill("#project-name", "No weights")
    page.click("#create-btn")
    page.wait_for_url("**/projects/*")
    page.wait_for_selector("#train-warning:not([hidden])")
    missing = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert missing in page.inner_text("#train-warning")
    drop_files(page, "#train-drop", [("photos.zip", data["train_zip"], "application/zip")])
    page.wait_for_selector(".class-card[data-label=coffee]")
    page.click("#train-btn")
    page.wait_for_selector("#train-warning:has-text('Training refused')")
    assert missing in page.inner_text("#train-warning")
    body, notice = page.inner_text("body"), page.inner_text("#train-warning")
    # one message, in one place: the file is named nowhere else on the page
    assert body.count(missing) == notice.count(missing) and body.count("Training refused") == 1
    assert page.locator("#alerts .alert-error").count() == 0
    assert page.is_hidden("#job")  # nothing was queued
    assert page.locator(".model-card").count() == 0
    assert page.is_enabled("#train-btn")  # fix it and try again
    # The fix: change the project's backbones right here.
    page.click("#backbone-edit summary")
    page.wait_for_selector("#edit-efficientnet_lite0")
    assert page.is_checked("#edit-resnet50")
    page.uncheck("#edit-resnet50")
    page.check("#edit-efficientnet_lite0")
    page.click("#backbone-form button[type=submit]")
    page.wait_for_selector("#project-meta:has-text('EfficientNet-Lite0')")
    assert "ResNet50" not in page.inner_text("#project-meta")
    assert page.is_hidden("#train-warning")
    session.assert_clean()


# ---- many classes (a results report written as a worker leaves it, no training) -----------

MANY = 300


def _many_class_images(n=MANY, per=3) -> dict:
    """{(class, k): JPEG bytes}: small distinct noise images (no two near-duplicates)."""
    import numpy as np

    rng = np.random.default_rng(14)
    out = {}
    for key in ((i, k) for i in range(n) for k in range(per)):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
        out[key] = buf.getvalue()
    return out


def _many_class_report(shas, n=MANY, per=3):
    """A report in models/result.py's format for n classes of `per` CV images each; all
    right except: class 005's images all taken for class 007, two of class 020's for class
    021, and the last image of classes 100..159 for the next class. Backbone Lite0 carries a
    reliability diagram and a sparse confusion (`cells`, as trained reports have beyond 30
    classes), Lite1 neither (an older report: a dense `matrix`)."""
    labels = [f"class {i:03d}" for i in range(n)]
    preds, matrix = [], [[0] * n for _ in range(n)]
    for i in range(n):
        for k in range(per):
            j = i
            if i == 5:
                j = 7
            elif i == 20 and k < 2:
                j = 21
            elif 100 <= i < 160 and k == per - 1:
                j = i + 1
            matrix[i][j] += 1
            sha = shas[i, k]
            preds.append({"sha256": sha, "source": f"c{i:03d}/{k}.jpg", "true": labels[i], "pred": labels[j],
                          "score": 0.9 if i == j else 0.4})
    per_class = {}
    for i, label in enumerate(labels):
        tp, col = matrix[i][i], sum(matrix[r][i] for r in range(n))
        precision = tp / col if col else 0.0
        recall = tp / per
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": per}
    accuracy = sum(matrix[i][i] for i in range(n)) / (n * per)
    dense = {"labels": labels, "matrix": matrix, "source": "cv"}
    # As models/training.py writes beyond 30 classes: the non-zero cells only.
    sparse = {"labels": labels, "cells": [[i, j, c] for i, row in enumerate(matrix) for j, c in enumerate(row) if c],
              "source": "cv"}

    def entry(confusion=dense, **extra):
        return {"cv_accuracy": accuracy, "cv_accuracy_std": 0.01, "train_accuracy": 1.0, "test_accuracy": None,
                "per_class": per_class, "confusion": confusion, "cv": {"accuracy": accuracy},
                "train": None, "test": None, "predictions": {"cv": preds}, "train_seconds": 1.5, **extra}

    reliability = {"cv": [{"confidence": 0.45, "accuracy": 0.2, "count": 60},
                          {"confidence": 0.85, "accuracy": 0.9, "count": 500},
                          {"confidence": 0.95, "accuracy": 0.97, "count": 340}], "test": None}
    vote = entry(method="majority vote", key="vote", why="the only method")
    return {"classes": labels, "counts": {label: per for label in labels}, "n_train": n * per, "n_test": 0,
            "cv_folds": 3, "backbones": {"efficientnet_lite0": entry(sparse, reliability=reliability),
                                         "efficientnet_lite1": entry()},
            "ensemble": vote, "ensembles": {"vote": vote}}


def _many_class_project(live) -> int:
    """A project with MANY classes of 3 images each (stored as uploads are, without the
    upload's work) and one trained iteration whose report is `_many_class_report()`."""
    import hashlib
    import json

    from web import create_app
    from web.db import Blob, Iteration, Project, ProjectImage, User, db

    images = _many_class_images()
    shas = {key: hashlib.sha256(data).hexdigest() for key, data in images.items()}
    report = _many_class_report(shas)
    app = create_app({"INSTANCE_PATH": str(live.instance), "TESTING": True})
    with app.app_context():
        owner = db.session.scalar(db.select(User).where(User.username == "ann"))
        project = Project(name="Many classes", backbones=["efficientnet_lite0"], owner_id=owner.id)
        db.session.add(project)
        db.session.flush()
        pid = project.id
        storage = app.extensions["transferlab.storage"]
        for p in report["backbones"]["efficientnet_lite0"]["predictions"]["cv"]:
            data = images[int(p["source"][1:4]), int(p["source"][5])]
            storage.put_blob(p["sha256"], data, durable=False)
            db.session.add(Blob(sha256=p["sha256"], size=len(data), content_type="image/jpeg", width=32, height=32))
            db.session.add(ProjectImage(project_id=pid, sha256=p["sha256"], label=p["true"], split="train",
                                        name=p["source"]))
        folder = storage.resolve(storage.iteration_relpath(pid, 1))
        folder.mkdir(parents=True)
        (folder / "report.json").write_text(json.dumps(report))
        db.session.add(Iteration(project_id=pid, number=1, folder=storage.iteration_relpath(pid, 1),
                                 classes=report["classes"], backbones=["efficientnet_lite0", "efficientnet_lite1"],
                                 n_train=MANY * 3, n_test=0, summary={}))
        db.session.commit()
    return pid


COUNT_NODES = """() => { let n = 0; const w = document.createTreeWalker(document, NodeFilter.SHOW_ALL);
    while (w.nextNode()) n += 1; return [n, document.getElementsByTagName('*').length]; }"""


def test_many_classes_results_page_is_fast_small_and_clickable(session, browser, live):
    """300 classes x 3 images: the results and the class list render quickly with a bounded
    DOM (matrices collapsed and drawn on a canvas, per-class scores and class cards paged),
    the top confusions are right and open their images, as do the canvas's cells."""
    pid = _many_class_project(live)
    context = new_context(browser, live)
    s = Session(context.new_page())
    page = s.page
    sign_in(page, live)
    page.goto(f"/projects/{pid}")
    page.wait_for_selector(".model-card.ensemble .top-confusions li")
    # Time to the drawn results from navigation start, and of it the page's own part: from the
    # report's last byte (a 2.5 MB JSON the server builds while the class list loads its
    # thumbnails) to the drawn cards.
    took, fetched = page.evaluate(r"""() => [performance.getEntriesByName('results-rendered')[0].startTime,
        performance.getEntriesByType('resource').find((e) => /\/results(\?|$)/.test(e.name)).responseEnd]""")
    page.wait_for_selector(".class-card")
    nodes, elements = page.evaluate(COUNT_NODES)
    print(f"{MANY}-class results page: rendered {took:.0f} ms after navigation ({took - fetched:.0f} ms after "
          f"the report arrived), {nodes} DOM nodes ({elements} elements)")
    assert took - fetched < 1000, f"drawing the results took {took - fetched:.0f} ms"
    assert took < 8000, f"the results took {took:.0f} ms to show"
    assert nodes < 5_000 and elements < 2_500, (nodes, elements)
    assert page.locator("button.cell").count() == 0  # no 90,000-cell tables

    lite = page.locator(".model-card[data-model=efficientnet_lite0]")
    pairs = lite.locator(".top-confusions .confusion-pair")
    got = [(b.get_attribute("data-true"), b.get_attribute("data-pred"), int(b.get_attribute("data-count")))
           for b in pairs.all()]
    want = [("class 005", "class 007", 3), ("class 020", "class 021", 2)] + [
        (f"class {i:03d}", f"class {i + 1:03d}", 1) for i in range(100, 108)]
    assert got == want
    pairs.first.click()
    panel = page.locator("#cell-detail")
    panel.wait_for()
    assert "true class 005 → predicted class 007: 3 images" in panel.inner_text()
    assert panel.locator(".thumb").count() == 3

    # The matrix: collapsed, drawn on a canvas once opened; a click on a cell opens its images.
    block = lite.locator("details.heatmap-details")
    assert block.count() == 1 and block.get_attribute("open") is None
    assert lite.locator("canvas").count() == 0
    block.locator("summary").click()
    canvas = lite.locator("canvas.heatmap-canvas")
    canvas.wait_for()
    cell = int(canvas.get_attribute("data-cell"))
    assert canvas.bounding_box()["width"] == pytest.approx(cell * MANY, abs=1)  # drawn 1:1, scrolled
    canvas.click(position={"x": (21 + 0.5) * cell, "y": (20 + 0.5) * cell})
    page.wait_for_function("() => document.querySelector('#cell-detail').textContent.includes('predicted class 021')")
    assert "true class 020 → predicted class 021: 2 images" in panel.inner_text()
    # ... and from the keyboard: the arrow keys move a cursor (named aloud), Enter opens the cell.
    canvas.focus()
    for key in ["ArrowDown"] + ["ArrowDown"] * 5 + ["ArrowRight"] * 7:
        page.keyboard.press(key)
    assert lite.locator(".heatmap-cursor").inner_text() == "true class 005 → predicted class 007: 3"
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelector('#cell-detail').textContent.includes('true class 005')")

    # Per-class scores: a page of 20, worst F1 first, with a filter.
    rows = lite.locator(".per-class tbody tr")
    assert rows.count() == 20
    assert rows.first.locator("th").inner_text() == "class 005"
    lite.locator(".per-class-filter").fill("class 12")
    assert rows.count() == 10 and "10 classes" in lite.locator(".pager-status").inner_text()
    lite.locator(".per-class-filter").fill("")
    lite.locator(".pager-next").click()
    assert "21–40 of 300 classes" in lite.locator(".pager-status").inner_text()

    # Reliability: drawn for Lite0 (with the diagonal), nothing for Lite1's older report.
    diagram = lite.locator("svg.reliability")
    assert diagram.count() == 1
    assert diagram.locator("line.rel-diagonal").count() == 1
    assert [t.text_content() for t in diagram.locator("text").all()] == ["0", "0", "0.5", "0.5", "1", "1", "confidence", "accuracy"]
    assert diagram.locator(".rel-cv circle.rel-point").count() == 3
    assert diagram.locator(".rel-test").count() == 0
    assert page.locator(".model-card[data-model=efficientnet_lite1] svg.reliability").count() == 0

    # The class list: a page of cards, a filter, more on request.
    assert page.locator(".class-card").count() == 24
    page.fill("#class-filter", "class 123")
    page.wait_for_function("() => document.querySelectorAll('.class-card').length === 1")
    page.fill("#class-filter", "")
    page.click("#class-more")
    assert page.locator(".class-card").count() == 48
    page.locator(".class-card").first.scroll_into_view_if_needed()  # shown cards load their thumbnails
    page.wait_for_function("() => document.querySelectorAll('.class-card .thumb-strip img').length >= 4 * 3")
    assert page.locator("#alerts .alert-error").count() == 0, page.inner_text("#alerts")
    s.assert_clean()
    context.close()


def test_imagenet_page_classifies_offline(session):
    page = session.page
    page.goto("/imagenet")
    page.wait_for_selector("#imagenet-backbones input[value=efficientnet_lite0]")
    assert page.is_checked("#in-efficientnet_lite0")
    assert "weights missing" in page.inner_text("#imagenet-backbones")  # the Keras ones, here
    drop_files(page, "#imagenet-drop", [("chelsea.jpg", _jpeg_of_chelsea(), "image/jpeg")])
    page.wait_for_selector("#imagenet-result .ensemble-answer, #alerts .alert-error", timeout=60_000)
    assert page.locator("#alerts .alert-error").count() == 0, page.inner_text("#alerts")
    top3 = page.locator(".backbone-answer .score-label").all_inner_texts()
    assert len(top3) == 3
    assert any("cat" in label for label in top3), top3  # tabby / tiger cat / Egyptian cat
    session.assert_clean()
    session.passed.add("imagenet")


def test_pages_work_under_the_content_security_policy(session):
    """Home, project (with its results: metrics, heatmaps, thumbnails), ImageNet and account
    pages are served with the policy and load, script and show images without one violation."""
    session.needs("train")
    page = session.page
    seen = []
    for url, ready in [("/", "#project-list:not([aria-busy=true]) .project-link"),
                       (session.project_url, "#results .model-card.ensemble .heatmap button.cell"),
                       ("/imagenet", "#imagenet-backbones input[value=efficientnet_lite0]"),
                       ("/account", "#token-form")]:
        response = page.goto(url)
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy, url
        page.wait_for_selector(ready)
        page.wait_for_load_state("networkidle")
        seen.append(page.evaluate("[...document.images].filter((i) => i.complete && i.naturalWidth).length"))
        session.assert_clean()
    assert seen[1] > 0, "the project page showed no thumbnail"
    # The check itself works: an inline script on this page is blocked and reported.
    page.evaluate("""() => { const s = document.createElement("script");
                             s.textContent = "window.__inline = 1"; document.body.append(s); }""")
    deadline = time.monotonic() + 5
    while not session.csp_violations and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert page.evaluate("window.__inline === undefined")
    assert any("script-src" in v for v in session.csp_violations), session.csp_violations
    session.csp_violations.clear()


def test_project_list_links_to_project(session):
    session.needs("picker")
    page = session.page
    page.goto("/")
    link = page.locator(".project-link", has_text=PROJECT)
    link.wait_for()
    assert "3 classes" in link.inner_text()
    link.click()
    page.wait_for_url(session.project_url)
    session.assert_clean()
    session.passed.add("list")


# ---- accounts: strangers get nowhere -----------------------------------------------------------


def test_strangers_log_in_and_see_only_their_own_projects(session, browser, live):
    """The admin adds an account on the account page; that person, in another browser, is sent
    to the login page, sees none of the admin's projects, and gets a 404 for one by its URL.
    Logging out ends the session."""
    session.needs("create")
    page = session.page
    page.goto("/account")
    page.fill("#new-username", "bob")
    page.fill("#new-user-password", PASSWORD)
    page.click("#user-form button[type=submit]")
    page.wait_for_selector(".flashes:has-text('bob')")
    session.assert_clean()

    context = new_context(browser, live)
    try:
        other = Session(context.new_page())
        response = other.page.goto(session.project_url)
        assert "/login?next=" in other.page.url and response.status == 200, other.page.url
        sign_in(other.page, live, "bob")
        other.page.wait_for_selector("#project-list:not([aria-busy=true])")
        assert other.page.locator(".project-link").count() == 0
        assert other.page.goto(session.project_url).status == 404
        other.page.click("#logout-btn")
        other.page.wait_for_url("**/login")
        other.page.goto("/")
        assert "/login" in other.page.url
        other.assert_clean()
    finally:
        context.close()


def test_admin_disables_and_enables_an_account_on_the_account_page(session, browser, live):
    """(After the test above made bob.) Disabled, bob's login is refused with the reason;
    enabled again, bob logs in."""
    page = session.page
    page.goto("/account")
    row = page.locator(".account-row", has_text="bob")
    assert row.locator(".account-status").inner_text() == "active"
    assert page.locator(".account-row", has_text="ann").locator("button").count() == 0  # not oneself
    row.locator("button", has_text="Disable").click()
    page.wait_for_selector(".flashes:has-text('disabled')")
    assert page.locator(".account-row", has_text="bob").locator(".account-status").inner_text() \
        == "disabled"
    context = new_context(browser, live)
    try:
        other = context.new_page()
        other.goto("/login")
        other.fill("#username", "bob")
        other.fill("#password", PASSWORD)
        other.click("#login-btn")
        assert "This account is disabled" in other.inner_text("#login-error")
        page.locator(".account-row", has_text="bob").locator("button", has_text="Enable").click()
        page.wait_for_selector(".flashes:has-text('enabled')")
        sign_in(other, live, "bob")
    finally:
        context.close()
    session.assert_clean()


def test_account_page_makes_an_api_token(session, live):
    page = session.page
    page.goto("/account")
    page.fill("#token-name", "my script")
    page.click("#token-btn")
    token = page.inner_text("#new-token").strip()
    assert token.startswith("tl_")
    request = urllib.request.Request(live.url + "/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 200 and b'"username":"ann"' in r.read().replace(b" ", b"")
    page.goto("/account")  # shown once: not on the page any more
    assert page.locator("#new-token").count() == 0
    assert page.locator(".token-row").count() == 1
    session.assert_clean()


# ---- the README's screenshots -----------------------------------------------------------------


def test_near_duplicates_across_train_and_test_are_flagged(browser, live, web_photos):
    """A re-saved, resized copy of a training photo dropped as a test image: the upload says
    so, and the data section lists the pair with a warning about the test set."""
    context = new_context(browser, live)
    s = Session(context.new_page())
    page = s.page
    sign_in(page, live)
    page.wait_for_selector("#backbone-list input[value=efficientnet_lite0]")
    for name in ("resnet50", "vgg16", "xception"):
        page.uncheck(f"#bb-{name}")
    page.check("#bb-efficientnet_lite0")
    page.fill("#project-name", "Near duplicates")
    page.click("#create-btn")
    page.wait_for_url("**/projects/*")
    original = web_photos["astronaut"][0]
    im = Image.open(io.BytesIO(original)).convert("RGB")
    copy = io.BytesIO()
    im.resize((im.width * 2, im.height * 2)).save(copy, "JPEG", quality=70)
    page.fill("#train-label", "astronaut")
    page.set_input_files("#train-drop input[type=file]", files=[
        {"name": "a.jpg", "mimeType": "image/jpeg", "buffer": original},
        {"name": "b.jpg", "mimeType": "image/jpeg", "buffer": web_photos["rocket"][0]}])
    page.wait_for_selector(".class-card[data-label=astronaut]")
    assert page.is_hidden("#near-dups")
    page.fill("#test-label", "astronaut")
    page.set_input_files("#test-drop input[type=file]", files=[
        {"name": "a-big.jpg", "mimeType": "image/jpeg", "buffer": copy.getvalue()}])
    page.wait_for_selector(".upload-near-dups")
    page.wait_for_selector("#near-dups .near-dup-group")
    group = page.locator("#near-dups .near-dup-group")
    assert group.count() == 1
    assert "training and the test set" in group.inner_text()
    assert group.locator("img").count() == 2
    s.assert_clean()
    context.close()


@pytest.mark.screenshots
def test_readme_screenshots(browser, tmp_path_factory, web_photos):
    """Every page, for the README, on a project of its own with plain names (the flow above
    uses HTML for names): its own `python app.py` with the worker child, as a user runs it.
    TRANSFERLAB_UI_SCREENSHOTS=docs/screenshots python -m pytest -m screenshots tests/test_ui_app.py"""
    live = start_live(tmp_path_factory.mktemp("readme"))
    context = new_context(browser, live, SHOT_WIDTH, 900)
    try:
        s = Session(context.new_page())
        page = s.page
        sign_in(page, live)
        page.wait_for_selector("#backbone-list input[value=efficientnet_lite0]")
        page.check("#bb-efficientnet_lite0")  # (pre-selected: Lite0/1/2, weights here)
        page.check("#bb-efficientnet_lite1")
        page.uncheck("#bb-efficientnet_lite2")
        page.fill("#project-name", "Cat, coffee or rocket")
        page.click("#create-btn")
        page.wait_for_url("**/projects/*")

        labels = ("cat", "coffee", "rocket")
        members = {f"photos/{label}/{label}_{i}.jpg": web_photos[label][i]
                   for label in labels for i in range(6)}
        members["photos/cat/cat_6.jpg"] = web_photos["cat"][6][:1500]  # cut short
        members["photos/notes.txt"] = b"taken on the balcony\n"
        drop_files(page, "#train-drop", [("photos.zip", make_zip(members), "application/zip")])
        page.wait_for_function("() => document.querySelectorAll('.class-card').length === 3")
        test_zip = make_zip({f"{label}/t{i}.jpg": web_photos[label][8 + i]
                             for label in labels for i in range(2)})
        page.set_input_files("#test-drop input[type=file]", files=[
            {"name": "test.zip", "mimeType": "application/zip", "buffer": test_zip}])
        page.wait_for_function("() => document.querySelectorAll('.class-count.test').length === 3")
        page.wait_for_function("""() => {
            const imgs = [...document.querySelectorAll('.class-card img')];
            return imgs.length === 24 && imgs.every((i) => i.complete && i.naturalWidth > 0);
        }""")
        screenshot(page, "project-data.png", "#data-section")

        page.click("#train-btn")
        page.wait_for_selector("#job-state:has-text('Done')", timeout=TRAIN_TIMEOUT)
        page.wait_for_selector(".model-card.ensemble")
        lite = page.locator(".model-card[data-model=efficientnet_lite0]")
        lite.locator(".heatmap").first.locator("button.cell[data-true=cat][data-pred=cat]").click()
        page.wait_for_selector("#cell-detail .thumb img")
        screenshot(page, "project-results.png", "#results-section")

        drop_files(page, "#classify-drop", [("query.jpg", web_photos["cat"][11], "image/jpeg")])
        page.wait_for_selector(".ensemble-answer", timeout=60_000)
        screenshot(page, "classify.png", "#classify-section")

        page.goto("/imagenet")
        page.wait_for_selector("#imagenet-backbones input[value=efficientnet_lite0]")
        drop_files(page, "#imagenet-drop", [("chelsea.jpg", _jpeg_of_chelsea(), "image/jpeg")])
        page.wait_for_selector("#imagenet-result .ensemble-answer", timeout=60_000)
        screenshot(page, "imagenet.png")

        page.goto("/")
        page.wait_for_selector(".project-link:has-text('trained')")
        screenshot(page, "home.png")
        s.assert_clean()
    finally:
        context.close()
        live.stop()
    for name in ("home", "project-data", "project-results", "classify", "imagenet"):
        size = (Path(os.environ[SHOTS_ENV]) / f"{name}.png").stat().st_size
        assert 10_000 < size <= SHOT_MAX_BYTES, (name, size)

"""Browser tests of the camera on "Test your model" (static/js/webcam.js): Chromium's fake
camera (an animated test pattern) feeds getUserMedia; a real server with its worker child
trains a real EfficientNet-Lite0 project, and the page classifies the camera live and
captures training images with it. A denied and an absent camera are said in words.
"""
from __future__ import annotations

import time

import pytest
from helpers import make_zip
from playwright import sync_api
from test_ui_app import CHROMIUM, TRAIN_TIMEOUT, Session, drop_files, new_context, sign_in, start_live

pytestmark = pytest.mark.browser

STANDARD_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
FAKE_CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]

SET_HIDDEN_JS = """(hidden) => {
  Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
  Object.defineProperty(document, "visibilityState", { configurable: true, get: () => hidden ? "hidden" : "visible" });
  document.dispatchEvent(new Event("visibilitychange"));
}"""
FRAMES = "() => Number(document.querySelector('#camera-result').dataset.frames)"
STREAMING = "() => document.querySelector('#camera-video').srcObject !== null"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """`python app.py` with its worker child, as a user runs it."""
    live = start_live(tmp_path_factory.mktemp("webcam"))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def playwright():
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def camera_browser(playwright):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=STANDARD_ARGS + FAKE_CAMERA)
    yield browser
    browser.close()


def _create_project(page, name):
    page.goto("/")
    page.wait_for_selector("#backbone-list input[value=efficientnet_lite0]")
    page.check("#bb-efficientnet_lite0")
    for other in ("efficientnet_lite1", "efficientnet_lite2", "resnet50", "vgg16", "xception"):
        page.uncheck(f"#bb-{other}")
    page.fill("#project-name", name)
    page.click("#create-btn")
    page.wait_for_url("**/projects/*")
    page.wait_for_selector("#project-meta:has-text('EfficientNet-Lite0')")
    return int(page.url.rstrip("/").rsplit("/", 1)[1])


class PredictRequests:
    """The page's POST …/predict requests: how many, and the most in flight at once."""

    def __init__(self, page):
        self.started = self.in_flight = self.most = 0
        page.on("request", self._start)
        page.on("requestfinished", self._end)
        page.on("requestfailed", self._end)

    @staticmethod
    def _is_predict(request):
        return request.method == "POST" and request.url.endswith("/predict")

    def _start(self, request):
        if self._is_predict(request):
            self.started += 1
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)

    def _end(self, request):
        if self._is_predict(request):
            self.in_flight -= 1


def test_camera_captures_training_images_then_classifies_live(camera_browser, live, web_photos):
    context = new_context(camera_browser, live)
    s = Session(context.new_page())
    page = s.page
    predicts = PredictRequests(page)
    try:
        sign_in(page, live)
        pid = _create_project(page, "Camera")
        members = {f"{label}/{label}_{i}.jpg": web_photos[label][i]
                   for label in ("cat", "coffee") for i in range(5)}
        drop_files(page, "#train-drop", [("photos.zip", make_zip(members), "application/zip")])
        page.wait_for_function("() => document.querySelectorAll('.class-card').length === 2")

        # Before training: the camera starts, says live classification waits for a model,
        # and captures training images of a new class.
        assert page.get_attribute("#camera-toggle", "aria-pressed") == "false"
        page.click("#camera-toggle")
        page.wait_for_function(STREAMING)
        page.wait_for_function("() => document.querySelector('#camera-video').videoWidth > 0")
        assert "Train the project to classify live" in page.inner_text("#camera-status")
        assert page.get_attribute("#camera-toggle", "aria-pressed") == "true"
        page.wait_for_selector("#camera-classes option[value=coffee]", state="attached")
        page.fill("#camera-label", "screen")
        page.click("#camera-capture")
        page.wait_for_selector("#camera-captured:has-text('1 image of screen captured here')")
        page.wait_for_timeout(150)  # the fake camera's next frame differs from the first
        page.click("#camera-capture")
        page.wait_for_selector("#camera-captured:has-text('2 images of screen captured here')")
        assert "screen has 2 training images" in page.inner_text("#camera-captured")
        page.wait_for_selector(".class-card[data-label=screen] .class-count:has-text('2 images')")
        # ... checked through the API: two training images labelled "screen", JPEGs from the camera.
        images = page.request.get(f"/api/v1/projects/{pid}/images?label=screen").json()
        assert len(images) == 2
        assert {im["split"] for im in images} == {"train"}
        assert {im["content_type"] for im in images} == {"image/jpeg"}
        assert all(im["name"].startswith("camera-") and im["name"].endswith(".jpg") for im in images)
        assert images[0]["width"] == 640 and images[0]["height"] == 480
        assert predicts.started == 0  # nothing to classify with yet

        # Train; once the iteration is there, the camera on the page classifies live.
        page.click("#train-btn")
        page.wait_for_selector("#job-state:has-text('Done')", timeout=TRAIN_TIMEOUT)
        page.wait_for_selector("#camera-result .ensemble-answer", timeout=60_000)
        result = page.locator("#camera-result")
        assert result.locator(".backbone-answer").count() == 1
        assert "EfficientNet-Lite0" in result.locator(".backbone-answer").inner_text()
        assert result.locator(".backbone-answer .score-row").count() == 3
        assert page.inner_text("#camera-result .answer-label") in ("cat", "coffee", "screen")
        assert "Live: iteration 1" in page.inner_text("#camera-status")
        # It keeps updating, a frame about every 300 ms, one request at a time.
        first = page.evaluate(FRAMES)
        t0, started0 = time.monotonic(), predicts.started
        page.wait_for_function(f"() => ({FRAMES})() >= {first + 3}", timeout=30_000)
        page.wait_for_timeout(1500)
        rate = (predicts.started - started0) / (time.monotonic() - t0)
        print(f"live camera: {rate:.1f} predictions/s")
        assert rate <= 1 / 0.3 + 0.5, rate
        assert predicts.most == 1, f"{predicts.most} predictions were in flight at once"

        # Hidden page: no more frames, the camera is released; visible again: both resume.
        page.evaluate(SET_HIDDEN_JS, True)
        assert not page.evaluate(STREAMING)
        page.wait_for_timeout(100)
        stopped, started_hidden = page.evaluate(FRAMES), predicts.started
        page.wait_for_timeout(1500)
        assert page.evaluate(FRAMES) == stopped and predicts.started == started_hidden
        assert "Paused" in page.inner_text("#camera-status")
        page.evaluate(SET_HIDDEN_JS, False)
        page.wait_for_function(STREAMING)
        page.wait_for_function(f"() => ({FRAMES})() >= {stopped + 2}", timeout=30_000)

        # Turned off: the loop stops and the camera is released.
        page.click("#camera-toggle")
        assert not page.evaluate(STREAMING)
        assert page.is_hidden("#camera-box")
        page.wait_for_timeout(100)
        off, started_off = page.evaluate(FRAMES), predicts.started
        page.wait_for_timeout(1200)
        assert page.evaluate(FRAMES) == off and predicts.started == started_off
        assert predicts.most == 1
        assert page.locator("#alerts .alert-error").count() == 0, page.inner_text("#alerts")
        s.assert_clean()
    finally:
        context.close()


def _camera_problem(browser, live, **context_options) -> str:
    context = browser.new_context(base_url=live.url, **context_options)
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(live.url)
                  else route.abort())
    try:
        s = Session(context.new_page())
        page = s.page
        sign_in(page, live)
        _create_project(page, "No camera")
        page.click("#camera-toggle")
        page.wait_for_selector("#camera-problem:not([hidden])")
        assert page.get_attribute("#camera-toggle", "aria-pressed") == "false"
        assert page.is_hidden("#camera-box")
        s.assert_clean()
        return page.inner_text("#camera-problem")
    finally:
        context.close()


def test_denied_and_absent_cameras_are_said_in_words(playwright, live):
    # A fake camera whose permission is not granted (no fake UI to accept it): denied.
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=STANDARD_ARGS + FAKE_CAMERA[:1])
    try:
        assert "Camera access was denied" in _camera_problem(browser, live)
    finally:
        browser.close()
    # Permission granted, but this machine has no camera at all: absent.
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=STANDARD_ARGS)
    try:
        assert "No camera was found" in _camera_problem(browser, live, permissions=["camera"])
    finally:
        browser.close()

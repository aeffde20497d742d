"""The results page's "Download model" control, in Chromium against a real `python app.py`:
each format downloads as a zip holding that format's model and what runs it."""
from __future__ import annotations

import json
import zipfile

import pytest
from export_fixtures import BACKBONES, add_trained_project, trained_result
from test_ui_app import browser, new_context, sign_in, start_live  # noqa: F401  (fixture)

from models.exporting.formats import FORMATS

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    live = start_live(tmp_path_factory.mktemp("exports_ui"), TRANSFERLAB_WORKER="false")
    yield live
    live.stop()


def test_download_model_gives_a_zip_for_every_format(browser, live, tmp_path_factory,  # noqa: F811
                                                     photo_folder):
    result = trained_result(tmp_path_factory, photo_folder)
    context = new_context(browser, live)
    page = context.new_page()
    sign_in(page, live)
    from web import create_app

    app = create_app({"INSTANCE_PATH": str(live.instance), "TESTING": True})
    pid = add_trained_project(app, result, "Exportable")
    page.goto(f"/projects/{pid}")
    page.wait_for_selector("#export-link")
    targets = page.eval_on_selector_all("#export-target option", "els => els.map(e => e.value)")
    assert targets == ["ensemble", *BACKBONES]
    page.select_option("#export-target", "efficientnet_lite0")
    model_file = {"savedmodel": "model/saved_model.pb", "tflite": "model.tflite",
                  "onnx": "model.onnx", "openvino": "model.xml", "keras": "model.keras"}
    for fmt in FORMATS:
        page.select_option("#export-format", fmt)
        with page.expect_download(timeout=600_000) as info:
            page.click("#export-link")
        download = info.value
        assert download.suggested_filename == (
            f"project{pid}-iteration1-efficientnet_lite0-{fmt}.zip")
        with zipfile.ZipFile(download.path()) as archive:
            names = set(archive.namelist())
            spec = json.loads(archive.read("model.json"))
        assert {model_file[fmt], "labels.txt", "model.json", "predict.py"} <= names, names
        assert spec["format"] == fmt and spec["classes"] == ["cat", "coffee", "rocket"]
    context.close()

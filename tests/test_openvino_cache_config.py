"""Where the app keeps backbones converted to OpenVINO: one folder under the instance, shared
by the web process (predictions) and the worker (long feature extractions), so a restart
reuses the conversions (issue 14)."""
from pathlib import Path

import pytest

from web import create_app
from web.jobs.training_run import feature_cache

pytestmark = pytest.mark.unit


def test_the_conversion_cache_lives_in_the_instance_and_is_shared(tmp_path):
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "TESTING": True})
    folder = Path(app.config["OPENVINO_CACHE_DIR"])
    assert folder == tmp_path / "instance" / "openvino"
    assert Path(app.extensions["transferlab.prediction"].runtime_cache_dir) == folder
    assert Path(feature_cache(app.config).runtime_cache_dir) == folder


def test_the_conversion_cache_can_be_configured(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_OPENVINO_CACHE_DIR", str(tmp_path / "elsewhere"))
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "TESTING": True})
    assert app.config["OPENVINO_CACHE_DIR"] == str(tmp_path / "elsewhere")

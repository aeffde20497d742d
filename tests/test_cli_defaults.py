"""`python -m models train` without `--backbones` uses the backbones whose weights are here,
as a new project in the app does (issue 14), not ResNet50/VGG16/Xception regardless."""
import json
import subprocess
import sys

import pytest

from helpers import REPO
from models.registry import default_backbones


@pytest.mark.integration
def test_cli_train_defaults_to_the_backbones_whose_weights_are_here(photo_folder, tmp_path,
                                                                     empty_keras_home):
    expected = default_backbones()
    assert expected == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    out = tmp_path / "result"
    done = subprocess.run(
        [sys.executable, "-m", "models", "train", str(photo_folder), "--out", str(out),
         "--cache", str(tmp_path / "cache"), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"backbones: {','.join(expected)} (the defaults whose weights are here)" in done.stderr
    assert list(json.loads(done.stdout)["backbones"]) == expected

"""The OpenVINO runtime gives TensorFlow's features (to 1e-4), and can be turned off."""
import numpy as np
import pytest

from models import runtime
from models.backbones import Backbone
from models.runtime import OpenVinoForward, fastest_forward

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lite0():
    return Backbone("efficientnet_lite0")


def test_backbone_features_run_on_openvino_and_match_tensorflow(lite0):
    n = runtime.THROUGHPUT_MIN_BATCH + 1
    pixels = np.random.default_rng(1).uniform(0, 255, (n, 224, 224, 3)).astype(np.float32)
    lite0.features(pixels[:2])
    assert lite0._forward is None  # TensorFlow until asked: converting costs seconds
    lite0.use_fastest_runtime()
    assert isinstance(lite0._forward, OpenVinoForward)
    features = lite0.features(pixels)  # the side-by-side path, an odd last chunk
    expected = np.asarray(lite0._tf_forward(pixels))
    assert features.shape == expected.shape
    np.testing.assert_allclose(features, expected, atol=runtime.TOLERANCE, rtol=0)
    one = lite0.features(pixels[:1])  # one image: the latency path
    np.testing.assert_allclose(one, expected[:1], atol=runtime.TOLERANCE, rtol=0)


def test_environment_can_force_tensorflow(lite0, monkeypatch):
    monkeypatch.setenv(runtime.RUNTIME_ENV, "tensorflow")
    assert fastest_forward(lite0._tf_forward, (224, 224, 3), "lite0") is lite0._tf_forward
    monkeypatch.setenv(runtime.RUNTIME_ENV, "tpu")
    with pytest.raises(ValueError, match="TRANSFERLAB_RUNTIME"):
        runtime.requested_runtime()


def test_a_twin_that_disagrees_is_not_used(lite0, monkeypatch):
    # Pretend the conversion drifted: the tolerance check must keep TensorFlow.
    monkeypatch.setattr(runtime, "TOLERANCE", -1.0)
    assert fastest_forward(lite0._tf_forward, (224, 224, 3), "lite0") is lite0._tf_forward

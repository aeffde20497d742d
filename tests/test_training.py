"""End to end on real photos and the real offline backbone (EfficientNet-Lite0)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.backbones import load_backbone
from models.datasets import read_dataset
from models.features import FeatureCache
from models.predictor import Predictor, export_classifier
from models.training import TrainingError, load_result, train

ROOT = Path(__file__).resolve().parent.parent


def lite(name):
    return load_backbone(name)


@pytest.fixture(scope="module")
def trained(photo_folder, photo_test_folder, tmp_path_factory):
    cache = FeatureCache(tmp_path_factory.mktemp("cache"))
    data = read_dataset(photo_folder)
    test = read_dataset(photo_test_folder)
    stages = []
    result = train(data.samples, ["efficientnet_lite0"], cache, lite,
                   test_samples=test.samples, progress=stages.append)
    return result, stages, data, test, cache


def test_report_has_honest_metrics_for_backbone_and_ensemble(trained):
    result, _, data, test, _ = trained
    r = result.report
    assert r["classes"] == ["cat", "coffee", "rocket"]
    assert r["n_train"] == 18 and r["n_test"] == 9 and r["cv_folds"] == 5
    for entry in (r["backbones"]["efficientnet_lite0"], r["ensemble"], r["ensembles"]["mean"]):
        assert entry["cv_accuracy"] >= 0.8  # three very different photos
        assert entry["cv_accuracy_std"] is not None and len(entry["cv_fold_accuracies"]) == 5
        assert entry["test_accuracy"] >= 0.8
        assert entry["train_accuracy"] is not None
        assert entry["confusion"]["source"] == "test"
        assert np.sum(entry["confusion"]["matrix"]) == 9
        assert np.sum(entry["cv"]["confusion"]["matrix"]) == 18
        assert set(entry["per_class"]) == {"cat", "coffee", "rocket"}
        assert {p["sha256"] for p in entry["predictions"]["test"]} == {s.sha256 for s in test.samples}
    assert r["ensemble"]["key"] == "mean" and "one backbone" in r["ensemble"]["why"]
    assert set(r["ensembles"]) == {"vote", "mean", "weighted"}
    assert r["backbones"]["efficientnet_lite0"]["hyperparameters"]["l2"] > 0


def test_progress_is_monotonic_and_names_stages(trained):
    _, stages, _, _, _ = trained
    fractions = [p.fraction for p in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(p.stage.startswith("extracting features (EfficientNet-Lite0, 8 views)") for p in stages)
    assert any(p.stage.startswith("fitting head") for p in stages)


def test_retraining_reuses_cached_features(trained):
    result, _, data, _, cache = trained
    before = cache.computed
    built = []

    def refuse(name):
        built.append(name)
        raise AssertionError("backbone built although every feature is cached")

    again = train(data.samples, ["efficientnet_lite0"], cache, refuse)
    assert not built and cache.computed == before
    assert again.classes == result.classes


def test_save_load_predict_and_export(trained, tmp_path, photo_test_folder):
    result, _, _, test, _ = trained
    folder = result.save(tmp_path / "result")
    loaded = load_result(folder)
    predictor = Predictor(folder, lite)
    images = [s.image() for s in test.samples]
    answers = predictor.predict(images)
    assert [a["ensemble"]["label"] for a in answers].count("cat") >= 2
    top = answers[0]["backbones"]["efficientnet_lite0"]
    assert len(top) == 3 and top[0]["score"] >= top[1]["score"]
    assert set(answers[0]["ensemble"]) == {"label", "score", "method", "votes"}
    # The exported .keras takes a raw image of any size; preprocessing is inside.
    import keras

    path = export_classifier(lite("efficientnet_lite0"), loaded.heads["efficientnet_lite0"],
                             tmp_path / "cat.keras")
    model = keras.saving.load_model(path, safe_mode=True)
    pixels = np.asarray(images[0], np.float32)[None]
    probs = np.asarray(model(pixels))[0]
    expected = predictor.probabilities(images[:1])["efficientnet_lite0"][0]
    assert probs.argmax() == expected.argmax()
    np.testing.assert_allclose(probs, expected, atol=0.05)  # resize filters differ slightly


def test_exported_model_carries_the_test_time_views(trained, tmp_path):
    """Force the dihedral views: the export must average the same eight views."""
    import keras

    result, _, data, _, _ = trained
    head = result.heads["efficientnet_lite0"]
    dihedral = type(head)(head.classes, head.mean, head.scale, head.weight, head.bias,
                          dict(head.params, views="dihedral+sqrt"))
    path = export_classifier(lite("efficientnet_lite0"), dihedral, tmp_path / "d8.keras")
    model = keras.saving.load_model(path, safe_mode=True)
    image = data.samples[0].image().resize((224, 224))
    from models.training import TrainResult

    predictor = Predictor(TrainResult(result.classes, {"efficientnet_lite0": dihedral},
                                      result.report), lite)
    expected = predictor.probabilities([image])["efficientnet_lite0"][0]
    got = np.asarray(model(np.asarray(image, np.float32)[None]))[0]
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_one_class_is_refused(photo_folder, tmp_path):
    data = read_dataset(photo_folder)
    cats = [s for s in data.samples if s.label == "cat"]
    with pytest.raises(TrainingError, match="at least 2 classes"):
        train(cats, ["efficientnet_lite0"], FeatureCache(tmp_path), lite)


def test_cli_trains_and_classifies(photo_folder, photo_test_folder, tmp_path):
    out = tmp_path / "result"
    env_cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "models", "train", str(photo_folder), "--test",
           str(photo_test_folder), "--backbones", "efficientnet_lite0", "--out", str(out),
           "--cache", str(env_cache), "--json"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == json.loads((out / "report.json").read_text())
    assert "train acc is measured on the training images" in done.stderr
    image = next((photo_test_folder / "coffee").iterdir())
    done = subprocess.run([sys.executable, "-m", "models", "classify", str(out), str(image)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)[0]
    assert answer["ensemble"]["label"] == "coffee"
    assert answer["image"] == str(image)


def test_cli_rejects_unknown_backbone(photo_folder):
    done = subprocess.run([sys.executable, "-m", "models", "train", str(photo_folder),
                           "--backbones", "alexnet"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "unknown backbone(s) alexnet" in done.stderr


def test_keras_views_match_pillow_views():
    from PIL import Image

    from models.features import VIEWS
    from models.predictor import _keras_view

    pixels = np.random.default_rng(0).integers(0, 255, (6, 6, 3)).astype(np.uint8)
    for view in ("orig", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "transverse"):
        expected = np.asarray(VIEWS[view](Image.fromarray(pixels)))
        got = np.asarray(_keras_view(pixels[None].astype(np.float32), view))[0]
        np.testing.assert_array_equal(got, expected, err_msg=view)


class QuadrantBackbone:
    """A real, tiny feature map (mean colour per quadrant) standing in for a heavy network."""

    input_size = 32

    def features(self, pixels, batch_size=32):
        q = pixels.reshape(len(pixels), 2, 16, 2, 16, 3).mean(axis=(2, 4))
        return q.reshape(len(pixels), -1).astype(np.float32)


def test_heavy_backbones_do_not_pay_for_eight_views_by_default(photo_folder, photo_test_folder,
                                                               tmp_path):
    """Default views follow the extraction budget; an explicit choice applies to every backbone."""
    data = read_dataset(photo_folder)
    cache = FeatureCache(tmp_path)
    result = train(data.samples, ["resnet50", "efficientnet_lite0"], cache,
                   lambda name: QuadrantBackbone())
    n = len(data.samples)
    assert cache.computed == n * 1 + n * 8
    r = result.report
    assert r["view_policies_by_backbone"] == {"resnet50": ["none"],
                                              "efficientnet_lite0": ["none", "dihedral"]}
    assert r["backbones"]["resnet50"]["hyperparameters"]["views"] in ("none", "none+sqrt")
    more = read_dataset(photo_test_folder).samples[:1]
    train(data.samples + more, ["resnet50", "efficientnet_lite0"], cache,
          lambda name: QuadrantBackbone())
    assert cache.computed == (n + 1) * 1 + (n + 1) * 8  # re-training: the new image only
    again = FeatureCache(tmp_path / "explicit")
    train(data.samples, ["resnet50"], again, lambda name: QuadrantBackbone(),
          view_policies=("none", "flips"))
    assert again.computed == n * 2

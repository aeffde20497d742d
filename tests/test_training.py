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
from models.result import load_result
from models.training import TrainingError, train

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


@pytest.mark.integration
def test_report_has_honest_metrics_for_backbone_and_ensemble(trained):
    result, _, data, test, _ = trained
    r = result.report
    assert r["classes"] == ["cat", "coffee", "rocket"]
    assert r["n_train"] == 18 and r["n_test"] == 9 and r["cv_folds"] == 5
    chosen = r["ensembles"][r["ensemble"]["key"]]
    for key in ("cv_accuracy", "cv_accuracy_std", "test_accuracy", "train_accuracy", "method"):
        assert r["ensemble"][key] == chosen[key]  # the chosen one's headline, not a copy of all
    assert "predictions" not in r["ensemble"] and "confusion" not in r["ensemble"]
    for entry in (r["backbones"]["efficientnet_lite0"], chosen, r["ensembles"]["vote"]):
        assert entry["cv_accuracy"] >= 0.8  # three very different photos
        assert len(entry["cv_fold_accuracies"]) == 5
        assert entry["cv_accuracy_std"] == pytest.approx(np.std(entry["cv_fold_accuracies"]))
        assert entry["test_accuracy"] >= 0.8
        assert entry["train_accuracy"] >= 0.8
        assert entry["confusion"]["source"] == "test"
        assert np.sum(entry["confusion"]["matrix"]) == 9
        assert np.sum(entry["cv"]["confusion"]["matrix"]) == 18
        assert "confusion" not in entry["test"]  # shown: under entry["confusion"] only
        assert set(entry["per_class"]) == {"cat", "coffee", "rocket"}
        assert {p["sha256"] for p in entry["predictions"]["test"]} == {s.sha256 for s in test.samples}
    assert r["ensemble"]["key"] == "mean" and "one backbone" in r["ensemble"]["why"]
    assert set(r["ensembles"]) == {"vote", "mean", "weighted"}
    assert r["backbones"]["efficientnet_lite0"]["hyperparameters"]["l2"] > 0
    assert r["backbones"]["efficientnet_lite0"]["hyperparameters"]["head"] in ("linear", "hidden")
    per_fold = r["backbones"]["efficientnet_lite0"]["calibration"]["cv_heads_chosen_per_fold"]
    assert len(per_fold) == 5 and set(per_fold) <= {"linear", "hidden"}


@pytest.mark.integration
def test_report_has_reliability_bins_and_the_calibration_decision(trained):
    result, stages, _, _, _ = trained
    entry = result.report["backbones"]["efficientnet_lite0"]
    cv, test = entry["reliability"]["cv"], entry["reliability"]["test"]
    assert sum(b["count"] for b in cv) == 18 and sum(b["count"] for b in test) == 9
    assert all(set(b) == {"confidence", "accuracy", "count"} and b["count"] > 0 for b in cv)
    cal = entry["calibration"]
    kept = cal["temperature_kept"]
    assert not kept or cal["cv_log_loss_calibrated"] < cal["cv_log_loss_uncalibrated"]
    assert ("temperature" in entry["hyperparameters"]) == kept
    assert entry["test"]["brier"] >= 0
    fitting = [p.fraction for p in stages if p.stage.startswith("fitting head")]
    assert len(fitting) >= 3 and fitting == sorted(fitting)  # it moves during the search


@pytest.mark.integration
def test_progress_is_monotonic_and_names_stages(trained):
    _, stages, _, _, _ = trained
    fractions = [p.fraction for p in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(p.stage.startswith("extracting features (EfficientNet-Lite0, 8 views)") for p in stages)
    assert any(p.stage.startswith("fitting head") for p in stages)


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
@pytest.mark.parametrize("transform", ["sqrt", "multiscale"])
def test_exported_model_carries_the_test_time_views(trained, tmp_path, transform):
    """Force the dihedral views and a feature transform: the export must average the same
    eight views and transform the features as the predictor does."""
    import keras

    from models.heads import LinearHead
    from models.result import TrainResult

    result, _, data, _, _ = trained
    spec = lite("efficientnet_lite0").spec
    dim = spec.blocks[0] if transform == "sqrt" else spec.feature_dim
    rng = np.random.default_rng(0)
    classes = result.classes
    scale = 1.0 if transform == "sqrt" else 0.1  # logits of order 1 for either input
    head = LinearHead(classes, np.zeros(dim, np.float32), scale,
                      rng.normal(0, dim ** -0.5, (dim, len(classes))).astype(np.float32),
                      np.zeros(len(classes), np.float32), {"views": f"dihedral+{transform}"})
    path = export_classifier(lite("efficientnet_lite0"), head, tmp_path / "d8.keras")
    model = keras.saving.load_model(path, safe_mode=True)
    image = data.samples[0].image().resize((224, 224))
    predictor = Predictor(TrainResult(classes, {"efficientnet_lite0": head}, result.report), lite)
    expected = predictor.probabilities([image])["efficientnet_lite0"][0]
    got = np.asarray(model(np.asarray(image, np.float32)[None]))[0]
    assert expected.max() < 0.99  # a head that is not saturated, so the comparison means something
    np.testing.assert_allclose(got, expected, atol=1e-3)


@pytest.mark.unit
def test_one_class_is_refused(photo_folder, tmp_path):
    data = read_dataset(photo_folder)
    cats = [s for s in data.samples if s.label == "cat"]
    with pytest.raises(TrainingError, match="at least 2 classes"):
        train(cats, ["efficientnet_lite0"], FeatureCache(tmp_path), lite)


@pytest.mark.integration
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


@pytest.mark.integration
def test_cli_rejects_unknown_backbone(photo_folder):
    done = subprocess.run([sys.executable, "-m", "models", "train", str(photo_folder),
                           "--backbones", "alexnet"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "unknown backbone(s) alexnet" in done.stderr


@pytest.mark.unit
def test_keras_views_match_pillow_views():
    from PIL import Image

    from models.features import VIEWS
    from models.predictor import keras_view

    pixels = np.random.default_rng(0).integers(0, 255, (6, 6, 3)).astype(np.uint8)
    for view in ("orig", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "transverse"):
        expected = np.asarray(VIEWS[view](Image.fromarray(pixels)))
        got = np.asarray(keras_view(pixels[None].astype(np.float32), view))[0]
        np.testing.assert_array_equal(got, expected, err_msg=view)


@pytest.mark.unit
def test_a_class_with_one_image_trains_without_cross_validation(tmp_path):
    """No CV is possible (a class has one image): training still succeeds and says why; the
    CV-weighted ensemble, which needs CV, is reported empty rather than crashing the run."""
    import io

    from PIL import Image

    from models.datasets import Sample
    from models.images import sha256_hex

    class TinyBackbone:
        input_size = 16

        def features(self, pixels, batch_size=32):
            return pixels.reshape(len(pixels), -1)[:, :64].astype(np.float32) / 255 + 0.01

    def image(seed):
        buf = io.BytesIO()
        pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buf, "PNG")
        return buf.getvalue()

    data = [image(i) for i in range(4)]
    samples = [Sample(sha256_hex(d), "solo" if i == 0 else "many", f"{i}.png", d)
               for i, d in enumerate(data)]
    result = train(samples, ["efficientnet_lite0"], FeatureCache(tmp_path),
                   lambda name: TinyBackbone())
    report = result.report
    assert report["classes"] == ["many", "solo"] and report["cv_folds"] is None
    assert "at least 2 images per class" in report["cv_note"]
    chosen = report["ensembles"][report["ensemble"]["key"]]
    on_train = chosen["predictions"]["train"]  # no CV: the training images say
    assert len(on_train) == 4 and chosen["confusion"]["source"] == "train"
    assert report["ensemble"]["train_accuracy"] == np.mean([p["true"] == p["pred"] for p in on_train])
    assert report["ensembles"]["weighted"]["per_class"] == {}


class QuadrantBackbone:
    """A real, tiny feature map (mean colour per quadrant) standing in for a heavy network."""

    input_size = 32

    def features(self, pixels, batch_size=32):
        q = pixels.reshape(len(pixels), 2, 16, 2, 16, 3).mean(axis=(2, 4))
        return q.reshape(len(pixels), -1).astype(np.float32)


@pytest.mark.integration
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


def _random_hidden_head(classes, dim, views):
    from models.heads import HiddenHead
    from models.heads.kinds import HIDDEN_UNITS

    rng = np.random.default_rng(1)
    return HiddenHead(classes, np.zeros(dim, np.float32), 0.1,
                      rng.normal(0, dim ** -0.5, (dim, HIDDEN_UNITS)).astype(np.float32),
                      np.full(HIDDEN_UNITS, 0.1, np.float32),
                      rng.normal(0, 0.5, (HIDDEN_UNITS, len(classes))).astype(np.float32),
                      np.zeros(len(classes), np.float32), {"head": "hidden", "views": views})


@pytest.mark.integration
def test_exported_hidden_head_matches_the_numpy_head(trained, tmp_path):
    """A hidden head exports as Dense-ReLU-Dense: on the export's own head input it gives the
    NumPy head's probabilities, and end to end the predictor's (within the resize filters),
    also after saving and loading the result."""
    import keras

    from models.backbones import HeadInput
    from models.result import TrainResult

    result, _, data, _, _ = trained
    spec = lite("efficientnet_lite0").spec
    head = _random_hidden_head(result.classes, spec.feature_dim, "dihedral+multiscale")
    path = export_classifier(lite("efficientnet_lite0"), head, tmp_path / "hidden.keras")
    model = keras.saving.load_model(path, safe_mode=True)
    head_input = next(layer for layer in model.layers if isinstance(layer, HeadInput))
    image = np.asarray(data.samples[0].image().resize((224, 224)), np.float32)[None]
    features = np.asarray(keras.Model(model.input, head_input.output)(image))
    got = np.asarray(model(image))
    assert got.max() < 0.99  # not saturated, so the comparison means something
    np.testing.assert_allclose(got, head.predict_proba(features), atol=1e-5)

    saved = TrainResult(result.classes, {"efficientnet_lite0": head}, result.report)
    report = json.loads(json.dumps(result.report))
    report["backbones"]["efficientnet_lite0"]["hyperparameters"] = head.params
    saved.report = report
    predictor = Predictor(saved.save(tmp_path / "result"), lite)
    assert predictor.result.heads["efficientnet_lite0"].params["head"] == "hidden"
    expected = predictor.probabilities([data.samples[0].image().resize((224, 224))])
    np.testing.assert_allclose(got[0], expected["efficientnet_lite0"][0], atol=1e-3)

"""Fine-tuning the top of EfficientNet-Lite0 (real weights) on tiny photo sets."""
import numpy as np
import pytest

from models import finetune
from models.backbones import load_backbone
from models.datasets import read_dataset
from models.features import FeatureCache, Item, transform
from models.heads import LinearHead
from models.images import resize_for_model
from models.predictor import Predictor, export_classifier, result_backbone
from models.result import load_result
from models.training import train

LITE0 = "efficientnet_lite0"


def refuse(name):
    raise AssertionError(f"a fine-tuned result must not need the frozen {name}")


@pytest.fixture(scope="module")
def photos(photo_folder, photo_test_folder):
    return read_dataset(photo_folder), read_dataset(photo_test_folder)


@pytest.fixture(scope="module")
def kept(photos, tmp_path_factory):
    """A run whose fine-tuning is kept whatever CV says (the keep rule has its own tests)."""
    data, test = photos
    real = finetune.decide

    def always(*args):
        return finetune.Decision(True, "kept (forced by the test)", real(*args).figures)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(finetune, "decide", always)
        return train(data.samples, [LITE0], FeatureCache(tmp_path_factory.mktemp("cache")),
                     load_backbone, test_samples=test.samples, view_policies=["none"],
                     fine_tune=True)


@pytest.mark.integration
def test_the_split_network_reproduces_the_backbone_and_phase_two_trains_the_top(photos):
    data, _ = photos
    backbone = load_backbone(LITE0)
    network = finetune.TunableNetwork(backbone)
    store = finetune.SplitFeatures(network, [Item(s.sha256, s.image) for s in data.samples])
    x = store.head_input("none+multiscale")
    pixels = np.stack([resize_for_model(s.image(), backbone.input_size) for s in data.samples])
    frozen = transform(backbone.features(pixels), "multiscale", backbone.spec.blocks)
    np.testing.assert_allclose(x, frozen, atol=1e-4)

    classes = sorted({s.label for s in data.samples})
    y = np.array([classes.index(s.label) for s in data.samples])
    # From an untrained head (these photos are so easy that a phase-1 head already has a
    # training loss near 1e-5, too little to watch fall): the loss starts at log(3).
    blank = LinearHead(classes, np.zeros(x.shape[1], np.float32), 1.0,
                       np.zeros((x.shape[1], 3), np.float32), np.zeros(3, np.float32),
                       {"views": "none+multiscale"})
    tuned, losses = finetune.tune(network, store, blank, y, np.ones(len(y), bool), seed=0)
    assert len(losses) == finetune.EPOCHS
    assert losses[0] < np.log(3) and losses[-1] < 0.9 * losses[0]
    assert all(b < a for a, b in zip(losses, losses[1:]))
    moved = [np.abs(w.numpy() - w0).max() for w, w0 in zip(network.top.trainable_weights,
                                                           network.pretrained)]
    assert len(moved) == 4 and min(moved) > 0  # expand, depthwise, project, head convs
    assert tuned.params["fine_tuned"] is True and np.abs(tuned.weight).max() > 0
    assert store.split["zoom"].shape[0] == len(y)  # the head used "orig": orig + zoom views
    network.reset()
    np.testing.assert_allclose(store.head_input("none+multiscale"), x, atol=1e-6)


@pytest.mark.unit
@pytest.mark.parametrize("tuned_delta, correct, kept, why", [
    (-0.10, 1, True, "kept"),
    (-0.003, 1, False, "below"),  # too small a gain
    (-0.10, 0, False, "accuracy"),  # better log-loss, one fewer image right
    (None, 1, False, "standard errors"),  # a big mean gain carried by one image
    (None, 0, False, "standard errors; lower CV accuracy"),  # every failed test is named
])
def test_the_keep_rule(tuned_delta, correct, kept, why):
    rng = np.random.default_rng(0)
    frozen = rng.uniform(0.5, 1.0, 40)
    tuned = frozen + (tuned_delta if tuned_delta is not None else 0.0)
    if tuned_delta is None:
        tuned[0] -= 2.0
    frozen_correct = np.ones(40, bool)
    frozen_correct[:5] = False
    tuned_correct = frozen_correct.copy()
    if not correct:
        tuned_correct[10] = False
    decision = finetune.decide(frozen, tuned, frozen_correct, tuned_correct)
    assert decision.kept is kept and why in decision.reason
    assert decision.figures["frozen"]["cv_accuracy"] == 0.875


@pytest.mark.integration
def test_a_kept_tuned_model_round_trips_and_predicts_as_in_training(kept, photos, tmp_path):
    _, test = photos
    entry = kept.report["backbones"][LITE0]
    report = entry["fine_tuning"]
    assert report["tried"] and report["kept"] and report["seconds"] > 0
    assert set(report["cv"]) >= {"frozen", "tuned", "log_loss_gain", "log_loss_gain_se"}
    assert entry["hyperparameters"]["fine_tuned"] is True
    folder = kept.save(tmp_path / "result")
    assert (folder / "heads" / f"{LITE0}.tuned.keras").exists()
    loaded = load_result(folder)
    assert set(loaded.tuned) == {LITE0}
    predictor = Predictor(folder, refuse)
    images = [s.image() for s in test.samples]
    probs = predictor.probabilities(images)[LITE0]
    for p, row in zip(probs, entry["predictions"]["test"]):
        assert kept.classes[p.argmax()] == row["pred"]
        assert abs(p.max() - row["score"]) < 2e-4
    # The standalone export carries the tuned network too (resize filters differ slightly).
    import keras

    path = export_classifier(result_backbone(loaded, LITE0, refuse), loaded.heads[LITE0],
                             tmp_path / "tuned.keras")
    model = keras.saving.load_model(path, safe_mode=True)
    exported = np.asarray(model(np.asarray(images[0], np.float32)[None]))[0]
    np.testing.assert_allclose(exported, probs[0], atol=0.05)


class QuadrantBackbone:
    """A tiny stand-in feature map (mean colour per quadrant)."""

    input_size = 32

    def features(self, pixels, batch_size=32):
        q = pixels.reshape(len(pixels), 2, 16, 2, 16, 3).mean(axis=(2, 4))
        return q.reshape(len(pixels), -1).astype(np.float32)


@pytest.mark.integration
def test_other_backbones_report_not_supported_and_keep_the_frozen_model(photos, tmp_path):
    data, _ = photos
    result = train(data.samples, ["resnet50"], FeatureCache(tmp_path),
                   lambda name: QuadrantBackbone(), fine_tune=True)
    report = result.report["backbones"]["resnet50"]["fine_tuning"]
    assert report["tried"] is False and report["kept"] is False
    assert "not supported" in report["reason"] and not result.tuned


@pytest.mark.integration
def test_without_fine_tune_the_report_has_no_fine_tuning(photos, tmp_path):
    data, _ = photos
    result = train(data.samples, ["resnet50"], FeatureCache(tmp_path),
                   lambda name: QuadrantBackbone())
    assert "fine_tuning" not in result.report["backbones"]["resnet50"]


@pytest.mark.unit
def test_the_project_setting_is_saved_and_checked_by_the_api(tmp_path):
    from helpers import logged_in

    from web import create_app

    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "TESTING": True})
    client = logged_in(app.test_client())
    pid = client.post("/api/v1/projects", json={"name": "P", "backbones": [LITE0]}).json["id"]
    assert client.get(f"/api/v1/projects/{pid}").json["fine_tune"] is False
    r = client.patch(f"/api/v1/projects/{pid}", json={"fine_tune": True})
    assert r.status_code == 200 and r.json["fine_tune"] is True
    assert client.get(f"/api/v1/projects/{pid}").json["fine_tune"] is True
    for bad in ("yes", 1, None):
        r = client.patch(f"/api/v1/projects/{pid}", json={"fine_tune": bad})
        assert r.status_code == 400 and "fine_tune" in r.json["error"]
    assert client.get(f"/api/v1/projects/{pid}").json["fine_tune"] is True


@pytest.mark.integration
def test_the_worker_fine_tunes_a_project_that_asks_for_it(tmp_path, start_worker, web_photos):
    import io
    import time

    from helpers import logged_in, make_zip

    from web import create_app

    instance = tmp_path / "instance"
    app = create_app({"INSTANCE_PATH": str(instance), "TESTING": True})
    worker = start_worker(instance)
    client = logged_in(app.test_client())
    pid = client.post("/api/v1/projects", json={"name": "P", "backbones": [LITE0]}).json["id"]
    client.patch(f"/api/v1/projects/{pid}", json={"fine_tune": True})
    members = {f"{c}/{i}.jpg": web_photos[c][i] for c in ("cat", "coffee", "rocket")
               for i in range(6)}
    client.post(f"/api/v1/projects/{pid}/images", content_type="multipart/form-data",
                data={"file": (io.BytesIO(make_zip(members)), "data.zip")})
    job_id = client.post(f"/api/v1/projects/{pid}/train").json["job_id"]
    deadline = time.monotonic() + 240
    while (job := client.get(f"/api/v1/jobs/{job_id}").json)["state"] not in (
            "succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job["state"] == "succeeded", worker.log()[-3000:]
    entry = client.get(f"/api/v1/projects/{pid}/results").json["backbones"][LITE0]
    assert entry["fine_tuning"]["tried"] is True
    assert set(entry["fine_tuning"]["cv"]["tuned"]) == {"cv_accuracy", "cv_log_loss"}
    r = client.post(f"/api/v1/projects/{pid}/predict",
                    data={"file": (io.BytesIO(web_photos["cat"][11]), "m.jpg")})
    assert r.status_code == 200 and r.json["ensemble"]["label"] == "cat"

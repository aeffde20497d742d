"""Exports (`models.exporting`, GET /api/v1/projects/<id>/iterations/<n>/export): each format,
loaded by its own runtime through the bundle's own predict.py, gives the server's
probabilities (within 1e-4; TFLite within 1e-3) on images of several sizes and kinds."""
from __future__ import annotations

import json
import io
import runpy
import time
import zipfile

import numpy as np
import pytest
from export_fixtures import (BACKBONES, add_trained_project, parity_images,
                             server_probabilities, trained_result, unzip)
from helpers import logged_in

from models.backbones import load_backbone
from models.exporting.bundle import export_zip
from models.exporting.formats import FORMATS

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

TOLERANCE = {"tflite": 1e-3}  # float32 TFLite kernels; every other format: 1e-4


@pytest.fixture(scope="module")
def result(tmp_path_factory, photo_folder):
    return trained_result(tmp_path_factory, photo_folder)


@pytest.fixture(scope="module")
def images(tmp_path_factory, photo_test_folder):
    return parity_images(tmp_path_factory.mktemp("parity_images"), photo_test_folder)


@pytest.fixture(scope="module")
def server(result, images):
    from models.runtime import _import_openvino

    _import_openvino()  # so a bundle's `import openvino` starts no usage telemetry
    return server_probabilities(result, images)


def run_bundle(zip_path, folder, images) -> tuple[dict, np.ndarray]:
    """(model.json, (n, C) probabilities) from the bundle's own predict.py."""
    bundle = unzip(zip_path.read_bytes(), folder)
    spec = json.loads((bundle / "model.json").read_text())
    predict = runpy.run_path(str(bundle / "predict.py"), run_name="bundle")["predict"]
    rows = [predict(path) for path in images.values()]
    return spec, np.array([[row[c] for c in spec["classes"]] for row in rows])


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_gives_the_servers_probabilities(fmt, result, images, server, tmp_path):
    zip_path = export_zip(result, "efficientnet_lite0", fmt, load_backbone)
    spec, got = run_bundle(zip_path, tmp_path, images)
    expected = server["efficientnet_lite0"]
    assert spec["inputs"] == [{"name": "image_224", "size": 224, "transposed": False},
                              {"name": "image_224_transposed", "size": 224, "transposed": True}]
    assert spec["backbones"]["efficientnet_lite0"]["views"][0] == "orig"
    assert len(spec["backbones"]["efficientnet_lite0"]["views"]) == 8
    difference = float(np.abs(got - expected).max())
    print(f"{fmt}: max |export - server| = {difference:.2e}")
    assert difference <= TOLERANCE.get(fmt, 1e-4), fmt
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()
    assert expected.max(axis=1).min() < 0.999 or difference > 0  # not all saturated at 1.0


def test_the_ensemble_export_gives_the_servers_ensemble(result, images, server, tmp_path):
    spec, got = run_bundle(export_zip(result, "ensemble", "keras", load_backbone), tmp_path,
                           images)
    assert {i["size"] for i in spec["inputs"]} == {224, 240}  # one per backbone's size
    assert spec["ensemble"]["method"] == json.loads((result / "report.json").read_text())[
        "ensemble"]["key"]
    assert set(spec["backbones"]) == set(BACKBONES)
    np.testing.assert_allclose(got, server["ensemble"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["vote", "mean", "weighted"])
def test_every_ensemble_rule_is_combined_inside_the_model(method):
    """The graph's combination equals `combine_ensemble`'s for each rule, votes and their
    ties (broken by the mean probability) included."""
    from models.exporting.graph import combine
    from models.result import combine_ensemble

    rng = np.random.default_rng(3)
    parts = {name: rng.dirichlet(np.ones(4), 50).astype(np.float32) for name in "abc"}
    parts["c"][:10] = parts["a"][:10]  # some images with two backbones agreeing
    parts["b"][10:20, :] = 0.25  # ... and some with a four-way tie in one backbone
    weights = {"a": 0.5, "b": 0.2, "c": 0.3}
    got = np.asarray(combine(method, list(parts.values()), list(weights.values())))
    expected = combine_ensemble(method, parts, weights)
    np.testing.assert_allclose(got, expected.probs, atol=1e-6, rtol=0)
    assert (got.argmax(axis=1) == expected.predicted).all()


def test_the_bundle_holds_what_runs_it_and_is_built_once(result, tmp_path):
    path = export_zip(result, "efficientnet_lite0", "onnx", load_backbone)
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        labels = archive.read("labels.txt").decode().split()
        script = archive.read("predict.py").decode()
        js = archive.read("predict.js").decode()
    assert names == {"model.onnx", "labels.txt", "model.json", "predict.py", "predict.js"}
    assert labels == ["cat", "coffee", "rocket"]
    assert len(script.splitlines()) <= 45 and "onnxruntime" in script
    assert "onnxruntime-web" in js and '"cat"' in js
    mtime = path.stat().st_mtime_ns
    start = time.perf_counter()
    assert export_zip(result, "efficientnet_lite0", "onnx", load_backbone) == path
    assert time.perf_counter() - start < 1.0 and path.stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="savedmodel, tflite, onnx, openvino, keras"):
        export_zip(result, "efficientnet_lite0", "pickle", load_backbone)
    with pytest.raises(ValueError, match="efficientnet_lite0, efficientnet_lite1, ensemble"):
        export_zip(result, "resnet50", "keras", load_backbone)


def test_the_command_line_writes_the_same_zip(result, tmp_path, capsys):
    """`python -m models export RESULT TARGET OUT.zip --format F`: the page's bundle, copied."""
    from models.cli import main

    built = export_zip(result, "efficientnet_lite0", "onnx", load_backbone)
    out = tmp_path / "mine.zip"
    assert main(["export", str(result), "efficientnet_lite0", str(out), "--format", "onnx"]) == 0
    assert out.read_bytes() == built.read_bytes()
    assert "onnx model of efficientnet_lite0" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown backbone 'resnet50'"):
        main(["export", str(result), "resnet50", str(tmp_path / "no.zip")])
    assert not (tmp_path / "no.zip").exists()


# -- the API -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory, result):
    """A real app (SQLite, storage) with one project whose iteration 1 is the trained result
    (no export built yet)."""
    from web import create_app

    instance = tmp_path_factory.mktemp("exports_api") / "instance"
    app = create_app({"INSTANCE_PATH": str(instance), "TESTING": True})
    client = logged_in(app.test_client())
    pid = add_trained_project(app, result, "Exports", copy_exports=False)
    return {"app": app, "client": client, "pid": pid}


def test_api_returns_the_zip_and_then_the_cached_one(api, images, tmp_path):
    client, pid = api["client"], api["pid"]
    url = f"/api/v1/projects/{pid}/iterations/1/export?format=keras&backbone=efficientnet_lite0"
    r = client.get(url)
    assert r.status_code == 200, r.get_data(as_text=True)[:500]
    assert r.mimetype == "application/zip"
    assert "project%d-iteration1-efficientnet_lite0-keras.zip" % pid in r.headers[
        "Content-Disposition"]
    data = r.get_data()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert set(archive.namelist()) == {"model.keras", "labels.txt", "model.json", "predict.py"}
    start = time.perf_counter()
    again = client.get(url)
    assert again.status_code == 200 and again.get_data() == data
    assert time.perf_counter() - start < 2.0  # a file read, not a second conversion
    # The downloaded model answers as /predict does (its scores are rounded to 4 places).
    bundle = unzip(data, tmp_path)
    predict = runpy.run_path(str(bundle / "predict.py"), run_name="bundle")["predict"]
    path = images["large.jpg"]
    answer = client.post(f"/api/v1/projects/{pid}/predict",
                         data={"file": (path.open("rb"), path.name)}).json
    mine = predict(path)
    for row in answer["backbones"]["efficientnet_lite0"]:
        assert abs(mine[row["label"]] - row["score"]) <= 1e-4 + 5e-5


def test_api_refuses_unknown_formats_backbones_and_iterations(api):
    client, pid = api["client"], api["pid"]
    base = f"/api/v1/projects/{pid}/iterations"
    r = client.get(f"{base}/1/export?format=pickle")
    assert r.status_code == 400
    assert "savedmodel, tflite, onnx, openvino, keras" in r.json["detail"] and "'pickle'" in r.json["detail"]
    r = client.get(f"{base}/1/export?format=onnx&backbone=resnet50")
    assert r.status_code == 400
    assert "efficientnet_lite0, efficientnet_lite1, ensemble" in r.json["detail"]
    assert client.get(f"{base}/9/export?format=onnx").status_code == 404
    assert client.get(f"/api/v1/projects/999/iterations/1/export?format=onnx").status_code == 404
    assert api["app"].test_client().get(f"{base}/1/export?format=keras").status_code == 401

"""Why this answer (models.explain, POST /projects/<id>/explain): Grad-CAM and occlusion maps
that point at the evidence, nearest training images, and the route; plus "None of these" through
the predict route. Real EfficientNet-Lite0 and real trained heads throughout."""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from helpers import logged_in
from PIL import Image

from models.backbones import load_backbone
from models.datasets import Sample
from models.explain import explain, grad_cam, heat_map, nearest, occlusion
from models.features import FeatureCache
from models.ood import Embeddings
from models.predictor import Predictor
from models.training import train
from web import create_app

pytestmark = pytest.mark.integration

LITE0 = "efficientnet_lite0"


def _quadrant_image(rng, patch: Image.Image | None, corner: str) -> Image.Image:
    """A 224 x 224 noisy grey picture with `patch` (96 px) somewhere inside one quadrant."""
    noise = rng.normal(128, 20, (224, 224, 3)).clip(0, 255).astype(np.uint8)
    im = Image.fromarray(noise)
    if patch is not None:
        ox, oy = (int(v) for v in rng.integers(0, 112 - 96 + 1, 2))
        x0, y0 = {"top-left": (0, 0), "bottom-right": (112, 112)}[corner]
        im.paste(patch.resize((96, 96)), (x0 + ox, y0 + oy))
    return im


def _sample(im: Image.Image, label: str) -> Sample:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    raw = buf.getvalue()
    return Sample(hashlib.sha256(raw).hexdigest(), label, f"{label}.png", raw)


@pytest.fixture(scope="module")
def quadrants(tmp_path_factory):
    """Class "cat": a cat's face in the top-left quadrant; class "cup": a coffee cup in the
    bottom-right. A real Lite0 head trained on 12 of each (the image alone, no flips)."""
    from skimage import data

    cat = Image.fromarray(data.chelsea()).crop((80, 20, 330, 270))
    cup = Image.fromarray(data.coffee()).crop((100, 50, 450, 400))
    rng = np.random.default_rng(0)
    samples = ([_sample(_quadrant_image(rng, cat, "top-left"), "cat") for _ in range(12)]
               + [_sample(_quadrant_image(rng, cup, "bottom-right"), "cup") for _ in range(12)])
    cache = FeatureCache(tmp_path_factory.mktemp("cache"))
    result = train(samples, [LITE0], cache, load_backbone, view_policies=("none",))
    folder = result.save(tmp_path_factory.mktemp("result"))
    query = _quadrant_image(np.random.default_rng(99), cat, "top-left")
    return {"folder": folder, "samples": samples, "query": query,
            "predictor": Predictor(folder, load_backbone)}


def _quadrant_mass(grid: np.ndarray) -> dict[str, float]:
    h, w = grid.shape
    return {"top-left": grid[: h // 2, : w // 2].mean(),
            "top-right": grid[: h // 2, (w + 1) // 2:].mean(),
            "bottom-left": grid[(h + 1) // 2:, : w // 2].mean(),
            "bottom-right": grid[(h + 1) // 2:, (w + 1) // 2:].mean()}


def test_grad_cam_highlights_the_quadrant_with_the_evidence(quadrants):
    predictor = quadrants["predictor"]
    backbone, head = predictor.backbones[LITE0], predictor.result.heads[LITE0]
    cat = predictor.classes.index("cat")
    cam = grad_cam(backbone, head, quadrants["query"], cat)
    assert cam is not None and cam.shape == (7, 7)  # Lite0: 224 / 32
    assert cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    mass = _quadrant_mass(cam)
    assert max(mass, key=mass.get) == "top-left", mass
    assert heat_map(backbone, head, quadrants["query"], cat)[0] == "grad-cam"
    # The other class's map on the same image does not point at the cat.
    other = grad_cam(backbone, head, quadrants["query"], predictor.classes.index("cup"))
    assert _quadrant_mass(other)["top-left"] < mass["top-left"]


def test_occlusion_highlights_the_same_quadrant(quadrants):
    predictor = quadrants["predictor"]
    grid = occlusion(predictor.backbones[LITE0], predictor.result.heads[LITE0],
                     quadrants["query"], predictor.classes.index("cat"), grid=4)
    assert grid.shape == (4, 4)
    mass = _quadrant_mass(grid)
    assert max(mass, key=mass.get) == "top-left", mass


def test_nearest_training_image_of_a_training_image_is_itself(quadrants):
    predictor, sample = quadrants["predictor"], quadrants["samples"][3]
    answer = explain(predictor, sample.image())
    assert answer["label"] == "cat" and answer["method"] == "grad-cam"
    assert len(answer["neighbours"]) == 3
    first = answer["neighbours"][0]
    assert first["sha256"] == sample.sha256 and first["label"] == "cat"
    assert first["similarity"] == pytest.approx(1.0, abs=1e-4)
    sims = [n["similarity"] for n in answer["neighbours"]]
    assert sims == sorted(sims, reverse=True)
    with pytest.raises(ValueError, match="backbone 'vgg16' is not in this iteration"):
        explain(predictor, sample.image(), backbone="vgg16")
    with pytest.raises(ValueError, match="label 'dog' is not a class"):
        explain(predictor, sample.image(), label="dog")


@pytest.mark.unit
def test_nearest_ranks_by_cosine():
    e = Embeddings(np.array([[1.0, 0], [0, 1.0], [1.0, 1.0]]), np.array([0, 1, 1]),
                   np.array(["a" * 64, "b" * 64, "c" * 64]))
    ranked = nearest(e, np.array([2.0, 0.1]), ["x", "y"], k=2)
    assert [r["sha256"][0] for r in ranked] == ["a", "c"]
    assert [r["label"] for r in ranked] == ["x", "y"]


# -- the routes -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web(quadrants, tmp_path_factory):
    """A project whose images are the quadrant set, with iteration 1 = `quadrants`' result
    (trained in-process, saved where the worker would have saved it)."""
    import shutil

    from web.db import Iteration, db

    app = create_app({"INSTANCE_PATH": str(tmp_path_factory.mktemp("web") / "instance"),
                      "TESTING": True})
    client = logged_in(app.test_client())
    pid = client.post("/api/v1/projects", json={"name": "Quadrants",
                                                "backbones": [LITE0]}).json["id"]
    for s in quadrants["samples"]:
        r = client.post(f"/api/v1/projects/{pid}/images", content_type="multipart/form-data",
                        data={"file": [(io.BytesIO(s.data), f"{s.sha256[:8]}.png")],
                              "label": s.label})
        assert r.status_code in (200, 201), r.json
    storage = app.extensions["transferlab.storage"]
    shutil.copytree(quadrants["folder"], storage.resolve(f"p{pid}/it1"))
    with app.app_context():
        db.session.add(Iteration(project_id=pid, number=1, folder=f"p{pid}/it1",
                                 classes=["cat", "cup"], backbones=[LITE0], n_train=24,
                                 n_test=0, summary={}))
        db.session.commit()
    return {"client": client, "pid": pid}


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_explain_route(web, quadrants):
    client, pid = web["client"], web["pid"]
    r = client.post(f"/api/v1/projects/{pid}/explain",
                    data={"file": (io.BytesIO(_png(quadrants["query"])), "q.png")})
    assert r.status_code == 200, r.json
    body = r.json
    assert body["label"] == "cat" and body["backbone"] == LITE0 and body["method"] == "grad-cam"
    assert body["iteration"] == 1 and body["name"] == "q.png"
    grid = np.array(body["grid"])
    mass = _quadrant_mass(grid)
    assert grid.shape == (7, 7) and max(mass, key=mass.get) == "top-left"
    assert [n["label"] for n in body["neighbours"]] == ["cat"] * 3
    thumb = client.get(body["neighbours"][0]["thumbnail"])
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    r = client.post(f"/api/v1/projects/{pid}/explain?label=cup",
                    data={"file": (io.BytesIO(_png(quadrants["query"])), "q.png")})
    assert r.status_code == 200 and r.json["label"] == "cup"
    for query, field in (("?backbone=vgg16", "backbone"), ("?label=dog", "label")):
        r = client.post(f"/api/v1/projects/{pid}/explain{query}",
                        data={"file": (io.BytesIO(_png(quadrants["query"])), "q.png")})
        assert r.status_code == 400 and r.json["error"].startswith(f"{field}:"), r.json
    r = client.post(f"/api/v1/projects/{pid}/explain")
    assert r.status_code == 400 and "file" in r.json["error"]
    r = client.post(f"/api/v1/projects/{pid}/explain",
                    data={"file": (io.BytesIO(b"not an image"), "x.jpg")})
    assert r.status_code == 400 and r.json["error"] == "x.jpg: not an image"
    assert client.post("/api/v1/projects/999/explain").status_code == 404


def test_predict_route_answers_unknown_for_an_image_unlike_any_class(web, quadrants):
    from skimage import data

    client, pid = web["client"], web["pid"]
    r = client.post(f"/api/v1/projects/{pid}/predict",
                    data={"file": (io.BytesIO(_png(Image.fromarray(data.astronaut()))), "a.png")})
    assert r.status_code == 200, r.json
    ens = r.json["ensemble"]
    assert ens["unknown"] is True and ens["label"] == "unknown"
    assert ens["reason"] == "unlike any class" and ens["best_guess"] in ("cat", "cup")
    assert ens["ood_score"] > ens["ood_threshold"]
    assert r.json["ood"][LITE0]["unknown"] is True
    r = client.post(f"/api/v1/projects/{pid}/predict",
                    data={"file": (io.BytesIO(_png(quadrants["query"])), "q.png")})
    assert r.json["ensemble"]["unknown"] is False and r.json["ensemble"]["label"] == "cat"

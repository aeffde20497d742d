"""Shared by the export tests (tests/test_exports.py, tests/test_exports_ui.py): one real
trained result (EfficientNet-Lite0 and -Lite1, real weights, all eight dihedral views, so the
exports carry the transposed inputs and an ensemble of two input sizes), images of several
sizes and kinds, and the server's own probabilities for them."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1")


def trained_result(tmp_path_factory, photo_folder) -> Path:
    """The result folder, trained once per test session (reused by later modules)."""
    folder = tmp_path_factory.getbasetemp() / "export_result"
    if not (folder / "report.json").exists():
        from models.backbones import load_backbone
        from models.datasets import read_dataset
        from models.features import FeatureCache
        from models.training import train

        result = train(read_dataset(photo_folder).samples, BACKBONES,
                       FeatureCache(tmp_path_factory.mktemp("export_cache")), load_backbone,
                       view_policies=("dihedral",))
        partial = folder.with_name("export_result.partial")
        shutil.rmtree(partial, ignore_errors=True)
        result.save(partial)
        partial.rename(folder)
    return folder


def parity_images(folder: Path, photo_test_folder: Path) -> dict[str, Path]:
    """{name: file}: held-out JPEG photos (160x120), a large one, a tall PNG with alpha, a
    JPEG with EXIF orientation, a grayscale PNG and random noise (the hardest for resizing)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {p.stem: p for p in sorted(photo_test_folder.glob("*/*_test_0.jpg"))}
    cat = Image.open(next(photo_test_folder.glob("cat/*_test_1.jpg"))).convert("RGB")
    rng = np.random.default_rng(7)

    def save(name, image, **kw):
        out[name] = folder / name
        image.save(out[name], **kw)

    save("large.jpg", cat.resize((1280, 960)), quality=92)
    rgba = cat.resize((97, 131)).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((97, 131)))
    save("tall_alpha.png", rgba)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    save("rotated.jpg", cat.resize((300, 200)), exif=exif, quality=90)
    save("gray.png", cat.convert("L").resize((250, 250)))
    save("noise.png", Image.fromarray(rng.integers(0, 256, (180, 240, 3), np.uint8)))
    return out


def server_probabilities(folder: Path, images: dict[str, Path]) -> dict[str, np.ndarray]:
    """{backbone | "ensemble": (n, C)} as the server's /predict computes them: its decoding,
    its `PredictionService` (OpenVINO backbones where they reproduce TensorFlow), its ensemble."""
    from models.images import decode_image
    from models.result import combine_ensemble
    from web.prediction import PredictionService

    predictor = PredictionService().predictor(0, folder)
    decoded = [decode_image(path.read_bytes()) for path in images.values()]
    probs = predictor.probabilities(decoded)
    ensemble = predictor.result.report["ensemble"]
    probs["ensemble"] = combine_ensemble(ensemble["key"], dict(probs),
                                         ensemble.get("weights")).probs
    return probs


def add_trained_project(app, result: Path, name: str, copy_exports: bool = True) -> int:
    """A project of user ann on `app`'s instance whose iteration 1 is `result` (copied, with
    the exports already built unless not `copy_exports`), as a finished training leaves it."""
    import json

    from web.db import Iteration, Project, User, db

    report = json.loads((result / "report.json").read_text())
    with app.app_context():
        owner = db.session.scalar(db.select(User).where(User.username == "ann"))
        project = Project(name=name, backbones=list(BACKBONES), owner_id=owner.id)
        db.session.add(project)
        db.session.flush()
        storage = app.extensions["transferlab.storage"]
        relpath = storage.iteration_relpath(project.id, 1)
        storage.resolve(relpath).parent.mkdir(parents=True)
        shutil.copytree(result, storage.resolve(relpath),
                        ignore=None if copy_exports else shutil.ignore_patterns("exports"))
        db.session.add(Iteration(project_id=project.id, number=1, folder=relpath,
                                 classes=report["classes"], backbones=list(BACKBONES),
                                 n_train=report["n_train"], n_test=0, summary={}))
        db.session.commit()
        return project.id


def unzip(data: bytes, folder: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(folder)
    return folder

"""Uploads stream: each accepted image is stored as it is read, nothing is lost, and memory
does not grow with the number of images in a zip."""
from __future__ import annotations

import gc
import io
import tracemalloc
import zipfile

import numpy as np
import pytest
from helpers import logged_in
from PIL import Image

from models.datasets import read_zip
from web.db import Blob, ProjectImage, db
from web.ingest import ingest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def noise_jpeg(seed: int, size=(240, 180)) -> bytes:
    """A distinct JPEG of about 40 KB (noise does not compress)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def write_zip(path, count: int, extra: dict | None = None):
    """`count` distinct images in two class folders, plus `extra` members; their bytes."""
    images = {f"{'ab'[i % 2]}/{i}.jpg": noise_jpeg(i) for i in range(count)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in {**images, **(extra or {})}.items():
            archive.writestr(name, data)
    return images


@pytest.mark.unit
def test_streaming_read_reports_the_same_and_hands_over_every_image(tmp_path):
    images = write_zip(tmp_path / "d.zip", 6, {"a/bad.jpg": b"nope", "b/copy.jpg": noise_jpeg(0)})
    whole = read_zip(tmp_path / "d.zip", name="d.zip")
    received = []
    streamed = read_zip(tmp_path / "d.zip", name="d.zip",
                        on_sample=lambda s, im: received.append((s, im.size, im.mode)))
    key = lambda s: (s.sha256, s.label, s.source)  # noqa: E731
    assert [key(s) for s in streamed.samples] == [key(s) for s in whole.samples]
    assert len(whole.samples) == 6
    assert streamed.rejected == whole.rejected == [
        type(whole.rejected[0])("d.zip:a/bad.jpg", "not an image")]
    assert streamed.duplicates == whole.duplicates and len(whole.duplicates) == 1
    assert [key(s) for s, _, _ in received] == [key(s) for s in whole.samples]
    for sample, size, mode in received:  # the bytes and the decoded image were handed over
        assert sample.data == images[sample.source.split(":", 1)[1]]
        assert size == (240, 180) and mode == "RGB"
    assert all(s.data == b"" for s in streamed.samples)  # ... and not kept


def _peak_bytes(func, repeats: int = 3) -> int:
    """The least peak of traced memory over `repeats` calls of `func`.

    tracemalloc sees every thread; a background thread left by an earlier test can allocate
    during one call, so the least of a few peaks is what `func` itself needs."""
    peaks = []
    for _ in range(repeats):
        gc.collect()
        tracemalloc.start()
        try:
            func()
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    return min(peaks)


@pytest.mark.integration
def test_streaming_read_memory_does_not_grow_with_the_zip(tmp_path):
    small, large = tmp_path / "small.zip", tmp_path / "large.zip"
    write_zip(small, 40)
    large_images = write_zip(large, 160)
    extra_bytes = sum(len(b) for b in large_images.values()) * 120 / 160  # 120 more images

    def stream(path):
        return lambda: read_zip(path, name="d.zip", on_sample=lambda s, im: None)

    growth = _peak_bytes(stream(large)) - _peak_bytes(stream(small))
    assert growth < 0.1 * extra_bytes, (growth, extra_bytes)
    # the same measure sees the bytes when they are all kept (a read without streaming)
    kept = _peak_bytes(lambda: read_zip(large, name="d.zip"))
    assert kept - _peak_bytes(lambda: read_zip(small, name="d.zip")) > 0.9 * extra_bytes


class _Upload:
    """What `ingest` needs of a werkzeug FileStorage: a stream and a file name."""

    def __init__(self, path, filename):
        self.stream = open(path, "rb")  # noqa: SIM115 - closed by the test
        self.filename = filename


def _ingest(app, project_id, path):
    upload = _Upload(path, "d.zip")
    try:
        with app.app_context():
            return ingest(project_id, [upload], label=None, split="train",
                          storage=app.extensions["transferlab.storage"], thumb_size=64)
    finally:
        upload.stream.close()


@pytest.mark.unit
def test_upload_stores_everything_and_memory_stays_flat(app, tmp_path):
    client = logged_in(app.test_client())
    pid = client.post("/api/v1/projects", json={"name": "p", "backbones": ["efficientnet_lite0"]}
                      ).json["id"]
    small, large = tmp_path / "small.zip", tmp_path / "large.zip"
    write_zip(small, 30, {"a/bad.jpg": b"nope"})
    images = write_zip(large, 120, {"a/bad.jpg": b"nope"})

    reports = {}
    # once each: a second upload of the same zip would be all duplicates
    peak_small = _peak_bytes(lambda: reports.update(small=_ingest(app, pid, small)), repeats=1)
    peak_large = _peak_bytes(lambda: reports.update(large=_ingest(app, pid, large)), repeats=1)
    extra_bytes = sum(len(b) for b in images.values()) * 90 / 120
    # per-image metadata (report rows, database rows) is all that grows: far below the images
    assert peak_large - peak_small < 0.25 * extra_bytes, (peak_small, peak_large, extra_bytes)

    small_report, report = reports["small"], reports["large"]
    assert small_report["accepted"] == 30
    # the large zip holds the 30 small-zip images again (same bytes): duplicates, not lost
    assert report["accepted"] == 90 and len(report["duplicates"]) == 30
    assert report["rejected"] == [{"name": "d.zip:a/bad.jpg", "reason": "not an image"}]
    storage = app.extensions["transferlab.storage"]
    with app.app_context():
        rows = {r.name: r for r in db.session.scalars(
            db.select(ProjectImage).where(ProjectImage.project_id == pid))}
        assert len(rows) == 120
        for member, data in images.items():
            row = rows[f"d.zip:{member}"]
            assert row.label == member[0]
            assert storage.blob_path(row.sha256).read_bytes() == data
            thumb = Image.open(storage.thumb_path(row.sha256))
            assert max(thumb.size) == 64
            blob = db.session.get(Blob, row.sha256)
            assert (blob.size, blob.width, blob.height, blob.content_type) == (
                len(data), 240, 180, "image/jpeg")

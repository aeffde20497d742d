"""Reading a batch image back from the batch's stored files (`models.batch_predict.read_image`),
which labelling a suggestion copies into the project: a loose file, a zip member, and the
refusals (another image there now, a member that is not there, an unsafe member)."""
from __future__ import annotations

import io
import zipfile

import pytest
from helpers import make_zip

from models.batch_predict import BatchFile, read_image
from models.datasets.zips import read_member
from models.images import sha256_hex

pytestmark = pytest.mark.unit


def png(color) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def files(tmp_path):
    red, blue = png((200, 0, 0)), png((0, 0, 200))
    (tmp_path / "0").write_bytes(red)
    (tmp_path / "1").write_bytes(make_zip({"shots/a.png": blue, "shots/b.png": red}))
    return [BatchFile(tmp_path / "0", "red.png"), BatchFile(tmp_path / "1", "shots.zip")], red, blue


def test_loose_file_and_zip_member_come_back_byte_for_byte(files):
    batch, red, blue = files
    assert read_image(batch, {"name": "red.png", "sha256": sha256_hex(red), "file": 0}) == red
    row = {"name": "shots.zip:shots/a.png", "sha256": sha256_hex(blue), "file": 1}
    assert read_image(batch, row) == blue


def test_a_row_that_does_not_match_its_file_is_refused(files):
    batch, red, blue = files
    with pytest.raises(LookupError, match="no longer holds this image"):
        read_image(batch, {"name": "red.png", "sha256": sha256_hex(blue), "file": 0})
    with pytest.raises(LookupError, match="no file 'shots/zz.png'"):
        read_image(batch, {"name": "shots.zip:shots/zz.png", "sha256": sha256_hex(blue), "file": 1})
    with pytest.raises(LookupError, match="not a member of shots.zip"):
        read_image(batch, {"name": "other.zip:shots/a.png", "sha256": sha256_hex(blue), "file": 1})
    with pytest.raises(LookupError, match="which file"):
        read_image(batch, {"name": "red.png", "sha256": sha256_hex(red), "file": 7})


def test_read_member_keeps_the_zip_checks():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../evil.png", png((1, 2, 3)))
        z.writestr("inner.zip", b"PK\x03\x04")
    with pytest.raises(ValueError, match="unsafe path"):
        read_member(io.BytesIO(buf.getvalue()), "../evil.png")
    with pytest.raises(ValueError, match="nested archive"):
        read_member(io.BytesIO(buf.getvalue()), "inner.zip")
    with pytest.raises(ValueError, match="unreadable zip"):
        read_member(io.BytesIO(b"PK\x03\x04 not really"), "a.png")

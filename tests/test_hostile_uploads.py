"""Hostile uploads end to end, through the HTTP upload route (issue #6, "hostile input").

Each case is uploaded via POST /api/v1/projects/<id>/images and checked for what a user (or an
attacker) sees and what the server keeps: the JSON names every rejected file with its reason,
the accepted members of the same upload are stored (rows, blobs, thumbnails), and rejected ones
leave the project, the storage folder and the rest of the disk as they were. The engine's own
checks are tested closer to the code in test_datasets.py and test_images.py; how the browser
shows hostile names is tested in test_ui_app.py (Playwright).

Every request goes through `_client()`: the one place to add authentication.
"""
from __future__ import annotations

import errno
import io
import stat
import unicodedata
import zipfile

import pytest
from helpers import logged_in, make_zip
from PIL import Image


pytestmark = pytest.mark.unit


def _client(app):
    """The HTTP client every test uses: logged in, sending the pages' CSRF token."""
    return logged_in(app.test_client())


@pytest.fixture
def client(app):
    return _client(app)


def new_project(client, name="hostile") -> int:
    r = client.post("/api/v1/projects", json={"name": name, "backbones": ["efficientnet_lite0"]})
    assert r.status_code == 201, r.json
    return r.json["id"]


def upload(client, pid, files, **form):
    """POST [(file name, bytes)] as multipart 'file' fields; returns the response."""
    data = {"file": [(io.BytesIO(b), name) for name, b in files], **form}
    return client.post(f"/api/v1/projects/{pid}/images", data=data,
                       content_type="multipart/form-data")


def png(seed: int, size=(24, 18), mode="RGB") -> bytes:
    """A small PNG, distinct for each seed."""
    buf = io.BytesIO()
    color = (seed % 256, seed // 256 % 256, 77)
    Image.new(mode, size, color if mode == "RGB" else seed % 256).save(buf, "PNG")
    return buf.getvalue()


def reasons(body) -> dict[str, str]:
    return {r["name"]: r["reason"] for r in body["rejected"]}


def state(client, app, pid) -> dict:
    """What the project and the storage folder hold (to prove a rejection changed nothing)."""
    images = sorted((i["sha256"], i["label"], i["split"], i["name"])
                    for i in client.get(f"/api/v1/projects/{pid}/images").json)
    root = app.extensions["transferlab.storage"].root
    files = sorted(str(p.relative_to(root)) for kind in ("blobs", "thumbs")
                   for p in (root / kind).rglob("*") if p.is_file())
    return {"images": images, "files": files,
            "classes": client.get(f"/api/v1/projects/{pid}").json["classes"]}


def assert_stored(client, app, body) -> None:
    """Every accepted image is listed, served, and on disk with its thumbnail."""
    storage = app.extensions["transferlab.storage"]
    for image in body["images"]:
        assert storage.blob_path(image["sha256"]).is_file()
        assert storage.thumb_path(image["sha256"]).is_file()
        assert client.get(f"/api/v1/images/{image['sha256']}").status_code == 200


def symlink_zip(members: dict, links: dict) -> bytes:
    """A zip of regular `members` plus symlink members {path: target}."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in links.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buf.getvalue()


# -- zip slip ------------------------------------------------------------------------------


def test_zip_slip_members_are_rejected_and_nothing_escapes(tmp_path, app, client):
    pid = new_project(client)
    evil = png(99)
    members = {"cat/1.png": png(1), "coffee/1.png": png(2),
               "../evil.png": evil, "../../../../tmp/evil1.png": evil,
               "/etc/evil2.png": evil, "cat/../../evil3.png": evil,
               "..\\..\\evil4.png": evil, "C:\\Windows\\evil5.png": evil,
               "C:/evil6.png": evil}
    data = symlink_zip(members, {"cat/passwd.png": "/etc/passwd",
                                 "coffee/up.png": "../../../instance/transferlab.db"})
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    r = upload(client, pid, [("slip.zip", data)])
    assert r.status_code == 200, r.json
    body = r.json
    assert body["accepted"] == 2 and body["classes"] == {"cat": 1, "coffee": 1}
    assert reasons(body) == {
        "slip.zip:../evil.png": "unsafe path",
        "slip.zip:../../../../tmp/evil1.png": "unsafe path",
        "slip.zip:/etc/evil2.png": "unsafe path",
        "slip.zip:cat/../../evil3.png": "unsafe path",
        "slip.zip:..\\..\\evil4.png": "unsafe path",
        "slip.zip:C:\\Windows\\evil5.png": "unsafe path",
        "slip.zip:C:/evil6.png": "unsafe path",
        "slip.zip:cat/passwd.png": "symlink",
        "slip.zip:coffee/up.png": "symlink",
    }
    assert_stored(client, app, body)
    # nothing was written under a member's name, inside or outside the instance folder
    after = sorted(str(p) for p in tmp_path.rglob("*"))
    new = [p for p in after if p not in before]
    assert not [p for p in new if "evil" in p or "passwd" in p], new
    root = app.extensions["transferlab.storage"].root
    assert all(p.startswith(str(root)) for p in new), new
    # the evil bytes were never stored: not as a blob, not as a project image
    from models.images import sha256_hex

    assert not app.extensions["transferlab.storage"].blob_path(sha256_hex(evil)).exists()


# -- zip bombs -----------------------------------------------------------------------------


def test_zip_bomb_member_with_a_huge_ratio_is_rejected_the_rest_kept(app, client):
    pid = new_project(client)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("cat/1.png", png(1))
        archive.writestr("cat/bomb.png", b"\0" * (8 * 1024 * 1024))  # ~1000:1
    r = upload(client, pid, [("ratio.zip", buf.getvalue())])
    assert r.status_code == 200, r.json
    assert r.json["accepted"] == 1
    reason = reasons(r.json)["ratio.zip:cat/bomb.png"]
    assert reason.startswith("suspicious compression ratio") and "limit 200:1" in reason
    assert_stored(client, app, r.json)


def test_zip_bomb_with_too_many_members_is_refused_whole(app, client):
    pid = new_project(client)
    kept = upload(client, pid, [("ok.png", png(1))], label="cat").json
    before = state(client, app, pid)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for i in range(20_001):
            archive.writestr(f"c/{i}", b"")
    r = upload(client, pid, [("many.zip", buf.getvalue())])
    assert r.status_code == 400
    assert r.json["error"] == ("no image accepted: many.zip: too many files in zip: 20001 "
                               "(limit 20000)")
    assert state(client, app, pid) == before and kept["accepted"] == 1


def test_zip_that_declares_a_huge_uncompressed_size_is_refused_whole(app, client):
    """The central directory claims 3 GiB for a tiny member (a lying, or bombing, zip)."""
    pid = new_project(client)
    before = state(client, app, pid)
    buf = io.BytesIO()
    archive = zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED)
    archive.writestr("cat/1.png", png(1))
    archive.writestr("cat/2.png", png(2))
    archive.infolist()[1].file_size = 3 * 1024**3  # written into the central directory
    archive.close()
    r = upload(client, pid, [("huge.zip", buf.getvalue())])
    assert r.status_code == 400
    assert "huge.zip: zip too large when uncompressed" in r.json["error"]
    assert "limit 2147483648" in r.json["error"]
    assert state(client, app, pid) == before


def test_nested_archives_are_rejected_not_opened(app, client):
    pid = new_project(client)
    inner = make_zip({f"cat/{i}.png": png(10 + i) for i in range(3)})
    members = {"cat/1.png": png(1), "cat/inner.zip": inner, "cat/inner.tar.gz": b"\x1f\x8b junk",
               "cat/deeper.7z": b"7z", "coffee/1.png": png(2),
               "coffee/sneaky.png": inner}  # a zip under an image's name
    r = upload(client, pid, [("nested.zip", make_zip(members))])
    assert r.status_code == 200, r.json
    assert r.json["accepted"] == 2 and r.json["classes"] == {"cat": 1, "coffee": 1}
    assert reasons(r.json) == {"nested.zip:cat/inner.zip": "nested archive",
                               "nested.zip:cat/inner.tar.gz": "nested archive",
                               "nested.zip:cat/deeper.7z": "nested archive",
                               "nested.zip:coffee/sneaky.png": "not an image"}
    # the inner zip's images were not read
    names = {i["name"] for i in client.get(f"/api/v1/projects/{pid}/images").json}
    assert names == {"nested.zip:cat/1.png", "nested.zip:coffee/1.png"}
    # a zip of nothing but a zip
    r = upload(client, pid, [("outer.zip", make_zip({"inner.zip": inner}))])
    assert r.status_code == 400 and "outer.zip:inner.zip: nested archive" in r.json["error"]


# -- images that are bombs, broken, or lie about their type ---------------------------------


def test_decompression_bomb_images_are_rejected_the_rest_kept(app, client):
    pid = new_project(client)
    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, "PNG")  # 12 kB file, 100 Mpixels
    bomb = buf.getvalue()
    assert len(bomb) < 50_000
    r = upload(client, pid, [("bomb.png", bomb)], label="cat")
    assert r.status_code == 400
    assert r.json["error"] == ("no image accepted: bomb.png: image too large: 100000000 "
                               "pixels (limit 40000000)")
    r = upload(client, pid, [("mixed.zip", make_zip({"cat/bomb.png": bomb,
                                                     "cat/ok.png": png(1)}))])
    assert r.status_code == 200 and r.json["accepted"] == 1
    assert reasons(r.json) == {
        "mixed.zip:cat/bomb.png": "image too large: 100000000 pixels (limit 40000000)"}
    assert_stored(client, app, r.json)


def test_truncated_and_corrupt_images_are_rejected_the_rest_kept(app, client, web_photos):
    pid = new_project(client)
    jpeg = web_photos["cat"][0]
    members = {"cat/ok.jpg": jpeg, "cat/truncated.jpg": jpeg[: len(jpeg) // 2],
               "cat/truncated.png": png(3, size=(200, 200))[:300],
               "cat/noise.jpg": bytes(range(256)) * 8, "cat/empty.png": b"",
               "cat/header-only.jpg": jpeg[:20]}
    r = upload(client, pid, [("broken.zip", make_zip(members))])
    assert r.status_code == 200 and r.json["accepted"] == 1
    assert reasons(r.json) == {
        "broken.zip:cat/truncated.jpg": "truncated or corrupt image",
        "broken.zip:cat/truncated.png": "truncated or corrupt image",
        "broken.zip:cat/noise.jpg": "not an image",
        "broken.zip:cat/empty.png": "empty file",
        "broken.zip:cat/header-only.jpg": "truncated or corrupt image",
    }
    assert_stored(client, app, r.json)
    # a broken loose file is a 400 naming it; the good one sent with it is kept
    r = upload(client, pid, [("half.jpg", jpeg[:1000]), ("good.jpg", web_photos["cat"][1])],
               label="cat")
    assert r.status_code == 200 and r.json["accepted"] == 1
    assert r.json["rejected"] == [{"name": "half.jpg", "reason": "truncated or corrupt image"}]


def test_files_that_lie_about_their_type(app, client, web_photos):
    """Decoding goes by content, never by the name: a PNG named .jpg is a PNG; text, HTML,
    PDF or SVG named .png is not an image; a zip named .png is read as a zip."""
    pid = new_project(client)
    html = b"<html><script>alert(document.cookie)</script></html>"
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'
    polyglot = web_photos["coffee"][0] + html  # a real JPEG with HTML after its end
    members = {"cat/really-a-png.jpg": png(1), "cat/page.png": html, "cat/pic.svg": svg,
               "cat/doc.png": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "cat/prog.jpg": b"MZ\x90\x00",
               "cat/polyglot.jpg": polyglot}
    r = upload(client, pid, [("liars.zip", make_zip(members))])
    assert r.status_code == 200, r.json
    assert r.json["accepted"] == 2
    assert reasons(r.json) == {"liars.zip:cat/page.png": "not an image",
                               "liars.zip:cat/pic.svg": "unsupported image format: SVG",
                               "liars.zip:cat/doc.png": "unsupported image format: PDF",
                               "liars.zip:cat/prog.jpg": "not an image"}
    by_name = {i["name"]: i for i in client.get(f"/api/v1/projects/{pid}/images").json}
    assert by_name["liars.zip:cat/really-a-png.jpg"]["content_type"] == "image/png"
    served = client.get(by_name["liars.zip:cat/polyglot.jpg"]["url"])
    assert served.status_code == 200 and served.mimetype == "image/jpeg"
    assert served.headers["X-Content-Type-Options"] == "nosniff"  # never rendered as HTML
    assert "sandbox" in served.headers["Content-Security-Policy"]
    # a zip sent under an image's name is read as the zip it is
    r = upload(client, pid, [("holiday.png", make_zip({"dog/1.png": png(5)}))])
    assert r.status_code == 200 and r.json["classes"] == {"cat": 2, "dog": 1}


# -- empty input, tiny and huge class sets, confusable names ---------------------------------


def test_empty_zips_and_empty_classes_are_reported(app, client):
    pid = new_project(client)
    r = upload(client, pid, [("empty.zip", make_zip({}))])
    assert r.status_code == 400
    assert r.json["error"] == "no image accepted: empty.zip: empty zip: it holds no files"
    r = upload(client, pid, [("folders.zip", make_zip({"cat/": b"", "dog/": b""}))])
    assert r.status_code == 400
    assert reasons(r.json) == {"folders.zip:cat/": "empty folder",
                               "folders.zip:dog/": "empty folder"}
    members = {"cat/1.png": png(1), "dog/": b"", "bird/readme.txt": b"no birds yet"}
    r = upload(client, pid, [("some.zip", make_zip(members))])
    assert r.status_code == 200 and r.json["classes"] == {"cat": 1}
    assert reasons(r.json) == {"some.zip:dog/": "empty folder",
                               "some.zip:bird/readme.txt": "not an image",
                               "some.zip:bird/": "no usable images"}
    r = upload(client, pid, [("nothing.png", b"")], label="cat")
    assert r.status_code == 400 and r.json["error"] == "no image accepted: nothing.png: empty file"
    assert client.get(f"/api/v1/projects/{pid}").json["n_train"] == 1


def test_a_class_with_one_image_is_accepted_and_trainable(client):
    pid = new_project(client)
    r = upload(client, pid, [("d.zip", make_zip({"solo/1.png": png(1), "many/1.png": png(2),
                                                 "many/2.png": png(3)}))])
    assert r.status_code == 200 and r.json["classes"] == {"many": 2, "solo": 1}
    project = client.get(f"/api/v1/projects/{pid}").json
    assert project["can_train"] is True
    assert client.post(f"/api/v1/projects/{pid}/train").status_code == 202


def test_thousands_of_classes(app, client):
    import time

    pid = new_project(client)
    n = 1000  # each image costs two fsync'ed files: 1000 keeps the test to ~15 s
    members = {f"class-{i:04d}/x.png": png(i, size=(8, 8)) for i in range(n)}
    began = time.monotonic()
    r = upload(client, pid, [("many-classes.zip", make_zip(members))])
    upload_seconds = time.monotonic() - began
    assert r.status_code == 200, r.json
    assert r.json["accepted"] == n and len(r.json["classes"]) == n and not r.json["rejected"]
    began = time.monotonic()
    project = client.get(f"/api/v1/projects/{pid}").json
    listed = client.get(f"/api/v1/projects/{pid}/images").json
    read_seconds = time.monotonic() - began
    assert project["n_classes"] == n and len(listed) == n
    assert upload_seconds < 60 and read_seconds < 10, (upload_seconds, read_seconds)


def test_class_names_differing_in_case_or_unicode_normalisation(client):
    pid = new_project(client)
    nfd, nfc = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    assert nfd != nfc
    members = {"Cat/1.png": png(1), "cat/1.png": png(2), f"{nfd}/1.png": png(3),
               f"{nfc}/2.png": png(4)}
    r = upload(client, pid, [("names.zip", make_zip(members))])
    assert r.status_code == 200 and r.json["accepted"] == 4
    # one class for the two spellings of café (NFC); Cat and cat kept apart, with a warning
    assert r.json["classes"] == {"Cat": 1, "cat": 1, nfc: 2}
    assert r.json["warnings"] == [("classes 'Cat' and 'cat' differ only in case: they are kept "
                                   "as separate classes; rename one if they are the same")]
    # a later upload into a case-variant of an existing class is warned about too
    r = upload(client, pid, [("c.png", png(5))], label="CAFÉ")
    assert r.status_code == 200 and r.json["accepted"] == 1
    assert r.json["warnings"] == [(f"classes 'CAFÉ' and '{nfc}' differ only in case: they are "
                                   "kept as separate classes; rename one if they are the same")]
    r = upload(client, pid, [("d.png", png(6))], label=nfd)  # NFD label: the NFC class
    assert r.json["classes"][nfc] == 3 and "'CAFÉ' and 'café'" in r.json["warnings"][0]


def test_html_and_script_in_class_and_file_names_stay_data(app, client):
    pid = new_project(client)
    klass = "<img src=x onerror=alert(1)>"
    file_name = "\"><svg onload=alert(2)>.png"
    r = upload(client, pid, [("x.zip", make_zip({f"{klass}/{file_name}": png(1),
                                                 "ok/1.png": png(2)}))])
    assert r.status_code == 200 and r.json["accepted"] == 2
    assert r.headers["Content-Type"] == "application/json"
    assert klass in r.json["classes"]
    names = {i["name"] for i in client.get(f"/api/v1/projects/{pid}/images").json}
    assert f"x.zip:{klass}/{file_name}" in names  # verbatim: escaping is the renderer's job
    r = upload(client, pid, [(f"{klass}.png", b"not an image")], label=klass)
    assert r.status_code == 400 and r.json["rejected"][0]["name"] == f"{klass}.png"
    assert r.headers["Content-Type"] == "application/json"
    page = client.get(f"/projects/{pid}")
    assert page.status_code == 200 and b"onerror=alert" not in page.data  # never inlined
    uploads = client.get(f"/api/v1/projects/{pid}/uploads").json
    assert uploads[0]["rejected"][0]["name"] == f"{klass}.png"


# -- what a rejection must not take with it -------------------------------------------------


def test_accepted_files_of_a_request_are_kept_when_others_fail(app, client, web_photos):
    pid = new_project(client)
    good_zip = make_zip({"cat/1.jpg": web_photos["cat"][0], "cat/2.jpg": web_photos["cat"][1]})
    r = upload(client, pid, [("good.zip", good_zip), ("bad.zip", b"PK\x03\x04 not a zip"),
                             ("huge.zip", make_zip({})), ("alone.jpg", web_photos["coffee"][0])])
    assert r.status_code == 200, r.json
    assert [f["name"] for f in r.json["files"]] == ["good.zip", "bad.zip", "huge.zip",
                                                   "alone.jpg"]
    assert [f["accepted"] for f in r.json["files"]] == [2, 0, 0, 0]
    assert reasons(r.json)["bad.zip"].startswith("not a valid zip file")
    assert reasons(r.json)["huge.zip"] == "empty zip: it holds no files"
    assert "label" in reasons(r.json)["alone.jpg"]
    assert client.get(f"/api/v1/projects/{pid}").json["classes"] == {"cat": 2}
    assert_stored(client, app, r.json)


def test_a_storage_failure_loses_only_that_image_and_says_so(app, client, monkeypatch):
    """The disk fails for one image (ENOSPC): it is rejected with a clear reason, the others of
    the same zip are stored, and no database row points at a missing file. When nothing could
    be stored the answer is 507 (the server's fault), not 400."""
    from models.images import sha256_hex
    from web.storage import Storage

    pid = new_project(client)
    doomed = png(2)
    real_put = Storage.put_blob

    def put_blob(self, sha256, data, **kwargs):
        if sha256 == sha256_hex(doomed):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_put(self, sha256, data, **kwargs)

    monkeypatch.setattr(Storage, "put_blob", put_blob)
    r = upload(client, pid, [("d.zip", make_zip({"cat/1.png": png(1), "cat/2.png": doomed,
                                                 "cat/3.png": png(3)}))])
    assert r.status_code == 200 and r.json["accepted"] == 2
    assert reasons(r.json) == {"d.zip:cat/2.png": "not stored: the server could not write it "
                                                  "(No space left on device)"}
    assert_stored(client, app, r.json)
    listed = client.get(f"/api/v1/projects/{pid}/images").json
    assert sha256_hex(doomed) not in {i["sha256"] for i in listed} and len(listed) == 2
    r = upload(client, pid, [("only.png", doomed)], label="cat")
    assert r.status_code == 507
    assert r.json["error"] == ("no image accepted: only.png: not stored: the server could not "
                               "write it (No space left on device)")

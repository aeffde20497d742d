"""Tests for models.datasets: layouts, zip safety, junk, duplicates, determinism."""

from __future__ import annotations

import io
import os
import stat
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest
from helpers import declare_member_size
from PIL import Image

from models.datasets import (
    Dataset,
    DatasetError,
    Duplicate,
    Rejection,
    Sample,
    ZipLimits,
    normalize_label,
    read_dataset,
    read_image_file,
    read_zip,
)
from models.images import sha256_hex

pytestmark = pytest.mark.unit

_COLORS = iter(range(1, 10_000))


def image_bytes(fmt: str = "PNG") -> bytes:
    """A small valid image, different from every other one this helper returns."""
    n = next(_COLORS)
    out = io.BytesIO()
    Image.new("RGB", (12, 10), (n % 256, n // 256 % 256, 90)).save(out, format=fmt)
    return out.getvalue()


def make_zip(path: Path, members: dict[str, bytes], *, shuffle: bool = False) -> Path:
    names = sorted(members, reverse=True) if shuffle else list(members)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in names:
            archive.writestr(name, members[name])
    return path


def mark_encrypted(path: Path, member: str) -> None:
    """Set the "encrypted" flag of ``member`` in the central directory (zipfile cannot encrypt)."""
    data = bytearray(path.read_bytes())
    header = data.find(b"PK\x01\x02")
    while header != -1:
        name_length = int.from_bytes(data[header + 28 : header + 30], "little")
        if data[header + 46 : header + 46 + name_length] == member.encode():
            data[header + 8] |= 0x1
        header = data.find(b"PK\x01\x02", header + 4)
    path.write_bytes(bytes(data))


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def sources(items) -> list[str]:
    return [item.source for item in items]


def reasons(dataset: Dataset) -> dict[str, str]:
    return {r.source: r.reason for r in dataset.rejected}


# --- folders --------------------------------------------------------------------------------


def test_folder_of_class_folders(tmp_path):
    root = write_tree(
        tmp_path / "data",
        {
            "cats/a.png": image_bytes(),
            "cats/b.jpg": image_bytes("JPEG"),
            "cats/2019/deep/c.png": image_bytes(),
            "dogs/a.png": image_bytes(),
            "dogs/notes.jpg": b"this is text, whatever the extension says",
            "loose.png": image_bytes(),
            "broken/x.jpg": b"not an image either",
        },
    )
    (root / "empty").mkdir()
    ds = read_dataset(root)
    assert ds.classes == ["cats", "dogs"]
    assert ds.counts == {"cats": 3, "dogs": 1}
    assert sources(ds.samples) == ["cats/2019/deep/c.png", "cats/a.png", "cats/b.jpg", "dogs/a.png"]
    assert ds.labels == ["cats", "cats", "cats", "dogs"]
    assert reasons(ds) == {
        "loose.png": "not in a class folder",
        "broken/x.jpg": "not an image",
        "broken/": "no usable images",
        "dogs/notes.jpg": "not an image",
    }
    assert all(s.sha256 == sha256_hex(s.data) for s in ds.samples)
    assert ds.samples[0].image().mode == "RGB"


def test_folder_junk_is_reported_as_system_or_hidden(tmp_path):
    root = write_tree(
        tmp_path / "data",
        {
            "cats/a.png": image_bytes(),
            "cats/.DS_Store": b"\x00\x00\x00\x01Bud1",
            "cats/._a.png": b"\x00\x05\x16\x07",
            "dogs/b.png": image_bytes(),
            "dogs/Thumbs.db": b"junk",
            "__MACOSX/dogs/._b.png": b"junk",
            ".ipynb_checkpoints/x.png": image_bytes(),
        },
    )
    ds = read_dataset(root)
    assert ds.counts == {"cats": 1, "dogs": 1}
    assert reasons(ds) == {
        "__MACOSX/": "system file",
        ".ipynb_checkpoints/": "hidden file",
        "cats/.DS_Store": "system file",
        "cats/._a.png": "system file",
        "dogs/Thumbs.db": "system file",
    }


def test_folder_of_loose_images_is_one_class(tmp_path):
    root = write_tree(tmp_path / "tulips", {"a.png": image_bytes(), "b.png": image_bytes()})
    assert read_dataset(root).counts == {"tulips": 2}
    assert read_dataset(root, label="Tulip ").counts == {"Tulip": 2}


def test_folder_of_zips_one_per_class_mixed_with_folders(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    make_zip(root / "cats.zip", {"1.png": image_bytes(), "more/2.png": image_bytes()})
    make_zip(root / "dogs.zip", {"dogs/1.png": image_bytes()})
    write_tree(root, {"birds/1.png": image_bytes(), "dogs/extra.png": image_bytes()})
    (root / "broken.zip").write_bytes(b"this is not a zip")
    ds = read_dataset(root)
    assert ds.counts == {"birds": 1, "cats": 2, "dogs": 2}
    assert sources(ds.samples) == [
        "birds/1.png",
        "cats.zip:1.png",
        "cats.zip:more/2.png",
        "dogs/extra.png",
        "dogs.zip:dogs/1.png",
    ]
    [bad] = ds.rejected
    assert bad.source == "broken.zip" and "not a valid zip" in bad.reason


def test_label_on_a_folder_makes_one_class_of_everything(tmp_path):
    root = write_tree(tmp_path / "data", {"a.png": image_bytes(), "sub/b.png": image_bytes()})
    make_zip(root / "more.zip", {"x/c.png": image_bytes()})
    ds = read_dataset(root, label="cats")
    assert ds.counts == {"cats": 3}
    assert sources(ds.samples) == ["a.png", "sub/b.png", "more.zip:x/c.png"]


def test_zip_nested_inside_a_class_folder_is_rejected(tmp_path):
    root = write_tree(tmp_path / "data", {"cats/a.png": image_bytes(), "dogs/b.png": image_bytes()})
    make_zip(root / "cats" / "inner.zip", {"c.png": image_bytes()})
    assert reasons(read_dataset(root)) == {"cats/inner.zip": "nested archive"}


def test_invalid_class_folder_name_rejects_its_files(tmp_path):
    long_name = "x" * 101
    root = write_tree(
        tmp_path / "data", {"cats/a.png": image_bytes(), f"{long_name}/b.png": image_bytes()}
    )
    ds = read_dataset(root)
    assert ds.classes == ["cats"]
    assert reasons(ds) == {f"{long_name}/b.png": "invalid class name: longer than 100 characters"}


def test_class_names_are_nfc_normalised(tmp_path):
    root = write_tree(
        tmp_path / "data", {"Cafe\u0301/a.png": image_bytes(), "Caf\u00e9/b.png": image_bytes()}
    )
    assert read_dataset(root).counts == {"Caf\u00e9": 2}


def test_symlinks_in_folders_are_not_followed(tmp_path):
    outside = write_tree(tmp_path / "outside", {"secret.png": image_bytes()})
    root = write_tree(tmp_path / "data", {"cats/a.png": image_bytes(), "dogs/b.png": image_bytes()})
    os.symlink(outside / "secret.png", root / "cats" / "link.png")
    os.symlink(outside, root / "linked_class")
    ds = read_dataset(root)
    assert ds.counts == {"cats": 1, "dogs": 1}
    assert reasons(ds) == {"cats/link.png": "symlink", "linked_class": "symlink"}


# --- zips -----------------------------------------------------------------------------------


def test_zip_with_class_folders(tmp_path):
    path = make_zip(
        tmp_path / "set.zip",
        {
            "cats/a.png": image_bytes(),
            "cats/b.png": image_bytes(),
            "dogs/c.png": image_bytes(),
            "README.txt": b"hello",
        },
    )
    ds = read_dataset(path)
    assert ds.counts == {"cats": 2, "dogs": 1}
    assert sources(ds.samples) == ["set.zip:cats/a.png", "set.zip:cats/b.png", "set.zip:dogs/c.png"]
    assert reasons(ds) == {"set.zip:README.txt": "not in a class folder"}


def test_zip_with_a_single_wrapping_folder_is_descended(tmp_path):
    path = make_zip(
        tmp_path / "flowers.zip",
        {
            "flowers/": b"",
            "flowers/roses/a.png": image_bytes(),
            "flowers/tulips/b.png": image_bytes(),
            "flowers/LICENSE": b"CC-BY",
        },
    )
    ds = read_dataset(path)
    assert ds.counts == {"roses": 1, "tulips": 1}
    assert reasons(ds) == {"flowers.zip:flowers/LICENSE": "not in a class folder"}


def test_zip_with_a_single_folder_of_images_is_one_class(tmp_path):
    path = make_zip(
        tmp_path / "upload.zip", {"cats/a.png": image_bytes(), "cats/b.png": image_bytes()}
    )
    assert read_dataset(path).counts == {"cats": 2}


def test_zip_of_loose_images_uses_label_or_stem(tmp_path):
    path = make_zip(tmp_path / "roses.zip", {"a.png": image_bytes(), "b.jpg": image_bytes("JPEG")})
    assert read_dataset(path).counts == {"roses": 2}
    assert read_dataset(path, label="Rosa").counts == {"Rosa": 2}
    with path.open("rb") as fileobj:
        ds = read_zip(fileobj, name="upload.zip", label="Rosa")
    assert sources(ds.samples) == ["upload.zip:a.png", "upload.zip:b.jpg"]


def test_label_puts_every_image_of_a_structured_zip_in_one_class(tmp_path):
    path = make_zip(
        tmp_path / "set.zip", {"cats/a.png": image_bytes(), "dogs/b.png": image_bytes()}
    )
    assert read_zip(path, name="set.zip", label="animals").counts == {"animals": 2}


def test_invalid_label_argument_is_a_value_error(tmp_path):
    path = make_zip(tmp_path / "set.zip", {"a.png": image_bytes()})
    with pytest.raises(ValueError, match="invalid label"):
        read_dataset(path, label="a/b")


def test_unsafe_member_paths_are_rejected_and_the_rest_kept(tmp_path):
    path = make_zip(
        tmp_path / "evil.zip",
        {
            "cats/good.png": image_bytes(),
            "dogs/good.png": image_bytes(),
            "../evil.png": image_bytes(),
            "/abs/evil.png": image_bytes(),
            "cats/../../evil2.png": image_bytes(),
            "..\\evil3.png": image_bytes(),
            "C:/Windows/evil4.png": image_bytes(),
        },
    )
    ds = read_dataset(path)
    assert sources(ds.samples) == ["evil.zip:cats/good.png", "evil.zip:dogs/good.png"]
    assert sorted(reasons(ds).values()) == ["unsafe path"] * 5


def test_backslash_separators_are_accepted_as_folders(tmp_path):
    path = make_zip(
        tmp_path / "win.zip", {"cats\\a.png": image_bytes(), "dogs\\b.png": image_bytes()}
    )
    assert read_dataset(path).counts == {"cats": 1, "dogs": 1}


def test_utf8_names_without_the_utf8_flag_are_not_mojibake(tmp_path):
    path = make_zip(
        tmp_path / "mac.zip", {"cafXY/a.png": image_bytes(), "dogs/b.png": image_bytes()}
    )
    path.write_bytes(path.read_bytes().replace(b"cafXY", "caf\u00e9".encode()))
    assert read_dataset(path).classes == ["caf\u00e9", "dogs"]


def test_symlink_member_is_rejected(tmp_path):
    path = tmp_path / "links.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("cats/a.png", image_bytes())
        link = zipfile.ZipInfo("cats/passwd.png")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    ds = read_dataset(path)
    assert ds.counts == {"cats": 1}
    assert reasons(ds) == {"links.zip:cats/passwd.png": "symlink"}


def test_nested_archives_and_encrypted_members_are_rejected(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("x.png", image_bytes())
    path = tmp_path / "outer.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("cats/a.png", image_bytes())
        archive.writestr("cats/inner.zip", inner.getvalue())
        archive.writestr("cats/more.tar.gz", b"\x1f\x8b")
        archive.writestr("cats/secret.png", image_bytes())
    mark_encrypted(path, "cats/secret.png")
    ds = read_dataset(path)
    assert ds.counts == {"cats": 1}
    assert reasons(ds) == {
        "outer.zip:cats/inner.zip": "nested archive",
        "outer.zip:cats/more.tar.gz": "nested archive",
        "outer.zip:cats/secret.png": "encrypted file",
    }


def test_junk_in_zips_is_reported(tmp_path):
    path = make_zip(
        tmp_path / "mac.zip",
        {
            "cats/a.png": image_bytes(),
            "dogs/b.png": image_bytes(),
            "__MACOSX/cats/._a.png": b"\x00\x05\x16\x07",
            "cats/.DS_Store": b"Bud1",
            "dogs/desktop.ini": b"[.ShellClassInfo]",
        },
    )
    ds = read_dataset(path)
    assert ds.counts == {"cats": 1, "dogs": 1}
    assert reasons(ds) == {
        "mac.zip:__MACOSX/cats/._a.png": "system file",
        "mac.zip:cats/.DS_Store": "system file",
        "mac.zip:dogs/desktop.ini": "system file",
    }


def test_class_without_usable_images_is_absent_and_reported(tmp_path):
    path = make_zip(
        tmp_path / "set.zip",
        {
            "cats/a.png": image_bytes(),
            "dogs/b.png": image_bytes(),
            "fish/x.jpg": b"text",
        },
    )
    ds = read_dataset(path)
    assert ds.classes == ["cats", "dogs"]
    assert reasons(ds) == {
        "set.zip:fish/x.jpg": "not an image",
        "set.zip:fish/": "no usable images",
    }


def test_member_name_with_control_character_is_an_invalid_class(tmp_path):
    path = make_zip(
        tmp_path / "set.zip", {"cats/a.png": image_bytes(), "b\x01d/b.png": image_bytes()}
    )
    ds = read_dataset(path)
    assert ds.classes == ["cats"]
    assert reasons(ds)["set.zip:b\x01d/b.png"].startswith("invalid class name: ")


def test_exact_duplicates_within_and_across_classes(tmp_path):
    same, shared = image_bytes(), image_bytes()
    path = make_zip(
        tmp_path / "dups.zip",
        {
            "cats/a.png": same,
            "cats/a_copy.png": same,
            "cats/shared.png": shared,
            "dogs/shared.png": shared,
            "dogs/own.png": image_bytes(),
        },
    )
    ds = read_dataset(path)
    assert ds.counts == {"cats": 2, "dogs": 1}
    assert ds.duplicates == [
        Duplicate(
            "dups.zip:cats/a_copy.png", "cats", sha256_hex(same), "dups.zip:cats/a.png", "cats"
        ),
        Duplicate(
            "dups.zip:dogs/shared.png",
            "dogs",
            sha256_hex(shared),
            "dups.zip:cats/shared.png",
            "cats",
        ),
    ]
    assert [d.cross_class for d in ds.duplicates] == [False, True]


def test_reading_is_deterministic_whatever_the_member_order(tmp_path):
    members = {f"{cls}/{i}.png": image_bytes() for cls in ("b", "a", "c") for i in (3, 1, 2)}
    one = read_dataset(make_zip(tmp_path / "one.zip", members))
    other = read_dataset(make_zip(tmp_path / "two.zip", members, shuffle=True))
    expected = [f"{cls}/{i}.png" for cls in "abc" for i in (1, 2, 3)]
    assert [s.source.split(":", 1)[1] for s in one.samples] == expected
    assert [s.source.split(":", 1)[1] for s in other.samples] == expected
    assert [s.sha256 for s in one.samples] == [s.sha256 for s in other.samples]


def test_bad_zip_raises_dataset_error_naming_the_file(tmp_path):
    path = tmp_path / "broken.zip"
    path.write_bytes(b"PK\x03\x04 but then nonsense")
    with pytest.raises(DatasetError) as info:
        read_dataset(path)
    assert info.value.source == "broken.zip"
    assert "broken.zip" in str(info.value) and isinstance(info.value, ValueError)


def test_zip_limits(tmp_path):
    path = make_zip(
        tmp_path / "set.zip",
        {
            "cats/a.png": image_bytes(),
            "dogs/b.png": image_bytes(),
            "dogs/zeros.png": bytes(3 * 2**20),
        },
    )
    with pytest.raises(DatasetError, match="too many files in zip: 3"):
        read_dataset(path, limits=ZipLimits(max_members=2))
    with pytest.raises(DatasetError, match="zip too large when uncompressed"):
        read_dataset(path, limits=ZipLimits(max_total_uncompressed=2**20))
    ratio = reasons(read_dataset(path))["set.zip:dogs/zeros.png"]
    assert ratio.startswith("suspicious compression ratio")
    big = reasons(read_dataset(path, limits=ZipLimits(max_member_size=2**20)))
    assert big["set.zip:dogs/zeros.png"] == f"file too large: {3 * 2**20} bytes (limit {2**20})"


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_member_holding_more_than_it_declares_is_rejected_without_inflating_it(tmp_path, method):
    """64 MiB of zeros behind a header that says 100 bytes: refused after reading 101."""
    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w", method) as archive:
        archive.writestr("cats/a.png", image_bytes())
        archive.writestr("cats/liar.png", bytes(64 * 2**20))
        archive.writestr("dogs/b.png", image_bytes())
    declare_member_size(path, "cats/liar.png", 100, zlib.crc32(bytes(100)))
    tracemalloc.start()
    try:
        ds = read_dataset(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ds.counts == {"cats": 1, "dogs": 1}
    assert reasons(ds) == {"liar.zip:cats/liar.png": "declares 100 bytes but holds more"}
    assert peak < 4 * 2**20, f"reading the zip traced {peak} bytes"


def test_member_holding_less_than_it_declares_or_with_a_bad_crc_is_rejected(tmp_path):
    path = make_zip(tmp_path / "short.zip", {"cats/a.png": image_bytes(),
                                              "cats/short.png": bytes(100),
                                              "cats/crc.png": image_bytes()})
    declare_member_size(path, "cats/short.png", 200, zlib.crc32(bytes(200)))
    with zipfile.ZipFile(path) as archive:
        size = archive.getinfo("cats/crc.png").file_size
    declare_member_size(path, "cats/crc.png", size, 12345)
    ds = read_dataset(path)
    assert ds.counts == {"cats": 1}
    assert reasons(ds) == {"short.zip:cats/short.png": "declares 200 bytes but holds only 100",
                           "short.zip:cats/crc.png": "corrupt zip member"}


def test_bzip2_and_lzma_members_are_rejected_unread(tmp_path):
    """zipfile inflates these without an output limit, so they are never opened."""
    path = tmp_path / "methods.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("cats/a.png", image_bytes(), zipfile.ZIP_DEFLATED)
        archive.writestr("cats/b.png", image_bytes(), zipfile.ZIP_BZIP2)
        archive.writestr("cats/c.png", image_bytes(), zipfile.ZIP_LZMA)
    ds = read_dataset(path)
    assert ds.counts == {"cats": 1}
    assert reasons(ds) == {
        "methods.zip:cats/b.png": "unsupported zip compression method: bzip2 (use deflate or store)",
        "methods.zip:cats/c.png": "unsupported zip compression method: lzma (use deflate or store)",
    }


def test_oversized_image_in_a_zip_is_a_member_level_rejection(tmp_path):
    out = io.BytesIO()
    Image.new("RGB", (200, 200)).save(out, format="PNG")
    path = make_zip(
        tmp_path / "set.zip", {"cats/big.png": out.getvalue(), "cats/ok.png": image_bytes()}
    )
    ds = read_dataset(path, max_pixels=10_000)
    assert ds.counts == {"cats": 1}
    assert reasons(ds) == {"set.zip:cats/big.png": "image too large: 200x200 pixels (limit 10000)"}


# --- single files, merging, labels ---------------------------------------------------------


def test_single_image_file_needs_a_label(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(image_bytes("JPEG"))
    with pytest.raises(ValueError, match="needs a label"):
        read_dataset(path)
    ds = read_dataset(path, label="cats")
    assert ds.counts == {"cats": 1} and ds.samples[0].source == "photo.jpg"


def test_read_image_file_rejects_non_images():
    ds = read_image_file(b"hello", name="x.jpg", label="cats")
    assert ds.samples == [] and ds.rejected == [Rejection("x.jpg", "not an image")]


def test_merge_deduplicates_across_datasets():
    shared = image_bytes()
    first = read_image_file(shared, name="a.png", label="cats")
    second = read_image_file(shared, name="b.png", label="dogs").merge(
        read_image_file(image_bytes(), name="c.png", label="dogs")
    )
    merged = first.merge(second)
    assert sources(merged.samples) == ["a.png", "c.png"]
    assert merged.duplicates == [Duplicate("b.png", "dogs", sha256_hex(shared), "a.png", "cats")]
    assert len(merged) == 2 and len(first) == 1


def test_sample_repr_does_not_dump_bytes():
    sample = Sample("ab" * 32, "cats", "x.png", b"\x00" * 10_000)
    assert len(repr(sample)) < 200


@pytest.mark.parametrize(
    "raw, expected",
    [
        (" Caf\u0065\u0301 ", "Caf\u00e9"),
        ("golden retriever", "golden retriever"),
    ],
)
def test_normalize_label(raw, expected):
    assert normalize_label(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "a/b", "a\\b", "tab\there", "x" * 101])
def test_normalize_label_rejects(raw):
    with pytest.raises(ValueError):
        normalize_label(raw)

"""Tests for models.images: safe decoding, mode conversion, resizing, thumbnails."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from models import images
from models.images import (
    MAX_PIXELS,
    ORIGINAL_SIZE,
    ImageRejected,
    decode_image,
    resize_for_model,
    sha256_hex,
    thumbnail_jpeg,
)

pytestmark = pytest.mark.unit

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **params)
    return out.getvalue()


def assert_close(pixel, expected, tol=12):
    diffs = [abs(int(a) - int(b)) for a, b in zip(pixel, expected, strict=True)]
    assert max(diffs) <= tol, (pixel, expected)


def png_with_header(width: int, height: int, bit_depth: int = 1, color_type: int = 0) -> bytes:
    """A PNG whose IHDR declares width x height, with a token IDAT: cheap to build."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def noisy_jpeg(size=(64, 64)) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=90)


# --- formats --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, params",
    [
        ("JPEG", {"quality": 95}),
        ("PNG", {}),
        ("WEBP", {"lossless": True}),
        ("BMP", {}),
        ("TIFF", {}),
        ("GIF", {}),
    ],
)
def test_accepted_formats_decode_to_loaded_rgb(fmt, params):
    data = encode(Image.new("RGB", (30, 20), RED), fmt, **params)
    img = decode_image(data)
    assert img.mode == "RGB"
    assert img.size == (30, 20)
    assert_close(img.getpixel((15, 10)), RED)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (10, 10), RED), Image.new("RGB", (10, 10), BLUE)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    img = decode_image(out.getvalue())
    assert img.mode == "RGB"
    assert_close(img.getpixel((5, 5)), RED)


def test_exif_orientation_6_rotates_the_image():
    stored = Image.new("RGB", (40, 20), RED)
    stored.paste(BLUE, (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored left edge ends up on top
    img = decode_image(encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
    assert img.size == (20, 40)
    assert_close(img.getpixel((10, 5)), RED, tol=30)
    assert_close(img.getpixel((10, 35)), BLUE, tol=30)


def test_cmyk_jpeg_becomes_rgb():
    cmyk_red = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    img = decode_image(encode(cmyk_red, "JPEG", quality=95))
    assert img.mode == "RGB"
    assert_close(img.getpixel((8, 8)), RED, tol=20)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_gradient_stays_a_gradient(fmt):
    gradient = np.tile(np.arange(256, dtype=np.uint16) * 257, (4, 1))
    source = Image.fromarray(gradient)
    assert source.mode.startswith("I;16")
    img = decode_image(encode(source, fmt))
    row = np.asarray(img)[2, :, 0].astype(int)
    assert np.all(np.abs(row - np.arange(256)) <= 1)
    assert np.all(np.diff(row) >= 0)
    assert (np.asarray(img)[..., 0] == np.asarray(img)[..., 2]).all()


def test_palette_transparency_becomes_white():
    img = Image.new("P", (20, 10), 1)
    img.putpalette([0, 0, 0] + list(RED) + [0] * (256 - 2) * 3)
    img.paste(0, (0, 0, 10, 10))
    decoded = decode_image(encode(img, "PNG", transparency=0))
    assert decoded.getpixel((2, 5)) == WHITE
    assert decoded.getpixel((15, 5)) == RED


@pytest.mark.parametrize("mode, color", [("RGBA", (0, 0, 0, 0)), ("LA", (0, 0))])
def test_alpha_is_composited_on_white(mode, color):
    img = Image.new(mode, (8, 8), color)
    assert decode_image(encode(img, "PNG")).getpixel((4, 4)) == WHITE


def test_half_transparent_black_on_white_is_mid_grey():
    img = decode_image(encode(Image.new("RGBA", (4, 4), (0, 0, 0, 128)), "PNG"))
    assert_close(img.getpixel((1, 1)), (127, 127, 127), tol=2)


@pytest.mark.parametrize("mode, color, expected", [("L", 80, (80,) * 3), ("1", 1, WHITE)])
def test_grayscale_and_bilevel_become_rgb(mode, color, expected):
    assert decode_image(encode(Image.new(mode, (8, 8), color), "PNG")).getpixel((3, 3)) == expected


# --- large images: decoded reduced --------------------------------------------------------


@pytest.fixture
def small_limits(monkeypatch):
    """Thresholds scaled down so that a 400x300 image counts as large (reduced to >= 64 px)."""
    monkeypatch.setattr(images, "DECODE_FULL_PIXELS", 10_000)
    monkeypatch.setattr(images, "REDUCED_MIN_SIDE", 64)


def gradient(mode: str, size=(400, 300)) -> Image.Image:
    """A smooth picture: red rising left to right, green top to bottom, alpha varying."""
    x = np.linspace(0, 255, size[0])[None, :].repeat(size[1], 0)
    y = np.linspace(0, 255, size[1])[:, None].repeat(size[0], 1)
    rgba = np.stack([x, y, np.full_like(x, 90), 255 - x / 2], axis=-1).astype(np.uint8)
    return Image.fromarray(rgba, "RGBA").convert(mode)


def test_images_up_to_the_limit_decode_at_full_size_as_before(small_limits):
    data = encode(gradient("RGBA", (100, 100)), "PNG")  # exactly DECODE_FULL_PIXELS
    img = decode_image(data)
    assert img.size == img.info[ORIGINAL_SIZE] == (100, 100)
    reference = Image.alpha_composite(Image.new("RGBA", (100, 100), WHITE + (255,)),
                                      Image.open(io.BytesIO(data))).convert("RGB")
    assert np.array_equal(np.asarray(img), np.asarray(reference))


def test_large_jpeg_is_decoded_reduced_with_its_full_size_recorded(small_limits):
    img = decode_image(encode(gradient("RGB"), "JPEG", quality=95))
    assert img.size == (100, 75)  # libjpeg's 1/4 scale: the most that keeps 66x50 (1/6)
    assert img.info[ORIGINAL_SIZE] == (400, 300)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_orientation_of_a_reduced_image_is_applied(small_limits, fmt):
    stored = Image.new("RGB", (400, 200), RED)
    stored.paste(BLUE, (200, 0, 400, 200))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # the stored left edge ends up on top
    img = decode_image(encode(stored, fmt, exif=exif.tobytes()))
    assert img.info[ORIGINAL_SIZE] == (200, 400)
    assert img.width < img.height < 400
    assert_close(img.getpixel((img.width // 2, 5)), RED, tol=30)
    assert_close(img.getpixel((img.width // 2, img.height - 5)), BLUE, tol=30)


@pytest.mark.parametrize("mode, fmt", [("RGBA", "PNG"), ("LA", "PNG"), ("P", "PNG"),
                                       ("RGB", "PNG"), ("L", "TIFF"), ("CMYK", "TIFF"),
                                       ("I;16", "PNG"), ("I", "TIFF"), ("F", "TIFF")])
def test_reduced_image_looks_like_the_full_one_at_model_size(small_limits, monkeypatch, mode,
                                                             fmt):
    """What a backbone sees (a 64 px input) hardly changes when a large image is reduced."""
    if mode in ("I;16", "I", "F"):  # high-depth grey: values up to 25500
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        source = Image.fromarray(np.asarray(gradient("L")).astype(dtype) * 100)
    else:
        source = gradient("RGBA").convert(mode)
    assert source.mode == mode
    data = encode(source, fmt)
    reduced = decode_image(data)
    assert reduced.mode == "RGB" and reduced.size == (67, 50)  # 400x300 / 6, rounded up
    assert reduced.info[ORIGINAL_SIZE] == (400, 300)
    monkeypatch.setattr(images, "DECODE_FULL_PIXELS", MAX_PIXELS)
    full = decode_image(data)
    assert full.size == (400, 300)
    difference = np.abs(resize_for_model(reduced, 64).astype(int)
                        - resize_for_model(full, 64).astype(int))
    assert difference.mean() < 1 and difference.max() <= 8, (difference.mean(),
                                                                difference.max())


# --- rejections -----------------------------------------------------------------------------


def test_truncated_jpeg_is_rejected():
    data = noisy_jpeg()
    with pytest.raises(ImageRejected) as info:
        decode_image(data[: len(data) // 2])
    assert info.value.reason == "truncated or corrupt image"
    assert isinstance(info.value, ValueError)


def test_truncated_png_is_rejected():
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels), "PNG")
    with pytest.raises(ImageRejected, match="truncated or corrupt image"):
        decode_image(data[: len(data) // 2])


def test_truncation_is_not_globally_tolerated():
    from PIL import ImageFile

    assert not ImageFile.LOAD_TRUNCATED_IMAGES


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"just some text, not a picture\n" * 3, "not an image"),
        (b"", "empty file"),
        (b"%PDF-1.7\n%...", "unsupported image format: PDF"),
        (
            b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>',
            "unsupported image format: SVG",
        ),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "truncated or corrupt image"),
    ],
)
def test_non_images_are_rejected_with_a_reason(data, reason):
    with pytest.raises(ImageRejected) as info:
        decode_image(data)
    assert info.value.reason == reason


def test_other_pillow_formats_are_not_accepted():
    with pytest.raises(ImageRejected, match="unsupported image format: ICO"):
        decode_image(encode(Image.new("RGB", (16, 16), RED), "ICO"))


def test_huge_declared_size_is_rejected_before_decoding(monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixels must not be decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
    with pytest.raises(ImageRejected) as info:
        decode_image(png_with_header(6000, 7000))
    assert info.value.reason == f"image too large: 6000x7000 pixels (limit {MAX_PIXELS})"
    with pytest.raises(ImageRejected) as info:
        decode_image(png_with_header(20000, 20000))
    assert info.value.reason == f"image too large: 400000000 pixels (limit {MAX_PIXELS})"


def test_max_pixels_is_configurable():
    data = encode(Image.new("RGB", (100, 100), RED), "PNG")
    with pytest.raises(ImageRejected, match=r"image too large: 100x100 pixels \(limit 5000\)"):
        decode_image(data, max_pixels=5000)
    assert decode_image(data, max_pixels=10_000).size == (100, 100)


@pytest.mark.parametrize("side", [10_000, 100_000])
def test_pillow_bomb_limits_become_rejections_even_with_a_high_max_pixels(side):
    # 10k x 10k trips Pillow's bomb warning, 100k x 100k its bomb error.
    with pytest.raises(ImageRejected, match="image too large"):
        decode_image(png_with_header(side, side), max_pixels=10**12)


# --- utilities ------------------------------------------------------------------------------


def test_sha256_hex():
    assert sha256_hex(b"abc") == hashlib.sha256(b"abc").hexdigest()


def test_resize_for_model_squashes_to_uint8_square():
    img = Image.new("RGB", (300, 100), RED)
    img.paste(BLUE, (150, 0, 300, 100))
    arr = resize_for_model(img, 64)
    assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8
    assert tuple(arr[32, 5]) == RED and tuple(arr[32, 60]) == BLUE
    arr[0, 0] = 0  # the result is a writable array of its own


def test_resize_for_model_accepts_non_rgb_images():
    arr = resize_for_model(Image.new("L", (10, 20), 7), 8)
    assert arr.shape == (8, 8, 3) and (arr == 7).all()


def test_thumbnail_jpeg_keeps_aspect_ratio():
    thumb = Image.open(io.BytesIO(thumbnail_jpeg(Image.new("RGB", (800, 400), RED))))
    assert thumb.format == "JPEG"
    assert thumb.size == (160, 80)
    small = Image.open(io.BytesIO(thumbnail_jpeg(Image.new("RGBA", (50, 30)), max_side=40)))
    assert small.size == (40, 24)

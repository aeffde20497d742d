"""Safe image decoding and the small image utilities the rest of Transferlab needs.

Everything that turns untrusted bytes into pixels goes through :func:`decode_image`, which
either returns a fully loaded RGB :class:`PIL.Image.Image` or raises :class:`ImageRejected`
with a short human-readable ``reason`` suitable for showing in a report.

Accepted formats: JPEG (including MPO, the multi-picture JPEG some cameras write), PNG,
WebP, BMP, GIF (first frame) and TIFF (first page). Everything else is rejected: other
formats Pillow happens to read (ICO, PSD, JPEG 2000, AVIF, ...) are not offered, so that a
dataset behaves the same on every installation and the attack surface stays small.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

__all__ = [
    "ACCEPTED_FORMATS",
    "IMAGE_EXTENSIONS",
    "DECODE_FULL_PIXELS",
    "MAX_PIXELS",
    "ORIGINAL_SIZE",
    "REDUCED_MIN_SIDE",
    "ImageRejected",
    "decode_image",
    "resize_for_model",
    "sha256_hex",
    "thumbnail_jpeg",
]

MAX_PIXELS = 40_000_000
"""Default limit on width * height of an image, checked before any pixel is decoded."""

DECODE_FULL_PIXELS = 4096 * 3072
"""Images with up to this many pixels (12 Mpixel phone photos, say) are decoded at full size;
larger ones are reduced (see :func:`decode_image`)."""

REDUCED_MIN_SIDE = 2048
"""A reduced image keeps at least this many pixels on its longer side: twice the largest size
the pipeline derives from a decoded image (1024 px previews; thumbnails, near-duplicate hashes
and backbone inputs are all smaller), so every one of them is still a downscale."""

ORIGINAL_SIZE = "original_size"
"""Key of ``Image.info`` holding the (width, height) of the full image, as displayed."""

_STRIP_ROWS = 16  # rows of the reduced image converted at a time: about a MiB of full pixels

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
"""Pillow format names tried when opening; JPEG files with multi-picture data open as MPO."""

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".gif", ".tif", ".tiff"}
)
"""File extensions of the accepted formats. Only a layout hint: decoding goes by content."""

_SIGNATURES = (
    (b"\xff\xd8\xff", None),
    (b"\x89PNG\r\n\x1a\n", None),
    (b"GIF87a", None),
    (b"GIF89a", None),
    (b"BM", None),
    (b"II*\x00", None),
    (b"MM\x00*", None),
    (b"%PDF", "PDF"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
)

_ISO_IMAGE_BRANDS = {
    b"avif": "AVIF", b"avis": "AVIF",
    b"heic": "HEIC", b"heix": "HEIC", b"heim": "HEIC", b"heis": "HEIC", b"mif1": "HEIC",
}

_WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class ImageRejected(ValueError):
    """Raised when bytes cannot be accepted as an image; ``reason`` says why, briefly."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``: the identity of an image file."""
    return hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode untrusted image bytes into a fully loaded RGB image.

    The declared width * height is checked against ``max_pixels`` (and Pillow's own
    decompression-bomb limit) before any pixel data is decoded. Only the first frame of
    animated GIFs / multi-page TIFFs is used. EXIF orientation is applied. Palette,
    grayscale, CMYK, 16-bit and 32-bit modes are converted to 8-bit RGB; transparent pixels
    are composited onto white.

    Images over ``DECODE_FULL_PIXELS`` are returned reduced by the largest integer factor
    that keeps their longer side at least ``REDUCED_MIN_SIDE``, so that decoding one costs
    about its own pixels once rather than several converted copies of them: JPEGs are
    decoded reduced (``Image.draft``), other formats are reduced a strip at a time right
    after decoding. Smaller images are decoded exactly as they are stored.
    ``image.info[ORIGINAL_SIZE]`` is always the full (width, height) after orientation.

    Raises :class:`ImageRejected` with one of these reasons (the web layer may show them):
    ``"empty file"``, ``"not an image"``, ``"unsupported image format: <NAME>"``,
    ``"truncated or corrupt image"``, ``"image too large: <W>x<H> pixels (limit <N>)"``
    (``"image too large: <W*H> pixels (limit <N>)"`` when Pillow's own, higher, bomb limit
    fires first),
    ``"unsupported color mode: <MODE>"``.
    """
    if not data:
        raise ImageRejected("empty file")
    img = _open(data, max_pixels)
    _check_size(img.size, max_pixels)
    full_size = img.size
    factor = _reduction_factor(full_size)
    if factor > 1:
        img.draft(None, (full_size[0] // factor, full_size[1] // factor))  # JPEG only
    try:
        img.load()
    except Image.DecompressionBombError:
        raise ImageRejected(_too_large_reason(img.size, max_pixels)) from None
    except Exception:
        raise ImageRejected("truncated or corrupt image") from None
    factor = _reduction_factor(img.size)  # what draft left to do
    if factor > 1:
        stored = _reduced_rgb(img, factor)
        orientation = _orientation(img)  # the reduced copy carries no EXIF
    else:
        stored, orientation = img, None
    stored_size = stored.size
    rgb = _to_rgb(_apply_orientation(stored, orientation))
    turned = rgb.size != stored_size  # orientation only ever swaps the sides
    rgb.info[ORIGINAL_SIZE] = full_size[::-1] if turned else full_size
    return rgb


def resize_for_model(img: Image.Image, size: int) -> np.ndarray:
    """Squash ``img`` (no crop, aspect ratio not kept) to ``size`` x ``size`` RGB.

    Uses Pillow's BILINEAR filter (which antialiases when downscaling). Returns a new,
    writable ``uint8`` array of shape ``(size, size, 3)``.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    rgb = img if img.mode == "RGB" else _to_rgb(img)
    resized = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.array(resized, dtype=np.uint8)


def thumbnail_jpeg(img: Image.Image, max_side: int = 160) -> bytes:
    """JPEG bytes of a thumbnail of ``img`` whose longer side is at most ``max_side``."""
    if max_side <= 0:
        raise ValueError(f"max_side must be positive, got {max_side}")
    thumb = (img if img.mode == "RGB" else _to_rgb(img)).copy()
    thumb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=85)
    return out.getvalue()


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open (parse headers only) with the accepted formats; map failures to reasons."""
    try:
        # Pillow warns, rather than raises, between 1x and 2x its own pixel limit; a
        # warning would otherwise let a bomb through whenever max_pixels is set above it.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(_bomb_reason(str(exc), max_pixels)) from None
    except UnidentifiedImageError:
        raise ImageRejected(_unidentified_reason(data)) from None
    except Exception:
        raise ImageRejected("truncated or corrupt image") from None


def _unidentified_reason(data: bytes) -> str:
    """Why Pillow could not open ``data``: a damaged accepted format, another format, or junk."""
    head = data[:64]
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "truncated or corrupt image"
    if head[4:8] == b"ftyp" and head[8:12] in _ISO_IMAGE_BRANDS:
        return f"unsupported image format: {_ISO_IMAGE_BRANDS[head[8:12]]}"
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return f"unsupported image format: {name}" if name else "truncated or corrupt image"
    text = data[:2048].lstrip().lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "unsupported image format: SVG"
    return "not an image"


def _bomb_reason(pillow_message: str, max_pixels: int) -> str:
    """Reason for Pillow's own bomb check, which fires before the size is visible to us."""
    match = re.search(r"\((\d+) pixels\)", pillow_message)
    pixels = f"{match.group(1)} pixels" if match else "over the decompression-bomb limit"
    return f"image too large: {pixels} (limit {max_pixels})"


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageRejected("truncated or corrupt image")
    if width * height > max_pixels:
        raise ImageRejected(_too_large_reason(size, max_pixels))


def _too_large_reason(size: tuple[int, int], max_pixels: int) -> str:
    return f"image too large: {size[0]}x{size[1]} pixels (limit {max_pixels})"


def _reduction_factor(size: tuple[int, int]) -> int:
    """1 for an image decoded at full size, else the factor that reduces it (see decode_image)."""
    if size[0] * size[1] <= DECODE_FULL_PIXELS:
        return 1
    return max(1, max(size) // REDUCED_MIN_SIDE)


def _reduced_size(size: tuple[int, int], factor: int) -> tuple[int, int]:
    return (-(-size[0] // factor), -(-size[1] // factor))


def _reduced_rgb(img: Image.Image, factor: int) -> Image.Image:
    """``img`` reduced by ``factor`` (box averages) and converted to RGB, without a full-size copy.

    Converting first and then reducing would hold several full-size copies (RGBA compositing,
    16-bit scaling, and ``Image.reduce`` itself premultiplies alpha into a copy), so strips of
    whole reduction blocks are converted and reduced one at a time.
    """
    if img.mode in ("I", "F"):  # scaled by the whole image's value range: reduce it first
        return _to_rgb(img.reduce(factor))
    width, height = img.size
    out = Image.new("RGB", _reduced_size(img.size, factor))
    step = factor * _STRIP_ROWS
    for top in range(0, height, step):
        strip = _to_rgb(img.crop((0, top, width, min(top + step, height))))
        out.paste(strip.reduce(factor), (0, top // factor))
    return out


def _orientation(img: Image.Image) -> int | None:
    """The EXIF (or XMP) orientation of ``img``; None when absent or unreadable."""
    try:
        return img.getexif().get(ExifTags.Base.Orientation)
    except Exception:
        return None


def _apply_orientation(img: Image.Image, orientation: int | None = None) -> Image.Image:
    """Apply EXIF orientation (``orientation`` when given: ``img`` was made from the decoded
    image and carries none); a malformed EXIF block leaves the image as stored."""
    try:
        if orientation is not None:
            img.getexif()[ExifTags.Base.Orientation] = orientation
        ImageOps.exif_transpose(img, in_place=True)  # not a copy of a possibly large image
    except Exception:
        pass
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency onto white."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img), mode), "L").convert("RGB")
    try:
        if mode in ("LA", "La", "PA", "RGBa", "RGBA") or (
            mode in ("1", "L", "P", "RGB") and "transparency" in img.info
        ):
            return _flatten_on_white(img)
        return img.convert("RGB")
    except (ValueError, OSError):
        raise ImageRejected(f"unsupported color mode: {mode}") from None


def _flatten_on_white(img: Image.Image) -> Image.Image:
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")  # convert() would copy an RGBA
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale single-channel high-depth pixel values to 0..255.

    16-bit modes map 0..65535 linearly onto 0..255. For 32-bit integer / float images the
    bit depth is unknown, so the value range decides: 0..255 is kept, 0..65535 is treated as
    16-bit, floats within 0..1 are scaled by 255, anything else is min-max stretched.
    """
    if mode in _SIXTEEN_BIT_MODES:
        return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    values = np.where(finite, values, 0.0)
    low, high = float(values.min()), float(values.max())
    if low >= 0 and high <= 1.0 and mode == "F":
        scaled = values * 255.0
    elif low >= 0 and high <= 255:
        scaled = values
    elif low >= 0 and high <= 65535:
        scaled = values / 257.0
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)

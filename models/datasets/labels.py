"""Class names and file names: what a valid label is, and the name a streamed file goes by."""

from __future__ import annotations

import unicodedata
from pathlib import PurePosixPath

MAX_LABEL_LENGTH = 100


def normalize_label(raw: str) -> str:
    """Return the canonical form of a class name, or raise ``ValueError(<why>)``.

    NFC-normalised and stripped; must be non-empty, at most ``MAX_LABEL_LENGTH``
    characters, without control characters, '/' or '\\'.
    """
    label = unicodedata.normalize("NFC", raw).strip()
    if not label:
        raise ValueError("empty")
    if len(label) > MAX_LABEL_LENGTH:
        raise ValueError(f"longer than {MAX_LABEL_LENGTH} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in label):
        raise ValueError("contains control or undecodable characters")
    if "/" in label or "\\" in label:
        raise ValueError("contains '/' or '\\'")
    return label


def user_label(label: str | None, *, blank_is_none: bool = False) -> str | None:
    """Normalise a caller-supplied class name (see :func:`normalize_label`).

    ``None`` (and, with ``blank_is_none``, an empty or all-whitespace string) means "no
    label" and gives ``None``; an invalid label raises ``ValueError("invalid label <repr>:
    <why>")``.
    """
    if label is None or (blank_is_none and not label.strip()):
        return None
    try:
        return normalize_label(label)
    except ValueError as exc:
        raise ValueError(f"invalid label {label!r}: {exc}") from None


def stream_name(filename: str | None, index: int) -> str:
    """A file's name as sources report it: the client's name without any folder part
    ('/' or '\\'), stripped; ``"upload-<index + 1>"`` when nothing is left. Never a path."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name.strip()
    return name or f"upload-{index + 1}"

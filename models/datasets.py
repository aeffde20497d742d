"""Reading labelled image datasets from folders, zips and single files.

Accepted layouts (see :func:`read_dataset`):

* a folder of class folders (class = folder name; files nested deeper count for the
  top-level class folder);
* a folder of zips, one per class (class = zip stem, as IBM Watson did it); class folders
  and class zips may be mixed;
* a zip whose top-level folders are the classes; a zip holding a single wrapping folder
  (what zipping a dataset folder produces) is descended into;
* a zip (or folder) of loose images: one class, named by ``label`` or the container's stem;
* a single image file with an explicit ``label``.

Passing ``label`` always means "everything in here is this class": any folder structure
inside is ignored and every image at any depth gets ``label``.

Nothing is extracted to disk. Zip members are read into memory one at a time, and only the
bytes of accepted samples are kept; or none at all when streaming (``on_sample``: each accepted
sample is handed over with its decoded image as soon as it is read, and memory does not grow
with the zip). A member is never inflated past the size its header declares (one byte past it
shows a lie, and rejects the member), so memory is bounded by ``ZipLimits.max_member_size``
whatever the compressed data holds; only stored and deflated members are read. Problems with
individual files never abort a read:
each skipped file becomes a :class:`Rejection` with a short reason, and exact copies of an
already accepted image become :class:`Duplicate` reports. Only a container that cannot be
read at all (not a zip, over the zip limits) raises :class:`DatasetError`.

Reading order is deterministic: entries are visited sorted by path, and when an image
appears twice the first one visited is kept.
"""

from __future__ import annotations

import copy
import os
import re
import stat
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from PIL import Image

from .images import IMAGE_EXTENSIONS, MAX_PIXELS, ImageRejected, decode_image, sha256_hex

__all__ = [
    "MAX_LABEL_LENGTH",
    "NEEDS_A_CLASS",
    "ZIP_SIGNATURES",
    "Dataset",
    "DatasetError",
    "Duplicate",
    "Rejection",
    "Sample",
    "SampleSink",
    "ZipLimits",
    "looks_like_zip",
    "normalize_label",
    "read_dataset",
    "read_image_file",
    "read_stream",
    "read_zip",
    "stream_name",
    "user_label",
]

MAX_LABEL_LENGTH = 100

_SYSTEM_FILE_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
_ARCHIVE_EXTENSIONS = frozenset(
    {".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar"}
)
ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_ZIP_FLAG_ENCRYPTED = 0x1
_ZIP_FLAG_UTF8 = 0x800
_BOUNDED_COMPRESSION = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})


class DatasetError(ValueError):
    """A whole input could not be read (e.g. not a zip, over the zip limits).

    ``source`` names the file, ``reason`` says why; ``str()`` gives ``"<source>: <reason>"``.
    """

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class ZipLimits:
    """Safety limits for reading zips (``max_member_size`` also caps files read from folders).

    ``max_members`` and ``max_total_uncompressed`` apply to the whole zip (exceeding them
    raises :class:`DatasetError`); the others reject single members. The compression ratio
    (uncompressed / compressed) is only checked for members larger than ``ratio_min_size``.
    """

    max_members: int = 20_000
    max_total_uncompressed: int = 2 * 1024**3
    max_member_size: int = 100 * 1024**2
    max_ratio: float = 200.0
    ratio_min_size: int = 1024**2


@dataclass(frozen=True)
class Sample:
    """One accepted image.

    ``sha256`` (hex, of the file bytes) is the image's identity; ``label`` is the normalised
    class name; ``source`` says where it came from, for reports (``"cats.zip:cats/1.jpg"``,
    ``"dogs/a.png"``); ``data`` is the original file, already validated as decodable.
    """

    sha256: str
    label: str
    source: str
    data: bytes = field(repr=False)

    def without_data(self) -> Sample:
        """The same sample without its bytes (``data == b""``): what a streaming read keeps."""
        return Sample(self.sha256, self.label, self.source, b"")

    def image(self, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
        """The decoded RGB image (see :func:`models.images.decode_image`)."""
        return decode_image(self.data, max_pixels=max_pixels)


@dataclass(frozen=True)
class Rejection:
    """A file (or folder, or whole zip) that contributed no sample, and why."""

    source: str
    reason: str


@dataclass(frozen=True)
class Duplicate:
    """An exact copy (same sha256) of an already accepted sample; it was dropped.

    When ``label != kept_label`` it is a cross-class duplicate: the same image was filed
    under two classes, and only the first one visited (``kept_*``) was kept.
    """

    source: str
    label: str
    sha256: str
    kept_source: str
    kept_label: str

    @property
    def cross_class(self) -> bool:
        return self.label != self.kept_label


@dataclass
class Dataset:
    """Accepted samples (unique by sha256) plus reports on what was skipped."""

    samples: list[Sample] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        """Sorted distinct labels of the samples."""
        return sorted({s.label for s in self.samples})

    @property
    def counts(self) -> dict[str, int]:
        """Number of samples per label, keys in sorted order."""
        counts = {label: 0 for label in self.classes}
        for sample in self.samples:
            counts[sample.label] += 1
        return counts

    @property
    def labels(self) -> list[str]:
        """Label of each sample, in sample order."""
        return [s.label for s in self.samples]

    def merge(self, other: Dataset) -> Dataset:
        """A new dataset: this one's samples, then ``other``'s that are not already here.

        Samples of ``other`` whose sha256 is already present become :class:`Duplicate`
        reports; rejections and duplicates of both are carried over.
        """
        collector = _Collector(MAX_PIXELS)
        collector.extend(self)
        collector.extend(other)
        return collector.dataset()

    def __len__(self) -> int:
        return len(self.samples)


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


def looks_like_zip(name: str, head: bytes) -> bool:
    """Whether a file is read as a zip: ``name`` ends in ``.zip`` (any case), or ``head``
    (its first bytes, at least 4 for a fair answer) starts with a zip signature."""
    return name.lower().endswith(".zip") or head[:4] in ZIP_SIGNATURES


def read_dataset(
    path: str | os.PathLike[str],
    *,
    label: str | None = None,
    max_pixels: int = MAX_PIXELS,
    limits: ZipLimits = ZipLimits(),
) -> Dataset:
    """Read a dataset from a folder, a zip or a single image file (layouts: module doc).

    A file is read as a zip when its name ends in ``.zip`` or its content starts with a zip
    signature; any other file is a single image and needs ``label`` (``ValueError``
    otherwise). An invalid ``label`` raises ``ValueError``; an unreadable zip raises
    :class:`DatasetError`; a missing path raises ``FileNotFoundError``.
    """
    path = Path(path)
    forced = user_label(label)
    if path.is_dir():
        return _read_folder(path, forced_label=forced, max_pixels=max_pixels, limits=limits)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if _is_zip_file(path):
        with path.open("rb") as fileobj:
            return read_zip(fileobj, name=path.name, label=forced, max_pixels=max_pixels,
                            limits=limits)
    if forced is None:
        raise ValueError(f"{path.name}: a single image needs a label")
    size = path.stat().st_size
    if size > limits.max_member_size:
        return Dataset(rejected=[Rejection(path.name, _too_big_reason(size, limits))])
    return read_image_file(path.read_bytes(), name=path.name, label=forced,
                           max_pixels=max_pixels)


NEEDS_A_CLASS = "an image needs a class: send it with a label, or inside a zip"


def read_stream(
    stream: BinaryIO,
    *,
    name: str,
    label: str | None = None,
    max_pixels: int = MAX_PIXELS,
    limits: ZipLimits = ZipLimits(),
    on_sample: SampleSink | None = None,
) -> Dataset:
    """Read one file handed over as a seekable binary stream (an upload): a zip in any
    layout :func:`read_zip` reads, or a single image.

    It is a zip when :func:`looks_like_zip` says so from ``name`` and its first bytes.
    Anything else is one image named ``name``: over ``limits.max_member_size`` it is
    rejected "file too large: ...", without ``label`` rejected :data:`NEEDS_A_CLASS`.
    A zip that cannot be read at all (:class:`DatasetError`) becomes a rejection too, so
    every problem with the content is in the returned dataset; only an invalid ``label``
    raises (``ValueError``). ``on_sample`` streams accepted samples as in :func:`read_zip`.
    """
    head = stream.read(4)
    stream.seek(0)
    try:
        if looks_like_zip(name, head):
            return read_zip(stream, name=name, label=label, max_pixels=max_pixels, limits=limits,
                            on_sample=on_sample)
        stream.seek(0, os.SEEK_END)
        size = stream.tell()
        stream.seek(0)
        if size > limits.max_member_size:
            return Dataset(rejected=[Rejection(name, _too_big_reason(size, limits))])
        if label is None:
            return Dataset(rejected=[Rejection(name, NEEDS_A_CLASS)])
        return read_image_file(stream.read(), name=name, label=label, max_pixels=max_pixels,
                               on_sample=on_sample)
    except DatasetError as exc:
        return Dataset(rejected=[Rejection(exc.source, exc.reason)])


SampleSink = Callable[[Sample, Image.Image], None]
"""Receives each accepted sample (with its bytes) and its decoded RGB image, in reading order."""


def read_zip(
    fileobj_or_path: str | os.PathLike[str] | BinaryIO,
    *,
    name: str,
    label: str | None = None,
    max_pixels: int = MAX_PIXELS,
    limits: ZipLimits = ZipLimits(),
    on_sample: SampleSink | None = None,
) -> Dataset:
    """Read one zip (a path or a seekable binary file object) with the zip layout rules.

    ``name`` prefixes every source (``"<name>:<member path>"``) and, through its stem, is
    the class of a zip of loose images when ``label`` is not given. Raises
    :class:`DatasetError` if the zip cannot be read or exceeds ``limits``, ``ValueError``
    for an invalid ``label``.

    Streaming: with ``on_sample``, each accepted sample is passed to it (bytes and decoded
    image) the moment it is accepted, and the returned dataset's samples carry no bytes
    (``data == b""``), so memory stays flat however many images the zip holds. Rejections
    and duplicates are reported exactly as without it. An exception from ``on_sample``
    ends the read (what it already received stays received).
    """
    forced = user_label(label)
    collector = _Collector(max_pixels, on_sample)
    _read_zip_into(collector, fileobj_or_path, name=name, forced_label=forced, limits=limits)
    return collector.dataset()


def read_image_file(
    data: bytes, *, name: str, label: str, max_pixels: int = MAX_PIXELS,
    on_sample: SampleSink | None = None,
) -> Dataset:
    """A dataset of one sample (``source`` = ``name``), or of one rejection if not usable.

    ``on_sample`` as in :func:`read_zip`. Raises ``ValueError`` for an invalid ``label``.
    """
    forced = user_label(label)
    if forced is None:
        raise ValueError(f"{name}: a single image needs a label")
    collector = _Collector(max_pixels, on_sample)
    collector.add(data, label=forced, source=name)
    return collector.dataset()


# --- collecting samples -------------------------------------------------------------------


class _ReadFailed(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Entry:
    """A file inside a container, positioned by ``parts`` (its path relative to the root).

    ``problem`` is a rejection reason known before reading; ``path`` is set for files on
    disk (needed to open class zips).
    """

    parts: tuple[str, ...]
    source: str
    read: Callable[[], bytes] | None = None
    problem: str | None = None
    path: Path | None = None


class _Collector:
    """Accumulates samples, rejections and duplicates, deduplicating by sha256. With
    ``on_sample``, accepted samples go there and are kept without their bytes."""

    def __init__(self, max_pixels: int, on_sample: SampleSink | None = None):
        self.max_pixels = max_pixels
        self.on_sample = on_sample
        self.samples: list[Sample] = []
        self.rejected: list[Rejection] = []
        self.duplicates: list[Duplicate] = []
        self._kept: dict[str, Sample] = {}

    def reject(self, source: str, reason: str) -> None:
        self.rejected.append(Rejection(source, reason))

    def offer(self, entry: _Entry, label: str) -> None:
        if entry.problem is not None or entry.read is None:
            self.reject(entry.source, entry.problem or "not a file")
            return
        try:
            data = entry.read()
        except _ReadFailed as exc:
            self.reject(entry.source, exc.reason)
            return
        self.add(data, label=label, source=entry.source)

    def add(self, data: bytes, *, label: str, source: str) -> None:
        sha = sha256_hex(data)
        if self._is_duplicate(sha, label, source):
            return
        try:
            image = decode_image(data, max_pixels=self.max_pixels)
        except ImageRejected as exc:
            self.reject(source, exc.reason)
            return
        sample = Sample(sha256=sha, label=label, source=source, data=data)
        if self.on_sample is not None:
            self.on_sample(sample, image)
            sample = sample.without_data()
        self._keep(sample)

    def extend(self, dataset: Dataset) -> None:
        """Add already validated samples and carry over the reports."""
        self.rejected.extend(dataset.rejected)
        self.duplicates.extend(dataset.duplicates)
        for sample in dataset.samples:
            if not self._is_duplicate(sample.sha256, sample.label, sample.source):
                self._keep(sample)

    def dataset(self) -> Dataset:
        return Dataset(list(self.samples), list(self.rejected), list(self.duplicates))

    def _is_duplicate(self, sha: str, label: str, source: str) -> bool:
        kept = self._kept.get(sha)
        if kept is None:
            return False
        self.duplicates.append(Duplicate(source, label, sha, kept.source, kept.label))
        return True

    def _keep(self, sample: Sample) -> None:
        self._kept[sample.sha256] = sample
        self.samples.append(sample)


# --- layout -------------------------------------------------------------------------------


def _assemble(
    entries: list[_Entry],
    collector: _Collector,
    *,
    forced_label: str | None,
    default_label: str,
    root_source: str,
    group_source: Callable[[str], str],
    open_class_zip: Callable[[_Entry, str], None] | None = None,
) -> None:
    """Assign entries (sorted by parts) to classes following the layout rules, and read them.

    ``group_source`` maps a folder path relative to the root to its report source;
    ``open_class_zip`` is given for folders, where top-level zips are classes.
    """
    entries = _drop_junk(entries, collector)
    allow_zips = open_class_zip is not None
    if forced_label is not None:
        zips = [e for e in entries if allow_zips and _is_class_zip(e)]
        files = [e for e in entries if not (allow_zips and _is_class_zip(e))]
        _read_group(files, collector, forced_label, root_source)
        for entry in zips:
            open_class_zip(entry, forced_label)
        return

    entries, wrapper = _unwrap(entries, collector, allow_zips)
    dirs: dict[str, list[_Entry]] = {}
    zips: dict[str, _Entry] = {}
    loose: list[_Entry] = []
    for entry in entries:
        if len(entry.parts) > 1:
            dirs.setdefault(entry.parts[0], []).append(entry)
        elif allow_zips and _is_class_zip(entry):
            zips[entry.parts[0]] = entry
        else:
            loose.append(entry)

    if not dirs and not zips:
        _read_labelled_group(loose, collector, default_label, root_source)
        return
    for entry in loose:
        collector.reject(entry.source, entry.problem or "not in a class folder")
    for top in sorted(set(dirs) | set(zips)):
        if top in zips:
            _read_class_zip(zips[top], collector, open_class_zip)
        else:
            source = group_source("/".join((*wrapper, top)) + "/")
            _read_labelled_group(dirs[top], collector, top, source)


def _drop_junk(entries: list[_Entry], collector: _Collector) -> list[_Entry]:
    kept = []
    for entry in entries:
        reason = _junk_reason(entry.parts)
        if reason is None:
            kept.append(entry)
        else:
            collector.reject(entry.source, reason)
    return kept


def _junk_reason(parts: Iterable[str]) -> str | None:
    """Reason to skip a path: "system file" for OS metadata (__MACOSX, ._*, .DS_Store, ...),
    "hidden file" for other dotfiles and anything inside a dot-folder; None otherwise."""
    hidden = False
    for part in parts:
        if part == "__MACOSX" or part.startswith("._") or part.lower() in _SYSTEM_FILE_NAMES:
            return "system file"
        hidden = hidden or part.startswith(".")
    return "hidden file" if hidden else None


def _unwrap(
    entries: list[_Entry], collector: _Collector, allow_zips: bool
) -> tuple[list[_Entry], list[str]]:
    """Descend into single wrapping folders that hold the class folders.

    A top level is a wrapper when it has exactly one folder, no image (or class zip) files
    beside it, and that folder holds sub-folders (or class zips) but no images directly.
    Other files beside a wrapper (README, ...) are rejected as "not in a class folder".
    """
    wrapper: list[str] = []
    while True:
        top_dirs = {e.parts[0] for e in entries if len(e.parts) > 1}
        top_files = [e for e in entries if len(e.parts) == 1]
        if len(top_dirs) != 1 or any(_is_candidate(e, allow_zips) for e in top_files):
            return entries, wrapper
        inner = [e.parts[1:] for e in entries if len(e.parts) > 1]
        holds_classes = any(
            len(p) > 1 or (allow_zips and _has_suffix(p[0], {".zip"})) for p in inner
        )
        holds_images = any(len(p) == 1 and _has_suffix(p[0], IMAGE_EXTENSIONS) for p in inner)
        if not holds_classes or holds_images:
            return entries, wrapper
        for entry in top_files:
            collector.reject(entry.source, entry.problem or "not in a class folder")
        wrapper.append(top_dirs.pop())
        entries = [
            _Entry(e.parts[1:], e.source, e.read, e.problem, e.path)
            for e in entries
            if len(e.parts) > 1
        ]


def _read_labelled_group(
    entries: list[_Entry], collector: _Collector, raw_label: str, source: str
) -> None:
    try:
        label = normalize_label(raw_label)
    except ValueError as exc:
        for entry in entries:
            collector.reject(entry.source, entry.problem or f"invalid class name: {exc}")
        return
    _read_group(entries, collector, label, source)


def _read_group(entries: list[_Entry], collector: _Collector, label: str, source: str) -> None:
    """Read one class's files; report the group if it had files but yielded no sample."""
    before = len(collector.samples)
    for entry in entries:
        collector.offer(entry, label)
    if entries and len(collector.samples) == before:
        collector.reject(source, "no usable images")


def _read_class_zip(
    entry: _Entry, collector: _Collector, open_class_zip: Callable[[_Entry, str], None]
) -> None:
    try:
        label = normalize_label(PurePosixPath(entry.parts[-1]).stem)
    except ValueError as exc:
        collector.reject(entry.source, f"invalid class name: {exc}")
        return
    open_class_zip(entry, label)


def _is_candidate(entry: _Entry, allow_zips: bool) -> bool:
    """Whether a file looks like dataset content (an image, or a class zip in a folder)."""
    name = entry.parts[-1]
    return _has_suffix(name, IMAGE_EXTENSIONS) or (allow_zips and _has_suffix(name, {".zip"}))


def _is_class_zip(entry: _Entry) -> bool:
    return (
        len(entry.parts) == 1
        and entry.problem is None
        and entry.path is not None
        and _has_suffix(entry.parts[0], {".zip"})
    )


def _has_suffix(name: str, suffixes: Iterable[str]) -> bool:
    return PurePosixPath(name).suffix.lower() in suffixes


def _too_big_reason(size: int, limits: ZipLimits) -> str:
    return f"file too large: {size} bytes (limit {limits.max_member_size})"


# --- folders ------------------------------------------------------------------------------


def _read_folder(
    root: Path, *, forced_label: str | None, max_pixels: int, limits: ZipLimits
) -> Dataset:
    collector = _Collector(max_pixels)

    def open_class_zip(entry: _Entry, label: str) -> None:
        try:
            _read_zip_into(collector, entry.path, name=entry.source, forced_label=label,
                           limits=limits)
        except DatasetError as exc:
            collector.reject(exc.source, exc.reason)

    _assemble(
        _folder_entries(root, limits),
        collector,
        forced_label=forced_label,
        default_label=root.resolve().name,
        root_source=_printable(root.resolve().name) + "/",
        group_source=_printable,
        open_class_zip=open_class_zip,
    )
    return collector.dataset()


def _folder_entries(root: Path, limits: ZipLimits) -> list[_Entry]:
    """All files under ``root`` sorted by path; junk folders are listed once, not walked.

    Symlinks (to files or folders) are not followed and are rejected, so that a dataset
    folder cannot expose files from elsewhere on the machine.
    """
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath).relative_to(root).parts
        for name in list(dirnames):
            path = Path(dirpath, name)
            if path.is_symlink():
                entries.append(_Entry((*base, name), _rel_source(base, name), problem="symlink"))
                dirnames.remove(name)
            elif _junk_reason([name]) is not None:
                entries.append(_Entry((*base, name), _rel_source(base, name) + "/"))
                dirnames.remove(name)
        for name in filenames:
            entries.append(_folder_file_entry(Path(dirpath, name), (*base, name), limits))
    entries.sort(key=lambda e: e.parts)
    return entries


def _folder_file_entry(path: Path, parts: tuple[str, ...], limits: ZipLimits) -> _Entry:
    entry = _Entry(parts, _rel_source(parts[:-1], parts[-1]), path=path)
    try:
        info = path.lstat()
    except OSError as exc:
        entry.problem = f"unreadable file: {exc.strerror}"
        return entry
    if stat.S_ISLNK(info.st_mode):
        entry.problem = "symlink"
    elif not stat.S_ISREG(info.st_mode):
        entry.problem = "not a regular file"
    elif _has_suffix(parts[-1], {".zip"}):
        # Only known after layout: a zip is a class at the top level, nested anywhere else.
        entry.read = _refuse_nested_archive
    elif _has_suffix(parts[-1], _ARCHIVE_EXTENSIONS):
        entry.problem = "nested archive"
    elif info.st_size > limits.max_member_size:
        entry.problem = _too_big_reason(info.st_size, limits)
    else:
        entry.read = lambda: _read_disk_file(path)
    return entry


def _refuse_nested_archive() -> bytes:
    raise _ReadFailed("nested archive")


def _read_disk_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _ReadFailed(f"unreadable file: {exc.strerror}") from None


def _rel_source(base: Iterable[str], name: str) -> str:
    return _printable("/".join((*base, name)))


def _printable(text: str) -> str:
    """Replace undecodable filename bytes (surrogate escapes) so sources are valid UTF-8."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _is_zip_file(path: Path) -> bool:
    # The suffix, not the whole name: a file named just ".zip" is a hidden file, not a zip.
    if looks_like_zip(path.suffix, b""):
        return True
    with path.open("rb") as fileobj:
        return looks_like_zip("", fileobj.read(4))


# --- zips ---------------------------------------------------------------------------------


def _read_zip_into(
    collector: _Collector,
    fileobj_or_path: str | os.PathLike[str] | BinaryIO,
    *,
    name: str,
    forced_label: str | None,
    limits: ZipLimits,
) -> None:
    try:
        _check_declared_member_count(fileobj_or_path, limits)
        archive = zipfile.ZipFile(fileobj_or_path)
    except _ZipTooLarge as exc:
        raise DatasetError(name, exc.reason) from None
    except zipfile.BadZipFile as exc:
        raise DatasetError(name, f"not a valid zip file ({exc})") from None
    except (OSError, EOFError, ValueError) as exc:
        raise DatasetError(name, f"unreadable zip file ({exc})") from None
    with archive:
        entries = _zip_entries(archive, name, collector, limits)
        _assemble(
            entries,
            collector,
            forced_label=forced_label,
            default_label=PurePosixPath(name).stem,
            root_source=name,
            group_source=lambda rel: f"{name}:{rel}",
        )


def _check_declared_member_count(fileobj_or_path, limits: ZipLimits) -> None:
    """Refuse zips declaring too many members before zipfile parses every directory entry.

    Uses zipfile's internal end-of-central-directory reader when present; if that ever
    disappears the same limit is still enforced after parsing.
    """
    end_record_reader = getattr(zipfile, "_EndRecData", None)
    if end_record_reader is None:
        return
    if isinstance(fileobj_or_path, (str, os.PathLike)):
        with open(fileobj_or_path, "rb") as fileobj:
            end_record = end_record_reader(fileobj)
    else:
        position = fileobj_or_path.tell()
        end_record = end_record_reader(fileobj_or_path)
        fileobj_or_path.seek(position)
    if end_record is None:
        raise zipfile.BadZipFile("end of central directory not found")
    _check_member_count(end_record[getattr(zipfile, "_ECD_ENTRIES_TOTAL", 4)], limits)


def _check_member_count(count: int, limits: ZipLimits) -> None:
    if count > limits.max_members:
        raise _ZipTooLarge(f"too many files in zip: {count} (limit {limits.max_members})")


class _ZipTooLarge(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _zip_entries(
    archive: zipfile.ZipFile, name: str, collector: _Collector, limits: ZipLimits
) -> list[_Entry]:
    """Entries for the zip's files, sorted by path; unsafe paths are rejected right away."""
    infos = archive.infolist()
    try:
        _check_member_count(len(infos), limits)
        total = sum(info.file_size for info in infos)
        if total > limits.max_total_uncompressed:
            raise _ZipTooLarge(
                f"zip too large when uncompressed: {total} bytes "
                f"(limit {limits.max_total_uncompressed})"
            )
    except _ZipTooLarge as exc:
        raise DatasetError(name, exc.reason) from None
    keyed, folders = [], []
    for index, info in enumerate(infos):
        if info.is_dir():
            folders.append(_member_name(info))
            continue
        member = _member_name(info)
        source = f"{name}:{member}"
        parts = _safe_parts(member)
        if parts is None:
            collector.reject(source, "unsafe path")
            continue
        entry = _Entry(parts, source, problem=_member_problem(info, parts[-1], limits))
        if entry.problem is None:
            entry.read = _member_reader(archive, info)
        keyed.append(((parts, index), entry))
    keyed.sort(key=lambda item: item[0])
    entries = [entry for _, entry in keyed]
    _reject_empty_folders(folders, entries, name, collector)
    if not entries and not collector.rejected:
        collector.reject(name, "empty zip: it holds no files")
    return entries


def _reject_empty_folders(
    folders: list[str], entries: list[_Entry], name: str, collector: _Collector
) -> None:
    """Report folder members with no file under them (an empty class is never silent)."""
    filled = {entry.parts[:depth] for entry in entries for depth in range(1, len(entry.parts))}
    for member in sorted(folders):
        parts = _safe_parts(member)
        if parts is None:
            collector.reject(f"{name}:{member}", "unsafe path")
        elif parts not in filled and _junk_reason(parts) is None:
            collector.reject(f"{name}:{member}", "empty folder")


def _member_name(info: zipfile.ZipInfo) -> str:
    """The member's path, fixing UTF-8 names stored without the UTF-8 flag (common on
    macOS/Windows tools), which zipfile would otherwise decode as cp437 mojibake."""
    if info.flag_bits & _ZIP_FLAG_UTF8:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("utf-8")
    except UnicodeError:
        return info.filename


def _safe_parts(member: str) -> tuple[str, ...] | None:
    """Path components of a member, or None if it is absolute or escapes the root.

    Backslashes count as separators (old Windows tools write them), so ``..\\x`` is caught.
    """
    if "\x00" in member:
        return None
    path = member.replace("\\", "/")
    if path.startswith("/") or _DRIVE_LETTER.match(path):
        return None
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    if not parts or ".." in parts:
        return None
    return parts


def _member_problem(info: zipfile.ZipInfo, filename: str, limits: ZipLimits) -> str | None:
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symlink"
    if info.flag_bits & _ZIP_FLAG_ENCRYPTED:
        return "encrypted file"
    if info.compress_type not in _BOUNDED_COMPRESSION:
        # zipfile inflates bzip2 and LZMA without an output limit: a few KiB can become GiB.
        method = zipfile.compressor_names.get(info.compress_type, str(info.compress_type))
        return f"unsupported zip compression method: {method} (use deflate or store)"
    if _has_suffix(filename, _ARCHIVE_EXTENSIONS):
        return "nested archive"
    if info.file_size > limits.max_member_size:
        return _too_big_reason(info.file_size, limits)
    if (
        info.file_size > limits.ratio_min_size
        and info.file_size > limits.max_ratio * max(info.compress_size, 1)
    ):
        ratio = info.file_size // max(info.compress_size, 1)
        return f"suspicious compression ratio: {ratio}:1 (limit {limits.max_ratio:g}:1)"
    return None


def _member_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            return _read_member(archive, info)
        except NotImplementedError:
            raise _ReadFailed("unsupported zip compression method") from None
        except RuntimeError:
            raise _ReadFailed("encrypted file") from None
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError):
            raise _ReadFailed("corrupt zip member") from None

    return read


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The member's bytes, inflating at most one byte more than its header declares.

    The header's size cannot be trusted: ``ZipFile.read`` inflates up to 1 GiB per step
    before cutting the data to the declared size, so a member declaring 100 bytes can cost
    gigabytes. Here zipfile is asked for ``file_size + 1`` bytes of a copy of ``info`` that
    declares one byte more (``ZipExtFile.read(n)`` never inflates much beyond ``n``), so the
    extra byte proves the lie. The declared size was already checked against the limits.
    Raises :class:`_ReadFailed` for a size mismatch, ``zipfile.BadZipFile`` for a bad CRC.
    """
    declared = info.file_size
    probe = copy.copy(info)
    probe.file_size = declared + 1
    del probe.CRC  # zipfile would check it against the wrong length; checked below instead
    with archive.open(probe) as member:
        data = member.read(declared + 1)
    if len(data) > declared:
        raise _ReadFailed(f"declares {declared} bytes but holds more")
    if len(data) < declared:
        raise _ReadFailed(f"declares {declared} bytes but holds only {len(data)}")
    if zlib.crc32(data) != info.CRC:
        raise zipfile.BadZipFile(f"bad CRC-32 for {info.filename!r}")
    return data

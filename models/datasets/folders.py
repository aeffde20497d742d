"""Reading datasets from folders on disk: the files under a root, with symlinks and special
files rejected (never followed), oversized files rejected unread, and top-level zips read as
classes (:func:`~models.datasets.zips.read_zip_into`)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from .layout import ARCHIVE_EXTENSIONS, assemble, has_suffix, junk_reason
from .samples import Collector, Dataset, DatasetError, Entry, ReadFailed
from .zips import ZipLimits, read_zip_into, too_big_reason


def read_folder(
    root: Path, *, forced_label: str | None, max_pixels: int, limits: ZipLimits
) -> Dataset:
    collector = Collector(max_pixels)

    def open_class_zip(entry: Entry, label: str) -> None:
        try:
            read_zip_into(collector, entry.path, name=entry.source, forced_label=label,
                           limits=limits)
        except DatasetError as exc:
            collector.reject(exc.source, exc.reason)

    assemble(
        _folder_entries(root, limits),
        collector,
        forced_label=forced_label,
        default_label=root.resolve().name,
        root_source=_printable(root.resolve().name) + "/",
        group_source=_printable,
        open_class_zip=open_class_zip,
    )
    return collector.dataset()


def _folder_entries(root: Path, limits: ZipLimits) -> list[Entry]:
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
                entries.append(Entry((*base, name), _rel_source(base, name), problem="symlink"))
                dirnames.remove(name)
            elif junk_reason([name]) is not None:
                entries.append(Entry((*base, name), _rel_source(base, name) + "/"))
                dirnames.remove(name)
        for name in filenames:
            entries.append(_folder_file_entry(Path(dirpath, name), (*base, name), limits))
    entries.sort(key=lambda e: e.parts)
    return entries


def _folder_file_entry(path: Path, parts: tuple[str, ...], limits: ZipLimits) -> Entry:
    entry = Entry(parts, _rel_source(parts[:-1], parts[-1]), path=path)
    try:
        info = path.lstat()
    except OSError as exc:
        entry.problem = f"unreadable file: {exc.strerror}"
        return entry
    if stat.S_ISLNK(info.st_mode):
        entry.problem = "symlink"
    elif not stat.S_ISREG(info.st_mode):
        entry.problem = "not a regular file"
    elif has_suffix(parts[-1], {".zip"}):
        # Only known after layout: a zip is a class at the top level, nested anywhere else.
        entry.read = _refuse_nested_archive
    elif has_suffix(parts[-1], ARCHIVE_EXTENSIONS):
        entry.problem = "nested archive"
    elif info.st_size > limits.max_member_size:
        entry.problem = too_big_reason(info.st_size, limits)
    else:
        entry.read = lambda: _read_disk_file(path)
    return entry


def _refuse_nested_archive() -> bytes:
    raise ReadFailed("nested archive")


def _read_disk_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ReadFailed(f"unreadable file: {exc.strerror}") from None


def _rel_source(base: Iterable[str], name: str) -> str:
    return _printable("/".join((*base, name)))


def _printable(text: str) -> str:
    """Replace undecodable filename bytes (surrogate escapes) so sources are valid UTF-8."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")

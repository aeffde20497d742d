"""Reading zips safely: what counts as a zip, the size limits, member checks, and bounded
inflation.

A zip is refused whole (:class:`~models.datasets.samples.DatasetError`) when it is not a zip
or exceeds :class:`ZipLimits` on members or total size, checked from its directory before
anything is inflated. Single members are rejected for unsafe paths, symlinks, encryption,
compression methods zipfile inflates without a bound, nested archives, size and compression
ratio. A member is never inflated past one byte more than its header declares
(:func:`read_zip_into` reads through ``_read_member``), so memory is bounded by
``ZipLimits.max_member_size`` whatever the compressed data holds.
"""

from __future__ import annotations

import copy
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from .layout import ARCHIVE_EXTENSIONS, assemble, has_suffix, junk_reason
from .samples import Collector, DatasetError, Entry, ReadFailed


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


ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_ZIP_FLAG_ENCRYPTED = 0x1
_ZIP_FLAG_UTF8 = 0x800
_BOUNDED_COMPRESSION = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})


def looks_like_zip(name: str, head: bytes) -> bool:
    """Whether a file is read as a zip: ``name`` ends in ``.zip`` (any case), or ``head``
    (its first bytes, at least 4 for a fair answer) starts with a zip signature."""
    return name.lower().endswith(".zip") or head[:4] in ZIP_SIGNATURES


def is_zip_file(path: Path) -> bool:
    # The suffix, not the whole name: a file named just ".zip" is a hidden file, not a zip.
    if looks_like_zip(path.suffix, b""):
        return True
    with path.open("rb") as fileobj:
        return looks_like_zip("", fileobj.read(4))


def too_big_reason(size: int, limits: ZipLimits) -> str:
    return f"file too large: {size} bytes (limit {limits.max_member_size})"


def read_zip_into(
    collector: Collector,
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
        assemble(
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
    archive: zipfile.ZipFile, name: str, collector: Collector, limits: ZipLimits
) -> list[Entry]:
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
        entry = Entry(parts, source, problem=_member_problem(info, parts[-1], limits))
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
    folders: list[str], entries: list[Entry], name: str, collector: Collector
) -> None:
    """Report folder members with no file under them (an empty class is never silent)."""
    filled = {entry.parts[:depth] for entry in entries for depth in range(1, len(entry.parts))}
    for member in sorted(folders):
        parts = _safe_parts(member)
        if parts is None:
            collector.reject(f"{name}:{member}", "unsafe path")
        elif parts not in filled and junk_reason(parts) is None:
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
    if has_suffix(filename, ARCHIVE_EXTENSIONS):
        return "nested archive"
    if info.file_size > limits.max_member_size:
        return too_big_reason(info.file_size, limits)
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
            raise ReadFailed("unsupported zip compression method") from None
        except RuntimeError:
            raise ReadFailed("encrypted file") from None
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError):
            raise ReadFailed("corrupt zip member") from None

    return read


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The member's bytes, inflating at most one byte more than its header declares.

    The header's size cannot be trusted: ``ZipFile.read`` inflates up to 1 GiB per step
    before cutting the data to the declared size, so a member declaring 100 bytes can cost
    gigabytes. Here zipfile is asked for ``file_size + 1`` bytes of a copy of ``info`` that
    declares one byte more (``ZipExtFile.read(n)`` never inflates much beyond ``n``), so the
    extra byte proves the lie. The declared size was already checked against the limits.
    Raises :class:`ReadFailed` for a size mismatch, ``zipfile.BadZipFile`` for a bad CRC.
    """
    declared = info.file_size
    probe = copy.copy(info)
    probe.file_size = declared + 1
    del probe.CRC  # zipfile would check it against the wrong length; checked below instead
    with archive.open(probe) as member:
        data = member.read(declared + 1)
    if len(data) > declared:
        raise ReadFailed(f"declares {declared} bytes but holds more")
    if len(data) < declared:
        raise ReadFailed(f"declares {declared} bytes but holds only {len(data)}")
    if zlib.crc32(data) != info.CRC:
        raise zipfile.BadZipFile(f"bad CRC-32 for {info.filename!r}")
    return data


def read_member(fileobj_or_path, member: str, limits: ZipLimits = ZipLimits()) -> bytes:
    """The bytes of one file of a zip, `member` being its path as sources name it (after
    ``"<zip name>:"``), with the checks reading the whole zip makes on it (member count,
    unsafe path, symlink, compression, size, ratio; bounded inflation). Raises ``KeyError``
    when the zip has no such file and ``ValueError`` (with the reason) when it is refused or
    unreadable."""
    try:
        _check_declared_member_count(fileobj_or_path, limits)
        with zipfile.ZipFile(fileobj_or_path) as archive:
            for info in archive.infolist():
                if info.is_dir() or _member_name(info) != member:
                    continue
                parts = _safe_parts(member)
                problem = ("unsafe path" if parts is None
                           else _member_problem(info, parts[-1], limits))
                if problem is not None:
                    raise ValueError(problem)
                try:
                    return _member_reader(archive, info)()
                except ReadFailed as exc:
                    raise ValueError(exc.reason) from None
    except (_ZipTooLarge, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"unreadable zip file ({exc})") from None
    raise KeyError(f"no file {member!r} in the zip")

"""The layout rules: which files of a container (zip or folder) belong to which class.

Given a container's files as :class:`~models.datasets.samples.Entry` objects sorted by path,
:func:`assemble` drops system and hidden files, descends into single wrapping folders,
names classes after top-level folders (or, in folders, top-level zips), or gives everything
one class, and reads each class's files into a :class:`~models.datasets.samples.Collector`.
Files outside any class, invalid class names and classes with no usable image are reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import PurePosixPath

from ..images import IMAGE_EXTENSIONS
from .labels import normalize_label
from .samples import Collector, Entry

_SYSTEM_FILE_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
ARCHIVE_EXTENSIONS = frozenset(
    {".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar"}
)


def assemble(
    entries: list[Entry],
    collector: Collector,
    *,
    forced_label: str | None,
    default_label: str,
    root_source: str,
    group_source: Callable[[str], str],
    open_class_zip: Callable[[Entry, str], None] | None = None,
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
    dirs: dict[str, list[Entry]] = {}
    zips: dict[str, Entry] = {}
    loose: list[Entry] = []
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


def _drop_junk(entries: list[Entry], collector: Collector) -> list[Entry]:
    kept = []
    for entry in entries:
        reason = junk_reason(entry.parts)
        if reason is None:
            kept.append(entry)
        else:
            collector.reject(entry.source, reason)
    return kept


def junk_reason(parts: Iterable[str]) -> str | None:
    """Reason to skip a path: "system file" for OS metadata (__MACOSX, ._*, .DS_Store, ...),
    "hidden file" for other dotfiles and anything inside a dot-folder; None otherwise."""
    hidden = False
    for part in parts:
        if part == "__MACOSX" or part.startswith("._") or part.lower() in _SYSTEM_FILE_NAMES:
            return "system file"
        hidden = hidden or part.startswith(".")
    return "hidden file" if hidden else None


def _unwrap(
    entries: list[Entry], collector: Collector, allow_zips: bool
) -> tuple[list[Entry], list[str]]:
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
            len(p) > 1 or (allow_zips and has_suffix(p[0], {".zip"})) for p in inner
        )
        holds_images = any(len(p) == 1 and has_suffix(p[0], IMAGE_EXTENSIONS) for p in inner)
        if not holds_classes or holds_images:
            return entries, wrapper
        for entry in top_files:
            collector.reject(entry.source, entry.problem or "not in a class folder")
        wrapper.append(top_dirs.pop())
        entries = [
            Entry(e.parts[1:], e.source, e.read, e.problem, e.path)
            for e in entries
            if len(e.parts) > 1
        ]


def _read_labelled_group(
    entries: list[Entry], collector: Collector, raw_label: str, source: str
) -> None:
    try:
        label = normalize_label(raw_label)
    except ValueError as exc:
        for entry in entries:
            collector.reject(entry.source, entry.problem or f"invalid class name: {exc}")
        return
    _read_group(entries, collector, label, source)


def _read_group(entries: list[Entry], collector: Collector, label: str, source: str) -> None:
    """Read one class's files; report the group if it had files but yielded no sample."""
    before = len(collector.samples)
    for entry in entries:
        collector.offer(entry, label)
    if entries and len(collector.samples) == before:
        collector.reject(source, "no usable images")


def _read_class_zip(
    entry: Entry, collector: Collector, open_class_zip: Callable[[Entry, str], None]
) -> None:
    try:
        label = normalize_label(PurePosixPath(entry.parts[-1]).stem)
    except ValueError as exc:
        collector.reject(entry.source, f"invalid class name: {exc}")
        return
    open_class_zip(entry, label)


def _is_candidate(entry: Entry, allow_zips: bool) -> bool:
    """Whether a file looks like dataset content (an image, or a class zip in a folder)."""
    name = entry.parts[-1]
    return has_suffix(name, IMAGE_EXTENSIONS) or (allow_zips and has_suffix(name, {".zip"}))


def _is_class_zip(entry: Entry) -> bool:
    return (
        len(entry.parts) == 1
        and entry.problem is None
        and entry.path is not None
        and has_suffix(entry.parts[0], {".zip"})
    )


def has_suffix(name: str, suffixes: Iterable[str]) -> bool:
    return PurePosixPath(name).suffix.lower() in suffixes

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

This module holds the entry points (:func:`read_dataset`, :func:`read_stream`,
:func:`read_zip`, :func:`read_image_file`) and is the only import other code needs. Inside
the package: ``samples`` (samples, rejections, duplicates, the collector), ``labels`` (class
and file names), ``layout`` (which file belongs to which class), ``zips`` (zip detection,
limits, member checks, bounded inflation), ``folders`` (files on disk).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from ..images import MAX_PIXELS
from .folders import read_folder
from .labels import MAX_LABEL_LENGTH, normalize_label, stream_name, user_label
from .samples import (
    Collector,
    Dataset,
    DatasetError,
    Duplicate,
    Rejection,
    Sample,
    SampleSink,
)
from .zips import (
    ZIP_SIGNATURES,
    ZipLimits,
    is_zip_file,
    looks_like_zip,
    read_zip_into,
    too_big_reason,
)

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
        return read_folder(path, forced_label=forced, max_pixels=max_pixels, limits=limits)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if is_zip_file(path):
        with path.open("rb") as fileobj:
            return read_zip(fileobj, name=path.name, label=forced, max_pixels=max_pixels,
                            limits=limits)
    if forced is None:
        raise ValueError(f"{path.name}: a single image needs a label")
    size = path.stat().st_size
    if size > limits.max_member_size:
        return Dataset(rejected=[Rejection(path.name, too_big_reason(size, limits))])
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
            return Dataset(rejected=[Rejection(name, too_big_reason(size, limits))])
        if label is None:
            return Dataset(rejected=[Rejection(name, NEEDS_A_CLASS)])
        return read_image_file(stream.read(), name=name, label=label, max_pixels=max_pixels,
                               on_sample=on_sample)
    except DatasetError as exc:
        return Dataset(rejected=[Rejection(exc.source, exc.reason)])


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
    collector = Collector(max_pixels, on_sample)
    read_zip_into(collector, fileobj_or_path, name=name, forced_label=forced, limits=limits)
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
    collector = Collector(max_pixels, on_sample)
    collector.add(data, label=forced, source=name)
    return collector.dataset()

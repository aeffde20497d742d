"""What a read produces: accepted samples, rejections with their reasons, duplicates, and
the collector that builds them.

:class:`Collector` is the one place samples are accepted: it hashes, deduplicates by sha256
(the first one visited is kept), decodes (a file that does not decode becomes a
:class:`Rejection` with the decoder's reason) and, when streaming, hands each accepted sample
to the caller's :data:`SampleSink` and keeps it without its bytes. :class:`Entry` and
:class:`ReadFailed` are how the zip and folder readers describe files to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..images import MAX_PIXELS, ImageRejected, decode_image, sha256_hex


class DatasetError(ValueError):
    """A whole input could not be read (e.g. not a zip, over the zip limits).

    ``source`` names the file, ``reason`` says why; ``str()`` gives ``"<source>: <reason>"``.
    """

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


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
        collector = Collector(MAX_PIXELS)
        collector.extend(self)
        collector.extend(other)
        return collector.dataset()

    def __len__(self) -> int:
        return len(self.samples)


SampleSink = Callable[[Sample, Image.Image], None]
"""Receives each accepted sample (with its bytes) and its decoded RGB image, in reading order."""


class ReadFailed(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Entry:
    """A file inside a container, positioned by ``parts`` (its path relative to the root).

    ``problem`` is a rejection reason known before reading; ``path`` is set for files on
    disk (needed to open class zips).
    """

    parts: tuple[str, ...]
    source: str
    read: Callable[[], bytes] | None = None
    problem: str | None = None
    path: Path | None = None


class Collector:
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

    def offer(self, entry: Entry, label: str) -> None:
        if entry.problem is not None or entry.read is None:
            self.reject(entry.source, entry.problem or "not a file")
            return
        try:
            data = entry.read()
        except ReadFailed as exc:
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

"""Uploads into a project: engine reader -> stored files -> database rows, and a report.

Each uploaded file is read by the engine (`models.datasets`: zip layouts, zip-slip and
zip-bomb checks, decoding checks) and committed on its own: accepted images are kept even when
other members, or other files of the same request, are rejected. Every skipped file is
reported with its reason. The CPU-heavy part (reading zips, decoding, thumbnails, writing
files) runs off the gevent loop (`offload`), so other requests are served meanwhile.

Uploads stream: each accepted image is hashed, decoded once, thumbnailed and written the
moment the reader accepts it (`FileStore`), and only its metadata is kept, so memory does not
grow with the number of images in a zip (the zip itself is a temporary file, not memory).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO

import sqlalchemy as sa
from PIL import Image

from models.datasets import (
    Dataset,
    Rejection,
    Sample,
    SampleSink,
    ZipLimits,
    read_stream,
    stream_name,
    user_label,
)
from models.images import MAX_PIXELS, ORIGINAL_SIZE, thumbnail_jpeg
from web.concurrency import offload
from web.db import Blob, ProjectImage, Upload, db, utcnow
from web.storage import CONTENT_TYPES, Storage

LIMITS = ZipLimits()
NOT_STORED = "not stored: the server could not write it"  # a server fault, not bad input


class UploadError(ValueError):
    """The request itself is unusable (bad label or split, no file): a 400."""


@dataclass(frozen=True)
class Stored:
    """An accepted sample after its files were written: what the database needs. `sample`
    carries no bytes (see `Sample.without_data`); `size` is the file's length."""

    sample: Sample
    size: int
    content_type: str
    width: int
    height: int


class FileStore:
    """The streaming reader's sink (`models.datasets.SampleSink`): writes each accepted
    sample's original bytes and thumbnail as it arrives (idempotent: keyed by sha256) and
    keeps only a `Stored` record of it, in `stored`. The files are made durable together
    by `Storage.sync`, which the caller runs before recording them in the database."""

    def __init__(self, storage: Storage, thumb_size: int):
        self.storage = storage
        self.thumb_size = thumb_size
        self.stored: list[Stored] = []
        self.rejected: list[Rejection] = []  # samples whose files could not be written

    def __call__(self, sample: Sample, image: Image.Image) -> None:
        fmt = Image.open(io.BytesIO(sample.data)).format or "JPEG"  # headers only
        try:  # a full disk or an unwritable folder loses this image only, and says so
            self.storage.put_blob(sample.sha256, sample.data, durable=False)
            if not self.storage.thumb_path(sample.sha256).is_file():
                self.storage.put_thumbnail(sample.sha256, thumbnail_jpeg(image, self.thumb_size),
                                           durable=False)
        except OSError as exc:
            self.rejected.append(Rejection(sample.source, f"{NOT_STORED} ({exc.strerror or exc})"))
            return
        width, height = image.info.get(ORIGINAL_SIZE, image.size)  # a large one is reduced
        self.stored.append(Stored(sample.without_data(), len(sample.data),
                                  CONTENT_TYPES.get(fmt, "application/octet-stream"),
                                  width, height))


def check_label(label: str | None) -> str | None:
    """The request's label normalised, None when absent or blank; an invalid one is the
    request's error (`UploadError`, with `models.datasets.user_label`'s message)."""
    try:
        return user_label(label, blank_is_none=True)
    except ValueError as exc:
        raise UploadError(str(exc)) from None


def check_split(split: str | None) -> str:
    split = (split or "train").strip().lower()
    if split not in ("train", "test"):
        raise UploadError(f"invalid split {split!r}: use 'train' or 'test'")
    return split


def read_upload(stream: BinaryIO, name: str, label: str | None,
                max_pixels: int = MAX_PIXELS, on_sample: SampleSink | None = None) -> Dataset:
    """One uploaded file as a dataset, under the server's `LIMITS`: the engine's
    `models.datasets.read_stream` (a zip in any layout, or one image; every problem a
    rejection), `on_sample` streaming the accepted ones."""
    return read_stream(stream, name=name, label=label, max_pixels=max_pixels, limits=LIMITS,
                       on_sample=on_sample)


def _insert_ignore(table, values: dict):
    """INSERT that silently skips a row whose unique key exists (SQLite and PostgreSQL)."""
    dialect = db.session.get_bind().dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:  # other databases: plain insert in a savepoint, duplicates ignored
        try:
            with db.session.begin_nested():
                return db.session.execute(sa.insert(table).values(**values))
        except sa.exc.IntegrityError:
            return None
    return db.session.execute(insert(table).values(**values).on_conflict_do_nothing())


def _existing(project_id: int, shas: list[str]) -> dict[str, ProjectImage]:
    found: dict[str, ProjectImage] = {}
    for start in range(0, len(shas), 500):
        chunk = shas[start:start + 500]
        rows = db.session.scalars(sa.select(ProjectImage).where(
            ProjectImage.project_id == project_id, ProjectImage.sha256.in_(chunk)))
        found.update({row.sha256: row for row in rows})
    return found


def _split_words(split: str) -> str:
    return "training set" if split == "train" else "test set"


def _insert_ignore_returning(table, rows: list[dict], key):
    """INSERT ... ON CONFLICT DO NOTHING for many rows in one statement; the `key` values
    of the rows actually inserted, or None where the database cannot say (then the caller
    inserts row by row)."""
    dialect = db.session.get_bind().dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        return None
    result = db.session.execute(insert(table).on_conflict_do_nothing().returning(key), rows)
    return set(result.scalars())


def _duplicate_json(sample: Sample, kept: ProjectImage | None) -> dict:
    return {
        "name": sample.source, "label": sample.label, "sha256": sample.sha256,
        "kept_name": kept.name if kept else None,
        "kept_label": kept.label if kept else None,
        "kept_split": kept.split if kept else None,
        "reason": (f"already in the project ({_split_words(kept.split)}, class {kept.label!r})"
                   if kept else "already in the project"),
    }


def add_to_project(project_id: int, stored: list[Stored], split: str) -> tuple[list[dict], list[dict]]:
    """Insert blobs and project images; an image already in the project is a duplicate.
    A few statements for the whole list (not a few per image) where the database allows."""
    accepted, duplicates = [], []
    existing = _existing(project_id, [s.sample.sha256 for s in stored])
    new = [item for item in stored if item.sample.sha256 not in existing]
    duplicates += [_duplicate_json(item.sample, existing[item.sample.sha256])
                   for item in stored if item.sample.sha256 in existing]
    now = utcnow()
    blobs = [{"sha256": item.sample.sha256, "size": item.size,
              "content_type": item.content_type, "width": item.width, "height": item.height,
              "created_at": now, "touched_at": now} for item in new]
    images = [{"project_id": project_id, "sha256": item.sample.sha256,
               "label": item.sample.label, "split": split,
               "name": item.sample.source[:1000], "created_at": now} for item in new]
    for start in range(0, len(new), 500):
        chunk = slice(start, start + 500)
        if _insert_ignore_returning(Blob.__table__, blobs[chunk], Blob.sha256) is None:
            return _add_one_by_one(project_id, new, split, now, accepted, duplicates)
        db.session.execute(sa.update(Blob).where(Blob.sha256.in_(
            [b["sha256"] for b in blobs[chunk]])).values(touched_at=now))
        inserted = _insert_ignore_returning(ProjectImage.__table__, images[chunk],
                                            ProjectImage.sha256)
        lost = [item.sample for item in new[chunk] if item.sample.sha256 not in inserted]
        accepted += [{"sha256": item.sample.sha256, "label": item.sample.label, "split": split,
                      "name": item.sample.source}
                     for item in new[chunk] if item.sample.sha256 in inserted]
        kept = _existing(project_id, [s.sha256 for s in lost]) if lost else {}
        duplicates += [_duplicate_json(s, kept.get(s.sha256)) for s in lost]  # lost a race
    order = {item.sample.sha256: i for i, item in enumerate(stored)}
    duplicates.sort(key=lambda d: order[d["sha256"]])  # in reading order, as the images
    return accepted, duplicates


def _add_one_by_one(project_id: int, new: list[Stored], split: str, now, accepted: list,
                    duplicates: list) -> tuple[list[dict], list[dict]]:
    """`add_to_project` for databases without INSERT ... ON CONFLICT ... RETURNING."""
    for item in new:
        sample = item.sample
        _insert_ignore(Blob.__table__, dict(
            sha256=sample.sha256, size=item.size, content_type=item.content_type,
            width=item.width, height=item.height, created_at=now, touched_at=now))
        db.session.execute(sa.update(Blob).where(Blob.sha256 == sample.sha256)
                           .values(touched_at=now))
        result = _insert_ignore(ProjectImage.__table__, dict(
            project_id=project_id, sha256=sample.sha256, label=sample.label, split=split,
            name=sample.source[:1000], created_at=now))
        if result is not None and result.rowcount:
            accepted.append({"sha256": sample.sha256, "label": sample.label, "split": split,
                             "name": sample.source})
        else:
            duplicates.append(_duplicate_json(
                sample, _existing(project_id, [sample.sha256]).get(sample.sha256)))
    return accepted, duplicates


def ingest(project_id: int, files: list, *, label: str | None, split: str,
           storage: Storage, thumb_size: int = 160) -> dict:
    """Read, store and record every uploaded file; returns the upload report (API shape).

    `files` are werkzeug FileStorage objects (or anything with `.stream` and `.filename`).
    Each file is committed on its own, so what was accepted stays even if a later file fails.
    """
    report_files, rejected, duplicates, accepted = [], [], [], []
    for index, upload in enumerate(files):
        name = stream_name(upload.filename, index)
        files_written = FileStore(storage, thumb_size)
        dataset = offload(read_upload, upload.stream, name, label, on_sample=files_written)
        stored, store_rejected = files_written.stored, files_written.rejected
        try:
            if stored:
                offload(storage.sync)  # the files are on disk before the rows that name them
            file_accepted, file_dups = add_to_project(project_id, stored, split)
            db.session.commit()
        except (OSError, sa.exc.OperationalError) as exc:  # disk or database full or gone
            db.session.rollback()
            file_accepted, file_dups = [], []
            where = f"database: {exc.orig}" if isinstance(exc, sa.exc.DBAPIError) else (
                exc.strerror or str(exc))
            store_rejected += [Rejection(item.sample.source, f"{NOT_STORED} ({where})")
                               for item in stored]
        file_rejected = [{"name": r.source, "reason": r.reason}
                         for r in [*dataset.rejected, *store_rejected]]
        file_dups = [
            {"name": d.source, "label": d.label, "sha256": d.sha256, "kept_name": d.kept_source,
             "kept_label": d.kept_label, "kept_split": split,
             "reason": (f"same image as {d.kept_source} (class {d.kept_label!r})"
                        if d.cross_class else f"same image as {d.kept_source}")}
            for d in dataset.duplicates
        ] + file_dups
        report_files.append({"name": name, "accepted": len(file_accepted),
                             "rejected": len(file_rejected), "duplicates": len(file_dups)})
        accepted += file_accepted
        rejected += file_rejected
        duplicates += file_dups
    record = Upload(project_id=project_id, split=split, label=label, accepted=len(accepted),
                    files=report_files, rejected=rejected, duplicates=duplicates)
    try:
        warnings = case_warnings(project_id, {image["label"] for image in accepted})
        db.session.add(record)
        db.session.commit()
    except sa.exc.OperationalError as exc:  # the images are kept; only the history entry is not
        db.session.rollback()
        record = None
        warnings = [(f"this upload is not in the upload history: the database could not be "
                     f"written ({exc.orig})")]
    return {"upload_id": record.id if record else None, "accepted": len(accepted),
            "rejected": rejected, "duplicates": duplicates, "files": report_files,
            "images": accepted, "split": split, "warnings": warnings}


def case_warnings(project_id: int, labels: set[str]) -> list[str]:
    """Warnings for classes of `labels` whose names differ from another class only in case.

    They stay separate classes ('A' and 'a' can both be meant, e.g. letters); the user is
    told so they can rename one. Names differing in Unicode normalisation are already one
    class (labels are NFC-normalised).
    """
    if not labels:
        return []
    known = set(db.session.scalars(sa.select(ProjectImage.label).distinct()
                                   .where(ProjectImage.project_id == project_id)))
    groups: dict[str, set[str]] = {}
    for label in known | labels:
        groups.setdefault(label.casefold(), set()).add(label)
    return [f"classes {' and '.join(map(repr, sorted(group)))} differ only in case: they are "
            f"kept as separate classes; rename one if they are the same"
            for _, group in sorted(groups.items()) if len(group) > 1 and group & labels]

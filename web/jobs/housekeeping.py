"""Housekeeping: free what nothing uses any more, and keep a disk reserve.

Owns the garbage collection of stored images no project holds (`collect_garbage`, cheap:
the database only, so a request may run it), the sweep of files and folders no database row
names (`collect_orphan_files`, slow: the worker runs it, never a request), and the disk
reserve next to a SQLite database that lets a deletion be recorded on a full disk
(`reserve_path`, `give_up_reserve`, `is_disk_full`). `run_housekeeping(app)` runs them all; the
worker calls it at its start and every 30 minutes. The collectors need an app context;
`housekeeping` makes its own.
"""
from __future__ import annotations

import logging
import sqlite3
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from web.db import Blob, Iteration, Project, ProjectImage, db, utcnow
from web.storage import Storage, make_reserve, older_than, release_reserve, remove_if_older

log = logging.getLogger("transferlab.worker")

RESERVE_NAME = ".disk-reserve"  # next to the SQLite database: see give_up_reserve


def collect_garbage(storage: Storage, grace_seconds: float = 3600) -> int:
    """Delete stored images no project uses any more (spared for `grace_seconds` after their
    last upload, so a concurrent upload never loses a file); returns how many. Walks the
    database only: fast enough for a request (see `collect_orphan_files` for the disk)."""
    cutoff = utcnow() - timedelta(seconds=grace_seconds)
    orphans = db.session.scalars(
        sa.select(Blob.sha256).where(
            Blob.touched_at < cutoff,
            ~sa.exists().where(ProjectImage.sha256 == Blob.sha256))).all()
    for start in range(0, len(orphans), 500):
        chunk = orphans[start:start + 500]
        db.session.execute(sa.delete(Blob).where(
            Blob.sha256.in_(chunk), Blob.touched_at < cutoff,
            ~sa.exists().where(ProjectImage.sha256 == Blob.sha256)))
        db.session.commit()
        for sha in chunk:
            storage.delete_image_files(sha)
    return len(orphans)


def collect_orphan_files(storage: Storage, grace_seconds: float = 3600,
                         batch: int = 500) -> dict[str, int]:
    """Remove what no database row names and that is older than `grace_seconds` (by mtime):
    image files (originals, thumbnails, previews) without a `Blob` row, as a killed upload
    leaves them (it writes files before rows), project and iteration folders without their
    row, and temporary files and folders of crashed writes (see `Storage.temp_files`).
    Returns {"images": n, "folders": n, "temporary": n} removed.

    The disk is compared with the database `batch` names at a time, so memory stays bounded.
    Younger files are spared: an upload writes (or refreshes, when the file exists) its
    files before the rows that name them, so it is never harmed. Slow on a large disk: run
    by the worker (`housekeeping`), never in a request."""
    cutoff = older_than(grace_seconds)
    removed = {"images": 0, "folders": 0, "temporary": 0}
    for files in storage.image_file_batches(batch):
        known = set(db.session.scalars(sa.select(Blob.sha256).where(
            Blob.sha256.in_({sha for sha, _ in files}))))
        db.session.commit()  # no read transaction held across the walk
        removed["images"] += sum(remove_if_older(path, cutoff)
                                 for sha, path in files if sha not in known)
    removed["folders"] = _collect_project_folders(storage, cutoff)
    removed["temporary"] = sum(remove_if_older(path, cutoff) for path in storage.temp_files())
    return removed


def _collect_project_folders(storage: Storage, cutoff: float) -> int:
    """Remove project folders without a `Project` row (a crash between deleting the row and
    the folder) and iteration folders without an `Iteration` row (a crash between saving an
    iteration and recording it), older than `cutoff`; returns how many."""
    removed = 0
    for project_id, folder in storage.project_folders():
        if db.session.get(Project, project_id) is None:
            removed += remove_if_older(folder, cutoff)
            continue
        recorded = set(db.session.scalars(sa.select(Iteration.folder).where(
            Iteration.project_id == project_id)))
        removed += sum(remove_if_older(path, cutoff)
                       for relpath, path in storage.iteration_folders(project_id)
                       if relpath not in recorded)
        db.session.commit()
    db.session.commit()
    return removed


def reserve_path(config) -> Path | None:
    """The disk reserve's file, next to a SQLite database (None for other databases: their
    server's disk is not ours to manage)."""
    url = sa.engine.make_url(config["SQLALCHEMY_DATABASE_URI"])
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).parent / RESERVE_NAME


def give_up_reserve(config) -> bool:
    """Free the disk reserve so that a deletion can be recorded on a full disk; returns
    whether there was one. The housekeeping makes it again once there is room."""
    path = reserve_path(config)
    return path is not None and release_reserve(path)


def is_disk_full(exc: sa.exc.DBAPIError) -> bool:
    """Whether the database failed for want of disk space (SQLite's SQLITE_FULL,
    PostgreSQL's disk_full)."""
    orig = exc.orig
    return (getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            or getattr(orig, "pgcode", None) == "53100" or "disk is full" in str(orig))


def run_housekeeping(app) -> None:
    """Free what nothing uses: images no project holds (`collect_garbage`), then files and
    folders and temporary leftovers without database rows (`collect_orphan_files`), spared for
    `ORPHAN_GRACE_SECONDS`; then make the disk reserve (`DISK_RESERVE_BYTES`) if it is
    missing. Run at each worker's start and every 30 minutes."""
    grace = float(app.config["ORPHAN_GRACE_SECONDS"])
    storage: Storage = app.extensions["transferlab.storage"]
    reserve = reserve_path(app.config)
    with app.app_context():
        try:
            images = collect_garbage(storage, grace)
            orphans = collect_orphan_files(storage, grace)
            if reserve is not None:
                make_reserve(reserve, int(app.config["DISK_RESERVE_BYTES"]))
            if images or any(orphans.values()):
                log.info("housekeeping: removed %s unused image(s), %s file(s) and %s "
                         "folder(s) without a database row, %s temporary file(s)", images,
                         orphans["images"], orphans["folders"], orphans["temporary"])
        finally:
            db.session.remove()

"""Files under the storage folder (the instance folder by default), all written atomically.

    blobs/<sha[:2]>/<sha>            original image bytes, stored once by content hash
    thumbs/<sha[:2]>/<sha>.jpg       thumbnails (made at upload)
    previews/<sha[:2]>/<sha>.jpg     browser-friendly larger JPEGs (made on first request)
    projects/<id>/iterations/<n>/    a trained iteration: report.json, heads/<backbone>.keras
    features/                        the engine's shared FeatureCache (see config)
    tmp/                             temporary files and folders, renamed into place

Every write goes to a temporary name in the same file system and is renamed into place, so a
crash never leaves a half-written file under a real name and readers never see one. What a
crash does leave (temporary files, image files whose database rows were never written) is
removed by the worker's housekeeping (web.jobs.collect_orphan_files) once older than a grace
period: storing an image file that already exists refreshes its mtime for that reason.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

_SHA = re.compile(r"^[0-9a-f]{64}$")

CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "DIB": "image/bmp",
    "GIF": "image/gif",
    "TIFF": "image/tiff",
}


TEMP_PREFIX = ".tmp-"  # atomic_write's temporary files, next to their final name
TRASH_PREFIX = ".gc-"  # a file being collected (see remove_if_older)
IMAGE_KINDS = {"blobs": "", "thumbs": ".jpg", "previews": ".jpg"}  # folder: file suffix


def is_sha256(text: str) -> bool:
    return bool(_SHA.match(text or ""))


def atomic_write(path: Path, data: bytes, durable: bool = True) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename.
    `durable=False` skips the fsync: the caller makes a batch durable at once (`sync`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Storage:
    """Paths and atomic writes for everything the web app keeps on disk."""

    def __init__(self, root: str | Path, feature_cache: str | Path | None = None):
        self.root = Path(root)
        self.feature_cache = Path(feature_cache) if feature_cache else self.root / "features"

    def check_writable(self) -> None:
        """Raise OSError (naming the path) unless files can be written under the root."""
        probe = self.root / "tmp" / f".write-test-{uuid.uuid4().hex}"
        atomic_write(probe, b"ok")
        probe.unlink()

    # -- images --------------------------------------------------------------------------

    def _sharded(self, kind: str, sha256: str, suffix: str = "") -> Path:
        if not is_sha256(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / kind / sha256[:2] / f"{sha256}{suffix}"

    def blob_path(self, sha256: str) -> Path:
        return self._sharded("blobs", sha256)

    def thumb_path(self, sha256: str) -> Path:
        return self._sharded("thumbs", sha256, ".jpg")

    def preview_path(self, sha256: str) -> Path:
        return self._sharded("previews", sha256, ".jpg")

    def put_blob(self, sha256: str, data: bytes, durable: bool = True) -> Path:
        """Store the original bytes once; an existing blob (same hash, same bytes) is kept,
        its mtime refreshed (see `refresh`). `durable=False`: not fsynced one by one; call
        `sync()` before relying on it."""
        path = self.blob_path(sha256)
        if not refresh(path):
            atomic_write(path, data, durable)
        return path

    def put_thumbnail(self, sha256: str, jpeg: bytes, durable: bool = True) -> Path:
        path = self.thumb_path(sha256)
        if not refresh(path):
            atomic_write(path, jpeg, durable)
        return path

    @staticmethod
    def sync() -> None:
        """Make every file written so far durable, in one flush (an fsync per file costs
        milliseconds each: the bulk of storing a zip of images)."""
        os.sync()

    def put_preview(self, sha256: str, jpeg: bytes) -> Path:
        path = self.preview_path(sha256)
        if not refresh(path):
            atomic_write(path, jpeg)
        return path

    def read_blob(self, sha256: str) -> bytes:
        return self.blob_path(sha256).read_bytes()

    def ensure_thumbnail(self, sha256: str, size: int) -> Path:
        """The path of stored image `sha256`'s thumbnail, made from its blob if missing (see
        `_ensure_derived`)."""
        return self._ensure_derived(sha256, self.thumb_path, self.put_thumbnail, size)

    def ensure_preview(self, sha256: str, size: int) -> Path:
        """The path of stored image `sha256`'s preview, made from its blob if missing (see
        `_ensure_derived`)."""
        return self._ensure_derived(sha256, self.preview_path, self.put_preview, size)

    def _ensure_derived(self, sha256: str, path_of, put, size: int) -> Path:
        """The one maker of thumbnails and previews after upload: a JPEG at most `size`
        pixels on its long side, decoded from the blob. CPU work (run it off the gevent
        loop); models.images.ImageRejected or OSError when the blob is unreadable."""
        path = path_of(sha256)
        if not path.is_file():
            from models.images import decode_image, thumbnail_jpeg

            put(sha256, thumbnail_jpeg(decode_image(self.read_blob(sha256)), size))
        return path

    def delete_image_files(self, sha256: str) -> None:
        for path in (self.blob_path(sha256), self.thumb_path(sha256), self.preview_path(sha256)):
            path.unlink(missing_ok=True)

    # -- iterations ----------------------------------------------------------------------

    def project_dir(self, project_id: int) -> Path:
        return self.root / "projects" / str(int(project_id))

    def iteration_relpath(self, project_id: int, number: int) -> str:
        return f"projects/{int(project_id)}/iterations/{int(number)}"

    def resolve(self, relpath: str) -> Path:
        """An absolute path for a folder stored relative to the storage root."""
        path = (self.root / relpath).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"path escapes the storage folder: {relpath!r}")
        return path

    def temp_dir(self) -> Path:
        """A fresh temporary folder on the storage file system (rename it into place)."""
        base = self.root / "tmp"
        base.mkdir(parents=True, exist_ok=True)
        path = base / uuid.uuid4().hex
        path.mkdir()
        return path

    def commit_dir(self, tmp: Path, relpath: str) -> Path:
        """Move a finished temporary folder to `relpath` atomically (it must not exist yet)."""
        final = self.resolve(relpath)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # left over from a crashed run that never reached the database
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final

    def delete_project(self, project_id: int) -> None:
        """Remove the project's folder. Writes nothing first (no new folder), so it works
        on a full disk; what a crash leaves in tmp/ goes with the housekeeping."""
        folder = self.project_dir(project_id)
        if not folder.exists():
            return
        trash = self.root / "tmp" / f"deleted-project-{int(project_id)}-{uuid.uuid4().hex}"
        try:
            os.replace(folder, trash)  # vanish at once, delete at leisure
        except OSError:  # no tmp/ folder (or no room for a new name in it): delete in place
            trash = folder
        shutil.rmtree(trash, ignore_errors=True)

    # -- housekeeping (web.jobs.collect_orphan_files) -------------------------------------

    def image_file_batches(self, size: int = 500) -> Iterator[list[tuple[str, Path]]]:
        """The image files on disk (originals, thumbnails, previews) as lists of at most
        `size` (sha256, path), one shard folder at a time, never listed whole: memory stays
        bounded by `size` whatever the number of files. Other names are not listed."""
        for kind, suffix in IMAGE_KINDS.items():
            for shard in _subfolders(self.root / kind):
                batch: list[tuple[str, Path]] = []
                for entry in _entries(shard):
                    sha = entry.name[:len(entry.name) - len(suffix)] if suffix else entry.name
                    if entry.name.endswith(suffix) and is_sha256(sha) and entry.is_file():
                        batch.append((sha, Path(entry.path)))
                        if len(batch) >= size:
                            yield batch
                            batch = []
                if batch:
                    yield batch

    def project_folders(self) -> Iterator[tuple[int, Path]]:
        """(project id, folder) of every `projects/<id>` folder on disk."""
        for entry in _entries(self.root / "projects"):
            if entry.name.isdigit() and entry.is_dir(follow_symlinks=False):
                yield int(entry.name), Path(entry.path)

    def iteration_folders(self, project_id: int) -> Iterator[tuple[str, Path]]:
        """(relative path, folder) of every iteration folder of project `project_id`."""
        for entry in _entries(self.project_dir(project_id) / "iterations"):
            if entry.name.isdigit() and entry.is_dir(follow_symlinks=False):
                yield self.iteration_relpath(project_id, int(entry.name)), Path(entry.path)

    def temp_files(self) -> Iterator[Path]:
        """Temporary files and folders a crash can leave: atomic_write's and collection's
        in the image folders, everything under tmp/, the feature cache's `*.tmp`."""
        for kind in IMAGE_KINDS:
            for shard in _subfolders(self.root / kind):
                for entry in _entries(shard):
                    if entry.name.startswith((TEMP_PREFIX, TRASH_PREFIX)):
                        yield Path(entry.path)
        for entry in _entries(self.root / "tmp"):
            yield Path(entry.path)
        for folder, _, names in os.walk(self.feature_cache):
            for name in names:
                if name.endswith(".tmp"):
                    yield Path(folder) / name


def refresh(path: Path) -> bool:
    """Whether the file `path` exists, setting its mtime to now if so: the orphan collection
    spares files younger than its grace period, so a file about to be recorded in the
    database (an upload reusing a file left by an earlier, killed one) is never removed."""
    try:
        os.utime(path)
        return True
    except FileNotFoundError:
        return False
    except OSError:  # e.g. not its owner: it exists, but cannot be marked fresh
        return path.is_file()


def remove_if_older(path: Path, cutoff: float) -> bool:
    """Remove the file or folder `path` if its mtime is before `cutoff` (epoch seconds);
    returns whether it did. Safe against a concurrent `refresh`: the file is first renamed
    aside and its mtime read again, so a refresh that came before the rename brings it back
    and one after it finds no file and writes it anew."""
    try:
        if path.lstat().st_mtime >= cutoff:
            return False
        aside = path.with_name(f"{TRASH_PREFIX}{uuid.uuid4().hex}-{path.name}")
        os.replace(path, aside)
        if aside.lstat().st_mtime >= cutoff:
            os.replace(aside, path)
            return False
    except FileNotFoundError:  # gone meanwhile (another worker's collection)
        return False
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)
    return True


def make_reserve(path: Path, size: int) -> bool:
    """Hold `size` bytes of the disk in the file `path` (allocated, not sparse), unless it is
    there already; returns whether it is there now (False on a disk with no room for it:
    nothing is left behind). See `release_reserve`."""
    if size <= 0:
        return False
    try:
        if path.stat().st_size >= size:
            return True
    except FileNotFoundError:
        pass
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError:
        return False
    try:
        os.posix_fallocate(fd, 0, size)
        return True
    except OSError:
        path.unlink(missing_ok=True)
        return False
    finally:
        os.close(fd)


def release_reserve(path: Path) -> bool:
    """Give the disk space held by `make_reserve` back (so that a deletion can be recorded on
    a full disk); returns whether there was a reserve to give up."""
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def older_than(seconds: float) -> float:
    """The epoch time `seconds` ago (a cutoff for `remove_if_older`)."""
    return time.time() - seconds


def _subfolders(folder: Path) -> list[Path]:
    """The shard folders of `folder` (256 at most), sorted; none if it does not exist."""
    return sorted(Path(e.path) for e in _entries(folder) if e.is_dir(follow_symlinks=False))


def _entries(folder: Path) -> Iterator[os.DirEntry]:
    """`os.scandir(folder)` as a generator (nothing if `folder` is missing or not a folder)."""
    try:
        with os.scandir(folder) as it:
            yield from it
    except (FileNotFoundError, NotADirectoryError):
        return

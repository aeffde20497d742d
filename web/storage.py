"""Files under the storage folder (the instance folder by default), all written atomically.

    blobs/<sha[:2]>/<sha>            original image bytes, stored once by content hash
    thumbs/<sha[:2]>/<sha>.jpg       thumbnails (made at upload)
    previews/<sha[:2]>/<sha>.jpg     browser-friendly larger JPEGs (made on first request)
    projects/<id>/iterations/<n>/    a trained iteration: report.json, heads/<backbone>.keras
    features/                        the engine's shared FeatureCache (see config)
    tmp/                             temporary files and folders, renamed into place

Every write goes to a temporary name in the same file system and is renamed into place, so a
crash never leaves a half-written file under a real name and readers never see one.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
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
        """Store the original bytes once; an existing blob (same hash, same bytes) is kept.
        `durable=False`: not fsynced one by one; call `sync()` before relying on it."""
        path = self.blob_path(sha256)
        if not path.is_file():
            atomic_write(path, data, durable)
        return path

    def put_thumbnail(self, sha256: str, jpeg: bytes, durable: bool = True) -> Path:
        path = self.thumb_path(sha256)
        if not path.is_file():
            atomic_write(path, jpeg, durable)
        return path

    @staticmethod
    def sync() -> None:
        """Make every file written so far durable, in one flush (an fsync per file costs
        milliseconds each: the bulk of storing a zip of images)."""
        os.sync()

    def put_preview(self, sha256: str, jpeg: bytes) -> Path:
        path = self.preview_path(sha256)
        if not path.is_file():
            atomic_write(path, jpeg)
        return path

    def read_blob(self, sha256: str) -> bytes:
        return self.blob_path(sha256).read_bytes()

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
        folder = self.project_dir(project_id)
        if folder.exists():
            trash = self.temp_dir()
            os.replace(folder, trash / "project")  # vanish at once, delete at leisure
            shutil.rmtree(trash, ignore_errors=True)

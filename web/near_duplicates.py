"""A project's near-duplicate images, found by perceptual hash (no TensorFlow in the web process).

Hashes are computed from the stored thumbnails, which are content-addressed: a sha256 always
has the same thumbnail, so its hash is memoised for the life of the process. Groups that mix
the training and test sets, or classes, are flagged: the first inflates test accuracy, the
second is usually a labelling mistake.
"""
from __future__ import annotations

from functools import lru_cache

import sqlalchemy as sa
from PIL import Image

from models.duplicates import hash_groups, perceptual_hash
from web.db import ProjectImage, db
from web.storage import Storage


@lru_cache(maxsize=100_000)
def _thumbnail_hash(path: str) -> int:
    with Image.open(path) as im:
        return perceptual_hash(im.convert("RGB"))


def image_hash(storage: Storage, sha256: str, thumb_size: int) -> int:
    """The perceptual hash of a stored image, from its thumbnail (made if missing)."""
    return _thumbnail_hash(str(storage.ensure_thumbnail(sha256, thumb_size)))


def image_hashes(storage: Storage, sha256s: list[str], thumb_size: int) -> list[int]:
    """Perceptual hashes of stored images (CPU work: run it off the gevent loop)."""
    return [image_hash(storage, sha, thumb_size) for sha in sha256s]


def project_images(project_id: int) -> list[ProjectImage]:
    return list(db.session.scalars(
        sa.select(ProjectImage).where(ProjectImage.project_id == project_id)
        .order_by(ProjectImage.id)))


def group_images(rows: list[ProjectImage], hashes: list[int]) -> list[dict]:
    """Groups of two or more images (rows, with their hashes) that look like one picture.

    Each group: {"images": [{"sha256", "label", "split", "name"}], "straddles_splits": bool
    (training and test images in one group), "mixed_labels": bool}; largest groups first.
    """
    members: dict[int, list[ProjectImage]] = {}
    for row, group in zip(rows, hash_groups(hashes)):
        members.setdefault(int(group), []).append(row)
    groups = []
    for group in members.values():
        if len(group) < 2:
            continue
        groups.append({
            "images": [{"sha256": r.sha256, "label": r.label, "split": r.split, "name": r.name}
                       for r in group],
            "straddles_splits": len({r.split for r in group}) > 1,
            "mixed_labels": len({r.label for r in group}) > 1,
        })
    groups.sort(key=lambda g: -len(g["images"]))
    return groups

"""What has become of a report's "likely mislabelled" images since the training that ranked
them: each row gets its thumbnail URL and the image's label in the project now
(`current_label`), or `removed: true` when it left the project, so the page does not offer to
fix an image twice. The report itself (models/curation.py) stays as training wrote it."""
from __future__ import annotations

import sqlalchemy as sa

from web.api.serializers import thumbnail_url
from web.db import ProjectImage, db


def annotate_mislabelled(project_id: int, report: dict) -> None:
    """Add `thumbnail`, `current_label` and `removed` to `report["mislabelled"]["images"]`."""
    rows = (report.get("mislabelled") or {}).get("images") or []
    if not rows:
        return
    now = dict(db.session.execute(
        sa.select(ProjectImage.sha256, ProjectImage.label).where(
            ProjectImage.project_id == project_id, ProjectImage.split == "train",
            ProjectImage.sha256.in_([r["sha256"] for r in rows]))).all())
    for row in rows:
        row.setdefault("thumbnail", thumbnail_url(row["sha256"]))
        row["current_label"] = now.get(row["sha256"])
        row["removed"] = row["sha256"] not in now

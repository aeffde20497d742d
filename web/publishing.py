"""Which iteration of a project is live: the one predictions, batch predictions and exports
use when a request names none. That is the published iteration (`Project.published_iteration`,
set by `POST …/iterations/<n>/publish` or PATCHing the project), else the latest one, so a
retrain goes live at once unless an iteration was pinned, and a worse retrain is rolled back by
publishing the earlier one. Needs an app context; no TensorFlow.
"""
from __future__ import annotations

import sqlalchemy as sa

from web.db import Iteration, Project, db


def live_iteration(project: Project) -> Iteration | None:
    """The published iteration, else the latest (None before the first training)."""
    query = sa.select(Iteration).where(Iteration.project_id == project.id)
    if project.published_iteration is not None:
        published = db.session.scalar(query.where(Iteration.number == project.published_iteration))
        if published is not None:
            return published
    return db.session.scalar(query.order_by(Iteration.number.desc()).limit(1))


def live_iterations(limit: int) -> list[Iteration]:
    """The live iteration of the `limit` projects trained most recently (for warm-ups)."""
    recent = (sa.select(Iteration.project_id, sa.func.max(Iteration.created_at).label("at"))
              .group_by(Iteration.project_id).subquery())
    projects = db.session.scalars(
        sa.select(Project).join(recent, recent.c.project_id == Project.id)
        .order_by(recent.c.at.desc(), Project.id.desc()).limit(limit)).all()
    return [it for it in map(live_iteration, projects) if it is not None]

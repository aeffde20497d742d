"""The database: accounts, projects, their images, training jobs and the iterations they produce.

Image files are stored once, globally, by sha256 (`Blob`); a project refers to a blob with its
own label and split (`ProjectImage`), so the same photo can be in two projects under different
class names. Job state and progress live here: the web process reads them, the worker writes
them. SQLite in the instance folder by default; PostgreSQL (or any SQLAlchemy URL) via `DATABASE_URL`.
Changing a model needs an Alembic revision (see web/schema.py).
"""
from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)

SPLITS = ("train", "test")
ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("succeeded", "failed", "cancelled")


def utcnow() -> datetime:
    """Naive UTC (what SQLite hands back), so stored and fresh values compare."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.replace(microsecond=0).isoformat() + "Z"


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, connection_record):  # noqa: ARG001
    """WAL lets the web process read while the worker writes; wait rather than fail on locks."""
    module = type(dbapi_connection).__module__
    if "sqlite" not in module:
        return
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


class Blob(db.Model):
    """One stored image file, identified by the sha256 of its bytes (shared by projects)."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    size: Mapped[int] = mapped_column(sa.Integer)
    content_type: Mapped[str] = mapped_column(sa.String(40))
    width: Mapped[int] = mapped_column(sa.Integer)
    height: Mapped[int] = mapped_column(sa.Integer)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow)
    # Refreshed whenever an upload uses the blob; garbage collection spares recent ones.
    touched_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow, index=True)


class User(db.Model):
    """An account. Passwords are stored as werkzeug hashes (scrypt), never in clear."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(80), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(300))
    is_admin: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    # An admin disabled it: no login, and its sessions and tokens are refused (web.auth).
    is_disabled: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    created_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow)


class LoginSession(db.Model):
    """A browser login. The session cookie carries a random id; only its sha256 is stored,
    so deleting the row (logout, password change, disabled account) ends the session."""

    __tablename__ = "login_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    sid_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(sa.DateTime, index=True)


class ApiToken(db.Model):
    """A personal API token (`Authorization: Bearer <token>`). Only the sha256 of the token
    is stored; `prefix` (its first characters) lets the owner tell tokens apart."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    prefix: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(sa.DateTime, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(sa.DateTime, nullable=True)  # None: never


class Project(db.Model):
    """A classifier being built. Only its owner sees it: every API query is scoped to
    `owner_id` (NULL only for projects made before accounts existed; the first account
    created on the setup page adopts them)."""

    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    backbones: Mapped[list] = mapped_column(sa.JSON)
    # Below this ensemble confidence the answer is "unknown" (0: always answer).
    threshold: Mapped[float] = mapped_column(sa.Float, default=0.0, server_default="0")
    # Training also fine-tunes the top of EfficientNet-Lite backbones (kept where CV prefers it).
    fine_tune: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    # The iteration number predictions and exports use when none is asked for (NULL: the
    # latest); pinned by publishing one, so a worse retrain can be rolled back.
    published_iteration: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow, onupdate=utcnow)


class ProjectImage(db.Model):
    """A blob in a project: its class label and whether it is a training or test image."""

    __tablename__ = "project_images"
    __table_args__ = (
        sa.UniqueConstraint("project_id", "sha256", name="uq_project_image"),
        sa.Index("ix_project_images_split_label", "project_id", "split", "label"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(sa.ForeignKey("projects.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(sa.ForeignKey("blobs.sha256"), index=True)
    label: Mapped[str] = mapped_column(sa.String(100))
    split: Mapped[str] = mapped_column(sa.String(8), default="train")
    name: Mapped[str] = mapped_column(sa.String(1000))  # where it came from: "cats.zip:cat/1.jpg"
    created_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow)

    blob: Mapped[Blob] = sa.orm.relationship(lazy="joined")


class Job(db.Model):
    """A training run. `active_project` equals `project_id` while queued or running and is
    NULL otherwise: its unique constraint allows one active job per project, race-free."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(
        sa.ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(20), default="train")
    state: Mapped[str] = mapped_column(sa.String(12), default="queued", index=True)
    active_project: Mapped[int | None] = mapped_column(sa.Integer, unique=True, nullable=True)
    progress: Mapped[float] = mapped_column(sa.Float, default=0.0)
    stage: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    done: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    total: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    queue_id: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)  # huey task id
    worker: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)  # host:pid
    # How many times a worker has started this job: a job whose worker died is queued again
    # until JOB_MAX_ATTEMPTS, then failed (web.jobs.recover_stale_jobs).
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    backbones: Mapped[list] = mapped_column(sa.JSON)
    n_train: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    n_test: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    features_computed: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    features_total: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    iteration_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("iterations.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(sa.DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow)  # heartbeat

    iteration: Mapped[Iteration | None] = sa.orm.relationship(foreign_keys=[iteration_id])


class Iteration(db.Model):
    """A finished training run's result: `folder` (relative to the storage folder) holds
    the engine's `report.json` and `heads/<backbone>.keras`."""

    __tablename__ = "iterations"
    __table_args__ = (sa.UniqueConstraint("project_id", "number", name="uq_iteration_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(
        sa.ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(sa.Integer)
    job_id: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    folder: Mapped[str] = mapped_column(sa.String(500))
    classes: Mapped[list] = mapped_column(sa.JSON)
    backbones: Mapped[list] = mapped_column(sa.JSON)
    n_train: Mapped[int] = mapped_column(sa.Integer)
    n_test: Mapped[int] = mapped_column(sa.Integer)
    features_computed: Mapped[int] = mapped_column(sa.Integer, default=0)
    features_total: Mapped[int] = mapped_column(sa.Integer, default=0)
    summary: Mapped[dict] = mapped_column(sa.JSON)  # {backbone|"ensemble": {cv_accuracy, ...}}
    # what it was trained from (web.jobs.training_run.training_fingerprint): a retraining
    # with the same fingerprint is answered "nothing changed" instead of running again
    fingerprint: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow)


class Upload(db.Model):
    """What one upload request accepted and rejected, so the report survives a page reload."""

    __tablename__ = "uploads"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(
        sa.ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    split: Mapped[str] = mapped_column(sa.String(8))
    label: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)
    accepted: Mapped[int] = mapped_column(sa.Integer, default=0)
    files: Mapped[list] = mapped_column(sa.JSON)  # [{"name", "accepted", "rejected", "duplicates"}]
    rejected: Mapped[list] = mapped_column(sa.JSON)
    duplicates: Mapped[list] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow)


class WorkerBeat(db.Model):
    """A worker process's heartbeat (every few seconds), so the app can tell whether any
    worker is alive to run queued jobs."""

    __tablename__ = "worker_beats"

    id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)  # host:pid
    started_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(sa.DateTime, default=utcnow, index=True)


def init_app(app) -> None:
    """Bind the database to `app` and upgrade its schema in place (see web.schema)."""
    from web import schema

    db.init_app(app)
    with app.app_context():
        schema.upgrade(db.engine)

"""The database schema, upgraded in place with Alembic (revisions in `migrations/versions/`).

`upgrade(engine)` runs at every start of the web app and of every worker, so a deployment
upgrades itself when a new version starts:
* an empty database gets the current tables (`create_all`) and is stamped as up to date;
* a database made by `create_all` before migrations existed (tables, no `alembic_version`)
  is stamped with the baseline revision (the schema those versions created), then upgraded;
* a database under Alembic is upgraded to the newest revision.
Several processes starting at once take turns: PostgreSQL through an advisory lock, SQLite
through a lock file next to the database file.

Adding a revision after changing `web/db.py`: `.venv/bin/alembic revision --autogenerate -m
"what changed"` (against a database at the previous revision), then review the file it writes.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

import sqlalchemy as sa

log = logging.getLogger("transferlab.schema")
if logging.getLogger("alembic").level == logging.NOTSET:  # its INFO lines at every start: noise
    logging.getLogger("alembic").setLevel(logging.WARNING)

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "0001"  # the schema `create_all` made before migrations existed
_PG_LOCK_KEY = 0x7472616E  # any constant shared by every Transferlab process


def alembic_config(connection=None):
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: sa.Engine) -> str:
    """Bring the database to the newest revision; returns what was done ("created",
    "upgraded from <rev>", "up to date")."""
    with _migration_lock(engine), engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # SQLite revisions rebuild tables (copy, drop, rename). With foreign keys on,
            # dropping the old table would cascade-delete every row that references it.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                return _upgrade(conn)
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


def _upgrade(conn) -> str:
    from alembic import command

    from web.db import db

    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    config = alembic_config(conn)
    tables = set(sa.inspect(conn).get_table_names())
    if "alembic_version" not in tables:
        if "projects" not in tables:
            db.metadata.create_all(conn)
            command.stamp(config, "head")
            return "created"
        command.stamp(config, BASELINE)
        log.warning("database made before migrations: stamped %s", BASELINE)
    before = current_revision(conn)
    if before == head_revision():
        return "up to date"
    command.upgrade(config, "head")
    log.warning("database upgraded from revision %s to %s", before, head_revision())
    return f"upgraded from {before}"


@contextlib.contextmanager
def _migration_lock(engine: sa.Engine):
    """One migrating process at a time per SQLite file (PostgreSQL locks in the database)."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    path = Path(database).with_name(Path(database).name + ".migrate-lock")
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def configured_database_url() -> str:
    """The database URL the app would use (for the alembic command line), without starting
    the app."""
    from flask import Flask

    from web import config

    app = Flask("web", instance_path=config.instance_path(None) or str(ROOT / "instance"),
                instance_relative_config=True)
    config.load(app, None)
    return app.config["SQLALCHEMY_DATABASE_URI"]

"""Schema migrations (web/schema.py, migrations/): a deployment upgrades in place.

* A SQLite database made by `create_all` before migrations existed (a real dump of one, made
  by commit fcc3dce's web/db.py) is stamped and upgraded, keeping every row.
* The revisions, run from an empty database, build exactly the models' schema (on SQLite and
  on a real PostgreSQL server), so a forgotten revision fails here.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from helpers import logged_in
from tests.servers import PostgresServer

DUMP = Path(__file__).parent / "data" / "create_all_v0.sql"


def _schema_diff(url: str) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from web.db import db

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), db.metadata)
    finally:
        engine.dispose()


def _upgrade_from_empty(url: str) -> None:
    from alembic import command

    from web import schema

    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(schema.alembic_config(conn), "head")
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.mark.unit
def test_a_create_all_database_from_before_migrations_is_upgraded_in_place(tmp_path):
    from web import create_app, schema
    from web.db import Job, Project, ProjectImage, db

    instance = tmp_path / "inst"
    instance.mkdir()
    con = sqlite3.connect(instance / "transferlab.db")
    con.executescript(DUMP.read_text())
    con.close()

    app = create_app({"INSTANCE_PATH": str(instance), "TESTING": True})
    with app.app_context():
        assert schema.current_revision(db.session.connection()) == schema.head_revision()
        project = db.session.get(Project, 1)
        assert project.name == "cats vs dogs"
        labels = sorted(i.label for i in db.session.scalars(sa.select(ProjectImage)))
        assert labels == ["cat", "dog"]
        job = db.session.get(Job, 1)
        assert (job.state, job.iteration_id, job.attempts) == ("succeeded", 1, 0)
    assert _schema_diff(app.config["SQLALCHEMY_DATABASE_URI"]) == []
    client = logged_in(app.test_client())  # the first account adopts the older projects
    body = client.get("/api/v1/projects/1").get_json()
    assert body["name"] == "cats vs dogs" and body["latest_iteration"] == 1
    # a second start finds it up to date and changes nothing
    with app.app_context():
        assert schema.upgrade(db.engine) == "up to date"


@pytest.mark.unit
def test_a_new_database_is_created_at_the_newest_revision(tmp_path):
    from web import create_app, schema
    from web.db import db

    app = create_app({"INSTANCE_PATH": str(tmp_path), "TESTING": True})
    with app.app_context():
        assert schema.current_revision(db.session.connection()) == schema.head_revision()


@pytest.mark.unit
def test_revisions_from_empty_build_the_models_schema_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    _upgrade_from_empty(url)
    assert _schema_diff(url) == []


@pytest.mark.servers
def test_revisions_from_empty_build_the_models_schema_on_postgresql(postgres):
    url = postgres.create_database("from_empty")
    _upgrade_from_empty(url)
    assert _schema_diff(url) == []


@pytest.mark.servers
def test_app_on_postgresql_creates_then_upgrades_a_baseline_database(postgres, tmp_path):
    """A PostgreSQL database at the baseline revision (what create_all made) with data
    is upgraded by the app at start; a fresh one is created at the newest revision."""
    from alembic import command

    from web import create_app, schema
    from web.db import Job, db

    url = postgres.create_database("baseline")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        command.upgrade(schema.alembic_config(conn), schema.BASELINE)
        conn.execute(sa.text("INSERT INTO projects (id, name, backbones, created_at, updated_at)"
                             " VALUES (1, 'p', '[\"efficientnet_lite0\"]', now(), now())"))
        conn.execute(sa.text(
            "INSERT INTO jobs (id, project_id, kind, state, progress, cancel_requested, "
            "backbones, created_at, updated_at) VALUES (1, 1, 'train', 'failed', 0, false, "
            "'[]', now(), now())"))
    engine.dispose()
    app = create_app({"INSTANCE_PATH": str(tmp_path), "TESTING": True,
                      "SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        assert schema.current_revision(db.session.connection()) == schema.head_revision()
        assert db.session.get(Job, 1).attempts == 0
        db.engine.dispose()
    assert _schema_diff(url) == []

    fresh = create_app({"INSTANCE_PATH": str(tmp_path / "2"), "TESTING": True,
                        "SQLALCHEMY_DATABASE_URI": postgres.create_database("fresh")})
    with fresh.app_context():
        assert schema.current_revision(db.session.connection()) == schema.head_revision()
        db.engine.dispose()


@pytest.mark.unit
def test_revision_0007_adds_the_published_iteration_keeping_projects(tmp_path):
    """A database at 0006 with a project is upgraded: the project keeps its rows and serves
    its latest iteration (nothing published), and publishing works on it."""
    from alembic import command

    from web import create_app, schema
    from web.db import Project, db

    instance = tmp_path / "inst"
    instance.mkdir()
    engine = sa.create_engine(f"sqlite:///{instance / 'transferlab.db'}")
    with engine.begin() as conn:
        command.upgrade(schema.alembic_config(conn), "0006")
        conn.execute(sa.text("INSERT INTO projects (id, name, backbones, threshold, fine_tune, "
                             "created_at, updated_at) VALUES (1, 'p', '[\"efficientnet_lite0\"]',"
                             " 0, 0, '2026-01-01', '2026-01-01')"))
        conn.execute(sa.text(
            "INSERT INTO iterations (id, project_id, number, folder, classes, backbones, "
            "n_train, n_test, features_computed, features_total, summary, created_at) VALUES "
            "(1, 1, 1, 'p1/it1', '[\"a\", \"b\"]', '[]', 2, 0, 0, 0, '{}', '2026-01-01')"))
    engine.dispose()
    app = create_app({"INSTANCE_PATH": str(instance), "TESTING": True})
    with app.app_context():
        assert schema.current_revision(db.session.connection()) == schema.head_revision()
        assert db.session.get(Project, 1).published_iteration is None
    client = logged_in(app.test_client())
    body = client.get("/api/v1/projects/1").get_json()
    assert body["live_iteration"] == 1 and body["published_iteration"] is None
    assert client.post("/api/v1/projects/1/iterations/1/publish").status_code == 200
    assert client.get("/api/v1/projects/1").get_json()["published_iteration"] == 1

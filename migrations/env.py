"""Alembic's entry point for Transferlab's migrations.

Called two ways:
* by the app at start (`web.schema.upgrade`), which hands over an open connection in
  `config.attributes["connection"]`;
* by the `alembic` command line (to write a revision: `alembic revision --autogenerate -m ...`),
  which connects to `-x url=...`, else `sqlalchemy.url` from alembic.ini, else the database the
  app is configured with (DATABASE_URL, instance/config.py, or the instance folder's SQLite file).
"""
from __future__ import annotations

from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context

from web.db import db

config = context.config
target_metadata = db.metadata


def _configured_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url")
    if url:
        return url
    from web.schema import configured_database_url

    return configured_database_url()


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=True,  # SQLite can only ALTER through table copies
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    if config.config_file_name:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    engine = sa.create_engine(_configured_url())
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()

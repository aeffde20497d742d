"""Transferlab's web app: the application factory.

`create_app()` wires configuration (`web.config`), bounded URL ids (`web.inputs`), the
database (`web.db`), accounts, sessions and CSRF (`web.auth`), security headers and the Origin
check (`web.security`), file storage
(`web.storage`), the job queue (`web.jobs`), prediction (`web.prediction`), the JSON API
(`web.api`) and the HTML pages (`web.pages`). Creating the app never imports TensorFlow.
"""
from __future__ import annotations

import importlib.util
import os

from flask import Flask


def create_app(test_config: dict | None = None) -> Flask:
    """Build the Flask app. `test_config` overrides everything (tests pass a temporary
    `INSTANCE_PATH`); otherwise config comes from defaults, `instance/config.py` and the
    environment (`TRANSFERLAB_*`, `DATABASE_URL`, `REDIS_URL`)."""
    from web import config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    app = Flask(
        __name__,
        instance_path=config.instance_path(test_config) or os.path.join(root, "instance"),
        instance_relative_config=True,
        template_folder=os.path.join(root, "templates"),
        static_folder=os.path.join(root, "static"),
    )
    os.makedirs(app.instance_path, exist_ok=True)
    config.load(app, test_config)

    from web import db as database
    from web import inputs
    from web.jobs import Jobs
    from web.prediction import PredictionService
    from web.storage import Storage

    inputs.init_app(app)  # before any blueprint: rules bind their converters when added
    database.init_app(app)
    from web import auth, security

    auth.init_app(app)
    security.init_app(app)  # after auth: its Origin check reads what auth's gate found
    app.extensions["transferlab.storage"] = Storage(app.config["STORAGE_DIR"],
                                                    app.config["FEATURE_CACHE_DIR"])
    app.extensions["transferlab.prediction"] = PredictionService(
        app.config.get("WEIGHTS_DIR"), app.config["PREDICTOR_CACHE_SIZE"],
        runtime_cache_dir=app.config["OPENVINO_CACHE_DIR"])
    Jobs(app)

    from web import api

    app.add_url_rule("/healthz", "healthz", healthz)
    app.register_blueprint(api.bp)
    api.register_error_handlers(app)
    if importlib.util.find_spec("web.pages") is not None:
        from web import pages

        app.register_blueprint(pages.bp)
    from web import limits

    limits.init_app(app)  # last: it limits the endpoints registered above
    return app


def healthz():
    """Liveness and readiness for load balancers and `docker compose`: 200 when the database
    answers, 503 otherwise. Cheap: no TensorFlow, no queue round trip."""
    import sqlalchemy as sa

    from web.db import db

    try:
        db.session.execute(sa.text("SELECT 1"))
    except Exception as exc:  # any database error means "not ready"
        return {"ok": False, "error": f"database: {type(exc).__name__}"}, 503
    return {"ok": True}

"""Configuration: defaults, then `instance/config.py`, then the environment, then test overrides.

Environment variables: every `TRANSFERLAB_<KEY>` sets `<KEY>` (values are parsed as JSON when
they parse, so `TRANSFERLAB_PORT=8000` is an int and `TRANSFERLAB_WORKER=false` a bool), plus
the conventional `DATABASE_URL` and `REDIS_URL`. Paths left as None are derived from the
instance folder once everything is loaded (see `finalize`).
"""
from __future__ import annotations

import os
from pathlib import Path

INSTANCE_ENV = "TRANSFERLAB_INSTANCE_PATH"

DEFAULTS: dict = {
    # Where everything lives unless configured otherwise: Flask's instance folder.
    "SQLALCHEMY_DATABASE_URI": None,  # default sqlite:///<instance>/transferlab.db; DATABASE_URL
    "REDIS_URL": None,  # set it to queue jobs on Redis (RedisHuey) instead of SQLite
    "HUEY_NAME": "transferlab",
    "HUEY_DB": None,  # SqliteHuey file, default <instance>/huey.db
    "STORAGE_DIR": None,  # images, thumbnails, iterations; default: the instance folder
    "FEATURE_CACHE_DIR": None,  # the shared bottleneck cache; default <instance>/features
    "WEIGHTS_DIR": None,  # extra folder holding backbone weights under Keras's file names
    # false: a training whose backbone's weights are not here is refused (422) before it
    # queues; true: it is queued and the worker tries to download them through Keras
    "DOWNLOAD_WEIGHTS": False,
    # `python app.py` loads the latest iteration of this many recently trained projects at
    # start, in the background, so their first prediction after a restart is quick
    "WARM_AT_START": 2,
    # polling a job loads its backbones (while it runs) and its iteration (once it
    # succeeded) in the web process, so the first prediction does not wait (false: on demand)
    "WARM_PREDICTORS": True,
    "MAX_CONTENT_LENGTH": 512 * 1024 * 1024,  # largest request (upload) in bytes -> 413
    "MAX_FORM_MEMORY_SIZE": 1024 * 1024,  # non-file form fields
    "THUMBNAIL_SIZE": 160,
    "PREVIEW_SIZE": 1024,
    "HOST": "127.0.0.1",
    "PORT": 5000,
    "WORKER": True,  # `python app.py` starts a worker child process (false: run your own)
    "WORKER_THREADS": 1,  # jobs run at once per worker process (TensorFlow uses all cores)
    "WORKER_POLL_SECONDS": 1.0,  # longest wait between queue polls when idle
    "STALE_JOB_SECONDS": 900,  # a running job of a worker with no heartbeat, silent this long, is retried
    # A running job that reported no progress this long is taken from its worker even while
    # that worker's heartbeat is fresh (a hung thread): queued again, or failed after
    # JOB_MAX_ATTEMPTS. Far above the longest silent stage (fitting a head, a fine-tuning fold).
    "JOB_STALL_SECONDS": 3600,
    "JOB_MAX_ATTEMPTS": 2,  # starts of a job whose worker keeps dying before it is failed
    # The worker's housekeeping (at its start, then every 30 minutes) removes files and folders
    # with no database row (an upload killed midway), temporary files and unused images once
    # they are this old: far longer than any upload takes, so one in progress is never harmed.
    "ORPHAN_GRACE_SECONDS": 3600,
    # Bytes the housekeeping holds in a file next to a SQLite database and gives up when a
    # deletion finds the disk full, so that deleting (to free space) works even then.
    "DISK_RESERVE_BYTES": 8 * 1024 * 1024,
    "WORKER_SHUTDOWN_SECONDS": 30,  # SIGTERM: the running job's time to finish, then re-queued
    "PREDICTOR_CACHE_SIZE": 4,  # trained iterations kept loaded per web process
    "BATCH_PREDICT_CHUNK": 32,  # images per forward pass of a batch prediction (worker)
    "TOP_K": 3,
    "SQLALCHEMY_TRACK_MODIFICATIONS": False,
    # Accounts and sessions (web/auth/)
    "SECRET_KEY": None,  # signs session cookies; default: generated once into <instance>/secret_key
    "SESSION_COOKIE_NAME": "transferlab_session",
    "SESSION_COOKIE_HTTPONLY": True,
    "SESSION_COOKIE_SAMESITE": "Lax",
    "SESSION_COOKIE_SECURE": None,  # None: Secure whenever the request came over HTTPS
    "PERMANENT_SESSION_LIFETIME": 14 * 24 * 3600,  # seconds a login lasts
    "TRUSTED_PROXIES": 0,  # reverse proxies in front whose X-Forwarded-* headers to believe
    "MAX_JSON_BYTES": 1024 * 1024,  # largest JSON request body -> 413
    "WTF_CSRF_CHECK_DEFAULT": False,  # web/auth/gate.py decides which requests need the token
    "WTF_CSRF_TIME_LIMIT": None,  # valid as long as the session: a page left open still works
    # Slow clients (web/serving.py; `python app.py` only): what a connection may take
    "SOCKET_TIMEOUT": 60,  # seconds a connection may send nothing before it is closed
    "BODY_MIN_RATE": 16 * 1024,  # bytes/s a request body must average after the grace -> 408
    "BODY_GRACE_SECONDS": 10,  # seconds before BODY_MIN_RATE applies
    "BODY_BUFFER_BYTES": 1024 * 1024,  # bodies up to this are read whole before the app runs
    # Abuse limits (web/limits.py): Flask-Limiter rate strings ("10/minute", "100/hour;5/second")
    # each applied per account and per client address; beyond one -> 429 with Retry-After
    "RATELIMIT_ENABLED": True,
    "RATELIMIT_STORAGE_URI": None,  # counters: REDIS_URL when set (shared by web processes), else memory://
    "LOGIN_LIMIT": "10/minute",  # failed logins per address and per user name
    "SETUP_LIMIT": "10/minute",  # posts of the first-visit setup form per address
    "PASSWORD_LIMIT": "10/minute",  # password changes (right or wrong) per account and address
    "TOKEN_LIMIT": "30/hour",  # new API tokens per account and address
    "UPLOAD_LIMIT": "600/minute",  # image uploads per account and address
    "PREDICT_LIMIT": "1200/minute",  # predictions (trained and ImageNet) per account and address
    "UPLOADS_PER_USER": 4,  # uploads one account may have running at once per web process
}

SECRET_KEY_FILE = "secret_key"


def instance_path(test_config: dict | None) -> str | None:
    """The instance folder from the test config or `$TRANSFERLAB_INSTANCE_PATH` (else Flask's)."""
    if test_config and test_config.get("INSTANCE_PATH"):
        return os.path.abspath(test_config["INSTANCE_PATH"])
    env = os.environ.get(INSTANCE_ENV)
    return os.path.abspath(env) if env else None


def load(app, test_config: dict | None) -> None:
    """Fill `app.config` in order: defaults, instance file, environment, `test_config`."""
    app.config.from_mapping(DEFAULTS)
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env("TRANSFERLAB")
    if os.environ.get("DATABASE_URL"):
        app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
    if os.environ.get("REDIS_URL"):
        app.config["REDIS_URL"] = os.environ["REDIS_URL"]
    if test_config:
        app.config.from_mapping(test_config)
    finalize(app)


def finalize(app) -> None:
    """Derive the paths and the database URL that were left unset."""
    cfg = app.config
    cfg["INSTANCE_PATH"] = app.instance_path
    storage = Path(cfg["STORAGE_DIR"] or app.instance_path)
    cfg["STORAGE_DIR"] = str(storage)
    cfg["FEATURE_CACHE_DIR"] = str(cfg["FEATURE_CACHE_DIR"] or storage / "features")
    cfg["HUEY_DB"] = str(cfg["HUEY_DB"] or Path(app.instance_path) / "huey.db")
    uri = cfg["SQLALCHEMY_DATABASE_URI"] or f"sqlite:///{Path(app.instance_path) / 'transferlab.db'}"
    if uri.startswith("postgres://"):  # Heroku-style URLs; SQLAlchemy wants postgresql://
        uri = "postgresql://" + uri[len("postgres://"):]
    cfg["SQLALCHEMY_DATABASE_URI"] = uri
    if uri.startswith("sqlite"):
        options = dict(cfg.get("SQLALCHEMY_ENGINE_OPTIONS") or {})
        connect_args = dict(options.get("connect_args") or {})
        connect_args.setdefault("timeout", 30)  # web and worker write the same file
        options["connect_args"] = connect_args
        cfg["SQLALCHEMY_ENGINE_OPTIONS"] = options
    for key in ("MAX_CONTENT_LENGTH", "PORT", "THUMBNAIL_SIZE", "PREVIEW_SIZE", "WORKER_THREADS",
                "PREDICTOR_CACHE_SIZE", "TOP_K", "BATCH_PREDICT_CHUNK"):
        if cfg.get(key) is not None:
            cfg[key] = int(cfg[key])
    cfg["WORKER"] = _truthy(cfg["WORKER"])
    cfg["DOWNLOAD_WEIGHTS"] = _truthy(cfg["DOWNLOAD_WEIGHTS"])
    cfg["WARM_PREDICTORS"] = _truthy(cfg["WARM_PREDICTORS"])
    for key in ("TRUSTED_PROXIES", "MAX_JSON_BYTES", "PERMANENT_SESSION_LIFETIME",
                "UPLOADS_PER_USER", "BODY_BUFFER_BYTES"):
        cfg[key] = int(cfg[key])
    for key in ("SOCKET_TIMEOUT", "BODY_MIN_RATE", "BODY_GRACE_SECONDS"):
        cfg[key] = float(cfg[key])
    cfg["RATELIMIT_ENABLED"] = _truthy(cfg["RATELIMIT_ENABLED"])
    cfg["RATELIMIT_STORAGE_URI"] = cfg["RATELIMIT_STORAGE_URI"] or cfg["REDIS_URL"] or "memory://"
    if cfg["SESSION_COOKIE_SECURE"] is not None:
        cfg["SESSION_COOKIE_SECURE"] = _truthy(cfg["SESSION_COOKIE_SECURE"])
    if not cfg.get("SECRET_KEY"):
        cfg["SECRET_KEY"] = instance_secret_key(Path(app.instance_path))


def instance_secret_key(instance: Path) -> str:
    """The key in `<instance>/secret_key`, generated (secrets.token_hex, mode 0600) the first
    time (see `write_once`)."""
    import secrets

    path = instance / SECRET_KEY_FILE
    key = write_once(path, lambda: secrets.token_hex(32))
    if len(key) < 32:
        raise RuntimeError(f"{path} holds no usable key: delete it to have a new one generated")
    return key


def write_once(path: Path, make) -> str:
    """The text in `path`, written first (mode 0600) from `make()` when the file is missing.
    The web process and its workers may start together: the file is written under a
    temporary name and linked into place, so every process reads the same complete text."""
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, make().encode())
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic, and fails if another process got there first
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "no", "off")
    return bool(value)

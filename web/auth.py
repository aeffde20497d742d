"""Accounts, sessions, API tokens and CSRF: who is asking, and what they may reach.

Contract:
- Every request except the login/setup pages, static files and the OpenAPI description needs a
  user: from `Authorization: Bearer <token>` (a personal API token) or else from the session
  cookie set by the login page. Without one, /api/ answers 401 JSON; pages redirect to
  /login, or to /setup while no account exists (the first visit creates the admin account).
- A request carrying an Authorization header is authenticated by that header alone (a bad
  token is a 401, never a fallback to the cookie) and needs no CSRF token: browsers cannot
  send it cross-site. Every other state-changing request (POST/PUT/PATCH/DELETE, including
  the login form) must carry the CSRF token (Flask-WTF): a form field `csrf_token` or the
  header `X-CSRFToken`, which the pages' JavaScript reads from `<meta name="csrf-token">`.
- Passwords are stored as werkzeug (scrypt) hashes; tokens as their sha256 and shown once.
  Neither is ever logged.
- `current_user()` is the authenticated user; `owned(query)` scopes a Project query to them.
"""
from __future__ import annotations

import argparse
import getpass
import hashlib
import hmac
import logging
import secrets
import sys
import threading
from datetime import timedelta
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import (
    Blueprint,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.security import check_password_hash, generate_password_hash

from web.db import ApiToken, Project, User, db, iso, utcnow
from web.prediction import offload

bp = Blueprint("auth", __name__)
csrf = CSRFProtect()
log = logging.getLogger("transferlab.auth")

TOKEN_PREFIX = "tl_"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")
PUBLIC_ENDPOINTS = {"static", "auth.login", "auth.setup", "api.openapi", "healthz"}
MIN_PASSWORD, MAX_PASSWORD = 8, 1024
MAX_USERNAME = 80
TOKEN_TOUCH_SECONDS = 60  # last_used_at is written at most this often per token
# Compared against when the user name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = generate_password_hash(secrets.token_hex(16))


class AuthError(ValueError):
    """A user name, password or token name that cannot be accepted (the message says why)."""


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session; with SESSION_COOKIE_SECURE unset (None) the cookie is
    marked Secure exactly when the request came over HTTPS (behind a proxy: TRUSTED_PROXIES)."""

    def get_cookie_secure(self, app) -> bool:
        configured = app.config.get("SESSION_COOKIE_SECURE")
        if configured is None:
            return request.is_secure if request else False
        return bool(configured)


def init_app(app) -> None:
    app.session_interface = SessionInterface()
    app.permanent_session_lifetime = timedelta(seconds=app.config["PERMANENT_SESSION_LIFETIME"])
    if app.config["TRUSTED_PROXIES"]:
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n)
    csrf.init_app(app)
    app.before_request(_guard)
    app.register_blueprint(bp)

    @app.context_processor
    def _user():
        return {"current_user": current_user()}

    @app.errorhandler(CSRFError)
    def _csrf_error(exc: CSRFError):
        """JSON under /api/; the login and setup forms come back with a fresh token."""
        if request.path.startswith("/api/"):
            response = jsonify({"error": exc.description})
            response.status_code = 400
            return response
        if request.endpoint in ("auth.login", "auth.setup"):
            template = "login.html" if request.endpoint == "auth.login" else "setup.html"
            return render_template(template, error="The form had expired: please try again.",
                                   username=""), 400
        return exc


# -- users and tokens ---------------------------------------------------------------------------


def check_username(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise AuthError("the user name must not be empty")
    name = value.strip()
    if len(name) > MAX_USERNAME:
        raise AuthError(f"the user name is longer than {MAX_USERNAME} characters")
    if any(not ch.isprintable() for ch in name):
        raise AuthError("the user name must be printable characters")
    return name


def check_password(value) -> str:
    if not isinstance(value, str) or len(value) < MIN_PASSWORD:
        raise AuthError(f"the password must have at least {MIN_PASSWORD} characters")
    if len(value) > MAX_PASSWORD:
        raise AuthError(f"the password is longer than {MAX_PASSWORD} characters")
    return value


def create_user(username: str, password: str, *, admin: bool = False) -> User:
    """A new account (AuthError when the name is taken or the password too short).

    The first account of a deployment (from the setup page or the command line) adopts the
    projects made before accounts existed. Ends the session's read transaction first."""
    username, password = check_username(username), check_password(password)
    _end_read_transaction()  # no pooled connection held while the hash waits and runs
    password_hash = _hash_password(password)
    if db.session.scalar(sa.select(User.id).where(User.username == username)) is not None:
        raise AuthError(f"the user name {username!r} is taken")
    first = db.session.scalar(sa.select(User.id).limit(1)) is None
    user = User(username=username, password_hash=password_hash, is_admin=admin)
    db.session.add(user)
    try:
        db.session.flush()
        if first:
            db.session.execute(sa.update(Project).where(Project.owner_id.is_(None))
                               .values(owner_id=user.id))
        db.session.commit()
    except sa.exc.IntegrityError:  # created meanwhile by another request
        db.session.rollback()
        raise AuthError(f"the user name {username!r} is taken") from None
    log.info("account %r created%s", username, " (admin)" if admin else "")
    return user


# scrypt takes ~0.1 s of CPU and 16 MiB: hashes run off the gevent loop (or every login would
# stall all requests), two at a time (more would only crowd the loop's thread off the cores).
_HASHING = threading.BoundedSemaphore(2)


def _hashed(func, *args):
    with _HASHING:
        return offload(func, *args)


def _hash_password(password: str) -> str:
    return _hashed(generate_password_hash, password)


def set_password(user: User, password: str) -> None:
    """Change the password; the user's other browser sessions are logged out by it."""
    user.password_hash = _hash_password(check_password(password))
    db.session.commit()


def authenticate(username, password) -> User | None:
    """The user with this name and password, else None (same work either way). Ends the
    session's read transaction: no pooled connection is held while the hash waits and runs."""
    if not isinstance(username, str) or not isinstance(password, str) or len(password) > MAX_PASSWORD:
        return None
    user = db.session.scalar(sa.select(User).where(User.username == username.strip()))
    stored = user.password_hash if user else _DUMMY_HASH
    _end_read_transaction()
    ok = _hashed(check_password_hash, stored, password)
    return user if user is not None and ok else None


def service_token(username: str, purpose: str) -> str:
    """A new API token for account `username`, made first (with a random password nobody
    knows) if missing: for scripts such as the benchmarks. Needs an app context."""
    user = db.session.scalar(sa.select(User).where(User.username == username))
    if user is None:
        user = create_user(username, secrets.token_hex(16))
    return issue_token(user, purpose)[1]


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def issue_token(user: User, name: str) -> tuple[ApiToken, str]:
    """A new API token for `user`: the row and the secret (returned this once, never stored)."""
    if not isinstance(name, str) or not name.strip():
        raise AuthError("'name' must be a non-empty string (what the token is for)")
    if len(name.strip()) > 100:
        raise AuthError("'name' is longer than 100 characters")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, name=name.strip(), token_hash=_token_hash(secret),
                   prefix=secret[:10])
    db.session.add(row)
    db.session.commit()
    return row, secret


def user_tokens(user: User) -> list[ApiToken]:
    return db.session.scalars(sa.select(ApiToken).where(ApiToken.user_id == user.id)
                              .order_by(ApiToken.id)).all()


def revoke_token(user: User, token_id: int) -> bool:
    row = db.session.scalar(sa.select(ApiToken).where(ApiToken.id == token_id,
                                                      ApiToken.user_id == user.id))
    if row is None:
        return False
    db.session.delete(row)
    db.session.commit()
    return True


def token_json(row: ApiToken) -> dict:
    return {"id": row.id, "name": row.name, "prefix": row.prefix,
            "created_at": iso(row.created_at), "last_used_at": iso(row.last_used_at)}


def user_json(user: User) -> dict:
    return {"id": user.id, "username": user.username, "is_admin": bool(user.is_admin),
            "created_at": iso(user.created_at)}


def _user_for_token(header: str) -> User | None:
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    row = db.session.scalar(sa.select(ApiToken).where(ApiToken.token_hash == _token_hash(token)))
    if row is None:
        return None
    now = utcnow()
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > TOKEN_TOUCH_SECONDS:
        row.last_used_at = now
        db.session.commit()
    return db.session.get(User, row.user_id)


def _session_fingerprint(user: User) -> str:
    """Changes with the password, so changing it ends every other session."""
    return hmac.new(current_app.secret_key.encode(), user.password_hash.encode(),
                    hashlib.sha256).hexdigest()[:32]


def login_session(user: User) -> None:
    session.clear()  # nothing from before the login survives it (incl. the old CSRF token)
    session.permanent = True
    session["user_id"] = user.id
    session["auth"] = _session_fingerprint(user)


def _user_for_session() -> User | None:
    user_id = session.get("user_id")
    if user_id is None:
        return None
    user = db.session.get(User, user_id) if isinstance(user_id, int) else None
    if user is None or not hmac.compare_digest(str(session.get("auth", "")),
                                               _session_fingerprint(user)):
        session.clear()
        return None
    return user


def current_user() -> User | None:
    return g.get("user")


def owned(query):
    """`query` (a select over Project) limited to the current user's projects."""
    user = current_user()
    return query.where(Project.owner_id == (user.id if user else -1))


MAX_ID = 2**63 - 1  # larger ids cannot exist (and would overflow SQLite's integers)


def owned_project(project_id: int) -> Project | None:
    """The current user's project `project_id`; None when it does not exist, is someone
    else's, or the id is too large to exist."""
    if not 0 < project_id <= MAX_ID:
        return None
    return db.session.scalar(owned(sa.select(Project).where(Project.id == project_id)))


def has_users() -> bool:
    return db.session.scalar(sa.select(User.id).limit(1)) is not None


# -- the gate -------------------------------------------------------------------------------------


def _guard():
    """Authenticate, refuse strangers, and check CSRF on cookie-authenticated writes."""
    if request.mimetype == "application/x-www-form-urlencoded":
        # Werkzeug reads such a form whole, past MAX_FORM_MEMORY_SIZE: cap the request itself.
        request.max_content_length = current_app.config["MAX_FORM_MEMORY_SIZE"]
    header = request.headers.get("Authorization")
    if header is not None:
        g.user, g.auth_via = _user_for_token(header), "token"
        if g.user is None:
            return _unauthorized("invalid API token")
    else:
        g.user, g.auth_via = _user_for_session(), "session"
    _end_read_transaction()
    if g.user is None and request.endpoint not in PUBLIC_ENDPOINTS:
        if request.path.startswith("/api/"):
            return _unauthorized("log in, or send 'Authorization: Bearer <token>'")
        if not has_users():
            return redirect(url_for("auth.setup"))
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    if g.auth_via == "session" and request.method not in SAFE_METHODS:
        csrf.protect()
    return None


def _end_read_transaction() -> None:
    """Give the pooled database connection back before anything reads the request body (the
    CSRF check, forms, uploads): a body may trickle in for minutes, and 15 slow ones would
    otherwise hold the whole pool. Objects stay loaded and attached (not expired), so code
    that later changes `g.user` still saves it."""
    session = db.session()
    keep, session.expire_on_commit = session.expire_on_commit, False
    try:
        session.commit()
    finally:
        session.expire_on_commit = keep


def _unauthorized(message: str):
    response = jsonify({"error": message})
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Bearer realm="transferlab"'
    return response


def _safe_next(target: str | None) -> str:
    """Only a path on this site (never `//evil.example` or `https://...`)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("pages.index")
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else url_for("pages.index")


# -- pages --------------------------------------------------------------------------------------


@bp.after_request
def _no_store(response):
    """Login forms and new tokens never go into a cache."""
    response.headers["Cache-Control"] = "no-store"
    return response



@bp.route("/setup", methods=["GET", "POST"])
def setup():
    """The first visit: create the admin account (only while no account exists)."""
    if has_users():
        return redirect(url_for("auth.login"))
    error = None
    if request.method == "POST":
        password, confirm = request.form.get("password"), request.form.get("confirm")
        try:
            if password != confirm:
                raise AuthError("the two passwords differ")
            user = create_user(request.form.get("username"), password, admin=True)
        except AuthError as exc:
            error = str(exc)
        else:
            login_session(user)
            return redirect(url_for("pages.index"))
    return render_template("setup.html", error=error,
                           username=request.form.get("username", "")), 400 if error else 200


@bp.route("/login", methods=["GET", "POST"])
def login():
    if not has_users():
        return redirect(url_for("auth.setup"))
    error = None
    if request.method == "POST":
        user = authenticate(request.form.get("username"), request.form.get("password"))
        if user is not None:
            login_session(user)
            return redirect(_safe_next(request.args.get("next")))
        error = "Wrong user name or password."
        log.info("failed login from %s", request.remote_addr)
    return render_template("login.html", error=error, username=request.form.get("username", "")), \
        401 if error else 200


@bp.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("auth.login"))


@bp.route("/account", methods=["GET"])
def account():
    return render_template("account.html", user=current_user(), tokens=user_tokens(current_user()))


@bp.post("/account/tokens")
def account_new_token():
    try:
        row, secret = issue_token(current_user(), request.form.get("name", ""))
    except AuthError as exc:
        flash(str(exc), "error")
        return redirect(url_for("auth.account"))
    return render_template("account.html", user=current_user(), tokens=user_tokens(current_user()),
                           new_token=secret, new_token_name=row.name)


@bp.post("/account/tokens/<int:token_id>/delete")
def account_revoke_token(token_id: int):
    if revoke_token(current_user(), token_id):
        flash("Token revoked.", "info")
    return redirect(url_for("auth.account"))


@bp.post("/account/password")
def account_password():
    user = current_user()
    if authenticate(user.username, request.form.get("current", "")) is None:
        flash("The current password is wrong.", "error")
    elif request.form.get("password") != request.form.get("confirm"):
        flash("The two new passwords differ.", "error")
    else:
        try:
            set_password(user, request.form.get("password"))
        except AuthError as exc:
            flash(str(exc), "error")
        else:
            login_session(user)  # this session stays; every other one is logged out
            flash("Password changed.", "info")
    return redirect(url_for("auth.account"))


@bp.post("/account/users")
def account_new_user():
    """Admins add accounts for other people (each sees only their own projects)."""
    if not current_user().is_admin:
        flash("Only an admin can add accounts.", "error")
    else:
        try:
            user = create_user(request.form.get("username"), request.form.get("password"))
        except AuthError as exc:
            flash(str(exc), "error")
        else:
            flash(f"Account {user.username!r} created.", "info")
    return redirect(url_for("auth.account"))


# -- command line (python app.py create-user | set-password | create-token) ---------------------

CLI_COMMANDS = ("create-user", "set-password", "create-token")


def cli(app, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python app.py")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("create-user", help="create an account (asks for the password)")
    p.add_argument("username")
    p.add_argument("--admin", action="store_true", help="may add accounts on the account page")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p = sub.add_parser("set-password", help="set an account's password (asks for it)")
    p.add_argument("username")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p = sub.add_parser("create-token", help="print a new API token for an account")
    p.add_argument("username")
    p.add_argument("--name", default="command line", help="what the token is for")
    args = parser.parse_args(argv)

    def read_password() -> str:
        if args.password_stdin:
            return sys.stdin.readline().rstrip("\r\n")
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Again: "):
            raise AuthError("the two passwords differ")
        return first

    with app.app_context():
        try:
            if args.command == "create-user":
                user = create_user(args.username, read_password(), admin=args.admin)
                print(f"created account {user.username!r}")
                return 0
            user = db.session.scalar(sa.select(User).where(User.username == args.username))
            if user is None:
                raise AuthError(f"no account named {args.username!r}")
            if args.command == "set-password":
                set_password(user, read_password())
                print(f"password of {user.username!r} changed")
            else:
                _, secret = issue_token(user, args.name)
                print(secret)
            return 0
        except AuthError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

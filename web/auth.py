"""Accounts, sessions, API tokens and CSRF: who is asking, and what they may reach.

Contract:
- Every request except the login/setup pages, static files and the OpenAPI description needs a
  user: from `Authorization: Bearer <token>` (a personal API token) or else from the session
  cookie set by the login page. Without one, /api/ answers 401 JSON; pages redirect to
  /login, or to /setup while no account exists (the first visit creates the admin account,
  given the setup code: see below).
- A request carrying an Authorization header is authenticated by that header alone (a bad
  token is a 401, never a fallback to the cookie) and needs no CSRF token: browsers cannot
  send it cross-site. Every other state-changing request (POST/PUT/PATCH/DELETE, including
  the login form) must carry the CSRF token (Flask-WTF): a form field `csrf_token` or the
  header `X-CSRFToken`, which the pages' JavaScript reads from `<meta name="csrf-token">`.
- Passwords are stored as werkzeug (scrypt) hashes; tokens as their sha256 and shown once.
  Neither is ever logged.
- Sessions are server-side, so they can be ended: the signed cookie carries only a random
  session id, and a `login_sessions` row (holding its sha256, the user, and an expiry that
  slides with use up to PERMANENT_SESSION_LIFETIME) must exist for it to count. Logout deletes
  the browser's row; a password change deletes all of the user's rows (the browser that changed
  it gets a new one); disabling an account deletes them all. A table rather than a per-user
  counter, so logging out in one browser leaves the user's other browsers logged in.
- A disabled account (admins: account page, or `python app.py disable-user`) cannot log in;
  its sessions end and its API tokens answer 401 "account disabled" (they work again if it is
  enabled again). An API token may expire (`expires_in_days`): afterwards a 401 "token expired".
- First-run setup needs the one-time setup code: written to `<instance>/setup_code` (mode 0600)
  when first needed, printed in the log by `python app.py` at start while no account exists,
  and deleted once the first account exists. Required from every address, loopback included:
  behind a reverse proxy on the same host (without TRUSTED_PROXIES) every visitor would look
  like loopback, and the server can run in a container where nobody is. Creating the admin
  with `python app.py create-user NAME --admin` needs no code.
- `current_user()` is the authenticated user; `owned(query)` scopes a Project query to them.
"""
from __future__ import annotations

import argparse
import getpass
import hashlib
import hmac
import logging
import re
import secrets
import sys
import threading
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import (
    Blueprint,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.security import check_password_hash, generate_password_hash

from web.config import write_once
from web.db import ApiToken, LoginSession, Project, User, db, iso, utcnow
from web.concurrency import offload

bp = Blueprint("auth", __name__)
csrf = CSRFProtect()
log = logging.getLogger("transferlab.auth")

TOKEN_PREFIX = "tl_"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")
PUBLIC_ENDPOINTS = {"static", "auth.login", "auth.setup", "api.openapi", "healthz"}
MIN_PASSWORD, MAX_PASSWORD = 8, 1024
MAX_USERNAME = 80
TOKEN_TOUCH_SECONDS = 60  # last_used_at is written at most this often per token
SESSION_TOUCH_SECONDS = 60  # likewise a session's last_seen_at (and its sliding expiry)
MAX_TOKEN_DAYS = 3650
SETUP_CODE_FILE = "setup_code"
# Compared against when the user name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = generate_password_hash(secrets.token_hex(16))


class AuthError(ValueError):
    """A user name, password or token name that cannot be accepted (the message says why)."""


class TokenRejected(Exception):
    """A real API token that may not be used now; the message is the 401's reason."""


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

    @app.errorhandler(TokenRejected)
    def _token_rejected(exc: TokenRejected):
        return _unauthorized(str(exc))

    @app.context_processor
    def _user():
        return {"current_user": current_user()}

    @app.errorhandler(CSRFError)
    def _csrf_error(exc: CSRFError):
        """JSON under /api/; the login and setup forms come back with a fresh token."""
        if request.path.startswith("/api/"):
            from web.problems import problem

            return problem(400, exc.description, kind="csrf")
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
    if first:
        _setup_code_path().unlink(missing_ok=True)  # setup is closed from now on
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
    """Change the password and end every session of the user (the page that changed it
    then starts a new one for its own browser)."""
    user.password_hash = _hash_password(check_password(password))
    db.session.execute(sa.delete(LoginSession).where(LoginSession.user_id == user.id))
    db.session.commit()


def set_disabled(user: User, disabled: bool) -> None:
    """Disable an account (its sessions end now; its tokens are refused while it stays
    disabled) or enable it again."""
    user.is_disabled = disabled
    if disabled:
        db.session.execute(sa.delete(LoginSession).where(LoginSession.user_id == user.id))
    db.session.commit()
    log.info("account %r %s", user.username, "disabled" if disabled else "enabled")


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


def check_expires_in_days(value) -> int | None:
    """None (the token never expires) or a whole number of days from 1 to MAX_TOKEN_DAYS;
    anything else is an AuthError naming the field and the bounds."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKEN_DAYS:
        raise AuthError(f"'expires_in_days' must be a whole number of days from 1 to "
                        f"{MAX_TOKEN_DAYS} (or left out: never expires), got {value!r}")
    return value


def _form_days(raw: str | None):
    """The account page's days field as `check_expires_in_days` takes it: empty is None,
    digits an int, anything else left as it is (to be refused with its value)."""
    raw = (raw or "").strip()
    return None if not raw else int(raw) if re.fullmatch(r"[0-9]{1,6}", raw) else raw


def issue_token(user: User, name: str, expires_in_days=None) -> tuple[ApiToken, str]:
    """A new API token for `user`: the row and the secret (returned this once, never stored).
    It expires after `expires_in_days` (see `check_expires_in_days`), or never."""
    if not isinstance(name, str) or not name.strip():
        raise AuthError("'name' must be a non-empty string (what the token is for)")
    if len(name.strip()) > 100:
        raise AuthError("'name' is longer than 100 characters")
    days = check_expires_in_days(expires_in_days)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, name=name.strip(), token_hash=_token_hash(secret),
                   prefix=secret[:10],
                   expires_at=None if days is None else utcnow() + timedelta(days=days))
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
            "created_at": iso(row.created_at), "last_used_at": iso(row.last_used_at),
            "expires_at": iso(row.expires_at)}


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
    if row.expires_at is not None and row.expires_at <= now:
        raise TokenRejected("token expired")
    user = db.session.get(User, row.user_id)
    if user.is_disabled:
        raise TokenRejected("account disabled")
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > TOKEN_TOUCH_SECONDS:
        row.last_used_at = now  # committed by _guard's _end_read_transaction
    return user


def _session_lifetime() -> timedelta:
    return current_app.permanent_session_lifetime


def _session_row() -> LoginSession | None:
    """The row of this browser's session id (None without one: logged out, ended, or a
    cookie from before sessions were kept on the server)."""
    sid = session.get("sid")
    if not isinstance(sid, str) or len(sid) > 100:
        return None
    return db.session.scalar(sa.select(LoginSession)
                             .where(LoginSession.sid_hash == _token_hash(sid)))


def login_session(user: User) -> None:
    """Log this browser in as `user`: a new session id (whatever it had before ends)."""
    end_session()  # nothing from before the login survives it (incl. the old CSRF token)
    now = utcnow()
    sid = secrets.token_urlsafe(32)
    db.session.execute(sa.delete(LoginSession).where(LoginSession.expires_at <= now))
    db.session.add(LoginSession(user_id=user.id, sid_hash=_token_hash(sid), created_at=now,
                                last_seen_at=now, expires_at=now + _session_lifetime()))
    db.session.commit()
    session.permanent = True
    session["sid"] = sid


def end_session() -> None:
    """Log this browser out: its session row is deleted, so a copy of the cookie is useless."""
    row = _session_row()
    if row is not None:
        db.session.delete(row)
        db.session.commit()
    session.clear()


def _user_for_session() -> User | None:
    if "sid" not in session:
        return None
    row = _session_row()
    now = utcnow()
    user = None if row is None or row.expires_at <= now else db.session.get(User, row.user_id)
    if user is None or user.is_disabled:
        session.clear()
        return None
    if (now - row.last_seen_at).total_seconds() > SESSION_TOUCH_SECONDS:
        row.last_seen_at, row.expires_at = now, now + _session_lifetime()  # committed by _guard
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


def _setup_code_path() -> Path:
    return Path(current_app.instance_path) / SETUP_CODE_FILE


def setup_code() -> str:
    """The one-time code the setup page asks for (made the first time; needs an app context)."""
    return write_once(_setup_code_path(), lambda: secrets.token_hex(10))


def setup_code_matches(given) -> bool:
    """Whether `given` (what the setup form sent, spaces around it ignored) is the code."""
    if not isinstance(given, str) or not given.strip():
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogatepass"),
                               setup_code().encode())


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
    from web.problems import problem  # here, not at the top: keeps merges with auth's imports clean

    response = problem(401, message)
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
    setup_code()  # made now if missing, so the page's hint holds
    error = None
    if request.method == "POST":
        password, confirm = request.form.get("password"), request.form.get("confirm")
        if not setup_code_matches(request.form.get("setup_code")):
            log.warning("setup attempt with a wrong setup code from %s", request.remote_addr)
            return render_template("setup.html", username=request.form.get("username", ""),
                                   error="Wrong or missing setup code: copy it from the server's "
                                         "log or its setup_code file (nothing was created)."), 403
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
        if user is not None and user.is_disabled:
            error = "This account is disabled: ask an admin to enable it."
            log.info("login to disabled account %r from %s", user.username, request.remote_addr)
        elif user is not None:
            login_session(user)
            return redirect(_safe_next(request.args.get("next")))
        else:
            error = "Wrong user name or password."
            log.info("failed login from %s", request.remote_addr)
    return render_template("login.html", error=error, username=request.form.get("username", "")), \
        401 if error else 200


@bp.post("/logout")
def logout():
    end_session()
    return redirect(url_for("auth.login"))


def _account_page(**extra):
    """The account page: the user's tokens, and for an admin every account."""
    user = current_user()
    users = (db.session.scalars(sa.select(User).order_by(User.id)).all() if user.is_admin
             else [])
    return render_template("account.html", user=user, tokens=user_tokens(user), users=users,
                           now=utcnow(), max_token_days=MAX_TOKEN_DAYS, **extra)


@bp.route("/account", methods=["GET"])
def account():
    return _account_page()


@bp.post("/account/tokens")
def account_new_token():
    try:
        row, secret = issue_token(current_user(), request.form.get("name", ""),
                                  _form_days(request.form.get("expires_in_days")))
    except AuthError as exc:
        flash(str(exc), "error")
        return redirect(url_for("auth.account"))
    return _account_page(new_token=secret, new_token_name=row.name)


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


@bp.post("/account/users/<int:user_id>/<any(disable, enable):action>")
def account_disable_user(user_id: int, action: str):
    """Admins disable an account (its sessions end, its tokens are refused) or enable it."""
    target = db.session.get(User, user_id) if user_id <= MAX_ID else None
    if not current_user().is_admin:
        flash("Only an admin can disable or enable accounts.", "error")
    elif target is None:
        flash(f"There is no account with id {user_id}.", "error")
    elif target.id == current_user().id:
        flash("You cannot disable your own account.", "error")
    else:
        set_disabled(target, action == "disable")
        flash(f"Account {target.username!r} {action}d.", "info")
    return redirect(url_for("auth.account"))


# -- command line (python app.py create-user | set-password | create-token | disable-user | ...) --

CLI_COMMANDS = ("create-user", "set-password", "create-token", "disable-user", "enable-user")


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
    p.add_argument("--expires-in-days", type=int, default=None,
                   help=f"the token stops working after this many days (1-{MAX_TOKEN_DAYS})")
    for command, what in (("disable-user", "disable an account (ends its sessions, refuses "
                                           "its tokens)"), ("enable-user", "enable it again")):
        sub.add_parser(command, help=what).add_argument("username")
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
            elif args.command in ("disable-user", "enable-user"):
                set_disabled(user, args.command == "disable-user")
                print(f"account {user.username!r} {args.command.split('-')[0]}d")
            else:
                _, secret = issue_token(user, args.name, args.expires_in_days)
                print(secret)
            return 0
        except AuthError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

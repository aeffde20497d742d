"""The request gate: who is asking, whether they may, and what they may reach.

Contract:
- Every request except the login/setup pages, static files, the OpenAPI description and
  /healthz (PUBLIC_ENDPOINTS) needs a user: from `Authorization: Bearer <token>` (a personal
  API token) or else from the session cookie set by the login page. Without one, /api/
  answers 401 JSON; pages redirect to /login, or to /setup while no account exists.
- A request carrying an Authorization header is authenticated by that header alone (a bad
  token is a 401, never a fallback to the cookie) and needs no CSRF token: browsers cannot
  send it cross-site. Every other state-changing request (POST/PUT/PATCH/DELETE, including
  the login form) must carry the CSRF token (Flask-WTF): a form field `csrf_token` or the
  header `X-CSRFToken`, which the pages' JavaScript reads from `<meta name="csrf-token">`.
  A failed check is 400 JSON under /api/; the login and setup forms come back with a fresh
  token.
- The gate sets `g.user` and `g.auth_via` ("token" or "session"; `web.security` reads it)
  and gives the pooled database connection back before anything reads the request body.
- `current_user()` is the authenticated user; `owned(query)` scopes a Project query to them;
  `owned_project(id)` is their project or None (also for ids above MAX_ID).
- `init_app(app)` installs ProxyFix (TRUSTED_PROXIES), CSRF, the gate and its error handlers,
  and `current_user` for templates.
"""
from __future__ import annotations

import sqlalchemy as sa
from flask import current_app, g, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect

from web.auth.accounts import has_users
from web.auth.connection import release_connection
from web.auth.sessions import user_for_session
from web.auth.tokens import TokenRejected, user_for_token
from web.db import Project, User, db
from web.inputs import MAX_ID
from web.problems import problem

csrf = CSRFProtect()

SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")
PUBLIC_ENDPOINTS = {"static", "auth.login", "auth.setup", "api.openapi", "healthz"}


def init_app(app) -> None:
    if app.config["TRUSTED_PROXIES"]:
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n)
    csrf.init_app(app)
    app.before_request(_guard)

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
            return problem(400, exc.description, kind="csrf")
        if request.endpoint in ("auth.login", "auth.setup"):
            template = "login.html" if request.endpoint == "auth.login" else "setup.html"
            return render_template(template, error="The form had expired: please try again.",
                                   username=""), 400
        return exc


def _guard():
    """Authenticate, refuse strangers, and check CSRF on cookie-authenticated writes."""
    if request.mimetype == "application/x-www-form-urlencoded":
        # Werkzeug reads such a form whole, past MAX_FORM_MEMORY_SIZE: cap the request itself.
        request.max_content_length = current_app.config["MAX_FORM_MEMORY_SIZE"]
    header = request.headers.get("Authorization")
    if header is not None:
        g.user, g.auth_via = user_for_token(header), "token"
        if g.user is None:
            return _unauthorized("invalid API token")
    else:
        g.user, g.auth_via = user_for_session(), "session"
    release_connection()
    if g.user is None and request.endpoint not in PUBLIC_ENDPOINTS:
        if request.path.startswith("/api/"):
            return _unauthorized("log in, or send 'Authorization: Bearer <token>'")
        if not has_users():
            return redirect(url_for("auth.setup"))
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    if g.auth_via == "session" and request.method not in SAFE_METHODS:
        csrf.protect()
    return None


def _unauthorized(message: str):
    response = problem(401, message)
    response.headers["WWW-Authenticate"] = 'Bearer realm="transferlab"'
    return response


def current_user() -> User | None:
    return g.get("user")


def owned(query):
    """`query` (a select over Project) limited to the current user's projects."""
    user = current_user()
    return query.where(Project.owner_id == (user.id if user else -1))


def owned_project(project_id: int) -> Project | None:
    """The current user's project `project_id`; None when it does not exist, is someone
    else's, or the id is too large to exist."""
    if not 0 < project_id <= MAX_ID:
        return None
    return db.session.scalar(owned(sa.select(Project).where(Project.id == project_id)))

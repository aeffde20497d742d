"""Server-side login sessions: the browser's cookie and the `login_sessions` rows behind it.

Contract:
- Sessions are server-side, so they can be ended: the signed cookie carries only a random
  session id, and a `login_sessions` row (holding its sha256, the user, and an expiry that
  slides with use up to PERMANENT_SESSION_LIFETIME) must exist for it to count. Logout deletes
  the browser's row; a password change deletes all of the user's rows (the browser that changed
  it gets a new one); disabling an account deletes them all. A table rather than a per-user
  counter, so logging out in one browser leaves the user's other browsers logged in.
- `login_session(user)` logs this browser in (a new session id), `end_session()` logs it
  out, `end_user_sessions(user)` ends every session of a user (the caller commits).
  `user_for_session()` is the cookie's user, or None (and the cookie cleared) when its row is
  missing or expired or its account is disabled; it slides the expiry, at most every
  SESSION_TOUCH_SECONDS, leaving the write for the gate's commit.
- `stored_hash(secret)` is how a secret is kept in the database (its sha256): session ids
  here, API tokens in `web.auth.tokens`. Neither is ever logged.
- `SessionInterface`: with SESSION_COOKIE_SECURE unset the cookie is Secure exactly on HTTPS.
"""
from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

import sqlalchemy as sa
from flask import current_app, request, session
from flask.sessions import SecureCookieSessionInterface

from web.db import LoginSession, User, db, utcnow

SESSION_TOUCH_SECONDS = 60  # a session's last_seen_at (and its sliding expiry) is written at most this often


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


def stored_hash(secret: str) -> str:
    """The form in which a secret (API token, session id) is stored: its sha256, in hex."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _session_lifetime() -> timedelta:
    return current_app.permanent_session_lifetime


def _session_row() -> LoginSession | None:
    """The row of this browser's session id (None without one: logged out, ended, or a
    cookie from before sessions were kept on the server)."""
    sid = session.get("sid")
    if not isinstance(sid, str) or len(sid) > 100:
        return None
    return db.session.scalar(sa.select(LoginSession)
                             .where(LoginSession.sid_hash == stored_hash(sid)))


def login_session(user: User) -> None:
    """Log this browser in as `user`: a new session id (whatever it had before ends)."""
    end_session()  # nothing from before the login survives it (incl. the old CSRF token)
    now = utcnow()
    sid = secrets.token_urlsafe(32)
    db.session.execute(sa.delete(LoginSession).where(LoginSession.expires_at <= now))
    db.session.add(LoginSession(user_id=user.id, sid_hash=stored_hash(sid), created_at=now,
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


def end_user_sessions(user: User) -> None:
    """Delete every session row of `user` (every browser is logged out); the caller commits."""
    db.session.execute(sa.delete(LoginSession).where(LoginSession.user_id == user.id))


def user_for_session() -> User | None:
    """The user this browser's session cookie belongs to, else None (the cookie cleared)."""
    if "sid" not in session:
        return None
    row = _session_row()
    now = utcnow()
    user = None if row is None or row.expires_at <= now else db.session.get(User, row.user_id)
    if user is None or user.is_disabled:
        session.clear()
        return None
    if (now - row.last_seen_at).total_seconds() > SESSION_TOUCH_SECONDS:
        row.last_seen_at, row.expires_at = now, now + _session_lifetime()  # committed by the gate
    return user

"""Accounts: user names and passwords, creating, disabling and authenticating users.

Contract:
- Passwords are stored as werkzeug (scrypt) hashes, never logged. `check_username` and
  `check_password` say why a name or password cannot be accepted (`AuthError`).
- Hashing (in `create_user`, `set_password`, `authenticate`) runs off the gevent loop, two at
  a time, and with no pooled database connection held meanwhile. `authenticate` does the same
  work for an unknown name as for a wrong password.
- `create_user`: the first account of a deployment (setup page or command line) adopts the
  projects made before accounts existed, and closes first-run setup (its code is deleted).
- `set_password` ends every session of the user; `set_disabled(user, True)` ends them too,
  and while disabled the account cannot log in and its API tokens answer 401 "account
  disabled" (they work again once it is enabled).
"""
from __future__ import annotations

import logging
import secrets
import threading

import sqlalchemy as sa
from werkzeug.security import check_password_hash, generate_password_hash

from web.auth.connection import release_connection
from web.auth.first_run import setup_code_path
from web.auth.sessions import end_user_sessions
from web.concurrency import offload
from web.db import Project, User, db, iso

log = logging.getLogger("transferlab.auth")

MIN_PASSWORD, MAX_PASSWORD = 8, 1024
MAX_USERNAME = 80
# Compared against when the user name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = generate_password_hash(secrets.token_hex(16))


class AuthError(ValueError):
    """A user name, password or token name that cannot be accepted (the message says why)."""


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


def has_users() -> bool:
    return db.session.scalar(sa.select(User.id).limit(1)) is not None


def create_user(username: str, password: str, *, admin: bool = False) -> User:
    """A new account (AuthError when the name is taken or the password too short).

    The first account of a deployment (from the setup page or the command line) adopts the
    projects made before accounts existed. Ends the session's read transaction first."""
    username, password = check_username(username), check_password(password)
    release_connection()  # no pooled connection held while the hash waits and runs
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
        setup_code_path().unlink(missing_ok=True)  # setup is closed from now on
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
    end_user_sessions(user)
    db.session.commit()


def set_disabled(user: User, disabled: bool) -> None:
    """Disable an account (its sessions end now; its tokens are refused while it stays
    disabled) or enable it again."""
    user.is_disabled = disabled
    if disabled:
        end_user_sessions(user)
    db.session.commit()
    log.info("account %r %s", user.username, "disabled" if disabled else "enabled")


def authenticate(username, password) -> User | None:
    """The user with this name and password, else None (same work either way). Ends the
    session's read transaction: no pooled connection is held while the hash waits and runs."""
    if not isinstance(username, str) or not isinstance(password, str) or len(password) > MAX_PASSWORD:
        return None
    user = db.session.scalar(sa.select(User).where(User.username == username.strip()))
    stored = user.password_hash if user else _DUMMY_HASH
    release_connection()
    ok = _hashed(check_password_hash, stored, password)
    return user if user is not None and ok else None


def user_json(user: User) -> dict:
    return {"id": user.id, "username": user.username, "is_admin": bool(user.is_admin),
            "created_at": iso(user.created_at)}

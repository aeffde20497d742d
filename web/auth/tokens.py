"""Personal API tokens: issuing, listing, revoking, and finding the user behind one.

Contract:
- A token is `TOKEN_PREFIX` + 32 random bytes, shown once when issued and stored only as its
  sha256 (`web.auth.sessions.stored_hash`); never logged.
- It may expire (`expires_in_days`, 1 to MAX_TOKEN_DAYS, or never): afterwards it answers a
  401 "token expired". A token of a disabled account answers 401 "account disabled" (it works
  again once the account is enabled). Both raise `TokenRejected` from `user_for_token`; the
  gate turns it into the 401.
- `user_for_token(header)` is None for anything that is not a known token (the gate's 401
  "invalid API token"); it notes the last use at most every TOKEN_TOUCH_SECONDS, leaving the
  write for the gate's commit.
"""
from __future__ import annotations

import secrets
from datetime import timedelta

import sqlalchemy as sa

from web.auth.accounts import AuthError, create_user
from web.auth.sessions import stored_hash
from web.db import ApiToken, User, db, iso, utcnow

TOKEN_PREFIX = "tl_"
TOKEN_TOUCH_SECONDS = 60  # last_used_at is written at most this often per token
MAX_TOKEN_DAYS = 3650


class TokenRejected(Exception):
    """A real API token that may not be used now; the message is the 401's reason."""


def check_expires_in_days(value) -> int | None:
    """None (the token never expires) or a whole number of days from 1 to MAX_TOKEN_DAYS;
    anything else is an AuthError naming the field and the bounds."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKEN_DAYS:
        raise AuthError(f"'expires_in_days' must be a whole number of days from 1 to "
                        f"{MAX_TOKEN_DAYS} (or left out: never expires), got {value!r}")
    return value


def issue_token(user: User, name: str, expires_in_days=None) -> tuple[ApiToken, str]:
    """A new API token for `user`: the row and the secret (returned this once, never stored).
    It expires after `expires_in_days` (see `check_expires_in_days`), or never."""
    if not isinstance(name, str) or not name.strip():
        raise AuthError("'name' must be a non-empty string (what the token is for)")
    if len(name.strip()) > 100:
        raise AuthError("'name' is longer than 100 characters")
    days = check_expires_in_days(expires_in_days)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, name=name.strip(), token_hash=stored_hash(secret),
                   prefix=secret[:10],
                   expires_at=None if days is None else utcnow() + timedelta(days=days))
    db.session.add(row)
    db.session.commit()
    return row, secret


def service_token(username: str, purpose: str) -> str:
    """A new API token for account `username`, made first (with a random password nobody
    knows) if missing: for scripts such as the benchmarks. Needs an app context."""
    user = db.session.scalar(sa.select(User).where(User.username == username))
    if user is None:
        user = create_user(username, secrets.token_hex(16))
    return issue_token(user, purpose)[1]


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


def user_for_token(header: str) -> User | None:
    """The user of the `Authorization` header's bearer token; None when it is not one of
    ours; `TokenRejected` when it is but may not be used now (expired, account disabled)."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    row = db.session.scalar(sa.select(ApiToken).where(ApiToken.token_hash == stored_hash(token)))
    if row is None:
        return None
    now = utcnow()
    if row.expires_at is not None and row.expires_at <= now:
        raise TokenRejected("token expired")
    user = db.session.get(User, row.user_id)
    if user.is_disabled:
        raise TokenRejected("account disabled")
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > TOKEN_TOUCH_SECONDS:
        row.last_used_at = now  # committed by the gate's release_connection
    return user

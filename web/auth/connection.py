"""Giving the request's pooled database connection back early.

Contract:
- `release_connection()` commits the request's session (so pending small writes, such as a
  token's or a session's last-use time, are saved) and returns its connection to the pool,
  keeping loaded objects attached and unexpired: code that later changes `g.user` still
  saves it. The gate calls it before anything reads the request body; account code calls it
  before a password hash waits and runs.
"""
from __future__ import annotations

from web.db import db


def release_connection() -> None:
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

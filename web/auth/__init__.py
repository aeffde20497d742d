"""Accounts, sessions, API tokens and CSRF: who is asking, and what they may reach.

One module per concept; this package re-exports the names the rest of the app uses, so
importers write `from web import auth` / `from web.auth import ...` and never a submodule:

- `accounts`: users, password rules and hashing, create/disable/set_password, authenticate.
- `tokens`: personal API tokens: issue, list, revoke, expiry, the user behind a token.
- `sessions`: server-side login sessions (the cookie and its `login_sessions` row).
- `gate`: the before_request gate (authentication, connection release, CSRF), current_user,
  owned/owned_project.
- `first_run`: the one-time setup code of the first-run setup page.
- `pages`: the `auth` blueprint (setup, login, logout, account pages).
- `commands`: `python app.py create-user | set-password | create-token | disable-user | ...`.
- `connection`: giving the pooled database connection back before slow work.

Contract: `init_app(app)` installs all of it (after `web.inputs.init_app`, before
`web.security.init_app`, which reads the gate's `g.auth_via`).
"""
from __future__ import annotations

from web.auth import gate, sessions
from web.auth.accounts import (
    MAX_PASSWORD,
    MAX_USERNAME,
    MIN_PASSWORD,
    AuthError,
    authenticate,
    check_password,
    check_username,
    create_user,
    has_users,
    set_disabled,
    set_password,
    user_json,
)
from web.auth.commands import CLI_COMMANDS, cli
from web.auth.first_run import SETUP_CODE_FILE, setup_code, setup_code_matches
from web.auth.gate import (
    PUBLIC_ENDPOINTS,
    SAFE_METHODS,
    csrf,
    current_user,
    owned,
    owned_project,
)
from web.auth.pages import bp
from web.auth.sessions import (
    SESSION_TOUCH_SECONDS,
    SessionInterface,
    end_session,
    login_session,
)
from web.auth.tokens import (
    MAX_TOKEN_DAYS,
    TOKEN_PREFIX,
    TOKEN_TOUCH_SECONDS,
    TokenRejected,
    check_expires_in_days,
    issue_token,
    revoke_token,
    service_token,
    token_json,
    user_tokens,
)
from web.inputs import MAX_ID


def init_app(app) -> None:
    sessions.init_app(app)
    gate.init_app(app)
    app.register_blueprint(bp)


__all__ = [
    "CLI_COMMANDS", "MAX_ID", "MAX_PASSWORD", "MAX_TOKEN_DAYS", "MAX_USERNAME", "MIN_PASSWORD",
    "PUBLIC_ENDPOINTS", "SAFE_METHODS", "SESSION_TOUCH_SECONDS", "SETUP_CODE_FILE",
    "TOKEN_PREFIX", "TOKEN_TOUCH_SECONDS", "AuthError", "SessionInterface", "TokenRejected",
    "authenticate", "bp", "check_expires_in_days", "check_password", "check_username", "cli",
    "create_user", "csrf", "current_user", "end_session", "has_users", "init_app",
    "issue_token", "login_session", "owned", "owned_project", "revoke_token", "service_token",
    "set_disabled", "set_password", "setup_code", "setup_code_matches", "token_json",
    "user_json", "user_tokens",
]

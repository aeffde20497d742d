"""The `auth` blueprint's pages: setup, login, logout, and the account page's forms.

Contract:
- Endpoint names are `auth.<view>` (`auth.login`, `auth.setup`, `auth.logout`,
  `auth.account`, `auth.account_new_token`, `auth.account_revoke_token`,
  `auth.account_password`, `auth.account_new_user`, `auth.account_disable_user`):
  `web.limits` rate-limits by them, the gate lets `auth.login` and `auth.setup` through
  unauthenticated, and templates link to them with url_for.
- /setup creates the admin account, only while no account exists and only given the setup
  code (`web.auth.first_run`); a wrong code is a 403 and creates nothing.
- /login answers 401 for a wrong name or password or a disabled account, else starts a
  session and redirects to `next` when that is a path on this site (never another host).
- Every response of these pages is `Cache-Control: no-store` (login forms, new tokens).
- The account page lists the user's tokens (a new one shown once) and, for an admin, every
  account; only admins may add, disable or enable accounts, never their own.
"""
from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import Blueprint, flash, redirect, render_template, request, url_for

from web.auth.accounts import (
    AuthError,
    authenticate,
    create_user,
    has_users,
    set_disabled,
    set_password,
)
from web.auth.first_run import setup_code, setup_code_matches
from web.auth.gate import current_user
from web.auth.sessions import end_session, login_session
from web.auth.tokens import MAX_TOKEN_DAYS, issue_token, revoke_token, user_tokens
from web.db import User, db, utcnow
from web.inputs import MAX_ID

bp = Blueprint("auth", __name__)
log = logging.getLogger("transferlab.auth")


def _safe_next(target: str | None) -> str:
    """Only a path on this site (never `//evil.example` or `https://...`)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("pages.index")
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else url_for("pages.index")


def _form_days(raw: str | None):
    """The account page's days field as `check_expires_in_days` takes it: empty is None,
    digits an int, anything else left as it is (to be refused with its value)."""
    raw = (raw or "").strip()
    return None if not raw else int(raw) if re.fullmatch(r"[0-9]{1,6}", raw) else raw


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

"""Abuse limits: request rates per account and per client address, and concurrent uploads.

Contract:
- `init_app(app)` (after every blueprint is registered) applies, by endpoint, Flask-Limiter
  limits from the config, each counted per client address and per account:
    LOGIN_LIMIT     POST /login, failed attempts only (401), per address and per user name
    SETUP_LIMIT     POST /setup, per address
    PASSWORD_LIMIT  POST /account/password, per account and address
    TOKEN_LIMIT     POST /api/v1/tokens and /account/tokens, per account and address
    UPLOAD_LIMIT    POST /api/v1/projects/<id>/images and /api/v1/batches/<id>/label, per
                    account and address
    PREDICT_LIMIT   POST /api/v1/projects/<id>/predict (and /explain) and
                    /api/v1/imagenet/predict, likewise
    EXPORT_LIMIT    GET /api/v1/projects/<id>/[iterations/<n>/]export, likewise
  Counters live in RATELIMIT_STORAGE_URI: REDIS_URL when that is set (every web process
  shares them), else this process's memory; while Redis is unreachable, this process's memory
  (logged). RATELIMIT_ENABLED=false turns them off.
- An account may run at most UPLOADS_PER_USER uploads at once in one web process; one more
  is refused before its body is read.
- Beyond a limit the answer is 429 with `Retry-After` (seconds): a problem document with `retry_after`
  under /api/, the login or setup form with the reason, or a page with the reason.
"""
from __future__ import annotations

import math
import threading
import time
from collections import Counter
from functools import wraps

from flask import current_app, g, render_template, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from werkzeug.exceptions import TooManyRequests

from web.problems import problem

UPLOAD_RETRY_AFTER = 2  # seconds a refused concurrent upload is told to wait

# endpoint -> (config key, what the client is told it did too often, who is counted)
LIMITED: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "auth.login": ("LOGIN_LIMIT", "failed logins", ("address", "username")),
    "auth.setup": ("SETUP_LIMIT", "setup attempts", ("address",)),
    "auth.account_password": ("PASSWORD_LIMIT", "password changes", ("address", "account")),
    "auth.account_new_token": ("TOKEN_LIMIT", "new API tokens", ("address", "account")),
    "api.create_token": ("TOKEN_LIMIT", "new API tokens", ("address", "account")),
    "api.upload_images": ("UPLOAD_LIMIT", "uploads", ("address", "account")),
    "api.label_batch": ("UPLOAD_LIMIT", "uploads", ("address", "account")),
    "api.predict": ("PREDICT_LIMIT", "predictions", ("address", "account")),
    "api.imagenet_predict": ("PREDICT_LIMIT", "predictions", ("address", "account")),
    "api.export_iteration": ("EXPORT_LIMIT", "model exports", ("address", "account")),
    "api.explain": ("PREDICT_LIMIT", "predictions", ("address", "account")),
}
CONCURRENT_UPLOADS = ("api.upload_images",)


class TooManyUploads(TooManyRequests):
    """The account already has UPLOADS_PER_USER uploads running in this process."""

    def __init__(self, running: int):
        super().__init__(f"too many uploads at once: this account has {running} running "
                         "(UPLOADS_PER_USER); wait for one to finish")
        self.retry_after = UPLOAD_RETRY_AFTER


def _account_key() -> str:
    user = g.get("user")
    return f"account:{user.id}" if user is not None else f"address:{get_remote_address()}"


def _username_key() -> str:
    name = request.form.get("username")
    return f"username:{name.strip()}" if isinstance(name, str) else "username:"


KEYS = {"address": lambda: f"address:{get_remote_address()}", "account": _account_key,
        "username": _username_key}


class UploadSlots:
    """How many uploads each account has running in this process (thread- and greenlet-safe)."""

    def __init__(self, per_user: int):
        self.per_user = per_user
        self._running: Counter = Counter()
        self._lock = threading.Lock()

    def acquire(self, user_id) -> None:
        """Take a slot, or raise TooManyUploads."""
        with self._lock:
            if self._running[user_id] >= self.per_user:
                raise TooManyUploads(self._running[user_id])
            self._running[user_id] += 1

    def release(self, user_id) -> None:
        with self._lock:
            self._running[user_id] -= 1
            if self._running[user_id] <= 0:
                del self._running[user_id]


def _with_upload_slot(view, slots: UploadSlots):
    @wraps(view)
    def limited(*args, **kwargs):
        user = g.get("user")
        if user is None:  # the guard answers 401 before this; no slot to count against
            return view(*args, **kwargs)
        user_id = user.id
        slots.acquire(user_id)
        try:
            return view(*args, **kwargs)
        finally:
            slots.release(user_id)

    return limited


def _failed_login(response) -> bool:
    return response.status_code == 401


def init_app(app) -> None:
    limiter = Limiter(get_remote_address, app=app, storage_uri=app.config["RATELIMIT_STORAGE_URI"],
                      key_prefix=app.config.get("HUEY_NAME") or "transferlab",
                      strategy="moving-window",
                      # Redis down: count in this process's memory until it is back (logged),
                      # rather than refuse every login and upload
                      in_memory_fallback_enabled=True, swallow_errors=True)
    app.extensions["transferlab.limiter"] = limiter
    slots = UploadSlots(app.config["UPLOADS_PER_USER"])
    app.extensions["transferlab.upload_slots"] = slots
    for endpoint, (key, what, who) in LIMITED.items():
        view = app.view_functions.get(endpoint)
        if view is None:
            continue
        if endpoint in CONCURRENT_UPLOADS:
            view = _with_upload_slot(view, slots)
        # innermost first: the limits are checked before the upload slot is taken
        for name in who:
            # shared: both token routes (and both predict routes) draw on one count
            view = limiter.shared_limit(
                lambda key=key: current_app.config[key], f"{key}:{name}", key_func=KEYS[name],
                methods=["POST"], error_message=what,
                deduct_when=_failed_login if endpoint == "auth.login" else None)(view)
        app.view_functions[endpoint] = view
    app.register_error_handler(429, _too_many_requests)


def _retry_after(exc) -> int:
    if isinstance(exc, TooManyUploads):
        return exc.retry_after
    limiter = current_app.extensions["transferlab.limiter"]
    breached = [lim for lim in limiter.current_limits if lim.breached] or limiter.current_limits
    reset_at = max((lim.window[0] for lim in breached), default=time.time() + 1)
    return max(1, math.ceil(reset_at - time.time()))


def _too_many_requests(exc: TooManyRequests):
    """429 with Retry-After: JSON under /api/, the form again for login/setup, else a page."""
    retry = _retry_after(exc)
    if isinstance(exc, TooManyUploads):
        message = f"{exc.description}; retry in {retry} s"
    else:
        limit = getattr(getattr(exc, "limit", None), "limit", None)
        what = exc.description or "requests"
        message = (f"too many {what}" + (f" (the limit is {limit})" if limit else "")
                   + f": retry in {retry} s")
    if request.path.startswith("/api/"):
        response = problem(429, message, retry_after=retry)
    elif request.endpoint in ("auth.login", "auth.setup"):
        template = "login.html" if request.endpoint == "auth.login" else "setup.html"
        response = current_app.make_response((render_template(
            template, error=message[:1].upper() + message[1:] + ".",
            username=request.form.get("username", "")), 429))
    else:
        response = current_app.make_response((render_template(
            "too_many_requests.html", message=message[:1].upper() + message[1:] + "."), 429))
    response.headers["Retry-After"] = str(retry)
    return response

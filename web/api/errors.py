"""The API's errors: `ApiError` (what a route raises to answer an error), `error_response`
(every JSON error, as `web.problems.problem`), the blueprint's handlers for `ApiError` and
`web.inputs.BadInput` (400), the app-wide handlers that make every /api/ error JSON (HTTP
errors with their 413 and 405 details, 503 database unavailable, 507 no room), and
`frees_space`, which lets a deleting route work on a full disk.
"""
from __future__ import annotations

import errno
import functools
import logging

import sqlalchemy as sa
from flask import current_app, request
from werkzeug.exceptions import HTTPException

from web.api import bp
from web.db import db
from web.inputs import BadInput
from web.jobs import give_up_reserve, is_disk_full
from web.problems import problem

log = logging.getLogger("transferlab.api")

NO_ROOM = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # disk full, file size limit, quota


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def error_response(status: int, message: str, **extra):
    """Every JSON error of the API: `web.problems.problem` (`error`, `type`, `title`,
    `status`, `detail`, and `extra`'s fields)."""
    return problem(status, message, **extra)


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    return error_response(exc.status, exc.message, **exc.extra)


@bp.errorhandler(BadInput)
def _bad_input(exc: BadInput):
    """Request input `web.inputs` refused (a query or form argument): 400 saying why."""
    return error_response(400, str(exc))


def frees_space(route):
    """For a deleting route (which must work on a full disk, to free it): if the database's
    disk is full, give up the disk reserve and run it once more; if there is still no room,
    a 507 with everything rolled back (nothing deleted)."""
    @functools.wraps(route)
    def run(*args, **kwargs):
        for attempt in range(2):
            if attempt:  # the first try found the disk full
                if not give_up_reserve(current_app.config):
                    break
                log.warning("disk full on %s %s: the disk reserve was given up",
                            request.method, request.path)
            try:
                return route(*args, **kwargs)
            except sa.exc.OperationalError as exc:
                full = exc
                db.session.rollback()
                if not is_disk_full(exc):
                    raise
        raise ApiError(507, f"the disk is full ({full.orig}): nothing was deleted; free some "
                       "space and retry")
    return run


def _too_large_message() -> str:
    """Which limit a 413 came from: the whole request's, or the form's (a field too big,
    or too many parts), with the number of bytes."""
    limit = request.max_content_length
    size = request.content_length
    if limit is not None and (size is None or size > limit):
        what = ("JSON body" if request.is_json else
                "form" if request.mimetype == "application/x-www-form-urlencoded" else "upload")
        return f"{what} too large: the limit is {limit} bytes" + (
            f", this request has {size}" if size is not None else "")
    return (f"a form field is too large or there are too many form parts: the limits are "
            f"{request.max_form_memory_size} bytes per non-file field and "
            f"{request.max_form_parts} parts")


def register_error_handlers(app) -> None:
    """JSON errors for every /api/ URL (including unknown routes), HTML elsewhere."""

    @app.errorhandler(OSError)
    def _no_room(exc: OSError):
        """A full disk (or file size limit) while receiving or storing a request: 507."""
        if exc.errno not in NO_ROOM:
            raise exc
        log.error("no room on %s %s: %s", request.method, request.path, exc)
        db.session.rollback()
        message = (f"the server has no room to store this ({exc.strerror}): what the answer "
                   "did not report as saved was not saved; retry once space is freed")
        if request.path.startswith("/api/"):
            return error_response(507, message)
        return message, 507, {"Content-Type": "text/plain; charset=utf-8"}

    @app.errorhandler(sa.exc.OperationalError)
    def _database_error(exc: sa.exc.OperationalError):
        """The database cannot be written (disk full, file locked, server down): its
        transaction is rolled back, so it holds what was committed before, nothing half."""
        db.session.rollback()
        log.error("database error on %s %s: %s", request.method, request.path, exc.orig)
        message = (f"the database could not be used ({exc.orig}): nothing of the failed step "
                   "was saved; retry once the server has room")
        if request.path.startswith("/api/"):
            return error_response(503, message)
        return message, 503, {"Content-Type": "text/plain; charset=utf-8"}

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if request.path.startswith("/api/"):
            message = exc.description or exc.name
            if exc.code == 413:
                message = _too_large_message()
            elif exc.code == 404 and request.url_rule is None:
                message = f"not found: {request.path}"
            elif exc.code == 500:
                message = "internal error (see the server log)"
            elif exc.code == 405:
                message = f"method {request.method} not allowed on {request.path}"
            response = error_response(exc.code or 500, message)
            if exc.code == 405 and hasattr(exc, "valid_methods") and exc.valid_methods:
                response.headers["Allow"] = ", ".join(exc.valid_methods)
            return response
        return exc

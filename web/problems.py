"""Error answers of the JSON API, in one shape: RFC 9457 problem details plus `error`.

Contract: `problem(status, detail, kind=None, **extra)` is a JSON response (Content-Type
`application/json`, so clients that only read JSON keep working) whose body holds
- `error`: the message (what clients read before these fields existed; equal to `detail`),
- `type`: `urn:transferlab:problem:<kind>`, a stable identifier of the kind of error that
  clients can compare instead of matching message text (never dereferenced),
- `title`: the HTTP reason phrase of `status`, `status`: the status code, `detail`: the message,
- and `extra`'s fields (e.g. the upload report on an upload nobody could store), which never
  replace the fields above.
`kind` defaults to the status's kind in KINDS. The kinds are listed in docs/API.md.
"""
from __future__ import annotations

from flask import jsonify
from werkzeug.http import HTTP_STATUS_CODES

TYPE_PREFIX = "urn:transferlab:problem:"
KINDS = {
    400: "bad-request", 401: "unauthorized", 403: "forbidden", 404: "not-found",
    405: "method-not-allowed", 408: "request-timeout", 409: "conflict", 413: "too-large", 422: "unprocessable", 429: "too-many-requests",
    500: "internal-error", 503: "unavailable", 507: "no-room",
}


def problem_type(status: int, kind: str | None = None) -> str:
    """The `type` URI for `kind`, or for `status`'s kind when no kind is given."""
    return TYPE_PREFIX + (kind or KINDS.get(status) or f"http-{status}")


def problem(status: int, detail: str, kind: str | None = None, **extra):
    """The JSON error response described in the module docstring."""
    body = {**extra, "error": detail, "type": problem_type(status, kind),
            "title": HTTP_STATUS_CODES.get(status, "Error"), "status": status, "detail": detail}
    response = jsonify(body)
    response.status_code = status
    return response

"""Reading untrusted request input without letting its shape crash the server.

Contract:
- `read_json_object(request, max_bytes)` is the one reader of JSON request bodies. It
  returns the body as a dict, or raises `BadInput` (a 400 with the reason) when the body is
  not JSON, not an object, nested deeper than MAX_JSON_DEPTH (however deep: even 100,000
  `[` answer 400, never a RecursionError), or holds a string or key that UTF-8 cannot
  encode (a lone surrogate such as `\\ud800`, which the database could not store). A body
  over `max_bytes` is werkzeug's 413, however the request is authenticated.
- `init_app(app)` replaces the `int` URL converter with `BoundedInt`: a path id larger than
  MAX_ID (no row can have it; SQLite would overflow on it) answers 400 naming the id,
  on every route, rather than an OverflowError deep in a query. Call it before any
  blueprint is registered (rules bind their converters when added).
- `int_arg(values, name, ...)` and `float_arg(values, name, ...)` read one query or form
  argument (`request.values`) as a bounded number: its default when absent or empty,
  otherwise the number, or `BadInput` naming the argument, what it got and the bounds.
"""
from __future__ import annotations

import json

from werkzeug.exceptions import BadRequest, RequestEntityTooLarge
from werkzeug.routing import IntegerConverter

MAX_JSON_DEPTH = 32  # the API's bodies are flat objects; far below Python's recursion limit
MAX_ID = 2**63 - 1  # SQLite's (and PostgreSQL's bigint) largest integer


class BadInput(ValueError):
    """Request input that cannot be accepted; the message says why."""


def read_json_object(request, max_bytes: int) -> dict:
    """The request's JSON object body (see the module docstring)."""
    request.max_content_length = max_bytes  # werkzeug answers 413 beyond it
    if not request.is_json:
        raise BadInput("send a JSON object (Content-Type: application/json)")
    # Checked here too: the CSRF check may have opened the body's stream before this limit
    # was set, and werkzeug applies it only to a stream opened after.
    if request.content_length is not None and request.content_length > max_bytes:
        raise RequestEntityTooLarge()
    data = request.get_data(cache=True)
    if len(data) > max_bytes:
        raise RequestEntityTooLarge()
    if not data.strip():
        raise BadInput("send a JSON object (Content-Type: application/json): the body is empty")
    try:
        body = json.loads(data)
    except RecursionError:
        raise BadInput(f"the JSON body is nested too deeply (at most {MAX_JSON_DEPTH} levels)") \
            from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise BadInput(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadInput("the JSON body must be an object")
    check_json_value(body)
    return body


def check_json_value(value) -> None:
    """BadInput unless `value` (parsed JSON) is at most MAX_JSON_DEPTH deep and all its
    strings and keys are encodable as UTF-8. Iterative, so depth itself cannot crash it."""
    stack = [(value, 1, "")]
    while stack:
        item, depth, where = stack.pop()
        if isinstance(item, str):
            _check_text(item, where)
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise BadInput(f"the JSON body is nested too deeply (at most {MAX_JSON_DEPTH} levels)")
        if isinstance(item, dict):
            for key, child in item.items():
                path = f"{where}.{key}" if where else key
                _check_text(key, path)
                stack.append((child, depth + 1, path))
        else:
            stack.extend((child, depth + 1, f"{where}[{i}]") for i, child in enumerate(item))


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        shown = where.encode("ascii", "backslashreplace").decode("ascii") or "value"
        raise BadInput(f"the JSON body's {shown!r} holds a lone surrogate "
                       f"(\\u{ord(text[exc.start]):04x}), which is not text: send valid "
                       "Unicode") from None


def int_arg(values, name: str, default=None, minimum: int | None = None,
            maximum: int | None = None):
    """The integer argument `name` of `values` (see the module docstring); at most MAX_ID
    unless `maximum` says otherwise."""
    raw = values.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadInput(f"{name!r} must be an integer, got {raw!r}") from None
    maximum = MAX_ID if maximum is None else maximum
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise BadInput(f"{name!r} must be between {minimum} and {maximum}, got {value}")
    return value


def float_arg(values, name: str, default: float, minimum: float, maximum: float) -> float:
    """The number argument `name` of `values` (see the module docstring)."""
    raw = values.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadInput(f"{name!r} must be a number, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise BadInput(f"{name!r} must be between {minimum} and {maximum}, got {value}")
    return value


class BoundedInt(IntegerConverter):
    """werkzeug's `int` converter, refusing ids above MAX_ID with a 400 that names them."""

    def to_python(self, value: str) -> int:
        number = super().to_python(value)
        if number > MAX_ID:
            # Not a ValidationError: that would fall through to a bare 404 "no such URL".
            raise BadRequest(f"the id {number} in the URL is too large (at most {MAX_ID})")
        return number


def init_app(app) -> None:
    app.url_map.converters["int"] = BoundedInt

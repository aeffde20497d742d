"""Browser-facing defences: security headers on every answer, and an Origin check on writes.

Contract:
- Every response carries `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`,
  `Referrer-Policy: same-origin` and PERMISSIONS_POLICY (the camera for this site only). HTML pages carry PAGE_POLICY as their
  Content-Security-Policy: scripts, styles, fonts and requests only from this site (the
  pages load their own ES modules; no inline script, style attribute or handler), images
  also from blob: (previews of dropped images), no plugins, no <base>, forms post only
  here, and no site may frame them. Other responses without a policy of their own get
  OTHER_POLICY (nothing may load or frame them); the image routes keep their sandbox.
- A cookie-authenticated write (`g.auth_via == "session"`, set by `web.auth.gate._guard`, and
  a method other than GET/HEAD/OPTIONS/TRACE) is refused with 403 when its `Origin` header
  names another site than this one (scheme, host and port of the request, as seen behind
  TRUSTED_PROXIES), or is "null" (a sandboxed or privacy-stripped context). Without
  `Origin`, the `Referer`'s origin is checked the same way. With neither, the write is let
  through: browsers send `Origin` on every cross-site POST/PUT/PATCH/DELETE, so a request
  without both comes from a non-browser client or a privacy filter, and it still needs the
  CSRF token, which a foreign site cannot read. Token-authenticated (`Authorization`)
  requests are not checked: browsers never attach that header by themselves.
- `init_app(app)` must run after `web.auth.init_app` (its before_request reads `g.auth_via`).
"""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import g, request
from werkzeug.exceptions import Forbidden

from web.problems import problem

SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; "
               "img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
               "form-action 'self'; frame-ancestors 'none'")
OTHER_POLICY = "default-src 'none'; frame-ancestors 'none'"
# The camera is for this site's own pages only ("Use camera"); the rest is never needed.
PERMISSIONS_POLICY = "camera=(self), microphone=(), geolocation=(), payment=(), usb=()"
HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Referrer-Policy": "same-origin", "Permissions-Policy": PERMISSIONS_POLICY}


def init_app(app) -> None:
    app.before_request(check_origin)
    app.after_request(add_headers)


def add_headers(response):
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if "Content-Security-Policy" not in response.headers:
        response.headers["Content-Security-Policy"] = (
            PAGE_POLICY if response.mimetype == "text/html" else OTHER_POLICY)
    return response


def request_origin() -> str | None:
    """Where the request says it comes from: `Origin`, else the `Referer`'s scheme://host;
    None when it says neither."""
    origin = request.headers.get("Origin")
    if origin is not None:
        return origin.strip()
    referer = request.headers.get("Referer")
    if not referer:
        return None
    parts = urlsplit(referer.strip())
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else "null"


def _same_origin(origin: str) -> bool:
    parts = urlsplit(origin)
    return (parts.scheme.lower() == request.scheme and parts.netloc.lower() == request.host.lower()
            and not parts.path.strip("/"))


def check_origin():
    """The before_request hook: 403 for a cookie-authenticated write from another origin."""
    if g.get("auth_via") != "session" or request.method in SAFE_METHODS:
        return None
    origin = request_origin()
    if origin is None or _same_origin(origin):
        return None
    reason = (f"cross-origin request refused: it comes from {origin!r}, not from this site "
              f"({request.scheme}://{request.host})")
    if request.path.startswith("/api/"):
        return problem(403, reason, kind="cross-origin")
    raise Forbidden(reason)

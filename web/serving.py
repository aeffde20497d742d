"""How long a client may take to send its request, under gevent's WSGI server (`python app.py`).

Contract (`handler_class(config)` gives `gevent.pywsgi.WSGIServer` its handler):
- A connection that sends nothing for `SOCKET_TIMEOUT` seconds (idle keep-alive, a stalled
  request line or body) is closed.
- A request body must arrive at `BODY_MIN_RATE` bytes/s on average once `BODY_GRACE_SECONDS`
  have passed: byte n must be in by start + grace + n / rate. A slower body is cut off: the
  read raises `BodyTooSlow` (a 408 the app answers with its usual error body), the answer
  says `Connection: close` and the connection is closed. The app has then not seen the whole
  body, so nothing of it is stored (form parsing fails before any file reaches the view).
- Bodies of at most `BODY_BUFFER_BYTES` are read whole, under that deadline, before the app
  runs: no route can hold a database connection while a small JSON or form body trickles in.
  Larger bodies (uploads) stream to the app, which reads them with no connection held.
- A body the app left unread (an upload refused with 401/404/429) is read and dropped under
  the same deadline, else the connection is closed; gevent's own drain has no deadline. A
  client that awaits `100 Continue` before sending its body gets the answer and a close.
"""
from __future__ import annotations

import io
import time

import gevent
from gevent.pywsgi import WSGIHandler
from werkzeug.exceptions import RequestTimeout

CHUNK = 64 * 1024  # what a read of unknown size is charged for (werkzeug reads this much)


class BodyTooSlow(RequestTimeout):
    """The request body did not arrive at the minimum rate (408)."""


class DeadlineInput:
    """`wsgi.input` whose reads must keep up `min_rate` bytes/s after `grace` seconds. Past
    the deadline a read raises BodyTooSlow (and every later read too) and `on_timeout` runs."""

    def __init__(self, stream, content_length: int | None, min_rate: float, grace: float,
                 on_timeout):
        self._stream = stream
        self._length = content_length
        self._min_rate = float(min_rate)
        self._grace = float(grace)
        self._on_timeout = on_timeout
        self._start = time.monotonic()
        self._read = 0
        self._failed: BodyTooSlow | None = None

    def _deadline_for(self, size: int | None) -> float:
        if size is None or size < 0:
            size = (self._length - self._read) if self._length is not None else CHUNK
        return self._start + self._grace + (self._read + size) / self._min_rate

    def _fail(self) -> BodyTooSlow:
        elapsed = time.monotonic() - self._start
        of = f" of {self._length}" if self._length is not None else ""
        self._failed = BodyTooSlow(
            f"the request body arrived too slowly: {self._read}{of} bytes in {elapsed:.0f} s "
            f"(the server needs {self._min_rate:.0f} bytes/s on average after the first "
            f"{self._grace:g} s); nothing of this request was stored")
        self._on_timeout()
        return self._failed

    def _call(self, method, size: int | None, *args) -> bytes:
        if self._failed is not None:
            raise self._failed
        remaining = self._deadline_for(size) - time.monotonic()
        if remaining <= 0:
            raise self._fail()
        timer = gevent.Timeout(remaining)
        timer.start()
        try:
            data = method(*args)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            raise self._fail() from None
        finally:
            timer.close()
        self._read += len(data)
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self._call(self._stream.read, None)
        return self._call(self._stream.read, size, size)

    def readline(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self._call(self._stream.readline, CHUNK)
        return self._call(self._stream.readline, size, size)

    def readlines(self, hint=None):
        return list(iter(self.readline, b""))

    def __iter__(self):
        return iter(self.readline, b"")

    def drain(self) -> bool:
        """Read and drop what is left; False when the deadline cut it off."""
        try:
            while self.read(CHUNK):
                pass
        except BodyTooSlow:
            return False
        return True


class _Failing:
    """`wsgi.input` of a small body that timed out while being buffered: every read raises."""

    def __init__(self, error: BodyTooSlow):
        self._error = error

    def read(self, *args):
        raise self._error

    readline = read

    def __iter__(self):
        raise self._error


def handler_class(config) -> type[WSGIHandler]:
    """A `WSGIHandler` enforcing `config`'s SOCKET_TIMEOUT, BODY_MIN_RATE, BODY_GRACE_SECONDS
    and BODY_BUFFER_BYTES (see the module's contract)."""
    socket_timeout = float(config["SOCKET_TIMEOUT"])
    min_rate, grace = float(config["BODY_MIN_RATE"]), float(config["BODY_GRACE_SECONDS"])
    buffer_bytes = int(config["BODY_BUFFER_BYTES"])

    class DeadlineHandler(WSGIHandler):
        def handle(self):
            self.socket.settimeout(socket_timeout)
            super().handle()

        def _abandon_body(self) -> None:
            # The rest of the body will not be read: close after the answer instead of letting
            # gevent read it to the end (with no deadline) to reach a next request.
            self.close_connection = True
            raw = self.wsgi_input
            raw.content_length = raw.position
            raw.chunked_input = False

        def start_response(self, status, headers, exc_info=None):
            if self.close_connection and not any(k.lower() == "connection" for k, _ in headers):
                headers = [*headers, ("Connection", "close")]  # gevent says so for HTTP/1.0 only
            return super().start_response(status, headers, exc_info)

        def run_application(self):
            raw = self.wsgi_input
            body = DeadlineInput(raw, self.content_length, min_rate, grace, self._abandon_body)
            environ = self.environ
            if self.content_length is not None and 0 < self.content_length <= buffer_bytes:
                try:
                    environ["wsgi.input"] = io.BytesIO(body.read())
                except BodyTooSlow as exc:
                    environ["wsgi.input"] = _Failing(exc)
            else:
                environ["wsgi.input"] = body
            try:
                super().run_application()
            finally:
                # raw.socket is still set when the client awaits "100 Continue" for its body:
                # after the answer it must not get one, nor should we wait for that body
                if self.close_connection or raw.socket is not None:
                    self._abandon_body()
                else:
                    body.drain()  # on a timeout, the body is abandoned and the connection closes

    return DeadlineHandler

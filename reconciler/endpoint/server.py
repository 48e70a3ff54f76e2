"""The endpoint's HTTP server: a :class:`http.server.ThreadingHTTPServer` in its own
thread, beside the loop's event loop.

Every connection gets a thread (at most :data:`CONNECTIONS` at once; more are answered
503 and closed) and a socket timeout, so an idle or slow client holds one thread for a
while and never the loop. A request does bounded work: a hook's body is capped at
:data:`MAX_BODY` and read only once its length is known; ``/status`` and ``/metrics``
read the folder and the containers as ``reconciler status`` does, one at a time.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
from collections.abc import Callable
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio.from_thread
import anyio.lowlevel

from reconciler.control.loop import PassResult
from reconciler.desired.source import Changed, Source
from reconciler.endpoint.address import Listen
from reconciler.endpoint.hooks import FORGES, Forge, Verdict, judge
from reconciler.endpoint.metrics import Document, LoopMetrics
from reconciler.settings import BadSetting
from reconciler.terminal import visible

__all__ = ("CONNECTIONS", "MAX_BODY", "Endpoint", "LoopTrigger", "read_secret")

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""What ``generate_latest`` writes, in every prometheus_client this project allows (the
library's own name for it, ``CONTENT_TYPE_PLAIN_0_0_4``, came after 0.17)."""

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
"""Largest webhook body read (1 MiB; a push of many commits stays well below)."""
CONNECTIONS = 32
"""Connections served at once."""
TIMEOUT = 10.0
"""Seconds a connection may stay silent before it is closed."""
REQUEST_DEADLINE = 10.0
"""Seconds a request may take to arrive whole: past them its reading ends (a client
sending a byte now and then would keep its slot for ever)."""
HEADER_BYTES = 96 * 1024
"""Most bytes of a request's line and headers kept (the standard library's own limits
allow 100 header lines of 64 KiB each)."""
POLL = 0.1
"""Seconds between the server's looks at whether it must stop."""


def read_secret(path: Path) -> bytes:
    """The webhook secret: the file's bytes without the line end an editor adds."""
    secret = path.read_bytes().strip()
    if not secret:
        raise BadSetting("--webhook-secret-file", str(path), "the file is empty")
    return secret


class LoopTrigger:
    """Asks the running loop for a pass, from any thread; before the loop hands over its
    trigger (see ``run_loop``'s ``on_ready``) a request is dropped: the first pass comes
    anyway."""

    def __init__(self) -> None:
        self._trigger: Changed | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None

    def bind(self, trigger: Changed) -> None:
        """Called in the loop's event loop thread."""
        self._token = anyio.lowlevel.current_token()
        self._trigger = trigger

    def __call__(self, reason: str) -> None:
        if self._trigger is None:
            return
        with suppress(anyio.RunFinishedError):  # the loop has ended: nothing to wake
            anyio.from_thread.run_sync(self._trigger, reason, token=self._token)


class Endpoint:
    """``GET /status``, ``GET /metrics`` and, with a secret, the webhooks, on ``listen``.
    Bound when made; served between ``with`` and its end."""

    def __init__(
        self,
        listen: Listen,
        *,
        document: Document,
        source: Source,
        secret: bytes | None = None,
    ) -> None:
        self.trigger = LoopTrigger()
        poke = getattr(source, "poke", None)
        self.metrics = LoopMetrics(document, getattr(source, "describe", dict))
        self._server = _Server(
            listen,
            _Routes(document, self.metrics, poke if callable(poke) else self.trigger, secret),
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(POLL,), name="endpoint", daemon=True
        )

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    def on_ready(self, trigger: Changed) -> None:
        self.trigger.bind(trigger)

    def also(self, on_pass: Callable[[PassResult], None]) -> Callable[[PassResult], None]:
        """``on_pass``, then the metrics' own."""

        def both(result: PassResult) -> None:
            on_pass(result)
            self.metrics.on_pass(result)

        return both

    def __enter__(self) -> Endpoint:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class _Routes:
    """What the handlers serve, shared by every connection's thread."""

    def __init__(
        self,
        document: Document,
        metrics: LoopMetrics,
        wake: Callable[[str], None],
        secret: bytes | None,
    ) -> None:
        self.metrics = metrics
        self.wake = wake
        self.secret = secret
        self._document = document
        self._reading = threading.Lock()

    def status(self) -> bytes:
        with self._reading:  # one reading of the state at a time, /status or /metrics
            return json.dumps(self._document(), indent=2).encode() + b"\n"

    def metrics_text(self) -> bytes:
        with self._reading:
            return self.metrics.text()

    def forge(self, path: str) -> Forge | None:
        """The forge a hook path is for (None: not a hook, or no secret to check it)."""
        prefix, _, name = path.rpartition("/")
        return FORGES.get(name) if prefix == "/hooks" and self.secret is not None else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = CONNECTIONS  # socketserver's 5 makes a burst wait for SYN retries

    def __init__(self, listen: Listen, routes: _Routes) -> None:
        self.address_family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        self.routes = routes
        self._slots = threading.BoundedSemaphore(CONNECTIONS)
        try:
            super().__init__((listen.host, listen.port), _Handler)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {listen}: {exc.strerror}") from None

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with suppress(OSError):
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-answer: not worth socketserver's traceback on stderr."""
        log.debug("request from %s failed", client_address, exc_info=True)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Capped:
    """A request's reader that lets its line and headers (read a line at a time) take at
    most ``left`` bytes; its body (read by length) is the handler's to bound."""

    def __init__(self, raw: Any, left: int) -> None:
        self._raw, self._left = raw, left

    def readline(self, size: int = -1) -> bytes:
        room = self._left + 1 if size < 0 else min(size, self._left + 1)
        line: bytes = self._raw.readline(room)
        self._left -= len(line)
        if self._left < 0:
            raise http.client.LineTooLong(f"request headers past {HEADER_BYTES} bytes")
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = TIMEOUT
    server_version = "squish"

    def setup(self) -> None:
        super().setup()
        self.rfile = _Capped(self.rfile, HEADER_BYTES)  # type: ignore[assignment]
        self._deadline = threading.Timer(REQUEST_DEADLINE, self._end_reading)
        self._deadline.daemon = True
        self._deadline.start()

    def finish(self) -> None:
        self._deadline.cancel()
        super().finish()

    def _end_reading(self) -> None:
        """At the deadline: what is still being read ends (an answer can still be sent)."""
        with suppress(OSError):
            self.connection.shutdown(socket.SHUT_RD)

    def do_GET(self) -> None:
        routes, path = self.server.routes, self._route()
        if path == "/status":
            self._answer(200, self._guarded(routes.status), "application/json")
        elif path == "/metrics":
            self._answer(200, self._guarded(routes.metrics_text), METRICS_TYPE)
        elif routes.forge(path) is not None:
            self._answer(405, b"use POST\n", allow="POST")
        else:
            self._answer(404, b"not found\n")

    def do_POST(self) -> None:
        routes, path = self.server.routes, self._route()
        forge = routes.forge(path)
        if forge is None:
            allowed = path in ("/status", "/metrics")
            self._answer(405 if allowed else 404, b"not here\n", allow="GET" if allowed else None)
            return
        body = self._body()
        if body is None:
            return
        assert routes.secret is not None
        delivery = judge(forge, self.headers, body, routes.secret)
        if delivery.verdict is Verdict.PUSH:
            routes.wake("webhook")
        log.info("webhook %s: %s (%s)", path, delivery.verdict.name.lower(), delivery.event)
        self._answer(delivery.verdict.value, f"{delivery.verdict.name.lower()}\n".encode())

    def __getattr__(self, name: str) -> Callable[[], None]:
        if name.startswith("do_"):  # any other method
            return lambda: self._answer(405, b"method not allowed\n", allow="GET, POST")
        raise AttributeError(name)

    def _route(self) -> str:
        return self.path.partition("?")[0]

    def _body(self) -> bytes | None:
        """The request's body, or None once a 4xx is answered (no length, too long, cut)."""
        length = self.headers.get("Content-Length")
        if length is None or not (length.isascii() and length.isdigit() and len(length) < 16):
            self._answer(411, b"a Content-Length is needed\n")
            return None
        if int(length) > MAX_BODY:
            self._answer(413, f"at most {MAX_BODY} bytes\n".encode())
            return None
        body = self.rfile.read(int(length))
        if len(body) != int(length):
            self._answer(400, b"the body was cut short\n")
            return None
        return body

    def _guarded(self, read: Callable[[], bytes]) -> bytes | None:
        try:
            return read()
        except Exception as exc:  # reading the state failed: say so, keep serving
            log.warning("%s failed: %s: %s", visible(self.path), type(exc).__name__, exc)
            return None

    def _answer(
        self,
        code: int,
        body: bytes | None,
        content_type: str = "text/plain; charset=utf-8",
        *,
        allow: str | None = None,
    ) -> None:
        if body is None:
            code, body = 500, b"reading the state failed; see the loop's log\n"
            content_type = "text/plain; charset=utf-8"
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if allow is not None:
            self.send_header("Allow", allow)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        # the request line is the client's: its control characters are shown, not sent
        log.debug("%s %s", self.address_string(), visible(format % args))

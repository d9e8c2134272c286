"""Mount a pollsession target in a Tornado app (``pollsession.adapters.tornado``).

Usage::

    from pollsession.adapters.tornado import route, server_options
    app = tornado.web.Application([route(r"/poll", handler)])
    server = tornado.httpserver.HTTPServer(app, **server_options(handler))
    server.listen(8000)

Threading model
---------------

Requests are read on Tornado's IOLoop and handed to the pollsession loop
thread with one ``call_soon_threadsafe`` each way; a held long poll is an
awaiting coroutine and ties up no thread, so one process holds thousands of
polls. When a client goes away, Tornado calls ``on_connection_close`` and the
held poll is released at once. A synchronous ``authenticate`` hook runs on
Tornado's IOLoop, so keep it quick (or make it ``async``: it then runs on the
pollsession loop).

Request bodies
--------------

The body is streamed in and at most ``max_body_size + 1`` bytes of it are
kept. As soon as more than ``max_body_size`` bytes have arrived, or
``Content-Length`` declares more, the request is answered (the core decides
what: 413 for a POST of a known session, 410 for an unknown one, ...) with
``Connection: close``, and the connection is closed without reading the
rest. Any other request is answered once its body has arrived, and its
connection stays open for the next request.

Tornado's HTTP layer checks the framing itself, before any handler sees the
body: an invalid chunk size, a chunk without its CRLF, a malformed
``Content-Length``, chunk sizes adding up past Tornado's own
``max_body_size`` (an ``HTTPServer`` option, 100 MiB by default), and also
chunk extensions and trailers, which Tornado does not accept, get Tornado's
bare ``400 Bad Request`` (no JSON body) and the connection is closed; so
does a query string of more than 1,000 fields, refused as the request
is parsed. No adapter code can answer those. Errors that Tornado raises inside the
handler (its ``cross_origin_protection``, an unexpected exception) are
written as the protocol's JSON error.

Paths and headers
-----------------

Tornado matches routes against the raw path, so a target answers only at
its path spelled as mounted (``//poll`` and ``/%70oll`` are 404), as the
Flask adapter does. A header sent more than once reads as its values
joined with ``", "`` (RFC 9110): a doubled ``Pollsession-Id`` names no
session, a doubled ``Origin`` is no allowed origin.

Server options that matter
--------------------------

Build the ``HTTPServer`` with :func:`server_options`: Tornado's default
header timeout is an hour and it has no body timeout, so clients that
connect and send nothing (or trickle headers) pile up until the process
runs out of file descriptors, and at that limit Tornado's accept loop spins
at 100% CPU. Raise the process's file-descriptor limit (``ulimit -n``)
above the number of concurrent clients, with room to spare: each client
holds one connection for its poll and sometimes one for a POST.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Iterable
from http.client import responses
from typing import Any
from urllib.parse import parse_qsl

try:
    import tornado.web
    from tornado.http1connection import HTTP1Connection
    from tornado.httputil import HTTPServerRequest
    from tornado.log import access_log
except ModuleNotFoundError as missing:
    raise ModuleNotFoundError(
        f"pollsession.adapters.tornado needs Tornado ({missing}); install it with: "
        f"pip install 'pollsession[tornado]'",
        name=missing.name,
    ) from missing

from pollsession import (
    BadRequest,
    Forbidden,
    HttpContext,
    HttpError,
    HttpHandler,
    MethodNotAllowed,
    PayloadTooLarge,
    buffered_body,
    client_script_path,
    declared_length,
    error_response,
)

__all__ = [
    "TornadoContext",
    "SessionRequestHandler",
    "ClientScriptHandler",
    "route",
    "client_script_route",
    "server_options",
]

# The methods Tornado's RequestHandler can dispatch to once the body is in.
_DISPATCHED = frozenset({"GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS"})
_TORNADO_MAX_BODY_SIZE = 100 * 1024 * 1024  # Tornado's default max_body_size (its max_buffer_size)
_ERROR_CODES = {error.status: error.code for error in (BadRequest, Forbidden, MethodNotAllowed, PayloadTooLarge)}


class TornadoContext(HttpContext):
    """An :class:`~pollsession.HttpContext` over a Tornado request.

    ``body`` is the body as far as it was read (``request.body`` when None).
    ``too_large`` says that the body is larger than what was read and was
    left unread (its ``Content-Length`` is past the limit).
    """

    def __init__(self, tornado_request: HTTPServerRequest, body: bytes | None = None, *,
                 too_large: bool = False) -> None:
        self._request = tornado_request
        self._body = tornado_request.body if body is None else body
        self._too_large = too_large

    def method(self) -> str:
        return self._request.method or "GET"

    def path(self) -> str:
        return self._request.path

    def scheme(self) -> str:
        return self._request.protocol

    def header(self, name: str) -> str | None:
        values = self._request.headers.get_list(name)
        return ", ".join(values) if values else None

    def headers(self) -> Iterable[tuple[str, str]]:
        return list(self._request.headers.get_all())

    def query_items(self) -> Iterable[tuple[str, str]]:
        return parse_qsl(self._request.query, keep_blank_values=True)

    def body(self, limit: int) -> bytes:
        return buffered_body(self._body, limit, too_large=self._too_large)

    def client_address(self) -> str | None:
        return self._request.remote_ip


class _EveryMethod(tuple[str, ...]):
    """A SUPPORTED_METHODS that lets every method through to the core, which answers 405 itself."""

    def __contains__(self, method: object) -> bool:
        return True


@tornado.web.stream_request_body
class SessionRequestHandler(tornado.web.RequestHandler):
    """Serves one :class:`~pollsession.HttpHandler`; give it ``{"handler": handler}``.

    The body is streamed in and kept raw (up to one byte past
    ``max_body_size``, enough for the core to answer 413), so that Tornado
    never parses it as a form: what a body means is the core's business.
    A body past that size is not read: the request is answered at once and
    the connection closed (see the module docstring).
    """

    SUPPORTED_METHODS = _EveryMethod(("GET", "POST", "DELETE", "OPTIONS"))

    def initialize(self, handler: HttpHandler) -> None:
        self._handler = handler
        self._limit = handler.settings.max_body_size
        self._body = bytearray()
        self._answer: asyncio.Future[None] | None = None  # writing the answer
        self._answering: asyncio.Future[Any] | None = None  # the core making it
        self._routine = False  # the answer is a routine 4xx (HttpResponse.routine)

    async def prepare(self) -> None:
        if (self.request.method or "").upper() not in _DISPATCHED:
            # Tornado would find no method to call for it: answer now, before the body.
            await self._start(complete=False)
            return
        declared = declared_length(self.request.headers.get("Content-Length"))
        if declared is not None and declared > self._limit:
            connection = self.request.connection
            if isinstance(connection, HTTP1Connection):
                # The body is never read; spare the answer a trailing "400" from Tornado's own check.
                connection.set_max_body_size(declared)
            await self._start(complete=False, too_large=True)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self._answer is not None:
            return None  # answered already; Tornado drops the rest until the connection closes
        self._body += chunk[: self._limit + 1 - len(self._body)]
        if len(self._body) > self._limit:
            return self._start(complete=False)  # Tornado reads no further until this is answered
        return None

    async def _serve(self, *args: str, **kwargs: str) -> None:
        """Every dispatched method, once the whole body has arrived."""
        await (self._answer or self._start(complete=True))

    get = head = post = delete = patch = put = options = _serve

    def _start(self, *, complete: bool, too_large: bool = False) -> asyncio.Future[None]:
        self._answer = asyncio.ensure_future(self._respond(complete, too_large))
        return self._answer

    async def _respond(self, complete: bool, too_large: bool) -> None:
        context = TornadoContext(self.request, bytes(self._body), too_large=too_large)
        self._answering = asyncio.ensure_future(self._handler.handle_request_async(context))
        try:
            answer = await self._answering
        except asyncio.CancelledError:
            return  # the client went away; there is nobody to answer
        finally:
            self._answering = None
        self.clear_header("Content-Type")  # the core's answer says whether it has one
        self.set_status(answer.status)
        self._routine = answer.routine
        for name, value in answer.headers:
            self.add_header(name, value)
        if not complete:
            # Tornado closes a connection whose request body it has not read; say so.
            self.set_header("Connection", "close")
        self.finish(answer.body or None)

    def _log(self) -> None:
        # Tornado's access log writes every 4xx as a WARNING. A routine one (a
        # client told the close of its ended session: a closed tab's last poll)
        # is logged at INFO, as a success is; an application's own
        # log_function still sees every request.
        if not self._routine or "log_function" in self.application.settings:
            super()._log()
            return
        access_log.info("%d %s %s (%s) %.2fms", self.get_status(), self.request.method, self.request.uri,
                        self.request.remote_ip, 1000.0 * self.request.request_time())

    def on_connection_close(self) -> None:
        if self._answering is not None:
            self._answering.cancel()
        super().on_connection_close()  # ends a request whose body never completed

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors Tornado raises in this handler, as the protocol's JSON error."""
        error = HttpError(responses.get(status_code, "error").lower())
        error.status = status_code
        error.code = _ERROR_CODES.get(status_code, "internal_error" if status_code >= 500 else "bad_request")
        answer = error_response(error)
        self.clear_header("Content-Type")
        for name, value in answer.headers:
            self.set_header(name, value)
        self.finish(answer.body)

    # Protocol rules decide: no Tornado XSRF check (sessions never open by POST),
    # no origin check of Tornado's own, no ETag/304 on poll answers.
    def check_xsrf_cookie(self) -> None:
        return None

    def check_trusted_origin(self, origin: str) -> bool:
        return True  # Tornado's cross_origin_protection: the core's origin policy decides instead

    def compute_etag(self) -> str | None:
        return None


@functools.cache
def _client_script() -> bytes:
    """The browser client's bytes, read once."""
    return client_script_path().read_bytes()


class ClientScriptHandler(tornado.web.RequestHandler):
    """Serves the browser client, ``pollsession.js``."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/javascript; charset=utf-8")
        self.set_header("Cache-Control", "max-age=3600")
        self.finish(_client_script())


def route(pattern: str, handler: HttpHandler) -> tuple[str, type[SessionRequestHandler], dict[str, Any]]:
    """A Tornado route serving ``handler`` at ``pattern``.

    The target answers only at a path the pattern matches as sent (Tornado
    matches the raw path: ``//poll`` or ``/%70oll`` are not ``/poll``).
    Serve the application with an ``HTTPServer`` built with
    :func:`server_options` (header and body timeouts, Tornado's own body
    limit), and raise the file-descriptor limit above the number of
    concurrent clients; see the module docstring.
    """
    return (pattern, SessionRequestHandler, {"handler": handler})


def client_script_route(pattern: str = r"/pollsession\.js") -> tuple[str, type[ClientScriptHandler]]:
    """A Tornado route serving the browser client at ``pattern``."""
    return (pattern, ClientScriptHandler)


def server_options(
    handler: HttpHandler, *, idle_connection_timeout: float = 30.0, body_timeout: float | None = None
) -> dict[str, Any]:
    """Recommended keyword arguments of ``tornado.httpserver.HTTPServer`` for ``handler``.

    ::

        server = tornado.httpserver.HTTPServer(app, **server_options(handler))

    * ``idle_connection_timeout`` (30 s): how long Tornado waits for a
      complete request head, on a new connection or between the requests of
      a keep-alive one. Tornado's default is an hour, so clients that
      connect and send nothing, or trickle their headers, each keep a file
      descriptor for an hour; at the process's fd limit Tornado can no
      longer accept and its accept loop spins at 100% CPU. A held long poll
      is not affected: its head has arrived.
    * ``body_timeout`` (by default the time ``max_body_size`` takes at
      64 KiB/s, at least 30 s): how long a request body may take to
      arrive. Tornado has none by default, so a client that declares a
      body and sends a byte now and then holds its connection for ever.
    * ``max_body_size``: Tornado's own body limit, checked against chunk
      sizes before any data is read (a body declared past it gets Tornado's
      bare 400). Kept at Tornado's default of 100 MiB, or above the
      handler's ``max_body_size``, so that pollsession answers every body
      in between with its JSON 413.

    Size the process's file-descriptor limit (``ulimit -n``, or
    ``LimitNOFILE=`` under systemd) above the number of concurrent clients:
    each holds one connection for its poll, sometimes one more for a POST,
    and idle ones stay until ``idle_connection_timeout``. Pass your own
    ``ssl_options``, ``xheaders`` and so on next to these.
    """
    settings = handler.settings
    if body_timeout is None:
        body_timeout = max(30.0, settings.max_body_size / (64 * 1024))
    return {
        "idle_connection_timeout": idle_connection_timeout,
        "body_timeout": body_timeout,
        "max_body_size": max(_TORNADO_MAX_BODY_SIZE, settings.max_body_size + 1),
    }

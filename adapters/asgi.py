"""Serve a pollsession target as an ASGI application (``pollsession.adapters.asgi``).

Usage, bare under uvicorn (``uvicorn app:app``)::

    handler = HttpHandler(target, use_running_loop=True)
    app = PollSessionApp(handler)

mounted in Starlette or FastAPI::

    app = FastAPI()
    app.mount("/poll", PollSessionApp(handler))              # clients use /poll/ (see "Paths")
    app.mount("/pollsession.js", ClientScriptApp())           # the browser client

The adapter only translates: every protocol rule is the core's.

Loop
----
The sessions run on the server's own event loop, with no thread hop: the
handler must be built with ``use_running_loop=True`` (the adapter refuses one
that is not), and its first request comes from that loop.

Request bodies
--------------
The body is read from ``receive`` as it streams in, and at most
``max_body_size + 1`` bytes of it are kept: once more have arrived, or
``Content-Length`` declares more, the core answers at once (413 for a POST
of a known session) with ``Connection: close``, and the rest is never read.

Disconnects
-----------
While the core makes its answer (a held long poll), the adapter waits for
``http.disconnect`` too: a client that goes away releases its held poll at
once.

Paths
-----
A session belongs to the full path it was opened at, the mount's prefix
(``root_path``) included, so the same handler mounted twice keeps each
mount's sessions apart. Starlette's ``Mount("/poll")`` answers ``/poll``
with a redirect to ``/poll/``: point clients at ``/poll/``, or route the
exact path instead (``app.add_route("/poll", PollSessionApp(handler))``).

A target answers only at its path as the client spelled it: ``/%70oll``
(another spelling of ``/poll``, which uvicorn decodes into the same
``path``) answers 404, as on Flask and Tornado, so that one session target
is never reached through two URLs. The spelling is read from ``raw_path``;
under a server that does not pass it, only the router's matching applies.

Shutdown
--------
uvicorn, told to stop, waits for every request in flight (a held poll: up to
``poll_timeout``) before it runs the lifespan shutdown. So that Ctrl-C closes
every session with 1001 at once, the app chains a handler onto the SIGINT
and SIGTERM handlers the server installed (uvicorn's, gunicorn's), the first
time it runs on the main thread (at lifespan startup, or at its first
request when mounted, since Starlette passes no lifespan to mounts): on the
signal it starts ``handler.aclose()`` and calls the server's handler.
``close_on_signals=False`` leaves signals alone; then close the handler
yourself (``await handler.aclose()`` in your lifespan). The lifespan
shutdown, when it reaches the app, closes the handler too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import threading
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, quote

from pollsession import HttpContext, HttpHandler, buffered_body, client_script_path, declared_length

__all__ = ["AsgiContext", "PollSessionApp", "ClientScriptApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PATH_SAFE = "/:@!$&'()*+,;=~"  # what a path may carry unescaped (RFC 3986 pchar), as quote() leaves it


def _full_path(scope: Scope) -> str:
    """The path as the client sent it: the mount's ``root_path`` and the path within it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path if not root or path.startswith(root) else root + path


def _is_mounted_spelling(scope: Scope) -> bool:
    """Whether the path as the client wrote it (``raw_path``) is the canonical spelling of the decoded path."""
    raw = scope.get("raw_path")
    if not raw:
        return True
    full, root = _full_path(scope), scope.get("root_path", "")
    # uvicorn puts root_path in front of raw_path too; a server that leaves it out is as right.
    spellings = {full, full[len(root):] if root and full.startswith(root) else full}
    return bytes(raw).decode("latin-1") in {quote(path, safe=_PATH_SAFE) for path in spellings}


def _first_header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case) in ``scope``, before the body is read."""
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class AsgiContext(HttpContext):
    """An :class:`~pollsession.HttpContext` over an ASGI HTTP scope and the body read so far.

    ``too_large`` says that the body is larger than what was read and was
    left unread (more than the limit arrived, or ``Content-Length`` declares more).
    """

    def __init__(self, scope: Scope, body: bytes, *, too_large: bool = False) -> None:
        self._scope = scope
        self._body = body
        self._too_large = too_large
        self._headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]]

    def method(self) -> str:
        return str(self._scope["method"]).upper()

    def path(self) -> str:
        return _full_path(self._scope)

    def scheme(self) -> str:
        return "https" if self._scope.get("scheme") in ("https", "wss") else "http"

    def header(self, name: str) -> str | None:
        name = name.lower()
        values = [value for key, value in self._headers if key.lower() == name]
        return ", ".join(values) if values else None

    def headers(self) -> Iterable[tuple[str, str]]:
        return list(self._headers)

    def query_items(self) -> Iterable[tuple[str, str]]:
        return parse_qsl(self._scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)

    def body(self, limit: int) -> bytes:
        return buffered_body(self._body, limit, too_large=self._too_large)

    def client_address(self) -> str | None:
        client = self._scope.get("client")
        return str(client[0]) if client else None


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool, bool]:
    """``(body, complete, disconnected)``: at most ``limit + 1`` bytes, stopping once past ``limit``."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return bytes(body), False, True
        body += message.get("body", b"")[: limit + 1 - len(body)]
        if not message.get("more_body", False):
            return bytes(body), True, False
        if len(body) > limit:
            return bytes(body), False, False


async def _disconnected(receive: Receive) -> None:
    """Return once the client has gone away (anything else received is the unread rest of a body)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes, *,
                   complete: bool) -> None:
    """Send one whole answer; ``complete``: whether the request's body was read to its end."""
    if not any(name == b"content-length" for name, _ in headers):
        headers.append((b"content-length", str(len(body)).encode("ascii")))
    if not complete:
        headers.append((b"connection", b"close"))  # the rest of the body is never read
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class PollSessionApp:
    """An ASGI application serving one :class:`~pollsession.HttpHandler`.

    The handler must be built with ``use_running_loop=True``; see the module
    docstring for paths, bodies, disconnects and shutdown.
    """

    def __init__(self, handler: HttpHandler, *, close_on_signals: bool = True) -> None:
        if not handler.uses_running_loop:
            raise ValueError("the ASGI adapter runs the sessions on the server's loop: build the handler with "
                             "HttpHandler(target, use_running_loop=True)")
        self.handler = handler
        self._limit = handler.settings.max_body_size
        self._watch_signals = close_on_signals
        self._closing: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            self._chain_signals()
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:  # a WebSocket: not a transport of this protocol (yet)
            await send({"type": "websocket.close", "code": 1008, "reason": "pollsession speaks HTTP here"})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = declared_length(_first_header(scope, b"content-length"))
        if declared is not None and declared > self._limit:
            body, complete, too_large = b"", False, True
        else:
            body, complete, gone = await _read_body(receive, self._limit)
            if gone:
                return  # the client went away mid-body: nobody to answer
            too_large = False
        if not _is_mounted_spelling(scope):  # as for any URL nothing is mounted at
            await _respond(send, 404, [(b"content-type", b"text/plain; charset=utf-8")], b"Not Found",
                           complete=complete)
            return
        answering = asyncio.ensure_future(
            self.handler.handle_request_async(AsgiContext(scope, body, too_large=too_large)))
        watching = asyncio.ensure_future(_disconnected(receive))
        await asyncio.wait((answering, watching), return_when=asyncio.FIRST_COMPLETED)
        watching.cancel()
        if not answering.done():  # the client went away: release the held poll
            answering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await answering
            return
        answer = answering.result()
        headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers]
        await _respond(send, answer.status, headers, answer.body, complete=complete)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._chain_signals()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _close(self) -> None:
        await asyncio.shield(self._begin_closing())

    def _chain_signals(self) -> None:
        """Once, on the main thread: on SIGINT or SIGTERM, start closing, then call the server's handler."""
        if not self._watch_signals or threading.current_thread() is not threading.main_thread():
            return
        self._watch_signals = False
        loop = asyncio.get_running_loop()
        for signum in _SIGNALS:
            previous = signal.getsignal(signum)
            if callable(previous):  # uvicorn's, gunicorn's, Python's KeyboardInterrupt: ours goes first
                signal.signal(signum, functools.partial(self._on_signal, loop, previous))

    def _on_signal(self, loop: asyncio.AbstractEventLoop, previous: Callable[[int, Any], Any],
                   signum: int, frame: Any) -> None:
        loop.call_soon_threadsafe(self._begin_closing)  # its task is kept in self._closing
        previous(signum, frame)

    def _begin_closing(self) -> asyncio.Task[None]:
        """The one task that closes the handler: started by a signal or the lifespan shutdown, whichever first."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self.handler.aclose())
        return self._closing


@functools.cache
def _client_script() -> bytes:
    return client_script_path().read_bytes()


class ClientScriptApp:
    """An ASGI application serving the browser client, ``pollsession.js``, to GET and HEAD."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            await send({"type": "http.response.start", "status": 405,
                        "headers": [(b"allow", b"GET, HEAD"), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        script = _client_script()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/javascript; charset=utf-8"), (b"cache-control", b"max-age=3600"),
            (b"content-length", str(len(script)).encode("ascii"))]})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else script})

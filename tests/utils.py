"""Shared test helpers: real servers on free loopback ports, and timing.

Every duration in the tests is a multiple of ``MS`` so a slow machine can
scale them all at once with ``POLLSESSION_TEST_SCALE``; tests wait on
conditions with deadlines (``wait_until``), never on sleeps that hope.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["MS", "ADAPTERS", "ALL_ADAPTERS", "RawConnection", "RawResponse", "mount_handler", "serve", "wait_until"]

MS = 0.001 * float(os.environ.get("POLLSESSION_TEST_SCALE", "1"))

# "tornado-same-loop" is Tornado with HttpHandler(use_running_loop=True): the
# sessions run on Tornado's own loop instead of the handler's thread.
ADAPTERS = ("flask", "tornado", "tornado-same-loop")
"""The Flask and Tornado adapters: what the browser client's tests run on (not yet on ASGI)."""
ALL_ADAPTERS = (*ADAPTERS, "asgi")
"""ADAPTERS and the ASGI adapter under uvicorn: every adapter-level test (bodies, headers, connections,
routing, the fuzzer), the conformance suite and both Python clients' tests run on each."""


def wait_until(predicate: Callable[[], Any], timeout: float = 5000 * MS, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.2f}s waiting for {what}")
        time.sleep(0.005)


@contextlib.contextmanager
def serve(
    adapter: str,
    handler: Any,
    *,
    extra: Callable[[Any], None] | None = None,
    tornado_options: dict[str, Any] | None = None,
    tornado_settings: dict[str, Any] | None = None,
) -> Iterator[str]:
    """Serve ``handler`` at ``/poll`` with ``adapter`` on 127.0.0.1; yield the base URL.

    ``extra`` receives the Flask app or the list of Tornado routes before the
    server starts, so a test can add its own routes (pages, scripts).
    ``tornado_options`` are keyword arguments of Tornado's ``HTTPServer``
    (such as ``server_options(handler)``), ``tornado_settings`` those of its
    ``Application``; Flask ignores both.
    The handler is closed when the block ends.
    """
    if adapter == "flask":
        cm = _serve_flask(handler, extra)
    elif adapter == "tornado":
        cm = _serve_tornado(handler, extra, tornado_options or {}, tornado_settings or {})
    elif adapter == "tornado-same-loop":
        _use_running_loop(handler)
        cm = _serve_tornado(handler, extra, tornado_options or {}, tornado_settings or {})
    elif adapter == "asgi":
        _use_running_loop(handler)
        cm = _serve_asgi(handler, extra)
    else:
        raise ValueError(f"unknown adapter {adapter!r}")
    with cm as base_url:
        try:
            yield base_url
        finally:
            handler.close()  # while the server still runs: held polls get their answers


def mount_handler(adapter: str, app_or_routes: Any, path: str, handler: Any) -> None:
    """Serve ``handler`` at ``path`` too, in what ``serve``'s ``extra`` received for ``adapter``."""
    if adapter == "flask":
        from pollsession.adapters.flask import mount

        mount(app_or_routes, path, handler)
    elif adapter == "asgi":
        from starlette.routing import Route

        from pollsession.adapters.asgi import PollSessionApp

        if not handler.uses_running_loop:
            _use_running_loop(handler)
        app_or_routes.append(Route(path, PollSessionApp(handler)))
    else:
        from pollsession.adapters.tornado import route

        app_or_routes.append(route(path, handler))


def _use_running_loop(handler: Any) -> None:
    """Make ``handler`` behave as if built with ``use_running_loop=True`` (it must be unused)."""
    from pollsession.server.loop import EventLoopThread

    if handler._loop_thread.started:
        raise ValueError("the handler was used already; serve it before using it")
    handler._loop_thread = EventLoopThread(borrow_running_loop=True)
    handler._use_running_loop = True


@contextlib.contextmanager
def _serve_flask(handler: Any, extra: Callable[[Any], None] | None) -> Iterator[str]:
    from flask import Flask
    from werkzeug.serving import make_server

    from pollsession.adapters.flask import mount

    app = Flask("pollsession-test")
    mount(app, "/poll", handler)
    if extra is not None:
        extra(app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="flask-test-server", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def _serve_asgi(handler: Any, extra: Callable[[Any], None] | None) -> Iterator[str]:
    """``handler`` at ``/poll`` of a Starlette app (``extra`` gets its route list) under uvicorn."""
    import socket

    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Route

    from pollsession.adapters.asgi import PollSessionApp

    routes: list[Any] = [Route("/poll", PollSessionApp(handler))]
    if extra is not None:
        extra(routes)
    # IPPROTO_TCP, as uvicorn binds its own: asyncio sets TCP_NODELAY only on such sockets, and without it
    # every answer's body (written after its head) waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = Starlette(routes=routes)
    # Where nothing is mounted, a 404 as on the other adapters' servers: not Starlette's default
    # redirect of "/poll/" to "/poll", which is the application's router speaking, not the adapter.
    app.router.redirect_slashes = False
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_keep_alive=30))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="asgi-test-server",
                              daemon=True)
    thread.start()
    wait_until(lambda: server.started, 10, "uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextlib.contextmanager
def _serve_tornado(
    handler: Any, extra: Callable[[Any], None] | None, options: dict[str, Any], settings: dict[str, Any]
) -> Iterator[str]:
    import tornado.httpserver
    import tornado.netutil
    import tornado.web

    from pollsession.adapters.tornado import route

    routes: list[Any] = [route(r"/poll", handler)]
    if extra is not None:
        extra(routes)
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    started = threading.Event()
    state: dict[str, Any] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        server = tornado.httpserver.HTTPServer(tornado.web.Application(routes, **settings), **options)
        server.add_sockets(sockets)
        state.update(loop=loop, server=server)
        started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=run, name="tornado-test-server", daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("tornado test server did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop = state["loop"]

        async def stop() -> None:
            state["server"].stop()
            await state["server"].close_all_connections()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


# -- raw HTTP/1.1, for clients that misbehave ---------------------------------------


@dataclass
class RawResponse:
    """One response as it came off the wire."""

    status: int
    headers: list[tuple[str, str]]  # names lower-cased, in order
    body: bytes

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key == name.lower()]
        return ", ".join(values) if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def closes(self) -> bool:
        """Whether the answer says ``Connection: close``."""
        return "close" in (self.header("connection") or "").lower()


class RawConnection:
    """One TCP connection to a test server, spoken to byte by byte.

    Every read has a deadline (``timeout``): a server that never answers
    fails the test instead of hanging it.
    """

    def __init__(self, base_url: str, timeout: float = 10_000 * MS) -> None:
        parts = urlsplit(base_url)
        assert parts.hostname is not None and parts.port is not None
        self.host = f"{parts.hostname}:{parts.port}"
        self.timeout = timeout
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        self._buffer = b""

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        """Read more into the buffer; False at the end of the stream (or a reset)."""
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            return False
        self._buffer += chunk
        return bool(chunk)

    def _take_line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            if not self._fill():
                raise EOFError(f"connection closed in the middle of a response: {self._buffer[:200]!r}")
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not self._fill():
                raise EOFError(f"connection closed after {len(self._buffer)} of {size} body bytes")
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def response(self, *, head: bool = False) -> RawResponse:
        """Read one whole response (skipping ``100 Continue``); ``head`` for the answer to a HEAD."""
        while True:
            status_line = self._take_line()
            headers: list[tuple[str, str]] = []
            while line := self._take_line():
                name, _, value = line.decode("latin-1").partition(":")
                headers.append((name.strip().lower(), value.strip()))
            status = int(status_line.split()[1])
            if status != 100:
                break
        response = RawResponse(status, headers, b"")
        length = response.header("content-length")
        if head or status in (204, 304):
            return response
        if "chunked" in (response.header("transfer-encoding") or ""):
            parts = []
            while size := int(self._take_line().split(b";")[0], 16):
                parts.append(self._take(size))
                self._take_line()
            while self._take_line():  # trailers
                pass
            response.body = b"".join(parts)
        elif length is not None:
            response.body = self._take(int(length))
        else:  # delimited by the end of the connection
            while self._fill():
                pass
            response.body, self._buffer = self._buffer, b""
        return response

    def wait_closed(self) -> bytes:
        """Wait until the server ends the connection (FIN or reset); return what came before."""
        while self._fill():
            pass
        data, self._buffer = self._buffer, b""
        return data

    def is_open(self) -> bool:
        """Whether the server still keeps the connection open (nothing to read, no end), right now."""
        self.sock.setblocking(False)
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return True
        except ConnectionResetError:
            return False
        finally:
            self.sock.settimeout(self.timeout)
        self._buffer += chunk
        return bool(chunk)

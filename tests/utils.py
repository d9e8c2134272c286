"""Shared test helpers: real servers on free loopback ports, and timing.

Every duration in the tests is a multiple of ``MS`` so a slow machine can
scale them all at once with ``POLLSESSION_TEST_SCALE``; tests wait on
conditions with deadlines (``wait_until``), never on sleeps that hope.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["MS", "ADAPTERS", "serve", "wait_until"]

MS = 0.001 * float(os.environ.get("POLLSESSION_TEST_SCALE", "1"))

# "tornado-same-loop" is Tornado with HttpHandler(use_running_loop=True): the
# sessions run on Tornado's own loop instead of the handler's thread.
ADAPTERS = ("flask", "tornado", "tornado-same-loop")


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
def serve(adapter: str, handler: Any, *, extra: Callable[[Any], None] | None = None) -> Iterator[str]:
    """Serve ``handler`` at ``/poll`` with ``adapter`` on 127.0.0.1; yield the base URL.

    ``extra`` receives the Flask app or the list of Tornado routes before the
    server starts, so a test can add its own routes (pages, scripts).
    The handler is closed when the block ends.
    """
    if adapter == "flask":
        cm = _serve_flask(handler, extra)
    elif adapter == "tornado":
        cm = _serve_tornado(handler, extra)
    elif adapter == "tornado-same-loop":
        _use_running_loop(handler)
        cm = _serve_tornado(handler, extra)
    else:
        raise ValueError(f"unknown adapter {adapter!r}")
    with cm as base_url:
        try:
            yield base_url
        finally:
            handler.close()  # while the server still runs: held polls get their answers


def _use_running_loop(handler: Any) -> None:
    """Make ``handler`` behave as if built with ``use_running_loop=True`` (it must be unused)."""
    from pollsession._loop import EventLoopThread

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
def _serve_tornado(handler: Any, extra: Callable[[Any], None] | None) -> Iterator[str]:
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
        server = tornado.httpserver.HTTPServer(tornado.web.Application(routes))
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

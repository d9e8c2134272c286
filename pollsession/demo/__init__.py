"""The pollsession demo: a small chat, served by Flask or by Tornado.

Run it with ``python -m pollsession demo`` (see ``--help``). Rooms are chosen
by URL: ``/`` redirects to ``/room/lobby``, ``/room/<name>`` is the page of
that room, and the page opens its session at ``/poll?room=<name>``. The chat
itself (``Chat``, in ``_chat``) knows no web framework; the builders below
only wire its handler, the page and the browser client into an app, and
:func:`serve` runs that app until Ctrl-C (or SIGTERM), then closes every
session. To serve the chat from your own server instead::

    chat = Chat()
    app = make_flask_app(chat)     # or make_tornado_app(chat)
    chat.start()                   # the clock; chat.close() when the app stops

Flask and Tornado are imported only when their builder is called; when the
one asked for is not installed, :class:`MissingFramework` says which extra
to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from ._chat import NICK_REQUIRED, ROOM_NAME, Chat
from ._store import ChatStore, LocalStore, RedisStore

if TYPE_CHECKING:
    import flask
    import tornado.web

__all__ = [
    "ADAPTERS",
    "Chat",
    "ChatStore",
    "LocalStore",
    "MissingFramework",
    "NICK_REQUIRED",
    "RedisStore",
    "WILDCARD_HOSTS",
    "base_url",
    "chat_page",
    "make_flask_app",
    "make_tornado_app",
    "require_framework",
    "serve",
    "serve_workers",
]

ADAPTERS = ("tornado", "flask")

Ready = Callable[[str], None]
"""Told the base URL once the server listens."""

_FRAMEWORKS = {"flask": "Flask", "tornado": "Tornado"}  # adapter (= extra, = module) -> project name


class MissingFramework(ModuleNotFoundError):
    """The web framework of the adapter asked for is not installed; the message says what to install."""


def require_framework(adapter: str) -> None:
    """Import ``adapter``'s framework, or raise :class:`MissingFramework` naming the extra to install."""
    try:
        importlib.import_module(adapter)
    except ModuleNotFoundError as error:
        if error.name != adapter:
            raise  # the framework is there, something it needs is not
        others = [name for name in _FRAMEWORKS if name != adapter and importlib.util.find_spec(name) is not None]
        hint = f" (or use --adapter {others[0]}, which is installed)" if others else ""
        raise MissingFramework(
            f"the {adapter} adapter needs {_FRAMEWORKS[adapter]}, which is not installed: "
            f"pip install 'pollsession[{adapter}]'{hint}",
            name=adapter,
        ) from None


def chat_page() -> bytes:
    """The chat page, ``chat.html``: static; it reads its room from its own URL."""
    return resources.files(__name__).joinpath("chat.html").read_bytes()


def make_flask_app(chat: Chat) -> flask.Flask:
    """A Flask app serving ``chat``: ``/``, ``/room/<name>``, ``/poll``, ``/pollsession.js``."""
    require_framework("flask")
    from flask import Flask, Response, abort, redirect

    # mypy cannot see pollsession.adapters: setup.cfg maps it from the top-level adapters/ directory.
    from pollsession.adapters.flask import mount, mount_client_script  # type: ignore[import-not-found]

    app = Flask(__name__)
    mount(app, "/poll", chat.handler)
    mount_client_script(app, "/pollsession.js")
    page = chat_page()

    @app.get("/")
    def index() -> Any:
        return redirect("/room/lobby")

    @app.get("/room/<name>")
    def room(name: str) -> Response:
        if not ROOM_NAME.fullmatch(name):
            abort(404)
        return Response(page, mimetype="text/html", headers={"Cache-Control": "no-cache"})

    return app


def make_tornado_app(chat: Chat) -> tornado.web.Application:
    """A Tornado app serving ``chat``: ``/``, ``/room/<name>``, ``/poll``, ``/pollsession.js``."""
    require_framework("tornado")
    import tornado.web

    from pollsession.adapters.tornado import client_script_route, route  # type: ignore[import-not-found]

    page = chat_page()

    class RoomPage(tornado.web.RequestHandler):
        def get(self, name: str) -> None:
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.set_header("Cache-Control", "no-cache")
            self.finish(page)

    return tornado.web.Application([
        (r"/", tornado.web.RedirectHandler, {"url": "/room/lobby", "permanent": False}),
        (rf"/room/({ROOM_NAME.pattern})", RoomPage),
        route(r"/poll", chat.handler),
        client_script_route(r"/pollsession\.js"),
    ])


def serve(adapter: str, chat: Chat, *, host: str = "127.0.0.1", port: int = 8000, ready: Ready | None = None,
          sock: socket.socket | None = None) -> None:
    """Serve ``chat`` with ``adapter`` until SIGINT or SIGTERM, then close it; blocks.

    Call it from the main thread (it handles the signals). ``port`` 0 picks
    a free port; ``ready`` is told a URL a browser on this machine can open
    once the server listens (``127.0.0.1`` when ``host`` is ``0.0.0.0``).
    ``sock``, a listening socket, is served instead of binding ``host`` and
    ``port`` (as :func:`serve_workers` does).
    For Tornado, build the chat with ``Chat(use_running_loop=True)``: its
    shutdown then answers every held poll before the loop ends. Raises
    :class:`MissingFramework` when the adapter's framework is not installed.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("serve() must be called from the main thread: it handles SIGINT and SIGTERM")
    if adapter in _FRAMEWORKS:
        require_framework(adapter)
    if adapter == "flask":
        _serve_flask(chat, host, port, ready, sock)
    elif adapter == "tornado":
        _serve_tornado(chat, host, port, ready, sock)
    else:
        raise ValueError(f"adapter must be one of {', '.join(ADAPTERS)}, got {adapter!r}")


WILDCARD_HOSTS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}
"""Addresses that mean "every interface", and the loopback address a local browser opens instead."""


def base_url(host: str, port: int) -> str:
    """The URL a browser on this machine opens for a server listening on ``host``: never ``0.0.0.0``."""
    host = WILDCARD_HOSTS.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _serve_flask(chat: Chat, host: str, port: int, ready: Ready | None, sock: socket.socket | None) -> None:
    from socketserver import ThreadingMixIn

    from werkzeug.serving import WSGIRequestHandler, make_server

    class RequestHandler(WSGIRequestHandler):
        # Seconds a connection may stay silent (no head, a stalled body) before
        # it is dropped; werkzeug has no limit. A held poll is not silence.
        timeout = 30

    # One log line per long poll drowns everything else out.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server(host, port, make_flask_app(chat), threaded=True, request_handler=RequestHandler,
                         fd=None if sock is None else sock.fileno())
    if isinstance(server, ThreadingMixIn):
        # server_close() then waits for the request threads: the 1001 answers
        # of the held polls are written before the process exits.
        server.daemon_threads = False

    def close_then_shut_down() -> None:
        chat.close()
        server.shutdown()

    def stop(signum: int, frame: object) -> None:
        # The closing runs in a thread of its own while serve_forever goes on:
        # held polls, and polls arriving meanwhile (a client between two
        # polls), get the 1001 close; then shutdown() ends serve_forever.
        # (Raising KeyboardInterrupt instead would make werkzeug close the
        # listening socket first, and those polls would go unanswered.)
        threading.Thread(target=close_then_shut_down, name="pollsession-demo-stop").start()

    # Set SIGINT too: a shell starts background jobs with SIGINT ignored.
    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        chat.start()
        if ready is not None:
            ready(base_url(host, server.server_port))
        server.serve_forever()  # returns once stop() has closed the chat and shut the server down
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        chat.close()  # idempotent; closes the chat if serving failed
        server.server_close()


def _serve_tornado(chat: Chat, host: str, port: int, ready: Ready | None, sock: socket.socket | None) -> None:
    import tornado.httpserver
    import tornado.netutil

    from pollsession.adapters.tornado import server_options

    async def main() -> None:
        sockets = tornado.netutil.bind_sockets(port, host) if sock is None else [sock]
        # Idle and body timeouts: Tornado's own defaults are an hour and none.
        server = tornado.httpserver.HTTPServer(make_tornado_app(chat), **server_options(chat.handler))
        server.add_sockets(sockets)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
        except NotImplementedError:  # Windows: Ctrl-C raises KeyboardInterrupt out of asyncio.run instead
            pass
        try:
            chat.start()
            if ready is not None:
                ready(base_url(host, sockets[0].getsockname()[1]))
            await stop.wait()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError):
                    loop.remove_signal_handler(signum)
            # Close while Tornado still accepts and runs: held polls, and polls
            # arriving meanwhile, are answered with the 1001 close. Then stop,
            # and drop the idle keep-alive connections.
            await chat.aclose()
            server.stop()
            await server.close_all_connections()

    try:
        asyncio.run(main())  # main() closes the chat, whatever ends it
    except KeyboardInterrupt:
        pass


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host`` and ``port`` with ``SO_REUSEPORT``, not yet listening.

    Each worker of :func:`serve_workers` binds its own socket to the same
    port, and the kernel spreads new connections evenly over the workers that
    listen. This one only holds the port (and finds it, for ``port`` 0): a
    socket that does not listen is given no connections.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        holder.bind((host, port))
    except OSError:
        holder.close()
        raise
    return holder


def _worker_socket(host: str, port: int) -> socket.socket:
    sock = listening_socket(host, port)
    sock.listen(128)
    sock.setblocking(False)  # werkzeug then skips an accept another worker won, instead of blocking in it
    return sock


def serve_workers(adapter: str, make_chat: Callable[[], Chat], workers: int, *, host: str = "127.0.0.1",
                  port: int = 8000, ready: Ready | None = None) -> int:
    """Serve a chat with ``workers`` processes on one port until SIGINT or SIGTERM; blocks; the exit status.

    Each worker is a forked process that builds its own chat with
    ``make_chat`` (a chat whose handler has a ``RedisBackend``, so that any
    worker answers any request) and serves it with :func:`serve` on its own
    ``SO_REUSEPORT`` socket. This process only starts them, passes SIGINT and
    SIGTERM on, and waits: 0 once every worker stopped cleanly, 1 if one
    ended on its own (then the others are stopped too). POSIX only (fork).
    """
    if not hasattr(os, "fork") or not hasattr(socket, "SO_REUSEPORT"):
        raise RuntimeError("several workers need fork() and SO_REUSEPORT (Linux, macOS, BSD)")
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("serve_workers() must be called from the main thread: it handles SIGINT and SIGTERM")
    require_framework(adapter)
    holder = listening_socket(host, port)
    port = holder.getsockname()[1]
    children: set[int] = set()
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        for _ in range(workers):
            pid = os.fork()
            if pid == 0:  # the worker: never returns into the caller's code
                code = 1
                try:
                    for signum, handler in previous.items():
                        signal.signal(signum, handler)
                    holder.close()
                    serve(adapter, make_chat(), host=host, port=port, sock=_worker_socket(host, port))
                    code = 0
                except BaseException:
                    logging.getLogger("pollsession.demo").exception("pollsession demo: a worker failed")
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            children.add(pid)
        if ready is not None:
            ready(base_url(host, port))
        while children:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            children.discard(pid)
            if os.waitstatus_to_exitcode(wait_status) != 0 or not stopping:
                status = 1
                if not stopping:
                    print(f"pollsession demo: worker {pid} ended on its own "
                          f"(exit status {os.waitstatus_to_exitcode(wait_status)}): stopping the others",
                          file=sys.stderr, flush=True)
                    stop(signal.SIGTERM, None)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        holder.close()
    return status

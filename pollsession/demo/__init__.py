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

Flask and Tornado are imported only when their builder is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from ._chat import NICK_REQUIRED, ROOM_NAME, Chat

if TYPE_CHECKING:
    import flask
    import tornado.web

__all__ = [
    "ADAPTERS",
    "Chat",
    "NICK_REQUIRED",
    "chat_page",
    "make_flask_app",
    "make_tornado_app",
    "serve",
]

ADAPTERS = ("tornado", "flask")

Ready = Callable[[str], None]
"""Told the base URL once the server listens."""


def chat_page() -> bytes:
    """The chat page, ``chat.html``: static; it reads its room from its own URL."""
    return resources.files(__name__).joinpath("chat.html").read_bytes()


def make_flask_app(chat: Chat) -> flask.Flask:
    """A Flask app serving ``chat``: ``/``, ``/room/<name>``, ``/poll``, ``/pollsession.js``."""
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


def serve(adapter: str, chat: Chat, *, host: str = "127.0.0.1", port: int = 8000, ready: Ready | None = None) -> None:
    """Serve ``chat`` with ``adapter`` until SIGINT or SIGTERM, then close it; blocks.

    Call it from the main thread (it handles the signals). ``port`` 0 picks
    a free port; ``ready`` is told the base URL once the server listens.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("serve() must be called from the main thread: it handles SIGINT and SIGTERM")
    if adapter == "flask":
        _serve_flask(chat, host, port, ready)
    elif adapter == "tornado":
        _serve_tornado(chat, host, port, ready)
    else:
        raise ValueError(f"adapter must be one of {', '.join(ADAPTERS)}, got {adapter!r}")


def _base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _serve_flask(chat: Chat, host: str, port: int, ready: Ready | None) -> None:
    from werkzeug.serving import make_server

    # One log line per long poll drowns everything else out.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server(host, port, make_flask_app(chat), threaded=True)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Set SIGINT too: a shell starts background jobs with SIGINT ignored.
    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        chat.start()
        if ready is not None:
            ready(_base_url(host, server.server_port))
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        # Held polls are answered with the 1001 close while the workers can still write it.
        chat.close()
        server.server_close()


def _serve_tornado(chat: Chat, host: str, port: int, ready: Ready | None) -> None:
    import tornado.httpserver
    import tornado.netutil

    async def main() -> None:
        sockets = tornado.netutil.bind_sockets(port, host)
        server = tornado.httpserver.HTTPServer(make_tornado_app(chat))
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
                ready(_base_url(host, sockets[0].getsockname()[1]))
            await stop.wait()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError):
                    loop.remove_signal_handler(signum)
            server.stop()
            # close() blocks until every session is closed; Tornado's loop keeps
            # running meanwhile, to write the 1001 answers of the held polls.
            await loop.run_in_executor(None, chat.close)
            await server.close_all_connections()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        chat.close()

"""The benchmarked servers: one system on one framework per process.

Run as ``python bench/servers.py SYSTEM FRAMEWORK`` (``run.py`` does it, under
``taskset -c 0``). The server binds ``127.0.0.1`` on a free port, prints one JSON
line ``{"port": ..., "pid": ...}`` on stdout once it accepts connections, and
serves until it is terminated.

Every system runs the same application, so that only the transport differs:

* a text message is echoed back to its session;
* the text ``!burst:K`` makes the session send ``b0`` ... ``b{K-1}`` as fast as
  the system's own send API allows (the throughput benchmark);
* ``POST /bench/broadcast`` (a plain handler of the same framework) sends its
  body, as text, to every session with the system's own means, and answers
  how many got it (the fan-out benchmark).

Systems: ``pollsession`` (defaults: sessions on the handler's own loop
thread); ``pollsession-rl`` (Tornado only: ``use_running_loop=True``, the
sessions on Tornado's own loop); ``engineio`` (python-engineio, polling transport;
``async_mode="tornado"`` / ``"threading"``); ``pywebio`` (PyWebIO's HTTP
backend: coroutine sessions under Tornado, thread sessions under Flask, each
framework's default); ``raw``, the least a long poll needs in that framework
(a held GET answered when a POST arrives, nothing else) -- the baseline every
figure is divided by. Every option is left at its default except
``max_sessions`` (raised so that the 10,000-poll run fits) and the listen
backlog (raised equally for every server so that opening thousands of
connections does not hit SYN retries).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import resource
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["SYSTEMS", "FRAMEWORKS", "ENDPOINTS", "SUPPORTED", "main"]

SYSTEMS = ("pollsession", "pollsession-rl", "engineio", "pywebio", "raw")
FRAMEWORKS = ("tornado", "flask")
ENDPOINTS = {"pollsession": "/poll", "pollsession-rl": "/poll", "engineio": "/engine.io/", "pywebio": "/pywebio",
             "raw": "/raw"}
# Which systems each framework can run: use_running_loop needs an asyncio framework.
SUPPORTED = {"tornado": SYSTEMS, "flask": ("pollsession", "engineio", "pywebio", "raw")}
BACKLOG = 4096
BURST = "!burst:"


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE to its hard limit (held polls are sockets); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def replies(data: Any) -> Iterable[Any]:
    """What every server sends back: ``data`` itself, or ``b0`` ... ``b{K-1}`` for ``!burst:K``."""
    if isinstance(data, str) and data.startswith(BURST):
        return (f"b{i}" for i in range(int(data[len(BURST):])))
    return (data,)


# -- pollsession -----------------------------------------------------------------


def pollsession_handler(**extra: Any) -> Any:
    from pollsession import HttpHandler, Session

    async def app(session: Session) -> None:
        async for data in session:
            for reply in replies(data):
                await session.send(reply)

    # POLLSESSION_BENCH_OPTIONS='{"outbox_limit": 4096}' tries other HttpHandler options (not for published runs).
    options = {"max_sessions": 30_000, **extra, **json.loads(os.environ.get("POLLSESSION_BENCH_OPTIONS") or "{}")}
    return HttpHandler(app, **options)


def tornado_pollsession() -> tuple[list[Any], Callable[[str], Any]]:
    """The default: sessions on the handler's own loop thread, reached from Tornado's loop."""
    from pollsession.adapters.tornado import route

    handler = pollsession_handler()

    async def broadcast(text: str) -> int:
        return int(await asyncio.wrap_future(handler.broadcast_threadsafe(text)))

    return [route(r"/poll", handler)], broadcast


def tornado_pollsession_running_loop() -> tuple[list[Any], Callable[[str], Any]]:
    """``use_running_loop=True``: the sessions run on Tornado's own loop, no thread hop."""
    from pollsession.adapters.tornado import route

    handler = pollsession_handler(use_running_loop=True)

    async def broadcast(text: str) -> int:
        return int(await handler.broadcast(text))  # on the handler's loop: Tornado's

    return [route(r"/poll", handler)], broadcast


def flask_pollsession(app: Any) -> Callable[[str], int]:
    from pollsession.adapters.flask import mount

    handler = pollsession_handler()
    mount(app, "/poll", handler)
    return lambda text: int(handler.broadcast_threadsafe(text).result())


# -- python-engineio ---------------------------------------------------------------


def tornado_engineio() -> tuple[list[Any], Callable[[str], Any]]:
    import engineio

    eio = engineio.AsyncServer(async_mode="tornado")

    async def message(sid: str, data: Any) -> None:
        for reply in replies(data):
            await eio.send(sid, reply)

    eio.on("message", message)

    async def broadcast(text: str) -> int:
        sids = list(eio.sockets)
        for sid in sids:
            await eio.send(sid, text)
        return len(sids)

    return [(r"/engine.io/", engineio.get_tornado_handler(eio))], broadcast


def flask_engineio(app: Any) -> Callable[[str], int]:
    import engineio

    eio = engineio.Server(async_mode="threading")

    def message(sid: str, data: Any) -> None:
        for reply in replies(data):
            eio.send(sid, reply)

    eio.on("message", message)

    app.wsgi_app = engineio.WSGIApp(eio, app.wsgi_app)

    def broadcast(text: str) -> int:
        sids = list(eio.sockets)
        for sid in sids:
            eio.send(sid, text)
        return len(sids)

    return broadcast


# -- PyWebIO (HTTP backend) ----------------------------------------------------------


def _pywebio_callback(data: Any) -> None:
    from pywebio.output import put_text

    for reply in replies(data):
        put_text(reply)


def tornado_pywebio() -> tuple[list[Any], Callable[[str], Any]]:
    from pywebio.output import put_text
    from pywebio.platform.tornado_http import webio_handler
    from pywebio.session import get_current_session

    subscribers: set[asyncio.Queue[str]] = set()

    async def app() -> None:
        # The client learns the callback id from the first output, then posts
        # {"event": "callback", "task_id": id, "data": text} to send a message.
        callback_id = get_current_session().register_callback(_pywebio_callback)
        put_text("cb:" + callback_id)
        inbox: asyncio.Queue[str] = asyncio.Queue()
        subscribers.add(inbox)
        try:
            while True:
                put_text(await inbox.get())
        finally:
            subscribers.discard(inbox)

    async def broadcast(text: str) -> int:
        targets = list(subscribers)
        for inbox in targets:
            inbox.put_nowait(text)
        return len(targets)

    return [(r"/pywebio", webio_handler(app, cdn=False))], broadcast


def flask_pywebio(app: Any) -> Callable[[str], int]:
    from pywebio.output import put_text
    from pywebio.platform.flask import webio_view
    from pywebio.session import get_current_session

    subscribers: set[queue.SimpleQueue[str]] = set()
    lock = threading.Lock()

    def session_main() -> None:
        callback_id = get_current_session().register_callback(_pywebio_callback)
        put_text("cb:" + callback_id)
        inbox: queue.SimpleQueue[str] = queue.SimpleQueue()
        with lock:
            subscribers.add(inbox)
        while True:
            put_text(inbox.get())

    app.add_url_rule("/pywebio", "webio_view", webio_view(session_main, cdn=False), methods=["GET", "POST", "OPTIONS"])

    def broadcast(text: str) -> int:
        with lock:
            targets = list(subscribers)
        for inbox in targets:
            inbox.put(text)
        return len(targets)

    return broadcast


# -- raw baseline -------------------------------------------------------------------
#
# Wire format: GET /raw opens a session and answers {"sid": id}. GET /raw?sid=ID
# answers at once with the JSON list of pending texts, or holds until there is one
# (25 s at most, then []). POST /raw?sid=ID carries one text as its body.


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class RawAsyncSession:
    __slots__ = ("out", "waiter")

    def __init__(self) -> None:
        self.out: list[str] = []
        self.waiter: asyncio.Future[None] | None = None

    def push(self, text: str) -> None:
        self.out.append(text)
        if self.waiter is not None:
            _resolve(self.waiter)


def tornado_raw() -> tuple[list[Any], Callable[[str], Any]]:
    import tornado.web

    sessions: dict[str, RawAsyncSession] = {}

    class RawHandler(tornado.web.RequestHandler):
        waiter: asyncio.Future[None] | None = None

        async def get(self) -> None:
            sid = self.get_query_argument("sid", None)
            if sid is None:
                sid = secrets.token_urlsafe(24)
                sessions[sid] = RawAsyncSession()
                self.finish({"sid": sid})
                return
            session = sessions[sid]
            if not session.out:
                loop = asyncio.get_running_loop()
                waiter = self.waiter = session.waiter = loop.create_future()
                timer = loop.call_later(25.0, _resolve, waiter)
                await waiter
                timer.cancel()
                if session.waiter is waiter:
                    session.waiter = None
                if self.request.connection.stream.closed():  # type: ignore[union-attr]
                    return  # the client went away; its texts wait for its next poll
            out, session.out = session.out, []
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(out))

        def on_connection_close(self) -> None:
            # Release a held poll at once when its client goes away (as Tornado's chat demo does).
            if self.waiter is not None:
                _resolve(self.waiter)

        def post(self) -> None:
            session = sessions[self.get_query_argument("sid")]
            text = self.request.body.decode()
            for reply in replies(text):
                session.push(reply)
            self.finish()

        def check_xsrf_cookie(self) -> None:
            return None

    async def broadcast(text: str) -> int:
        targets = list(sessions.values())
        for session in targets:
            session.push(text)
        return len(targets)

    return [(r"/raw", RawHandler)], broadcast


class RawThreadSession:
    __slots__ = ("out", "ready")

    def __init__(self) -> None:
        self.out: list[str] = []
        self.ready = threading.Condition()

    def push(self, text: str) -> None:
        with self.ready:
            self.out.append(text)
            self.ready.notify()


def flask_raw(app: Any) -> Callable[[str], int]:
    from flask import Response, request

    sessions: dict[str, RawThreadSession] = {}

    def get() -> Any:
        sid = request.args.get("sid")
        if sid is None:
            sid = secrets.token_urlsafe(24)
            sessions[sid] = RawThreadSession()
            return {"sid": sid}
        session = sessions[sid]
        with session.ready:
            if not session.out:
                session.ready.wait(25.0)
            out, session.out = session.out, []
        return Response(json.dumps(out), mimetype="application/json")

    def post() -> Any:
        session = sessions[request.args["sid"]]
        text = request.get_data(as_text=True)
        for reply in replies(text):
            session.push(reply)
        return ""

    app.add_url_rule("/raw", "raw_get", get, methods=["GET"])
    app.add_url_rule("/raw", "raw_post", post, methods=["POST"])

    def broadcast(text: str) -> int:
        targets = list(sessions.values())
        for session in targets:
            session.push(text)
        return len(targets)

    return broadcast


# -- serving ------------------------------------------------------------------------


def announce(port: int) -> None:
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)


def serve_tornado(system: str) -> None:
    import tornado.httpserver
    import tornado.netutil
    import tornado.web

    async def run() -> None:
        routes, broadcast = {
            "pollsession": tornado_pollsession,
            "pollsession-rl": tornado_pollsession_running_loop,
            "engineio": tornado_engineio,
            "pywebio": tornado_pywebio,
            "raw": tornado_raw,
        }[system]()

        class BroadcastHandler(tornado.web.RequestHandler):
            async def post(self) -> None:
                sent = await broadcast(self.request.body.decode())
                self.finish({"sent": sent})

            def check_xsrf_cookie(self) -> None:
                return None

        app = tornado.web.Application([*routes, (r"/bench/broadcast", BroadcastHandler)])
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1", family=socket.AF_INET, backlog=BACKLOG)
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets(sockets)
        announce(sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(run())


def serve_flask(system: str) -> None:
    from flask import Flask, request
    from werkzeug.serving import BaseWSGIServer, make_server

    app = Flask("bench")
    broadcast = {
        "pollsession": flask_pollsession,
        "engineio": flask_engineio,
        "pywebio": flask_pywebio,
        "raw": flask_raw,
    }[system](app)

    def broadcast_view() -> Any:
        return {"sent": broadcast(request.get_data(as_text=True))}

    app.add_url_rule("/bench/broadcast", "bench_broadcast", broadcast_view, methods=["POST"])
    BaseWSGIServer.request_queue_size = BACKLOG
    server = make_server("127.0.0.1", 0, app, threaded=True)
    announce(server.server_port)
    server.serve_forever()


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in FRAMEWORKS or argv[0] not in SUPPORTED[argv[1]]:
        sys.exit(f"usage: servers.py {{{','.join(SYSTEMS)}}} {{{','.join(FRAMEWORKS)}}} "
                 f"(flask: {', '.join(SUPPORTED['flask'])})")
    system, framework = argv
    raise_nofile()
    # No per-request logging anywhere (werkzeug logs every request at INFO).
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if framework == "tornado":
        serve_tornado(system)
    else:
        serve_flask(system)


if __name__ == "__main__":
    main(sys.argv[1:])

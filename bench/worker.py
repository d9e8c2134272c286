"""One Tornado worker of the many-workers benchmark (``bench/multi.py`` starts it under ``taskset``).

    python bench/worker.py                                  # one process, no backend
    python bench/worker.py --redis redis://... --name NAME  # a RedisBackend worker of deployment NAME

The application is the one of ``servers.py`` (echo, ``!burst:K``,
``POST /bench/broadcast``), with ``use_running_loop=True`` as in
``examples/redis_tornado.py``: the sessions, and the backend, run on
Tornado's loop. The only difference between the two modes is the backend.
It binds 127.0.0.1 on a free port and prints one JSON line
``{"port", "pid", "worker_id"}`` (``worker_id``: the backend's, the prefix
of every session id it opens; null without one) once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
from typing import Any

from servers import BACKLOG, raise_nofile, replies


def handler_and_id(redis_url: str | None, name: str) -> tuple[Any, str | None]:
    from pollsession import HttpHandler, Session

    async def app(session: Session) -> None:
        async for data in session:
            for reply in replies(data):
                await session.send(reply)

    options: dict[str, Any] = {"max_sessions": 30_000, "use_running_loop": True}
    if redis_url is None:
        return HttpHandler(app, **options), None
    from pollsession.backends.redis import RedisBackend

    backend = RedisBackend(redis_url, name=name)  # poll_timeout: the handler's default, 25 s
    return HttpHandler(app, backend=backend, **options), backend.worker_id


async def serve(redis_url: str | None, name: str) -> None:
    import tornado.httpserver
    import tornado.netutil
    import tornado.web

    from pollsession.adapters.tornado import route, server_options

    handler, worker_id = handler_and_id(redis_url, name)

    class BroadcastHandler(tornado.web.RequestHandler):
        async def post(self) -> None:
            # With a backend: through Redis to every worker; "sent" is then the number of workers reached.
            sent = await handler.broadcast(self.request.body.decode())
            self.finish({"sent": int(sent)})

        def check_xsrf_cookie(self) -> None:
            return None

    app = tornado.web.Application([route(r"/poll", handler), (r"/bench/broadcast", BroadcastHandler)])
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1", family=socket.AF_INET, backlog=BACKLOG)
    server = tornado.httpserver.HTTPServer(app, **server_options(handler))
    server.add_sockets(sockets)
    print(json.dumps({"port": sockets[0].getsockname()[1], "pid": os.getpid(), "worker_id": worker_id}), flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", help="redis-py URL; without it, no backend")
    parser.add_argument("--name", default="bench", help="the deployment's name (RedisBackend name)")
    args = parser.parse_args()
    raise_nofile()
    logging.basicConfig(level=logging.WARNING)
    # The benchmark stops its workers with SIGTERM, and Ctrl-C reaches them too: end at once, quietly.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: os._exit(0))
    asyncio.run(serve(args.redis, args.name))


if __name__ == "__main__":
    main()

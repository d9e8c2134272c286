"""Echo and a room-wide broadcast, in Tornado, as one of many processes sharing Redis.

Run one process per port, all with the same ``--redis`` and ``--name``, and
put a plain round-robin balancer in front (see the README's "Many workers, no
sticky sessions (Redis)"); any process answers any request:

    .venv/bin/python examples/redis_tornado.py --port 8001 --redis redis://127.0.0.1:6379/0
    .venv/bin/python examples/redis_tornado.py --port 8002 --redis redis://127.0.0.1:6379/0

Every message a client sends comes back to it, except ``{"broadcast": text}``,
which goes to every session on every process as ``{"broadcast": text}``.
"""

import argparse
import asyncio
import signal

import tornado.web

from pollsession import HttpHandler, Session
from pollsession.adapters.tornado import route, server_options
from pollsession.backends.redis import RedisBackend


def make_handler(redis_url: str, name: str, poll_timeout: float) -> tuple[HttpHandler, RedisBackend]:
    """This process's handler and its own backend (every worker of one deployment: the same URL and name)."""

    async def echo(session: Session) -> None:
        async for message in session:
            if isinstance(message, dict) and set(message) == {"broadcast"}:
                await handler.broadcast(message)  # to every session of every worker
            else:
                await session.send(message)

    # The backend must know the handler's poll_timeout: it bounds how long a forwarded poll is waited for.
    backend = RedisBackend(redis_url, name=name, poll_timeout=poll_timeout)
    handler = HttpHandler(echo, backend=backend, poll_timeout=poll_timeout, use_running_loop=True)
    return handler, backend


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="redis-py URL, the same for every process")
    parser.add_argument("--name", default="redis-tornado", help="the deployment's name, the same for every process")
    parser.add_argument("--poll-timeout", type=float, default=25.0, help="seconds a long poll is held")
    options = parser.parse_args()

    handler, backend = make_handler(options.redis, options.name, options.poll_timeout)
    app = tornado.web.Application([route(r"/poll", handler)])
    server = app.listen(options.port, "127.0.0.1", **server_options(handler))
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, or a process manager's stop
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    print(f"redis_tornado: worker {backend.worker_id} listening on http://127.0.0.1:{options.port}/poll", flush=True)
    await stop.wait()
    # As in tornado_chat.py: close while Tornado still answers, so this worker's
    # clients hear 1001 at once (through whichever worker their poll went).
    await handler.aclose()
    server.stop()
    await server.close_all_connections()


if __name__ == "__main__":
    asyncio.run(main())

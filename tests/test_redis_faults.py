"""10,000 messages each way through the fault-injecting proxy, nginx round robin and 3 workers on Redis.

The chain is ``Client -> FaultProxy -> nginx (round robin) -> 3 workers``: each
worker is an ``HttpHandler`` with its own ``RedisBackend`` on a real
redis-server, served by its own server (Tornado, and Flask's threaded
server) on its own port. The proxy resets requests, drops answers and cuts
them short; nginx spreads every request over the workers, so most reach a
worker that does not own the session and are forwarded through Redis. The
echo maps each message the owner's coroutine receives to one it sends back,
so an exact, ordered round trip means nothing was lost or doubled either way.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from pollsession import HttpHandler, Session
from pollsession.backends.redis import RedisBackend
from tests.nginx import start_nginx
from tests.test_client import ten_thousand_each_way
from tests.utils import MS, serve

WORKERS = 3
POLL = 5.0


async def echo(session: Session) -> None:
    async for message in session:
        await session.send(message)


@contextlib.contextmanager
def deployment(adapter: str, redis_url: str) -> Iterator[str]:
    """Three workers on one Redis behind nginx; yield nginx's base URL."""
    name = "faults-" + secrets.token_hex(4)
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(WORKERS):
            handler = HttpHandler(echo, backend=RedisBackend(redis_url, name=name, poll_timeout=POLL),
                                  poll_timeout=POLL, shutdown_timeout=1.0, inbox_limit=250, outbox_limit=250,
                                  retry_after=0)
            base = stack.enter_context(serve(adapter, handler))
            ports.append(int(base.rsplit(":", 1)[1]))
        balancer = start_nginx(ports)
        stack.callback(balancer.stop)
        yield balancer.url


@pytest.mark.parametrize("adapter", ["tornado", "flask"])
def test_ten_thousand_messages_each_way_through_faults_a_balancer_and_three_workers(
        adapter: str, redis_server: Any) -> None:
    with deployment(adapter, redis_server.url) as base:
        ten_thousand_each_way(base, timeout=20_000 * MS)

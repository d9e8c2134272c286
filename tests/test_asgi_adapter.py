"""What the ASGI adapter does beyond the conformance suite (which runs on it under uvicorn): plain calls."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from pollsession import HttpHandler, Session
from pollsession.adapters.asgi import PollSessionApp
from tests.fakes import FakeContext


async def idle(session: Session) -> None:
    await session.wait_closed()


def test_a_handler_on_its_own_thread_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="use_running_loop=True"):
        PollSessionApp(HttpHandler(idle))


def test_the_lifespan_shutdown_closes_the_handler() -> None:
    async def run() -> list[str]:
        handler = HttpHandler(idle, use_running_loop=True)
        app = PollSessionApp(handler, close_on_signals=False)
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        sent: list[str] = []

        async def send(message: Any) -> None:
            sent.append(message["type"])

        lifespan = asyncio.ensure_future(app({"type": "lifespan"}, inbox.get, send))
        await inbox.put({"type": "lifespan.startup"})
        opened = await handler.handle_request_async(FakeContext("GET"))
        assert opened.status == 200
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(lifespan, 10)
        # Closed: an open is refused, and the session's poll hears its 1001.
        assert (await handler.handle_request_async(FakeContext("GET"))).status == 503
        sid = json.loads(opened.body)["sid"]
        poll = await handler.handle_request_async(FakeContext("GET", query=[("ack", "0")],
                                                              headers={"Pollsession-Id": sid}))
        assert json.loads(poll.body)["closed"]["code"] == 1001
        return sent

    assert asyncio.run(run()) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]

"""A session's asyncio layer (``Session`` over its ``Channel``) driven by plain calls on a private event loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pollsession import BadRequest, PayloadTooLarge, Session, SessionClosed
from pollsession.protocol.http import Headers, RequestInfo
from pollsession import MessageType
from pollsession.protocol.delivery import Delivery
from pollsession.protocol.messages import Packed
from pollsession.server.channel import Channel
from pollsession.server.rooms import Rooms

REQUEST = RequestInfo("GET", "/poll", "http", Headers(), {}, None)


def run(body: Callable[[Session], Awaitable[Any]], **limits: int) -> Any:
    async def main() -> Any:
        delivery = Delivery(inbox_limit=limits.get("inbox", 4), outbox_limit=limits.get("outbox", 2),
                            max_message_size=1000, max_inbox_bytes=1 << 20, max_outbox_bytes=1 << 20)
        server_side = Channel("sid", delivery, Rooms())
        session = Session(server_side, REQUEST, max_message_size=1000)
        _CHANNELS[id(session)] = server_side
        return await body(session)

    return asyncio.run(main())


_CHANNELS: dict[int, Channel] = {}


def channel(session: Session) -> Channel:
    """The server's side of ``session``, which the registry drives."""
    return _CHANNELS[id(session)]


def accept(session: Session, batch: list[tuple[int, Packed]]) -> tuple[int, bool]:
    accepted = channel(session).accept(batch)
    return accepted.ack, accepted.complete


def msg(seq: int, value: Any) -> tuple[int, Packed]:
    if isinstance(value, str):
        return seq, Packed(MessageType.TEXT, value.encode())
    return seq, Packed(MessageType.JSON, json.dumps(value, separators=(",", ":")).encode())


def pending(session: Session) -> list[dict[str, Any]]:
    """The unacknowledged messages a poll answer would carry, decoded."""
    messages: list[dict[str, Any]] = json.loads(b"".join(channel(session).answer()))["messages"]
    return messages


def test_send_waits_for_acks_and_keeps_fifo_order() -> None:
    async def body(session: Session) -> list[Any]:
        await session.send("1")
        await session.send("2")
        third = asyncio.ensure_future(session.send("3"))
        fourth = asyncio.ensure_future(session.send("4"))
        await asyncio.sleep(0)
        assert not third.done() and not fourth.done()  # the outbox is full: backpressure
        channel(session).acknowledge(1)
        await third
        assert not fourth.done()
        channel(session).acknowledge(3)
        await fourth
        return [m["data"] for m in pending(session)]

    assert run(body) == ["4"]


def test_a_cancelled_sender_gives_its_room_to_the_next() -> None:
    async def body(session: Session) -> list[Any]:
        await session.send("1")
        await session.send("2")
        cancelled = asyncio.ensure_future(session.send("lost"))
        waiting = asyncio.ensure_future(session.send("3"))
        await asyncio.sleep(0)
        channel(session).acknowledge(1)  # room goes to "lost" first...
        cancelled.cancel()  # ...which gives it up before running
        await waiting
        return [m["data"] for m in pending(session)]

    assert run(body) == ["2", "3"]


def test_close_wakes_waiting_senders_and_readers() -> None:
    async def body(session: Session) -> tuple[int, int]:
        await session.send("1")
        await session.send("2")
        sender = asyncio.ensure_future(session.send("3"))
        reader = asyncio.ensure_future(session.receive())
        await asyncio.sleep(0)
        channel(session).end(1001, "bye")
        with pytest.raises(SessionClosed) as sent:
            await sender
        with pytest.raises(SessionClosed) as read:
            await reader
        return sent.value.code, read.value.code

    assert run(body) == (1001, 1001)


def test_inbox_takes_what_fits_and_reads_survive_the_close() -> None:
    async def body(session: Session) -> list[Any]:
        ack, complete = accept(session, [msg(1, "a"), msg(2, "b"), msg(3, "c")])
        assert (ack, complete) == (2, False)
        assert accept(session, [msg(2, "b"), msg(3, "c")]) == (2, False)
        assert await session.receive() == "a"
        assert accept(session, [msg(3, "c")]) == (3, True)
        channel(session).end(1000, "")
        received = [await session.receive(), await session.receive()]
        with pytest.raises(SessionClosed):
            await session.receive()
        return received

    assert run(body, inbox=2) == ["b", "c"]


def test_gap_wins_over_size_and_repeats_are_not_sized() -> None:
    async def body(session: Session) -> None:
        big = msg(1, "x" * 1001)[1]
        with pytest.raises(BadRequest):
            accept(session, [(2, big)])
        with pytest.raises(PayloadTooLarge):
            accept(session, [(1, big)])
        assert accept(session, [msg(1, "a")]) == (1, True)
        assert accept(session, [(1, big), msg(2, "b")]) == (2, True)  # seq 1 is a repeat: ignored

    run(body)


def test_receive_timeout_keeps_the_late_message() -> None:
    async def body(session: Session) -> Any:
        with pytest.raises(asyncio.TimeoutError):
            await session.receive(timeout=0)
        accept(session, [msg(1, {"late": True})])
        return await session.receive(timeout=0)

    assert run(body) == {"late": True}


def test_close_codes_are_checked() -> None:
    async def body(session: Session) -> None:
        with pytest.raises(ValueError):
            await session.close(1006)
        with pytest.raises(ValueError):
            await session.close(4000, "x" * 200)
        await session.close(4000, "done")
        await session.close(1000)  # idempotent: the first close stands
        assert (session.close_code, session.close_reason) == (4000, "done")
        with pytest.raises(SessionClosed):
            await session.send("after")

    run(body)

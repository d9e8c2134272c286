"""A session's delivery state driven by plain calls on a private event loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pollsession import BadRequest, PayloadTooLarge, Session, SessionClosed
from pollsession._context import Headers, RequestInfo
from pollsession import MessageType
from pollsession._messages import Packed

REQUEST = RequestInfo("GET", "/poll", "http", Headers(), {}, None)


def run(body: Callable[[Session], Awaitable[Any]], **limits: int) -> Any:
    async def main() -> Any:
        session = Session("sid", REQUEST, inbox_limit=limits.get("inbox", 4), outbox_limit=limits.get("outbox", 2),
                          max_message_size=1000)
        return await body(session)

    return asyncio.run(main())


def msg(seq: int, value: Any) -> tuple[int, Packed]:
    if isinstance(value, str):
        return seq, Packed(MessageType.TEXT, value.encode())
    return seq, Packed(MessageType.JSON, json.dumps(value, separators=(",", ":")).encode())


def pending(session: Session) -> list[dict[str, Any]]:
    """The unacknowledged messages a poll answer would carry, decoded."""
    messages: list[dict[str, Any]] = json.loads(b"".join([b"{", *session._answer_fields(), b"}"]))["messages"]
    return messages


def test_send_waits_for_acks_and_keeps_fifo_order() -> None:
    async def body(session: Session) -> list[Any]:
        await session.send("1")
        await session.send("2")
        third = asyncio.ensure_future(session.send("3"))
        fourth = asyncio.ensure_future(session.send("4"))
        await asyncio.sleep(0)
        assert not third.done() and not fourth.done()  # the outbox is full: backpressure
        session._acknowledge(1)
        await third
        assert not fourth.done()
        session._acknowledge(3)
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
        session._acknowledge(1)  # room goes to "lost" first...
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
        session._end(1001, "bye")
        with pytest.raises(SessionClosed) as sent:
            await sender
        with pytest.raises(SessionClosed) as read:
            await reader
        return sent.value.code, read.value.code

    assert run(body) == (1001, 1001)


def test_inbox_takes_what_fits_and_reads_survive_the_close() -> None:
    async def body(session: Session) -> list[Any]:
        ack, complete = session._accept([msg(1, "a"), msg(2, "b"), msg(3, "c")])
        assert (ack, complete) == (2, False)
        assert session._accept([msg(2, "b"), msg(3, "c")]) == (2, False)
        assert await session.receive() == "a"
        assert session._accept([msg(3, "c")]) == (3, True)
        session._end(1000, "")
        received = [await session.receive(), await session.receive()]
        with pytest.raises(SessionClosed):
            await session.receive()
        return received

    assert run(body, inbox=2) == ["b", "c"]


def test_gap_wins_over_size_and_repeats_are_not_sized() -> None:
    async def body(session: Session) -> None:
        big = msg(1, "x" * 1001)[1]
        with pytest.raises(BadRequest):
            session._accept([(2, big)])
        with pytest.raises(PayloadTooLarge):
            session._accept([(1, big)])
        assert session._accept([msg(1, "a")]) == (1, True)
        assert session._accept([(1, big), msg(2, "b")]) == (2, True)  # seq 1 is a repeat: ignored

    run(body)


def test_receive_timeout_keeps_the_late_message() -> None:
    async def body(session: Session) -> Any:
        with pytest.raises(asyncio.TimeoutError):
            await session.receive(timeout=0)
        session._accept([msg(1, {"late": True})])
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

"""Rooms, broadcast and class-based targets through the fake context."""

from __future__ import annotations

import concurrent.futures
from typing import Any

from pollsession import HttpHandler, Session, SessionHandler
from tests.fakes import body_of, call
from tests.test_handler import open_session, poll_now
from tests.utils import wait_until


async def member(session: Session) -> None:
    session.join(session.request.query["room"])
    async for data in session:
        if data == "leave":
            session.leave(session.request.query["room"])


def open_in(handler: HttpHandler, room: str) -> str:
    response = call(handler, query=[("room", room)])
    assert response.status == 200
    return str(body_of(response)["sid"])


def datas(handler: HttpHandler, sid: str) -> list[Any]:
    return [m["data"] for m in poll_now(handler, sid)["messages"]]


def test_broadcast_reaches_a_room_in_order_from_any_thread() -> None:
    with HttpHandler(member) as handler:
        red = [open_in(handler, "red") for _ in range(3)]
        blue = open_in(handler, "blue")
        wait_until(lambda: handler.submit(_room_size(handler, "red")).result() == 3, what="members to join")
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            counts = list(pool.map(
                lambda i: handler.broadcast_threadsafe(i, room="red", exclude=red[0]).result(), range(20)))
        assert counts == [2] * 20
        first, second = datas(handler, red[1]), datas(handler, red[2])
        assert sorted(first) == list(range(20)) and first == second
        assert datas(handler, red[0]) == [] and datas(handler, blue) == []
        assert handler.broadcast_threadsafe("all").result() == 4
        assert handler.session_count() == 4 and handler.get_session(blue) is not None


async def _room_size(handler: HttpHandler, room: str) -> int:
    return len(handler._registry.rooms.members(room))


def test_a_member_with_a_full_outbox_is_closed_with_1008_and_others_go_on() -> None:
    with HttpHandler(member, outbox_limit=2) as handler:
        slow, fast = open_in(handler, "r"), open_in(handler, "r")
        wait_until(lambda: handler.submit(_room_size(handler, "r")).result() == 2, what="members to join")
        for i in range(2):
            assert handler.broadcast_threadsafe(i, room="r").result() == 2
            poll_now(handler, fast, ack=i + 1)
        assert handler.broadcast_threadsafe(2, room="r").result() == 1
        answer = poll_now(handler, slow)
        assert answer["closed"] == {"code": 1008, "reason": "too slow for a broadcast"}
        assert [m["data"] for m in answer["messages"]] == [0, 1]
        assert datas(handler, fast) == [2]


class Echo(SessionHandler):
    decode = "text"

    async def on_connect(self) -> None:
        await self.send("hello")

    async def on_receive(self, data: Any) -> None:
        await self.send(f"{type(data).__name__}:{data}")
        if data == "bye":
            await self.close(4000, "done")

    async def on_disconnect(self, code: int) -> None:
        self.session.state.code = code


def test_class_target_decodes_as_asked_and_sees_its_close() -> None:
    with HttpHandler(Echo) as handler:
        sid = open_session(handler)
        call(handler, "POST", sid, messages=[
            {"seq": 1, "type": "binary", "data": "aGk="},
            {"seq": 2, "type": "json", "data": [1]},
            {"seq": 3, "type": "text", "data": "bye"},
        ])
        answer = wait_until(lambda: (lambda a: a if a["closed"] else None)(poll_now(handler, sid)), what="the close")
        assert [m["data"] for m in answer["messages"]] == ["hello", "str:hi", "str:[1]", "str:bye"]
        assert answer["closed"] == {"code": 4000, "reason": "done"}

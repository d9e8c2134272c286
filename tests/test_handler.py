"""The core through a fake context and a fake clock: no sockets, no sleeps."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from pollsession import HttpHandler, RequestInfo, Session, SessionClosed, Unauthorized
from tests.fakes import FakeClock, FakeContext, body_of, call
from tests.utils import MS, wait_until

NOW = [("wait", "0")]


def text(seq: int, data: str) -> dict[str, Any]:
    return {"seq": seq, "type": "text", "data": data}


async def echo(session: Session) -> None:
    async for data in session:
        await session.send(data)


def open_session(handler: HttpHandler, **headers: str) -> str:
    response = call(handler, headers=headers)
    assert response.status == 200, response.body
    sid = body_of(response)["sid"]
    assert ("Pollsession-Id", sid) in response.headers
    return str(sid)


def poll_now(handler: HttpHandler, sid: str, ack: int = 0) -> dict[str, Any]:
    response = call(handler, sid=sid, query=[("ack", str(ack)), *NOW])
    assert response.status == 200, response.body
    return body_of(response)  # type: ignore[no-any-return]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def handler(clock: FakeClock):  # type: ignore[no-untyped-def]
    h = HttpHandler(echo, clock=clock, session_timeout=30, cleanup_interval=3600, shutdown_timeout=1)
    yield h
    h.close()


def test_open_answer_states_limits(handler: HttpHandler) -> None:
    response = call(handler)
    document = body_of(response)
    assert document == {
        "version": 1, "sid": document["sid"], "poll_timeout": 25.0, "session_timeout": 30.0,
        "inbox_limit": 64, "max_message_size": 1 << 20, "max_body_size": 4 << 20, "messages": [], "closed": None,
    }
    assert len(document["sid"]) >= 22 and document["sid"].replace("-", "").replace("_", "").isalnum()
    assert ("Content-Type", "application/json") in response.headers


def test_echo_round_trip_with_resend_until_acked(handler: HttpHandler) -> None:
    sid = open_session(handler)
    assert body_of(call(handler, "POST", sid, messages=[text(1, "a"), text(2, "b")])) == {"ack": 2}
    wait_until(lambda: len(poll_now(handler, sid)["messages"]) == 2, what="both echoes")
    # The answer was "lost": the same ack gets the same messages again.
    assert [m["data"] for m in poll_now(handler, sid)["messages"]] == ["a", "b"]
    assert poll_now(handler, sid, ack=1)["messages"] == [{"seq": 2, "type": "text", "data": "b"}]
    # A lower ack than one already received counts as the higher one.
    assert poll_now(handler, sid, ack=0)["messages"] == [{"seq": 2, "type": "text", "data": "b"}]


def test_retried_post_is_not_delivered_twice(handler: HttpHandler) -> None:
    sid = open_session(handler)
    batch = [text(1, "once")]
    assert body_of(call(handler, "POST", sid, messages=batch)) == {"ack": 1}
    assert body_of(call(handler, "POST", sid, messages=batch)) == {"ack": 1}
    assert body_of(call(handler, "POST", sid, messages=[text(1, "once"), text(2, "two")])) == {"ack": 2}
    wait_until(lambda: len(poll_now(handler, sid)["messages"]) == 2, what="two echoes")
    assert [m["data"] for m in poll_now(handler, sid)["messages"]] == ["once", "two"]


def test_gap_is_refused_and_changes_nothing(handler: HttpHandler) -> None:
    sid = open_session(handler)
    response = call(handler, "POST", sid, messages=[text(2, "gap")])
    assert response.status == 400 and body_of(response)["error"] == "seq_gap"
    assert body_of(call(handler, "POST", sid, messages=[])) == {"ack": 0}


def test_ack_beyond_last_sent_is_refused(handler: HttpHandler) -> None:
    sid = open_session(handler)
    response = call(handler, sid=sid, query=[("ack", "1"), *NOW])
    assert response.status == 400 and body_of(response)["error"] == "bad_ack"


def test_unknown_session_wins_over_a_bad_body(handler: HttpHandler) -> None:
    response = handler.handle_request(
        FakeContext("POST", headers={"Pollsession-Id": "nope", "Content-Type": "text/plain"}, body=b"x")
    )
    assert response.status == 410
    assert call(handler, sid="nope", query=[("ack", "01")]).status == 410


def test_idle_session_expires_by_the_clock_and_its_coroutine_sees_1001(clock: FakeClock) -> None:
    seen: list[int] = []

    async def target(session: Session) -> None:
        try:
            await session.receive()
        except SessionClosed as closed:
            seen.append(closed.code)

    with HttpHandler(target, clock=clock, session_timeout=30, cleanup_interval=3600) as handler:
        idle, busy = open_session(handler), open_session(handler)
        clock.advance(20)
        poll_now(handler, busy)
        clock.advance(15)
        assert handler.expire_idle_sessions() == [idle]
        assert call(handler, sid=idle, query=NOW).status == 410
        assert poll_now(handler, busy)["closed"] is None
        wait_until(lambda: seen == [1001], what="the coroutine to see 1001")


def test_a_held_poll_keeps_its_session_alive(clock: FakeClock) -> None:
    with HttpHandler(echo, clock=clock, session_timeout=30, cleanup_interval=3600, poll_timeout=60) as handler:
        sid = open_session(handler)
        answer: list[Any] = []
        poller = threading.Thread(target=lambda: answer.append(call(handler, sid=sid)))
        poller.start()
        wait_until(lambda: handler.submit(_holds_poll(handler, sid)).result(), what="the poll to be held")
        clock.advance(1000)
        assert handler.expire_idle_sessions() == []
        call(handler, "POST", sid, messages=[text(1, "wake")])
        poller.join(5)
        assert body_of(answer[0])["messages"][0]["data"] == "wake"


async def _holds_poll(handler: HttpHandler, sid: str) -> bool:
    channel = handler._registry.channel(sid)
    return channel is not None and channel.delivery.holds_poll


def test_auth_hook_sees_the_request_and_attaches_an_identity() -> None:
    seen: list[RequestInfo] = []
    identities: list[Any] = []

    def authenticate(request: RequestInfo) -> Any:
        seen.append(request)
        if request.query.get("token") != "secret":
            raise Unauthorized("bad token")
        return {"user": "ada"}

    async def target(session: Session) -> None:
        identities.append((session.identity, session.request.cookies, session.request.user_agent))

    with HttpHandler(target, authenticate=authenticate) as handler:
        refused = handler.handle_request(FakeContext(query=[("token", "wrong")]))
        assert refused.status == 401
        assert body_of(refused) == {"error": "unauthorized", "message": "bad token"}
        accepted = handler.handle_request(FakeContext(
            query=[("token", "secret")], headers={"Cookie": "a=1; b=2", "User-Agent": "ua/1"}, client="10.0.0.9",
        ))
        assert accepted.status == 200
        wait_until(lambda: identities, what="the coroutine to start")
    assert identities == [({"user": "ada"}, {"a": "1", "b": "2"}, "ua/1")]
    assert seen[1].client_address == "10.0.0.9" and seen[1].headers["cookie"] == "a=1; b=2"


def test_async_auth_hook_can_refuse_with_false() -> None:
    async def authenticate(request: RequestInfo) -> Any:
        await asyncio.sleep(0)
        return request.headers.get("x-key") == "k" or False

    with HttpHandler(echo, authenticate=authenticate) as handler:
        assert call(handler).status == 403
        assert call(handler, headers={"X-Key": "k"}).status == 200


def test_coroutine_that_raises_is_logged_and_closes_with_1011(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(session: Session) -> None:
        raise ZeroDivisionError("boom")

    with HttpHandler(broken) as handler:
        document = body_of(call(handler))
        assert document["closed"] == {"code": 1011, "reason": ""}
    assert any("raised" in r.message and r.exc_info for r in caplog.records if r.levelno == logging.ERROR)


def test_greeting_rides_on_the_open_answer() -> None:
    async def greet(session: Session) -> None:
        await session.send("welcome")
        await session.receive()

    with HttpHandler(greet) as handler:
        assert body_of(call(handler))["messages"] == [{"seq": 1, "type": "text", "data": "welcome"}]


def test_max_sessions_answers_503_with_retry_after() -> None:
    with HttpHandler(echo, max_sessions=1, retry_after=2) as handler:
        open_session(handler)
        refused = call(handler)
        assert refused.status == 503 and ("Retry-After", "2") in refused.headers


def test_close_is_idempotent_and_leaves_no_thread() -> None:
    closed: list[int] = []

    async def target(session: Session) -> None:
        try:
            await session.receive()
        except SessionClosed as exc:
            closed.append(exc.code)

    before = set(threading.enumerate())
    handler = HttpHandler(target, poll_timeout=60)
    sid = open_session(handler)
    answers: list[Any] = []
    poller = threading.Thread(target=lambda: answers.append(call(handler, sid=sid)))
    poller.start()
    wait_until(lambda: handler.submit(_holds_poll(handler, sid)).result(), what="the poll to be held")
    handler.close()
    handler.close()
    poller.join(5)
    assert closed == [1001]
    assert body_of(answers[0])["closed"]["code"] == 1001
    assert set(threading.enumerate()) <= before
    assert call(handler).status == 503


def test_close_cancels_a_coroutine_that_ignores_the_session() -> None:
    cancelled = threading.Event()

    async def stubborn(session: Session) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    handler = HttpHandler(stubborn, shutdown_timeout=50 * MS)
    open_session(handler)
    handler.close()
    assert cancelled.is_set()


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="poll_timeout"):
        HttpHandler(echo, poll_timeout=0)
    with pytest.raises(ValueError, match="inbox_limit"):
        HttpHandler(echo, inbox_limit=0)
    with pytest.raises(TypeError, match="allowed_origins"):
        HttpHandler(echo, allowed_origins="https://a.example")


def test_a_forgotten_session_reports_its_close_in_the_410_for_a_while(clock: FakeClock) -> None:
    async def bye(session: Session) -> None:
        await session.close(4001, "bye")

    with HttpHandler(bye, clock=clock, session_timeout=30, cleanup_interval=3600) as handler:
        sid = open_session(handler)  # the open answer already carries the close
        assert body_of(call(handler, "POST", sid, messages=[])) == {
            "error": "session_closed", "message": "the session is closed", "closed": {"code": 4001, "reason": "bye"}}
        poll_now(handler, sid)  # the final poll: the server forgets the session
        gone = call(handler, sid=sid, query=NOW)
        assert gone.status == 410 and body_of(gone)["closed"] == {"code": 4001, "reason": "bye"}
        assert "closed" not in body_of(call(handler, sid=sid, query=NOW, path="/elsewhere"))
        assert "closed" not in body_of(call(handler, sid="never-was", query=NOW))
        clock.advance(31)
        handler.expire_idle_sessions()
        assert "closed" not in body_of(call(handler, sid=sid, query=NOW))


def test_deleted_and_expired_sessions_report_1000_and_1001(handler: HttpHandler, clock: FakeClock) -> None:
    deleted, expired = open_session(handler), open_session(handler)
    assert call(handler, "DELETE", deleted).status == 204
    assert body_of(call(handler, sid=deleted, query=NOW))["closed"] == {"code": 1000, "reason": ""}
    clock.advance(31)
    handler.expire_idle_sessions()
    assert body_of(call(handler, sid=expired, query=NOW))["closed"] == {"code": 1001, "reason": "session expired"}


def test_remembered_ends_are_bounded_by_max_sessions(clock: FakeClock) -> None:
    with HttpHandler(echo, clock=clock, max_sessions=2) as handler:
        sids = [open_session(handler) for _ in range(2)]
        for sid in sids:
            call(handler, "DELETE", sid)
        third = open_session(handler)
        call(handler, "DELETE", third)
        assert "closed" not in body_of(call(handler, sid=sids[0], query=NOW))  # the oldest was dropped
        assert "closed" in body_of(call(handler, sid=third, query=NOW))


def test_use_running_loop_serves_on_the_callers_loop_and_closes_there() -> None:
    async def main() -> None:
        handler = HttpHandler(echo, use_running_loop=True)
        opened = await handler.handle_request_async(FakeContext())
        sid = body_of(opened)["sid"]
        assert handler.loop is asyncio.get_running_loop()
        assert threading.active_count() == before  # no thread of its own
        held = asyncio.ensure_future(handler.handle_request_async(FakeContext(headers={"Pollsession-Id": sid})))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="aclose"):
            handler.close()
        await handler.aclose()
        assert body_of(await held)["closed"]["code"] == 1001
        await handler.aclose()  # idempotent
        assert not asyncio.get_running_loop().is_closed()

    before = threading.active_count()
    asyncio.run(main())


def test_use_running_loop_needs_a_loop_at_first_use() -> None:
    handler = HttpHandler(echo, use_running_loop=True)
    with pytest.raises(RuntimeError, match="running event loop"):
        handler.submit(asyncio.sleep(0))

"""Self-protection of the core, through a fake context and a fake clock: no sockets.

Cross-site opens refused by Fetch Metadata, allowed hosts, per-client session
caps and open rates, early expiry of unused opens, byte bounds on the inbox
and outbox, the bound on threads held by polls, and answers after close().
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

import pytest

from pollsession import HttpHandler, RequestInfo, Session
from pollsession.protocol.limits import ClientLimits
from tests.fakes import FakeClock, FakeContext, body_of, call
from tests.utils import MS, wait_until

NOW = [("wait", "0")]


async def echo(session: Session) -> None:
    async for data in session:
        await session.send(data)


async def idle(session: Session) -> None:
    await session.wait_closed()


def opened(response: Any) -> str:
    assert response.status == 200, response.body
    return str(body_of(response)["sid"])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(target: Any = echo, **options: Any) -> HttpHandler:
    options.setdefault("cleanup_interval", 3600)
    options.setdefault("shutdown_timeout", 1)
    return HttpHandler(target, **options)


# -- Fetch Metadata: no cross-site opens with the user's cookies -------------

CROSS_SITE_NO_CORS = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image",
                      "Cookie": "session=victim"}


@pytest.mark.parametrize("metadata", [
    CROSS_SITE_NO_CORS,
    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"},
    {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "script"},
    {"Sec-Fetch-Site": "Cross-Site", "Sec-Fetch-Mode": "cors"},  # cors, but no Origin: not a CORS request
])
def test_a_cross_site_request_that_is_not_cors_opens_nothing(metadata: dict[str, str]) -> None:
    seen: list[RequestInfo] = []
    with make(authenticate=seen.append) as handler:
        response = call(handler, headers=metadata)
        assert response.status == 403
        assert body_of(response)["error"] == "cross_site_request"
        assert seen == [] and handler.session_count() == 0


def test_fetch_metadata_refuses_every_method_not_only_opens() -> None:
    with make() as handler:
        sid = opened(call(handler))
        cross = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
        assert call(handler, "POST", sid, messages=[{"seq": 1, "type": "text", "data": "x"}],
                    headers=cross).status == 403
        assert call(handler, "DELETE", sid, headers=cross).status == 403
        assert call(handler, sid=sid, query=NOW).status == 200  # the session is untouched


@pytest.mark.parametrize("metadata", [
    {},  # no Fetch Metadata: an older browser or a script, judged by Origin alone
    {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"},
    {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"},  # typed into the address bar
])
def test_same_origin_and_plain_requests_still_open(metadata: dict[str, str]) -> None:
    with make() as handler:
        opened(call(handler, headers=metadata))


def test_a_cors_request_from_an_allowed_origin_opens() -> None:
    with make(allowed_origins=["https://app.example.com"]) as handler:
        headers = {"Origin": "https://app.example.com", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}
        response = call(handler, headers=headers)
        opened(response)
        assert ("Access-Control-Allow-Origin", "https://app.example.com") in response.headers
        disallowed = {**headers, "Origin": "https://evil.test"}
        assert call(handler, headers=disallowed).status == 403


def test_the_probe_answers_whatever_the_metadata() -> None:
    with make() as handler:
        response = call(handler, query=[("test", "1")], headers=CROSS_SITE_NO_CORS)
        assert (response.status, response.body) == (200, b"ok")


# -- allowed_hosts: DNS rebinding ----------------------------------------------

def test_a_rebound_host_is_refused_with_allowed_hosts() -> None:
    rebound = {"Host": "evil.test", "Origin": "http://evil.test"}
    with make() as handler:
        opened(call(handler, headers=rebound))  # without allowed_hosts, Host decides same-origin
    with make(allowed_hosts=["app.example.com", "*.example.org"]) as handler:
        response = call(handler, headers=rebound)
        assert response.status == 400 and body_of(response)["error"] == "host_not_allowed"
        assert handler.session_count() == 0
        opened(call(handler, headers={"Host": "app.example.com:8443"}))
        opened(call(handler, headers={"Host": "eu.example.org"}))
        assert call(handler, headers={"Host": "example.org"}).status == 400
        assert call(handler, query=[("test", "1")], headers=rebound).status == 200  # the probe still answers


def test_allowed_hosts_must_be_a_list() -> None:
    with pytest.raises(TypeError):
        HttpHandler(echo, allowed_hosts="example.com")


# -- per-client caps and open rates ----------------------------------------------

def test_one_client_cannot_take_every_slot(clock: FakeClock) -> None:
    with make(max_sessions_per_client=2, clock=clock) as handler:
        first = opened(call(handler))
        opened(call(handler))
        refused = call(handler)
        assert refused.status == 503 and body_of(refused)["error"] == "too_many_client_sessions"
        assert ("Retry-After", "1") in refused.headers
        other = handler.handle_request(FakeContext(client="10.0.0.2"))
        opened(other)  # another address is another client
        assert call(handler, "DELETE", first).status == 204
        opened(call(handler))  # a slot was given back


def test_a_client_key_names_clients_behind_a_proxy() -> None:
    def key(request: RequestInfo) -> str | None:
        return request.headers.get("X-Forwarded-For")

    with make(max_sessions_per_client=1, client_key=key) as handler:
        opened(call(handler, headers={"X-Forwarded-For": "198.51.100.7"}))
        assert call(handler, headers={"X-Forwarded-For": "198.51.100.7"}).status == 503
        opened(call(handler, headers={"X-Forwarded-For": "198.51.100.8"}))
        opened(call(handler))  # no key: not limited
        opened(call(handler))


def test_opens_are_rate_limited_per_client(clock: FakeClock) -> None:
    with make(open_rate_limit=(3, 30.0), clock=clock) as handler:
        for _ in range(3):
            opened(call(handler))
        refused = call(handler)
        assert refused.status == 503 and body_of(refused)["error"] == "open_rate_limited"
        assert ("Retry-After", "10") in refused.headers  # one open comes back every 10 s
        clock.advance(10)
        opened(call(handler))
        assert call(handler).status == 503


def test_expired_sessions_give_their_client_slot_back(clock: FakeClock) -> None:
    with make(max_sessions_per_client=1, session_timeout=30, clock=clock) as handler:
        opened(call(handler))
        assert call(handler).status == 503
        clock.advance(31)
        assert len(handler.expire_idle_sessions()) == 1
        opened(call(handler))


def test_rate_buckets_are_forgotten_once_full_again() -> None:
    limits = ClientLimits(max_sessions=None, rate=(2, 10.0), retry_after=1)
    for index in range(1000):
        limits.check(f"client-{index}", 0.0)
        limits.opened(f"client-{index}", 0.0)
    assert limits.tracked_buckets() == 1000
    limits.check("late", 10.0)  # every bucket has refilled: all are dropped, oldest first
    assert limits.tracked_buckets() == 0


def test_limit_options_are_checked() -> None:
    for bad in [{"max_sessions_per_client": 0}, {"open_rate_limit": (0, 1.0)}, {"open_rate_limit": (1, 0)},
                {"open_rate_limit": 5}, {"open_timeout": 0}, {"max_held_polls": -1}, {"max_inbox_bytes": 0}]:
        with pytest.raises(ValueError):
            HttpHandler(echo, **bad)


# -- an unused open expires sooner ---------------------------------------------

def test_a_session_never_used_after_its_open_expires_after_open_timeout(clock: FakeClock) -> None:
    with make(session_timeout=60, open_timeout=5, clock=clock) as handler:
        unused = opened(call(handler))
        used = opened(call(handler))
        assert call(handler, sid=used, query=NOW).status == 200
        clock.advance(6)
        assert handler.expire_idle_sessions() == [unused]
        assert call(handler, sid=unused, query=NOW).status == 410
        clock.advance(50)
        assert handler.expire_idle_sessions() == []
        assert call(handler, sid=used, query=NOW).status == 200


def test_without_open_timeout_an_unused_open_lives_session_timeout(clock: FakeClock) -> None:
    with make(session_timeout=60, clock=clock) as handler:
        sid = opened(call(handler))
        clock.advance(59)
        assert handler.expire_idle_sessions() == []
        clock.advance(2)
        assert handler.expire_idle_sessions() == [sid]


# -- bytes, not only messages ------------------------------------------------------

def dense(size: int) -> Any:
    """The densest JSON for its size: many tiny objects (about 30x its size as Python objects)."""
    return [{"": {}}] * (size // 8)


def test_the_inbox_is_bounded_in_bytes() -> None:
    async def never_reads(session: Session) -> None:
        await session.wait_closed()

    with make(never_reads, inbox_limit=64, max_inbox_bytes=20_000, max_message_size=10_000) as handler:
        sid = opened(call(handler))
        batch = [{"seq": seq, "type": "json", "data": dense(8_000)} for seq in range(1, 5)]
        response = call(handler, "POST", sid, messages=batch)
        assert response.status == 429
        assert body_of(response)["ack"] == 2  # two messages of 8,000 bytes fit 20,000; the third does not
        assert handler.get_session(sid) is not None


def test_send_waits_for_room_in_bytes_and_a_poll_answer_is_bounded() -> None:
    sent: list[int] = []

    async def flood(session: Session) -> None:
        for index in range(20):
            await session.send("x" * 1000)
            sent.append(index)

    with make(flood, outbox_limit=1000, max_outbox_bytes=5_000) as handler:
        sid = opened(call(handler))
        wait_until(lambda: len(sent) >= 4, what="the first sends")
        first = call(handler, sid=sid, query=NOW)
        assert len(first.body) < 5_000 + 200
        messages = body_of(first)["messages"]
        assert len(messages) == len(sent) == 4  # 4 fragments of ~1,025 bytes fit 5,000; the fifth waits
        ack = messages[-1]["seq"]
        wait_until(lambda: len(body_of(call(handler, sid=sid, query=[("ack", str(ack)), *NOW]))["messages"]) == 4,
                   what="room given back by the ack")
        assert len(sent) == 8


def test_one_message_larger_than_the_outbox_bound_still_goes() -> None:
    async def big(session: Session) -> None:
        await session.send(b"\xff" * 3000)  # 4,000 bytes of base64 on the wire
        await session.wait_closed()

    with make(big, max_outbox_bytes=1000) as handler:
        sid = opened(call(handler))
        answer = body_of(call(handler, sid=sid, query=NOW))
        assert [m["seq"] for m in answer["messages"]] == [1]


def test_a_repeated_poll_of_the_same_data_gets_the_same_bytes() -> None:
    async def greet(session: Session) -> None:
        await session.send(dense(60_000))
        await session.wait_closed()

    with make(greet) as handler:
        sid = opened(call(handler))
        session = handler.get_session(sid)
        assert session is not None
        bodies = [call(handler, sid=sid, query=[("ack", "0"), *NOW]).body for _ in range(3)]
        assert bodies[0] == bodies[1] == bodies[2]
        assert json.loads(bodies[0])["messages"][0]["data"] == dense(60_000)


# -- threads held by polls (Flask, WSGI) -----------------------------------------

def test_polls_past_max_held_polls_are_answered_at_once(caplog: pytest.LogCaptureFixture) -> None:
    with make(idle, max_held_polls=1, poll_timeout=30) as handler:
        holder, other = opened(call(handler)), opened(call(handler))
        results: list[int] = []
        thread = threading.Thread(target=lambda: results.append(call(handler, sid=holder).status), daemon=True)
        thread.start()
        wait_until(lambda: handler.submit(_holds_poll(handler, holder)).result(), what="a held poll")
        with caplog.at_level(logging.WARNING, logger="pollsession"):
            for _ in range(3):
                answer = call(handler, sid=other)  # would hold 30 s: answered at once instead
                assert answer.status == 200 and body_of(answer) == {"messages": [], "closed": None}
        warnings = [r for r in caplog.records if "max_held_polls" in r.getMessage()]
        assert len(warnings) == 1  # once, not once per poll
        assert call(handler, "DELETE", holder).status == 204
        thread.join(5000 * MS)
        assert results == [200]
        opened(call(handler))  # opens were never starved


def test_async_callers_are_not_bounded_by_max_held_polls() -> None:
    async def main(handler: HttpHandler) -> list[float]:
        sids = [opened(await handler.handle_request_async(FakeContext())) for _ in range(3)]
        polls = [asyncio.ensure_future(handler.handle_request_async(
            FakeContext(headers={"Pollsession-Id": sid}, query=[("wait", str(300 * MS))]))) for sid in sids]
        done, pending = await asyncio.wait(polls, timeout=100 * MS)
        assert not done  # all three are held, though max_held_polls is 1
        await asyncio.wait(pending)
        return []

    with make(idle, max_held_polls=1) as handler:
        asyncio.run(main(handler))


# -- wait_closed, and after close() ------------------------------------------------

def test_wait_closed_returns_at_the_close_without_reading() -> None:
    ended: list[int | None] = []

    async def pusher(session: Session) -> None:
        await session.send("hello")
        await session.wait_closed()
        ended.append(session.close_code)
        await session.wait_closed()  # already closed: returns at once

    with make(pusher) as handler:
        sid = opened(call(handler))
        assert call(handler, "POST", sid, messages=[{"seq": 1, "type": "text", "data": "unread"}]).status == 200
        assert call(handler, "DELETE", sid).status == 204
        wait_until(lambda: ended == [1000], what="the target to see the close")


def test_after_close_a_client_learns_its_close_at_once_and_quietly() -> None:
    handler = make(idle)
    sid = opened(call(handler))
    handler.close()
    poll = call(handler, sid=sid, query=[("ack", "0")])
    assert poll.status == 200
    assert body_of(poll) == {"messages": [], "closed": {"code": 1001, "reason": "server shutting down"}}
    push = call(handler, "POST", sid, messages=[{"seq": 1, "type": "text", "data": "x"}])
    assert push.status == 410 and body_of(push)["closed"]["code"] == 1001
    assert call(handler, "DELETE", sid).status == 204
    refused = call(handler)
    assert refused.status == 503 and body_of(refused)["error"] == "shutting_down"
    assert call(handler, sid=sid, query=NOW, path="/other").status == 503  # its close belongs to its own path


def test_a_poll_while_the_close_waits_for_targets_gets_the_close_not_a_503() -> None:
    # close() waits up to shutdown_timeout for the targets to return; before, a poll in
    # that window got 503s (the final closes were known only after the wait), so a
    # client retried and could end with 1006 instead of 1001.
    release = threading.Event()

    async def slow_to_finish(session: Session) -> None:
        await session.wait_closed()
        await asyncio.to_thread(release.wait, 10)

    handler = make(slow_to_finish, shutdown_timeout=10)
    sid = opened(call(handler))
    closing = threading.Thread(target=handler.close)
    closing.start()
    try:
        wait_until(lambda: call(handler).status == 503, what="opens to be refused once the close began")
        poll = call(handler, sid=sid, query=[("ack", "0"), ("wait", "0")])
        assert poll.status == 200, poll.body
        assert body_of(poll)["closed"] == {"code": 1001, "reason": "server shutting down"}
        assert closing.is_alive()  # the answer came during the wait, not after it
    finally:
        release.set()
        closing.join(15)
    assert not closing.is_alive()


def test_telling_a_client_the_close_of_its_ended_session_is_routine() -> None:
    handler = make(idle)
    try:
        sid = opened(call(handler))
        assert call(handler, "DELETE", sid).status == 204
        told = call(handler, sid=sid, query=NOW)  # the poll that raced the unload DELETE
        assert told.status == 410 and body_of(told)["closed"]["code"] == 1000
        assert told.routine  # adapters log it as a success
        unknown = call(handler, sid="x" * 32, query=NOW)
        assert unknown.status == 410 and not unknown.routine  # an id nobody knows stays a refusal
    finally:
        handler.close()


# -- logs name sessions by a tag, never by their id ---------------------------------

def test_logs_carry_a_tag_not_the_session_id(caplog: pytest.LogCaptureFixture) -> None:
    async def fails(session: Session) -> None:
        raise RuntimeError("boom")

    with make(fails) as handler, caplog.at_level(logging.ERROR, logger="pollsession"):
        sid = opened(call(handler))
        wait_until(lambda: any("raised" in r.getMessage() for r in caplog.records), what="the error log")
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert sid[:6] not in text
    from pollsession.server.session import session_tag
    assert session_tag(sid) in text and len(session_tag(sid)) == 10


async def _holds_poll(handler: HttpHandler, sid: str) -> bool:
    channel = handler._registry.channel(sid)
    return channel is not None and channel.delivery.holds_poll

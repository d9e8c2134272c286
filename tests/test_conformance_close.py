"""Conformance with PROTOCOL.md, section 6: closing, forgetting, expiry, shutdown.

See ``test_conformance.py`` for the layout of the suite. Expiry tests run
their own server with a session_timeout of a few hundred ``MS`` and wait on
the coroutine's own signal that it saw the disconnect.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from tests.test_conformance_support import (
    SHARED_CONFIG,
    TIMEOUT,
    ConformanceServer,
    assert_error,
    make_server,
    server,
    server_fixture,
    text,
)
from tests.utils import MS, wait_until

__all__ = ["expiry_server", "make_server", "server"]  # fixtures, for pytest

AT_ONCE = SHARED_CONFIG["poll_timeout"] / 2
NORMAL = {"code": 1000, "reason": ""}


def _wire(*texts: str, first: int = 1) -> list[dict[str, Any]]:
    return [{"seq": seq, "type": "text", "data": item} for seq, item in enumerate(texts, first)]


def _close_code(server: ConformanceServer, sid: str) -> int | None:
    """The close code the session's coroutine saw, once it has ended."""
    close = server.wait_ended(sid)
    return None if close is None else close[0]


def _is_forgotten(server: ConformanceServer, sid: str) -> None:
    assert_error(server.poll(sid, 0, wait=0), 410)
    assert_error(server.push(sid, [text(1, "x")]), 410)
    assert server.delete(sid).status_code == 204


# -- the client closes ------------------------------------------------------------------------------


def test_delete_closes_with_1000_answers_the_held_poll_and_forgets(server: ConformanceServer) -> None:
    sid, _ = server.open()
    held = server.in_background(server.poll_ok, sid, 0)
    server.wait_held(sid)
    response = server.delete(sid)
    assert response.status_code == 204
    assert held.result(AT_ONCE) == {"messages": [], "closed": NORMAL}
    assert server.wait_ended(sid) == (1000, "")
    _is_forgotten(server, sid)


@pytest.mark.parametrize("sid", [None, "", "no-such-session"], ids=["no-id", "empty-id", "unknown-id"])
def test_delete_without_a_live_session_answers_204(server: ConformanceServer, sid: str | None) -> None:
    assert server.delete(sid).status_code == 204


def test_delete_is_harmless_to_retry(server: ConformanceServer) -> None:
    sid, _ = server.open()
    assert [server.delete(sid).status_code for _ in range(3)] == [204, 204, 204]
    assert server.wait_ended(sid) == (1000, "")


# -- the server closes ------------------------------------------------------------------------------


def _until_closed(server: ConformanceServer, sid: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Poll (acking as we go) until an answer carries ``closed``; return all messages and it."""
    messages: list[dict[str, Any]] = []
    while True:
        document = server.poll_ok(sid, len(messages))
        messages.extend(document["messages"])
        if document["closed"] is not None:
            return messages, document["closed"]


def test_returning_closes_with_1000_after_delivering_what_was_sent(server: ConformanceServer) -> None:
    sid, _ = server.open("return")
    assert _until_closed(server, sid) == (_wire("bye"), NORMAL)
    assert server.poll_ok(sid, 1) == {"messages": [], "closed": NORMAL}
    _is_forgotten(server, sid)


def test_raising_closes_with_1011_and_is_logged(server: ConformanceServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="pollsession"):
        sid, _ = server.open("raise")
        messages, closed = _until_closed(server, sid)
    assert messages == _wire("boom")
    assert closed["code"] == 1011 and isinstance(closed["reason"], str)
    raised = [
        record.exc_info[1]
        for record in caplog.records
        if record.name.startswith("pollsession") and record.exc_info and record.exc_info[1] is not None
    ]
    assert any("conformance app raised on purpose" in str(error) for error in raised), caplog.text


def test_closing_with_a_code_and_reason_puts_them_on_the_wire(server: ConformanceServer) -> None:
    sid, _ = server.open("close", say=["one", "two"])
    assert _until_closed(server, sid) == (_wire("one", "two"), {"code": 4001, "reason": "bye"})


def test_a_closed_session_is_kept_until_the_last_seq_is_acked_after_closed_was_sent(
    server: ConformanceServer,
) -> None:
    sid, _ = server.open("close", say=["m1", "m2"])
    closed = {"code": 4001, "reason": "bye"}
    assert server.poll_ok(sid, 0) == {"messages": _wire("m1", "m2"), "closed": closed}
    assert server.poll_ok(sid, 1) == {"messages": _wire("m2", first=2), "closed": closed}
    assert server.poll_ok(sid, 0) == {"messages": _wire("m2", first=2), "closed": closed}  # 0 counts as 1
    assert_error(server.push(sid, [text(1, "late")]), 410)  # a POST to a closed session
    assert_error(server.push_raw(sid, b"not json", content_type="text/plain"), 410)  # 410 comes first
    assert server.poll_ok(sid, 2) == {"messages": [], "closed": closed}  # the final poll
    _is_forgotten(server, sid)


def test_a_close_after_the_last_message_was_delivered_answers_the_next_poll_at_once(
    server: ConformanceServer,
) -> None:
    sid, _ = server.open()
    server.send(sid, "m1").result(TIMEOUT)
    assert server.poll_ok(sid, 0) == {"messages": _wire("m1"), "closed": None}
    server.server_close(sid, 4002, "later")
    started = time.monotonic()
    closed = {"code": 4002, "reason": "later"}
    assert server.poll_ok(sid, 1) == {"messages": [], "closed": closed}  # not held
    assert time.monotonic() - started < AT_ONCE
    assert server.poll_ok(sid, 1) == {"messages": [], "closed": closed}  # acks the last after closed: forgotten
    _is_forgotten(server, sid)


def test_a_close_answers_the_held_poll(server: ConformanceServer) -> None:
    sid, _ = server.open()
    held = server.in_background(server.poll_ok, sid, 0)
    server.wait_held(sid)
    server.server_close(sid, 4003, "now")
    assert held.result(AT_ONCE) == {"messages": [], "closed": {"code": 4003, "reason": "now"}}
    assert server.poll_ok(sid, 0) == {"messages": [], "closed": {"code": 4003, "reason": "now"}}
    _is_forgotten(server, sid)


def test_messages_sent_just_before_a_close_reach_the_held_poll(server: ConformanceServer) -> None:
    sid, _ = server.open()
    session = server.probe(sid).session
    held = server.in_background(server.poll_ok, sid, 0)
    server.wait_held(sid)

    async def send_then_close() -> None:
        await session.send("last words")
        await session.close(4005, "done")

    server.handler_of(sid).submit(send_then_close()).result(TIMEOUT)
    first = held.result(AT_ONCE)
    messages, closed = first["messages"], first["closed"]
    if closed is None:  # the close may also ride on a later answer (nothing is acked yet)
        messages, closed = _until_closed(server, sid)
    assert messages == _wire("last words") and closed == {"code": 4005, "reason": "done"}


def test_an_ack_raised_to_the_last_seq_counts_for_forgetting(server: ConformanceServer) -> None:
    sid, _ = server.open()
    server.send(sid, "m1").result(TIMEOUT)
    assert server.poll_ok(sid, 1, wait=0) == {"messages": [], "closed": None}
    server.server_close(sid, 4004, "")
    closed = {"code": 4004, "reason": ""}
    assert server.poll_ok(sid, 0) == {"messages": [], "closed": closed}  # first answer carrying closed
    assert server.poll_ok(sid, 0) == {"messages": [], "closed": closed}  # ack 0 counts as 1, the last
    _is_forgotten(server, sid)


def test_unacknowledged_messages_ride_with_closed_on_every_answer(server: ConformanceServer) -> None:
    sid, _ = server.open()
    for item in ("m1", "m2"):
        server.send(sid, item).result(TIMEOUT)
    server.server_close(sid, 1000, "")
    for _ in range(2):
        assert server.poll_ok(sid, 0) == {"messages": _wire("m1", "m2"), "closed": NORMAL}


# -- expiry -------------------------------------------------------------------------------------

SESSION_TIMEOUT = 300 * MS
DEADLINE = SESSION_TIMEOUT + 3000 * MS  # expiry must have happened by then
expiry_server = server_fixture(
    "expiry_server",
    lambda: dict(session_timeout=SESSION_TIMEOUT, cleanup_interval=30 * MS, poll_timeout=700 * MS, inbox_limit=1),
)


def test_an_idle_session_expires_with_1001_by_a_timer(expiry_server: ConformanceServer) -> None:
    started = time.monotonic()
    sid, _ = expiry_server.open()
    # No request at all from here: only a timer can expire it.
    assert expiry_server.probe(sid).ended.wait(DEADLINE)
    assert time.monotonic() - started >= SESSION_TIMEOUT
    assert _close_code(expiry_server, sid) == 1001
    _is_forgotten(expiry_server, sid)


def test_a_held_poll_keeps_the_session_alive(expiry_server: ConformanceServer) -> None:
    sid, _ = expiry_server.open()
    # Held for poll_timeout (700 MS), more than twice session_timeout (300 MS).
    # Had the session expired meanwhile, the hold would have ended with closed 1001.
    assert expiry_server.poll_ok(sid, 0) == {"messages": [], "closed": None}
    expiry_server.delete(sid)
    assert expiry_server.wait_ended(sid) == (1000, "")  # it was alive until the DELETE


def test_a_429_is_activity(expiry_server: ConformanceServer) -> None:
    sid, _ = expiry_server.open("gated")
    assert expiry_server.push_ok(sid, [text(1, "fills the inbox of 1")]) == 1
    # For over twice session_timeout, only 429 answers (which took what fitted: nothing).
    until = time.monotonic() + 2 * SESSION_TIMEOUT + 100 * MS
    while time.monotonic() < until:
        assert_error(expiry_server.push(sid, [text(2, "no room")]), 429, "inbox_full")
    assert not expiry_server.probe(sid).ended.is_set()
    expiry_server.open_gate(sid)
    expiry_server.delete(sid)


def test_refused_requests_are_not_activity(expiry_server: ConformanceServer) -> None:
    srv = expiry_server
    sid, _ = srv.open()
    refusals = [
        lambda: srv.poll(sid, "01"),
        lambda: srv.poll(sid, 5, wait=0),
        lambda: srv.push_raw(sid, b"{", content_type="application/json"),
        lambda: srv.push_raw(sid, b"{}", content_type="text/plain"),
        lambda: srv.push(sid, [text(2, "gap")]),
        lambda: srv.request("PUT", sid=sid),
    ]
    deadline = time.monotonic() + DEADLINE
    turn = 0
    while not srv.probe(sid).ended.is_set():  # keep refusing until it expires anyway
        assert time.monotonic() < deadline, "refused requests kept the session alive"
        response = refusals[turn % len(refusals)]()
        assert 400 <= response.status_code < 500 and response.status_code != 429, response.status_code
        turn += 1
    assert _close_code(srv, sid) == 1001
    _is_forgotten(srv, sid)


def test_a_closed_session_is_forgotten_when_it_expires(expiry_server: ConformanceServer) -> None:
    srv = expiry_server
    sid, _ = srv.open("close", say=["unread"])
    # Probe with a refused request (not activity): 400 while kept, 410 once forgotten.
    wait_until(lambda: srv.poll(sid, "01").status_code == 410, DEADLINE, "the closed session to expire")
    _is_forgotten(srv, sid)


# -- shutdown -----------------------------------------------------------------------------------


def test_shutting_down_closes_every_session_with_1001(make_server: Any) -> None:
    srv = make_server(poll_timeout=5000 * MS)
    polled, _ = srv.open()
    idle, _ = srv.open()
    held = srv.in_background(srv.poll_ok, polled, 0)
    srv.wait_held(polled)
    srv.close_all()
    document = held.result(TIMEOUT)
    assert document["messages"] == [] and document["closed"]["code"] == 1001
    for sid in (polled, idle):
        assert srv.probe(sid).ended.wait(TIMEOUT)
        assert _close_code(srv, sid) == 1001

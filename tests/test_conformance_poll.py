"""Conformance with PROTOCOL.md, section 4 (the long poll) and section 9 (backpressure).

Every test here talks HTTP to a real server of each adapter; see
``test_conformance.py`` for the layout of the suite. Timelines are in the
comments; no test sleeps, and no hold is waited out unless the test is about
the hold ending (then ``poll_timeout`` is a few hundred ``MS``).
"""

from __future__ import annotations

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
)
from tests.utils import MS

__all__ = ["make_server", "server"]  # fixtures, for pytest

# An answer "at once" must not have waited for the shared server's poll_timeout.
AT_ONCE = SHARED_CONFIG["poll_timeout"] / 2


def _session_with(server: ConformanceServer, *texts: str) -> str:
    """A session that has sent ``texts`` as messages 1..n, none acknowledged."""
    sid, _ = server.open()
    for item in texts:
        server.send(sid, item).result(TIMEOUT)
    return sid


def _wire(*texts: str, first: int = 1) -> list[dict[str, Any]]:
    return [{"seq": seq, "type": "text", "data": item} for seq, item in enumerate(texts, first)]


def test_buffered_messages_are_answered_at_once_and_in_order(server: ConformanceServer) -> None:
    sid = _session_with(server, "m1", "m2", "m3")
    started = time.monotonic()
    document = server.poll_ok(sid, 0)  # no wait: only buffered messages make it quick
    assert time.monotonic() - started < AT_ONCE
    assert document == {"messages": _wire("m1", "m2", "m3"), "closed": None}


def test_absent_ack_means_zero(server: ConformanceServer) -> None:
    sid = _session_with(server, "m1", "m2")
    response = server.poll(sid)
    assert response.status_code == 200 and response.json()["messages"] == _wire("m1", "m2")


def test_a_lost_answer_is_answered_again_with_the_same_ack(server: ConformanceServer) -> None:
    sid = _session_with(server, "m1", "m2", "m3")
    first = server.poll_ok(sid, 0)
    assert server.poll_ok(sid, 0) == first  # the first answer "was lost": same messages again
    assert server.poll_ok(sid, 1)["messages"] == _wire("m2", "m3", first=2)
    assert server.poll_ok(sid, 1)["messages"] == _wire("m2", "m3", first=2)


def test_a_lower_ack_counts_as_the_highest_received(server: ConformanceServer) -> None:
    sid = _session_with(server, "m1", "m2", "m3")
    assert server.poll_ok(sid, 2)["messages"] == _wire("m3", first=3)
    # Acks never move backwards: ack 0 and ack 1 now mean ack 2.
    assert server.poll_ok(sid, 0)["messages"] == _wire("m3", first=3)
    assert server.poll_ok(sid, 1)["messages"] == _wire("m3", first=3)
    assert server.poll_ok(sid, 3, wait=0) == {"messages": [], "closed": None}
    assert server.poll_ok(sid, 0, wait=0) == {"messages": [], "closed": None}


def test_ack_beyond_the_last_message_sent_is_400_and_changes_nothing(server: ConformanceServer) -> None:
    sid = _session_with(server, "m1", "m2")
    for ack in ("3", "99999999999999999999999999"):
        assert_error(server.poll(sid, ack), 400)
    assert server.poll_ok(sid, 0, wait=0)["messages"] == _wire("m1", "m2")

    # Nor does it disturb a held poll: the held one is neither answered nor replaced.
    held = server.in_background(server.poll_ok, sid, 2)
    token = server.wait_held(sid)
    assert_error(server.poll(sid, 5), 400)
    assert server.held_poll(sid) is token and not held.done()
    server.send(sid, "m3").result(TIMEOUT)
    assert held.result(TIMEOUT)["messages"] == _wire("m3", first=3)


BAD_ACKS = ["01", "00", "-1", "+1", "1e3", "1.0", "1.", " 1", "1 ", "0x1", "", "１", "one", "1,1"]
BAD_WAITS = ["-1", "1e3", ".5", "1.", "+1", "", "inf", "nan", "1,5", " 1", "0x1", "1.5.0", "-0"]


@pytest.mark.parametrize(
    "query",
    [[("ack", value)] for value in BAD_ACKS]
    + [[("ack", "1"), ("wait", value)] for value in BAD_WAITS]
    + [
        [("ack", "0"), ("ack", "0")],
        [("ack", "1"), ("ack", "1")],
        [("ack", "1"), ("wait", "0"), ("wait", "0")],
        [("ack", "1"), ("ack", "0")],
    ],
    ids=[f"ack={value!r}" for value in BAD_ACKS]
    + [f"wait={value!r}" for value in BAD_WAITS]
    + ["ack-twice-0", "ack-twice-1", "wait-twice", "ack-1-then-0"],
)
def test_bad_ack_or_wait_syntax_is_400_and_changes_nothing(
    server: ConformanceServer, query: list[tuple[str, str]]
) -> None:
    sid, _ = server.open("greet")  # message 1 is buffered
    assert_error(server.request("GET", sid=sid, params=query), 400)
    # Not even the valid ack=1 that rode along was applied.
    assert server.poll_ok(sid, 0, wait=0)["messages"] == _wire("welcome")


HUGE_ACK = "1" + "0" * 4400  # more digits than Python's int() takes from a str by default


@pytest.mark.parametrize("known", [True, False], ids=["live-session", "unknown-session"])
def test_an_ack_of_thousands_of_digits_is_still_400_or_410(
    request: pytest.FixtureRequest, server: ConformanceServer, known: bool
) -> None:
    sid = server.open("greet")[0] if known else "no-such-session"
    assert_error(server.poll(sid, HUGE_ACK), 400 if known else 410)
    if known:
        assert server.poll_ok(sid, 0, wait=0)["messages"] == _wire("welcome")


@pytest.mark.parametrize("wait", ["0", "0.0", "00", "0.000", "000.0"])
def test_wait_zero_is_a_short_poll(server: ConformanceServer, wait: str) -> None:
    sid, _ = server.open()
    started = time.monotonic()
    assert server.poll_ok(sid, 0, wait=wait) == {"messages": [], "closed": None}
    assert time.monotonic() - started < AT_ONCE
    server.send(sid, "m1").result(TIMEOUT)
    assert server.poll_ok(sid, 0, wait=wait)["messages"] == _wire("m1")


def test_a_short_wait_is_honoured(server: ConformanceServer) -> None:
    sid, _ = server.open()
    started = time.monotonic()
    assert server.poll_ok(sid, 0, wait=200 * MS) == {"messages": [], "closed": None}
    elapsed = time.monotonic() - started
    assert 150 * MS <= elapsed < AT_ONCE, elapsed


def test_the_hold_ends_after_poll_timeout_and_wait_is_capped_by_it(make_server: Any) -> None:
    poll_timeout = 300 * MS
    srv = make_server(poll_timeout=poll_timeout)
    sid, document = srv.open()
    assert document["poll_timeout"] == poll_timeout
    for wait in (None, 100.0):  # wait=100 s is capped at poll_timeout
        started = time.monotonic()
        assert srv.poll_ok(sid, 0, wait=wait) == {"messages": [], "closed": None}  # empty is normal
        elapsed = time.monotonic() - started
        assert 0.8 * poll_timeout <= elapsed < poll_timeout + 2000 * MS, (wait, elapsed)


def test_a_held_poll_is_answered_when_a_message_is_sent(server: ConformanceServer) -> None:
    sid, _ = server.open()
    held = server.in_background(server.poll_ok, sid, 0)
    server.wait_held(sid)
    server.send(sid, "late").result(TIMEOUT)
    assert held.result(TIMEOUT) == {"messages": _wire("late"), "closed": None}


def test_a_newer_poll_supersedes_the_held_one(server: ConformanceServer) -> None:
    sid, _ = server.open()
    older = server.in_background(server.poll_ok, sid, 0)
    first = server.wait_held(sid)
    newer = server.in_background(server.poll_ok, sid, 0)
    # The older poll is answered at once (long before poll_timeout) with nothing.
    assert older.result(AT_ONCE) == {"messages": [], "closed": None}
    server.wait_held(sid, other_than=first)
    assert not newer.done()
    server.send(sid, "m1").result(TIMEOUT)
    assert newer.result(TIMEOUT) == {"messages": _wire("m1"), "closed": None}


def test_a_short_poll_also_supersedes_the_held_one(server: ConformanceServer) -> None:
    sid, _ = server.open()
    older = server.in_background(server.poll_ok, sid, 0)
    server.wait_held(sid)
    assert server.poll_ok(sid, 0, wait=0) == {"messages": [], "closed": None}
    assert older.result(AT_ONCE) == {"messages": [], "closed": None}
    assert server.held_poll(sid) is None  # at most one poll held: now none
    server.send(sid, "m1").result(TIMEOUT)
    assert server.poll_ok(sid, 0)["messages"] == _wire("m1")


# -- 9. Backpressure ---------------------------------------------------------------------------


def test_send_waits_while_outbox_limit_messages_are_unacknowledged(make_server: Any) -> None:
    # Timeline: the app sends 0..9 in a loop; sends 1-3 fill the outbox and the
    # 4th waits, all before the open answer is built. Each ack frees room for
    # up to 3 more; nothing is dropped and nothing is sent twice.
    limit, total = 3, 10
    srv = make_server(outbox_limit=limit, poll_timeout=5000 * MS)
    sid, _ = srv.open("burst", n=str(total))
    probe = srv.probe(sid)
    for _ in range(2):  # unacknowledged messages stay, and the sender stays blocked
        assert [m["seq"] for m in srv.poll_ok(sid, 0, wait=0)["messages"]] == [1, 2, 3]
        assert probe.sent == limit

    received: list[Any] = []
    closed = None
    while closed is None:
        document = srv.poll_ok(sid, len(received))
        messages, closed = document["messages"], document["closed"]
        assert [m["seq"] for m in messages] == list(range(len(received) + 1, len(received) + 1 + len(messages)))
        assert len(messages) <= limit  # never more than the limit unacknowledged
        received.extend(m["data"] for m in messages)
    assert received == list(range(total)) and probe.sent == total
    assert closed == {"code": 1000, "reason": ""}  # the app returned after its last send
    assert srv.poll_ok(sid, total) == {"messages": [], "closed": closed}
    assert_error(srv.poll(sid, total), 410)

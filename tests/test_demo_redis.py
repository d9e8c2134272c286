"""``python -m pollsession demo --redis URL --workers 2``: one chat served by two processes.

The demo runs as a subprocess against a real ``redis-server`` (the
``redis_server`` fixture). Its workers share one port with ``SO_REUSEPORT``,
so each new connection lands on either worker: every request of a
``WireSession`` is a new connection, so polls and posts reach the owner of a
session directly or through the other worker. A session's id starts with
its owner's id (``RedisBackend``), which tells the tests which worker owns it.
"""

from __future__ import annotations

import concurrent.futures
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.test_demo import demo_args
from tests.test_examples import TIMEOUT, Server, WireSession, free_port, running
from tests.utils import wait_until

ADAPTERS = ("flask", "tornado")
CLOCK_INTERVAL = 1.0  # one tick a second: each tick's time of day differs from the others'
OWNER = slice(0, 8)  # the owner's part of a session id


@pytest.fixture(params=ADAPTERS)
def chat(request: pytest.FixtureRequest, redis_server: Any, tmp_path: Any) -> Iterator[Server]:
    port = free_port()
    args = [*demo_args(request.param, port, nick_timeout=60.0, clock_interval=CLOCK_INTERVAL),
            "--redis", redis_server.url, "--workers", "2"]
    with running(args, tmp_path, port=port) as server:
        yield server


def sessions_on_both_workers(url: str, room: str) -> tuple[WireSession, WireSession, list[WireSession]]:
    """Open sessions in ``room`` until two have different owners: those two, and every one opened."""
    opened: list[WireSession] = []
    for _ in range(40):  # new connections land on a worker at random: 40 on one alone is 1 in 2**39
        opened.append(WireSession(url, {"room": room}))
        owners = {session.sid[OWNER]: session for session in opened}
        if len(owners) == 2:
            first, second = owners.values()
            return first, second, opened
    raise AssertionError(f"40 sessions, all owned by worker {opened[0].sid[OWNER]}: is SO_REUSEPORT spreading them?")


def test_members_on_two_workers_hear_each_other_and_share_nicknames(chat: Server, redis_server: Any) -> None:
    assert "2 workers on Redis): open" in chat.output()
    ann, bob, opened = sessions_on_both_workers(f"{chat.url}/poll", "porch")
    for idle in opened:
        if idle not in (ann, bob):
            assert idle.delete() == 204
    ann.send("Ann")
    ann.receive_until(lambda got: {"type": "join", "nick": "Ann", "members": ["Ann"]} in got, "ann's join")
    bob.send("ANN")  # taken on the other worker, ignoring case
    bob.receive_until(lambda got: any(m.get("type") == "nick_taken" for m in got), "the refusal")
    bob.send("bob", "hello from the other worker")
    bob.receive_until(lambda got: {"type": "welcome", "nick": "bob", "members": ["Ann", "bob"]} in got,
                      "bob's welcome")
    said = {"type": "message", "nick": "bob", "text": "hello from the other worker"}
    ann.receive_until(lambda got: said in got, "bob's message on ann's worker")
    assert {"type": "join", "nick": "bob", "members": ["Ann", "bob"]} in ann.received
    assert bob.delete() == 204
    ann.receive_until(lambda got: {"type": "leave", "nick": "bob", "members": ["Ann"]} in got, "bob's leave")

    # One clock for the chat, not one per worker: each tick's time shows once.
    ann.receive_until(lambda got: sum(m.get("type") == "clock" for m in got) >= 3, "three ticks",
                      timeout=TIMEOUT + 3 * CLOCK_INTERVAL)
    ticks = [m["time"] for m in ann.received if m.get("type") == "clock"]
    assert len(ticks) == len(set(ticks)), f"a tick pushed by both workers: {ticks}"
    assert ann.delete() == 204
    wait_until(lambda: not redis_server.keys("pollsession-demo:demo:room:*"), TIMEOUT, "the room's key to go")


def hold_a_poll(session: WireSession) -> Any:
    """One long poll acknowledging everything received: its close, "again" (an empty answer: poll
    again, with or without messages), or "dropped" (the connection closed unanswered: the poll reached a server already gone)."""
    session.held = True
    try:
        response = requests.get(session.url, params={"ack": str(len(session.received)), "wait": "10"},
                                headers={"Pollsession-Id": session.sid}, timeout=TIMEOUT)
    except requests.ConnectionError:
        return "dropped"
    answer = response.json()
    assert response.status_code in (200, 410), answer
    if answer["closed"] is None:  # empty, or the last words of a member that left as its worker stopped
        assert response.status_code == 200, answer
        return "again"
    return answer["closed"]


def test_ctrl_c_stops_every_worker_and_leaves_no_chat_keys(redis_server: Any, tmp_path: Any) -> None:
    port = free_port()
    args = [*demo_args("tornado", port, nick_timeout=60.0, clock_interval=60.0), "--redis", redis_server.url, "--workers", "2"]
    with running(args, tmp_path, port=port) as server:
        ann, bob, opened = sessions_on_both_workers(f"{server.url}/poll", "lobby")
        ann.send("ann")
        ann.receive_until(lambda got: {"type": "join", "nick": "ann", "members": ["ann"]} in got, "ann's join")
        bob.send("bob")
        joined = {"type": "join", "nick": "bob", "members": ["ann", "bob"]}
        for session in (ann, bob):
            session.receive_until(lambda got: joined in got, "bob's join")
        assert redis_server.keys("pollsession-demo:demo:worker:*")
        with concurrent.futures.ThreadPoolExecutor(len(opened)) as pool:
            held = [pool.submit(hold_a_poll, session) for session in opened]
            wait_until(lambda: all(session.held for session in opened) or any(f.done() for f in held), TIMEOUT,
                       "every poll to be sent")
            server.process.send_signal(signal.SIGINT)
            answers = [future.result() for future in held]
        assert server.process.wait(TIMEOUT) == 0, server.errors()
    # Both workers stop at once. A held poll hears the 1001 close in its answer (or in the 410 of an
    # owner that had finished). One whose request reached a worker only as it stopped may instead be
    # told to poll again, or be dropped: the next poll then finds no server (docs: the demo's workers).
    closes = [answer for answer in answers if isinstance(answer, dict)]
    assert closes, answers
    assert all(close == {"code": 1001, "reason": "server shutting down"} for close in closes), answers
    assert all(answer in ("again", "dropped") for answer in answers if not isinstance(answer, dict)), answers
    assert server.output().splitlines()[-1] == "pollsession demo: stopped"
    assert "Traceback" not in server.errors()
    # Rooms go with their last member, alive keys with their worker, ticks after two intervals.
    wait_until(lambda: redis_server.keys("pollsession-demo:demo:*") == [], TIMEOUT, "the chat's keys to go")


def test_several_workers_need_redis() -> None:
    done = subprocess.run([sys.executable, "-m", "pollsession", "demo", "--workers", "2"],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 2
    assert "--workers needs --redis" in done.stderr


def test_an_unreachable_redis_is_named_before_anything_starts() -> None:
    port = free_port()  # nothing listens there
    done = subprocess.run([sys.executable, "-m", "pollsession", "demo", "--port", str(free_port()),
                           "--redis", f"redis://127.0.0.1:{port}/0"],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 1
    assert f"cannot reach Redis at redis://127.0.0.1:{port}/0" in done.stderr
    assert done.stdout == ""

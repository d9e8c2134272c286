"""Several workers on one real Redis: any worker answers any request (``RedisBackend``).

Each "worker" here is an ``HttpHandler`` with its own loop thread and its own
``RedisBackend`` (same ``name``), driven through in-memory request contexts
as an adapter would; only Redis is real (``redis_server`` starts one). The
multi-process tests (gunicorn, Tornado processes behind nginx) build on the
same backend.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from pollsession import HttpHandler, Session, SessionClosed
from pollsession.backends.frames import (Answer, Batch, Cancel, Forwarded, FrameError, decode, encode_answer,
                                         encode_batch, encode_cancel, encode_operation)
from pollsession.backends.redis import OWNER_STOPPED, RedisBackend
from pollsession.protocol.http import HttpResponse
from pollsession.protocol.messages import Packed
from pollsession.protocol.requests import Delete, Poll, Push
from pollsession.protocol.wire import MessageType
from pollsession import BadRequest
from tests.fakes import FakeContext, body_of, call
from tests.utils import wait_until


async def echo(session: Session) -> None:
    async for message in session:
        await session.send(message)


# -- frames, with plain calls -------------------------------------------------------


def test_frames_round_trip() -> None:
    batch = [(1, Packed(MessageType.TEXT, "é".encode())), (2, Packed(MessageType.BINARY, b"\0\1"))]
    for operation in (Poll("sid", 3, 1.5), Poll("sid", 0, None, BadRequest("bad wait", code="bad_wait")),
                      Push("sid", batch), Push("sid", [], BadRequest("gap", code="seq_gap")), Delete("sid")):
        frame = decode(encode_operation("r1", "reply", "/poll", operation))
        assert isinstance(frame, Forwarded) and (frame.id, frame.reply, frame.path) == ("r1", "reply", "/poll")
        if isinstance(operation, Poll) and operation.error is not None:
            assert isinstance(frame.operation, Poll) and frame.operation.error is not None
            assert (frame.operation.error.status, frame.operation.error.code) == (400, "bad_wait")
        elif isinstance(operation, Push) and operation.error is not None:
            assert isinstance(frame.operation, Push) and frame.operation.error is not None
            assert frame.operation.error.code == "seq_gap"
        else:
            assert frame.operation == operation
    response = HttpResponse(410, [("Content-Type", "application/json")], b'{"x":1}\0more', routine=True)
    answer = decode(encode_answer("r2", response))
    assert isinstance(answer, Answer) and answer.response == response
    assert decode(encode_cancel("r3")) == Cancel("r3")


def test_a_batch_carries_its_frames_in_order() -> None:
    frames = [encode_answer("a", HttpResponse(200, [], b"\0body\0")), encode_cancel("b"),
              encode_operation("c", "reply", "/poll", Delete("sid"))]
    batch = decode(encode_batch(frames))
    assert isinstance(batch, Batch) and list(batch.frames) == frames
    assert [decode(frame) for frame in batch.frames][1] == Cancel("b")
    with pytest.raises(FrameError):
        decode(encode_batch(frames)[:-1])  # a payload shorter than its sizes


# -- two workers on one Redis ----------------------------------------------------------


class Workers:
    """Two handlers (workers A and B) of one target on one Redis."""

    def __init__(self, url: str, **options: Any) -> None:
        name = "test-" + secrets.token_hex(4)
        self.backends = [RedisBackend(url, name=name, poll_timeout=options.get("poll_timeout", 25.0),
                                      liveness_interval=0.2) for _ in range(2)]
        self.handlers = [HttpHandler(echo, backend=backend, shutdown_timeout=1, **options)
                         for backend in self.backends]

    def close(self) -> None:
        for handler in self.handlers:
            handler.close()


@pytest.fixture
def workers(redis_server: Any) -> Iterator[Workers]:
    pair = Workers(redis_server.url, poll_timeout=5.0)
    try:
        yield pair
    finally:
        pair.close()


def opened(handler: HttpHandler) -> str:
    response = call(handler)
    assert response.status == 200, response.body
    sid: str = body_of(response)["sid"]
    return sid


def poll(handler: HttpHandler, sid: str, ack: int, wait: str | None = None) -> HttpResponse:
    query = [("ack", str(ack))] + ([("wait", wait)] if wait is not None else [])
    return call(handler, "GET", sid, query=query)


def push(handler: HttpHandler, sid: str, *texts: tuple[int, str]) -> HttpResponse:
    return call(handler, "POST", sid, messages=[{"seq": seq, "type": "text", "data": text} for seq, text in texts])


def test_a_session_of_one_worker_is_served_by_the_other(workers: Workers) -> None:
    a, b = workers.handlers
    sid = opened(a)
    assert sid.startswith(workers.backends[0].worker_id)
    assert body_of(push(b, sid, (1, "one"))) == {"ack": 1}
    assert body_of(push(b, sid, (1, "one"), (2, "two"))) == {"ack": 2}  # a retried push, through the other worker
    assert drain(b, sid, 2) == ["one", "two"]  # each poll held at A until the echo is sent
    ack = 2
    assert body_of(poll(a, sid, ack, "0")) == {"messages": [], "closed": None}
    assert call(b, "DELETE", sid).status == 204
    gone = poll(b, sid, ack, "0")
    assert gone.status == 410 and body_of(gone)["closed"] == {"code": 1000, "reason": ""}


def test_refusals_are_the_owners_exactly_as_locally(workers: Workers) -> None:
    a, b = workers.handlers
    sid = opened(a)
    for handler in (a, b):
        gap = push(handler, sid, (2, "x"))
        assert (gap.status, body_of(gap)["error"]) == (400, "seq_gap")
        bad = call(handler, "GET", sid, query=[("ack", "01")])
        assert (bad.status, body_of(bad)["error"]) == (400, "bad_ack")
        beyond = poll(handler, sid, 5, "0")
        assert (beyond.status, body_of(beyond)["error"]) == (400, "bad_ack")
    unknown = poll(b, "nobody-" + secrets.token_urlsafe(24), 0, "0")
    assert (unknown.status, body_of(unknown)["error"]) == (410, "unknown_session")


def test_a_graceful_stop_of_the_owner_answers_its_forwarded_polls_with_the_close(workers: Workers) -> None:
    a, b = workers.handlers
    sid = opened(a)
    results: list[HttpResponse] = []
    thread = threading.Thread(target=lambda: results.append(poll(b, sid, 0)))
    thread.start()
    wait_until(lambda: a.submit(_holds_poll(a, sid)).result(), what="the forwarded poll to be held at the owner")
    a.close()
    thread.join(5)
    assert not thread.is_alive()
    assert body_of(results[0])["closed"] == {"code": 1001, "reason": "server shutting down"}


def test_when_the_owners_backend_stops_its_forwarded_polls_learn_the_close_at_once(workers: Workers) -> None:
    # A killed worker (no clean stop) gives 1012 instead: tests/test_redis_deployment.py kills one.
    a, b = workers.handlers
    sid = opened(a)
    results: list[HttpResponse] = []
    thread = threading.Thread(target=lambda: results.append(poll(b, sid, 0)))
    thread.start()
    wait_until(lambda: a.submit(_holds_poll(a, sid)).result(), what="the forwarded poll to be held at the owner")
    a.submit(workers.backends[0].close()).result(5)  # the owner stops listening (and says it stopped)
    thread.join(5)
    assert not thread.is_alive(), "the held forwarded poll did not notice that its owner is gone"
    assert results[0].status == 410
    assert body_of(results[0])["closed"] == {"code": OWNER_STOPPED.code, "reason": OWNER_STOPPED.reason}
    again = push(b, sid, (1, "late"))
    assert (again.status, body_of(again)["closed"]["code"]) == (410, 1001)


async def _holds_poll(handler: HttpHandler, sid: str) -> bool:
    channel = handler._registry.channel(sid)
    return channel is not None and channel.delivery.holds_poll


def test_a_client_that_goes_away_releases_the_owners_held_poll(workers: Workers) -> None:
    a, b = workers.handlers
    sid = opened(a)

    async def abandon() -> None:
        context = FakeContext("GET", query=[("ack", "0")], headers={"Pollsession-Id": sid})
        task = asyncio.ensure_future(b.handle_request_async(context))
        deadline = asyncio.get_running_loop().time() + 5
        while not await asyncio.wrap_future(a.submit(_holds_poll(a, sid))):  # let this loop run meanwhile
            assert asyncio.get_running_loop().time() < deadline, "the forwarded poll was not held"
        task.cancel()  # the client's connection closed
        with pytest.raises(asyncio.CancelledError):
            await task

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(abandon())
    finally:
        loop.close()
    wait_until(lambda: not a.submit(_holds_poll(a, sid)).result(), what="the owner to release the held poll")


def test_redis_down_is_a_clear_503_and_service_resumes(redis_server: Any) -> None:
    pair = Workers(redis_server.url, poll_timeout=5.0)
    try:
        a, b = pair.handlers
        sid = opened(a)
        assert body_of(push(b, sid, (1, "before"))) == {"ack": 1}
        redis_server.stop()
        down = push(b, sid, (2, "during"))
        assert (down.status, body_of(down)["error"]) == (503, "backend_unavailable")
        assert ("Retry-After", "1") in down.headers
        assert body_of(push(a, sid, (2, "during"))) == {"ack": 2}  # the owner itself needs no Redis
        redis_server.start()
        wait_until(lambda: push(b, sid, (3, "after")).status == 200, 10.0,
                   "a forwarded push to succeed once Redis is back")
        assert drain(a, sid, 3) == ["before", "during", "after"]  # nothing lost, nothing doubled
    finally:
        pair.close()


def test_sessions_leave_no_keys_in_redis(redis_server: Any) -> None:
    import redis

    pair = Workers(redis_server.url, poll_timeout=5.0)
    admin = redis.Redis.from_url(redis_server.url)
    try:
        a, b = pair.handlers
        before = set(redis_server.keys())
        sids = [opened(a) for _ in range(20)] + [opened(b) for _ in range(20)]
        for sid in sids:
            push(b, sid, (1, "x"))
        made = set(redis_server.keys()) - before
        # Three keys per worker (alive, known, session count) and the deployment's worker set, all
        # with a TTL; sessions make none (40 sessions, 7 keys).
        prefix = pair.backends[0]._name.encode()
        assert all(key.startswith(prefix) for key in made) and len(made) == 7, made
        assert all(admin.pttl(key) > 0 for key in made), {key: admin.pttl(key) for key in made}
        for sid in sids:
            call(a, "DELETE", sid)
        wait_until(lambda: a.session_count() == 0, what="every session to be forgotten on every worker")
    finally:
        admin.close()
        pair.close()
    assert set(redis_server.keys()) - before <= {key for key in made if key.endswith((b":alive", b":known"))}


# -- broadcasts across workers ---------------------------------------------------------


async def member(session: Session) -> None:
    room = session.request.query.get("room")
    if room:
        session.join(room)
    await session.wait_closed()


def drain(handler: HttpHandler, sid: str, count: int) -> list[Any]:
    """Poll ``sid`` (through ``handler``) until ``count`` messages arrived; return their data in order."""
    ack, seen = 0, []
    while len(seen) < count:
        answer = body_of(poll(handler, sid, ack))
        for message in answer["messages"]:
            if message["seq"] == ack + 1:
                ack += 1
                seen.append(message["data"])
        if answer["closed"] is not None:
            break
    return seen


def test_broadcasts_reach_every_member_on_every_worker_once_in_one_order(redis_server: Any) -> None:
    from pollsession.backends.redis import Publisher

    name = "test-" + secrets.token_hex(4)
    backends = [RedisBackend(redis_server.url, name=name, poll_timeout=5.0) for _ in range(3)]
    handlers = [HttpHandler(member, backend=backend, shutdown_timeout=1, poll_timeout=5.0) for backend in backends]
    try:
        members = [(h, body_of(call(h, query=[("room", "r")]))["sid"]) for h in handlers for _ in range(5)]
        outsiders = [(h, body_of(call(h))["sid"]) for h in handlers]
        with Publisher(redis_server.url, name=name) as publisher:
            futures = []
            for n in range(60):
                if n % 3 == 0:
                    assert publisher.broadcast(f"p{n}", room="r") == 3  # from a process with no sessions
                else:  # from the workers themselves, interleaved
                    futures.append(handlers[n % 3].broadcast_threadsafe(f"w{n}", room="r"))
            for future in futures:
                assert future.result(5) == 3
        orders = [drain(handlers[(i + 1) % 3], sid, 60) for i, (_, sid) in enumerate(members)]  # through other workers
        assert all(sorted(order) == sorted(orders[0]) and len(set(order)) == 60 for order in orders)
        assert all(order == orders[0] for order in orders), "members saw the broadcasts in different orders"
        for handler, sid in outsiders:
            assert body_of(poll(handler, sid, 0, "0"))["messages"] == []
    finally:
        for handler in handlers:
            handler.close()


def test_a_worker_that_may_have_missed_a_broadcast_closes_its_sessions_with_1013(redis_server: Any) -> None:
    import redis

    from pollsession.backends.redis import MISSED_BROADCAST, Publisher

    name = "test-" + secrets.token_hex(4)
    backend = RedisBackend(redis_server.url, name=name, poll_timeout=5.0)
    handler = HttpHandler(member, backend=backend, shutdown_timeout=1, poll_timeout=5.0)
    admin = redis.Redis.from_url(redis_server.url)
    try:
        sid = body_of(call(handler, query=[("room", "r")]))["sid"]
        with Publisher(redis_server.url, name=name) as publisher:
            publisher.broadcast("before", room="r")
            assert drain(handler, sid, 1) == ["before"]
            admin.client_kill_filter(_type="pubsub")  # the worker's subscription drops...
            publisher.broadcast("missed", room="r")  # ...and a broadcast goes out before it is back
        answer = body_of(poll(handler, sid, 1))
        assert answer["closed"] == {"code": MISSED_BROADCAST.code, "reason": MISSED_BROADCAST.reason}
        assert "missed" not in [m["data"] for m in answer["messages"]]
        fresh = body_of(call(handler, query=[("room", "r")]))["sid"]  # the worker is back in service
        with Publisher(redis_server.url, name=name) as publisher:
            wait_until(lambda: publisher.broadcast("after", room="r") == 1, what="the worker to resubscribe")
        assert drain(handler, fresh, 1) == ["after"]
    finally:
        admin.close()
        handler.close()


def test_send_to_reaches_a_session_on_another_worker(workers: Workers) -> None:
    a, b = workers.handlers
    sid = opened(a)
    b.submit(b.send_to(sid, {"to": "you"})).result(5)
    assert body_of(poll(b, sid, 0, "0"))["messages"] == [{"seq": 1, "type": "json", "data": {"to": "you"}}]
    with pytest.raises(KeyError):
        b.submit(b.send_to(workers.backends[0].worker_id + "x" * 32, "nobody")).result(5)
    a.submit(a.get_session(sid).close(4001, "done")).result(5)
    with pytest.raises(SessionClosed) as closed:
        b.submit(b.send_to(sid, "late")).result(5)
    assert (closed.value.code, closed.value.reason) == (4001, "done")
    assert a.session_count() == b.session_count() == 1  # closed, not yet forgotten: it still counts


def test_max_sessions_covers_every_worker(redis_server: Any) -> None:
    pair = Workers(redis_server.url, poll_timeout=5.0, max_sessions=3)
    try:
        a, b = pair.handlers
        opened(a), opened(b), opened(a)
        refused = call(b)
        assert (refused.status, body_of(refused)["error"]) == (503, "too_many_sessions")
        assert a.session_count() == b.session_count() == 3
    finally:
        pair.close()


def test_a_worker_that_cannot_reach_redis_refuses_opens_with_503_until_it_can(redis_server: Any) -> None:
    from pollsession import ServiceUnavailable

    redis_server.stop()
    backend = RedisBackend(redis_server.url, name="test-" + secrets.token_hex(4), poll_timeout=5.0)
    handler = HttpHandler(echo, backend=backend, shutdown_timeout=1, poll_timeout=5.0)
    try:
        refused = call(handler)
        assert (refused.status, body_of(refused)["error"]) == (503, "backend_unavailable")
        assert ("Retry-After", "1") in refused.headers
        assert "unreachable" in body_of(refused)["message"]
        with pytest.raises(ServiceUnavailable):
            handler.broadcast_threadsafe("to nobody").result(5)
        redis_server.start()
        sid = opened(handler)  # the backend starts at the next open
        assert body_of(push(handler, sid, (1, "back"))) == {"ack": 1}
    finally:
        handler.close()
        if redis_server.process is None:
            redis_server.start()


def test_an_owner_resubscribing_is_a_503_never_a_close(redis_server: Any) -> None:
    import redis

    pair = Workers(redis_server.url, poll_timeout=5.0)
    admin = redis.Redis.from_url(redis_server.url)
    try:
        a, b = pair.handlers
        sid = opened(a)
        seq, statuses = 0, set()
        admin.client_kill_filter(_type="pubsub")  # every worker's subscription drops, and comes back
        for _ in range(40):  # the next second or so, through the other worker
            seq += 1
            response = push(b, sid, *[(n, f"m{n}") for n in range(1, seq + 1)])
            statuses.add(response.status)
            if response.status != 200:
                assert (response.status, body_of(response)["error"]) in {
                    (503, "owner_unavailable"), (503, "backend_unavailable")}, body_of(response)
        wait_until(lambda: push(b, sid, (1, "m1")).status == 200, what="the owner to be back")
        assert statuses <= {200, 503}
        print("statuses during the resubscription:", sorted(statuses))
        assert body_of(poll(a, sid, 0, "0"))["closed"] is None  # the session lives on
    finally:
        admin.close()
        pair.close()


def test_a_broadcast_published_before_a_worker_is_back_from_a_redis_restart_is_never_missed_silently(
        redis_server: Any) -> None:
    from pollsession.backends.redis import MISSED_BROADCAST, Publisher

    name = "test-" + secrets.token_hex(4)
    handler = HttpHandler(member, backend=RedisBackend(redis_server.url, name=name), shutdown_timeout=1,
                          poll_timeout=5.0)
    try:
        sid = body_of(call(handler, query=[("room", "r")]))["sid"]
        redis_server.stop()
        redis_server.start()
        with Publisher(redis_server.url, name=name) as publisher:
            publisher.broadcast("after the restart", room="r")  # most likely before the worker resubscribed
        answer = body_of(poll(handler, sid, 0))
        if answer["closed"] is None:  # the worker was back in time: it got it
            assert [m["data"] for m in answer["messages"]] == ["after the restart"]
        else:  # it was not: its sessions are told
            assert answer["closed"] == {"code": MISSED_BROADCAST.code, "reason": MISSED_BROADCAST.reason}
    finally:
        handler.close()


def test_concurrent_opens_on_one_worker_stop_at_max_sessions(redis_server: Any) -> None:
    import concurrent.futures

    backend = RedisBackend(redis_server.url, name="test-" + secrets.token_hex(4))
    handler = HttpHandler(echo, backend=backend, shutdown_timeout=1, poll_timeout=5.0, max_sessions=3)
    try:
        opened(handler)  # the backend is started
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            statuses = sorted(pool.map(lambda _: call(handler).status, range(20)))
        assert statuses == [200, 200] + [503] * 18
        assert handler.session_count() == 3
    finally:
        handler.close()


def test_a_backend_given_another_poll_timeout_than_its_handler_is_refused(redis_server: Any) -> None:
    with pytest.raises(ValueError, match="poll_timeout"):
        HttpHandler(echo, backend=RedisBackend(redis_server.url, poll_timeout=60.0), poll_timeout=25.0)

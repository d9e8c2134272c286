"""The asyncio client against real servers (every adapter), directly and through a faulty proxy.

The same cases as ``tests/test_client.py`` for :class:`Client`, with that
module's helpers, servers and timings; each test body is a coroutine run by
:func:`run`, which also checks that the client left no task behind. Whatever
the server's coroutine observes arrives on a thread-safe queue, and tests read
those queues (and wait on the proxy's counters) in a worker thread via
:func:`asyncio.to_thread`, so the client keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import queue
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import pytest

from pollsession import MessageTooLarge, ProtocolError, Session, SessionClosed, Unauthorized
from pollsession.client import AsyncClient
from pollsession.client.answers import Outcome, OutcomeKind, RequestKind, classify_answer
from pollsession.client.core import ClientCore, ExchangeStep, Phase, Step, exchange_step, open_error
from pollsession.protocol.wire import POLL_MARGIN
from tests import test_vectors_client as vectors
from tests.fault_proxy import FaultPlan, FaultProxy
from tests.test_client import (
    CLIENT_THREADS,
    FAST_RETRIES,
    FAULTS,
    POLL,
    assert_every_fault_seen,
    echo,
    make_handler,
    recording_close,
    take,
    take_all,
)
from tests.utils import ALL_ADAPTERS, MS, serve, wait_until

CLIENT_TASKS = CLIENT_THREADS  # the tasks are named like the sync client's threads


@pytest.fixture(params=ALL_ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a test's coroutine; then no client task may still be running (close() must have ended them)."""

    async def checked() -> None:
        await main
        left = [task.get_name() for task in asyncio.all_tasks()
                if task.get_name().startswith(CLIENT_TASKS) and not task.done()]
        assert not left, f"client tasks still running after the test: {left}"

    asyncio.run(checked())


async def atake(events: queue.Queue[Any], what: str) -> Any:
    """:func:`take`, without blocking the event loop the client runs on."""
    return await asyncio.to_thread(take, events, what)


async def await_until(predicate: Callable[[], Any], what: str) -> Any:
    """:func:`wait_until` for a thread-safe predicate, without blocking the event loop."""
    return await asyncio.to_thread(wait_until, predicate, 5000 * MS, what)


class Rewriting(httpx.AsyncBaseTransport):
    """A transport that lets a test change each answer (what a misbehaving proxy in front of the server does)."""

    def __init__(self, change: Callable[[httpx.Request, int, dict[str, str], bytes],
                                        tuple[int, dict[str, str], bytes]]) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.change = change

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        await response.aclose()
        dropped = ("content-length", "transfer-encoding", "content-encoding")
        headers = {key: value for key, value in response.headers.items() if key.lower() not in dropped}
        status, headers, body = self.change(request, response.status_code, headers, body)
        return httpx.Response(status, headers=headers, content=body)

    async def aclose(self) -> None:
        await self.inner.aclose()


def rewrite_open_answer(change: Callable[[dict[str, Any]], None]) -> httpx.AsyncClient:
    """An httpx client that changes every opening answer's JSON with ``change``."""

    def rewrite(request: httpx.Request, status: int, headers: dict[str, str],
                body: bytes) -> tuple[int, dict[str, str], bytes]:
        if request.method == "GET" and "Pollsession-Id" not in request.headers and status == 200:
            document = json.loads(body)
            change(document)
            body = json.dumps(document).encode()
        return status, headers, body

    return httpx.AsyncClient(transport=Rewriting(rewrite))


# -- delivery ---------------------------------------------------------------


def test_echo_text_binary_and_json_in_order(adapter: str) -> None:
    values: list[Any] = [
        "hello", "", "ünïcødé ☃ \U0001f600", bytes(range(256)), b"",
        {"nested": [1, 2.5, None, True, {"k": "v"}]}, [], 0, None, "last",
    ]

    async def main() -> None:
        with serve(adapter, make_handler(echo)) as base:
            async with AsyncClient(base + "/poll") as client:
                for value in values:
                    await client.send(value)
                received = [await client.receive(timeout=5000 * MS) for _ in values]
                await client.flush(timeout=5000 * MS)
        assert received == values
        assert isinstance(received[3], bytes)
        assert client.closed and client.close_code == 1000

    run(main())


async def ten_thousand_each_way(upstream: str, *, timeout: float) -> None:
    """``tests.test_client.ten_thousand_each_way`` for :class:`AsyncClient`: the same proxy, seed and faults."""
    count = 10_000
    with FaultProxy(upstream, seed=19, plan=FAULTS) as proxy:
        async with AsyncClient(proxy.url + "/poll", max_retries=30, **FAST_RETRIES) as client:
            for i in range(count):
                await client.send(i)
            received = [await client.receive(timeout=timeout) for _ in range(count)]
            await client.flush(timeout=timeout)
            with pytest.raises(TimeoutError):
                await client.receive(timeout=50 * MS)  # nothing doubled at the end either
    assert received == list(range(count))
    assert_every_fault_seen(proxy)


def test_ten_thousand_messages_each_way_through_a_faulty_proxy(adapter: str) -> None:
    # As for Client: batches of up to 250, every kind of fault early, 429s of a full inbox mixed in.
    handler = make_handler(echo, inbox_limit=250, outbox_limit=250, retry_after=0)

    async def main() -> None:
        with serve(adapter, handler) as base:
            await ten_thousand_each_way(base, timeout=10_000 * MS)

    run(main())


def test_greeting_in_the_opening_answer_is_delivered_once(adapter: str) -> None:
    async def greet(session: Session) -> None:
        await session.send("welcome")
        await echo(session)

    async def main() -> None:
        with serve(adapter, make_handler(greet)) as base:
            async with AsyncClient(base + "/poll") as client:
                assert await client.receive(timeout=5000 * MS) == "welcome"
                await client.send("ping")
                assert await client.receive(timeout=5000 * MS) == "ping"

    run(main())


def test_headers_cookies_and_a_callers_session_reach_the_server(adapter: str) -> None:
    seen: queue.Queue[Any] = queue.Queue()

    async def record(session: Session) -> None:
        seen.put((session.request.headers.get("x-token"), session.request.cookies,
                  session.request.headers.get("user-agent")))
        await echo(session)

    async def main() -> None:
        async with httpx.AsyncClient(headers={"User-Agent": "pollsession-test"}) as http:
            with serve(adapter, make_handler(record)) as base:
                async with AsyncClient(base + "/poll", headers={"X-Token": "t0k"}, cookies={"flavour": "oat"},
                                       session=http) as client:
                    await client.send("x")
                    assert await client.receive(timeout=5000 * MS) == "x"
                assert await atake(seen, "the opening request") == ("t0k", {"flavour": "oat"}, "pollsession-test")
                # The caller's client is the caller's: the AsyncClient did not close it.
                answer = await http.get(base + "/poll", params={"test": "1"}, timeout=5)
                assert answer.text == "ok"

    run(main())


# -- closing ------------------------------------------------------------------


def test_client_close_is_seen_by_the_coroutine_as_1000(adapter: str) -> None:
    codes: queue.Queue[Any] = queue.Queue()

    watch = recording_close(codes)

    async def main() -> None:
        with serve(adapter, make_handler(watch)) as base:
            client = AsyncClient(base + "/poll")
            await client.open()
            await client.send("before close")
            started = time.monotonic()
            await client.close()
            # DELETE ends the held poll: closing does not wait out poll_timeout.
            assert time.monotonic() - started < POLL
            assert await atake(codes, "the coroutine to see the close") == 1000
            assert client.closed and (client.close_code, client.close_reason) == (1000, "")
            with pytest.raises(SessionClosed) as caught:
                await client.receive(timeout=0)
            assert caught.value.code == 1000
            with pytest.raises(SessionClosed):
                await client.send("after close")
            await client.close()  # idempotent
            async with httpx.AsyncClient() as http:  # the server forgot the session at once
                gone = await http.get(base + "/poll", headers={"Pollsession-Id": client.sid or ""}, timeout=5)
            assert gone.status_code == 410

    run(main())


def test_server_close_raises_its_code_and_reason_after_the_last_messages(adapter: str) -> None:
    async def farewell(session: Session) -> None:
        await session.receive()
        await session.send("one")
        await session.send("two")
        await session.close(4001, "bye")

    async def main() -> None:
        with serve(adapter, make_handler(farewell)) as base:
            async with AsyncClient(base + "/poll") as client:
                await client.send("go")
                assert await client.receive(timeout=5000 * MS) == "one"
                assert await client.receive(timeout=5000 * MS) == "two"
                with pytest.raises(SessionClosed) as caught:
                    await client.receive(timeout=5000 * MS)
                assert (caught.value.code, caught.value.reason) == (4001, "bye")
                assert client.closed and (client.close_code, client.close_reason) == (4001, "bye")
                with pytest.raises(SessionClosed):
                    await client.send("too late")
                # The final poll carried the last ack, so the server has already forgotten the session.
                async with httpx.AsyncClient() as http:
                    gone = await http.get(base + "/poll", headers={"Pollsession-Id": client.sid or ""}, timeout=5)
                assert gone.status_code == 410
            assert client.close_code == 4001  # close() keeps the server's code

    run(main())


def test_iteration_ends_when_the_server_closes(adapter: str) -> None:
    async def count_to_three(session: Session) -> None:
        for i in range(3):
            await session.send(i)

    async def main() -> None:
        with serve(adapter, make_handler(count_to_three)) as base:
            async with AsyncClient(base + "/poll") as client:
                assert [message async for message in client] == [0, 1, 2]
                assert client.close_code == 1000

    run(main())


def test_server_close_while_the_client_still_sends(adapter: str) -> None:
    async def read_five(session: Session) -> None:
        for _ in range(5):
            await session.receive()
        await session.close(4002, "enough")

    async def main() -> None:
        with serve(adapter, make_handler(read_five, inbox_limit=8)) as base:
            async with AsyncClient(base + "/poll", **FAST_RETRIES) as client:
                for i in range(200):
                    await client.send(i)
                with pytest.raises(SessionClosed) as caught:
                    await client.flush(timeout=5000 * MS)
                with pytest.raises(SessionClosed) as received:
                    await client.receive(timeout=5000 * MS)
                assert received.value.code == 4002
                assert caught.value.code == 4002

    run(main())


def test_the_close_survives_losing_every_answer_that_carried_it(adapter: str) -> None:
    async def farewell(session: Session) -> None:
        await session.send("last")
        await session.receive()  # the client has "last" (and acks it with its next poll)
        await session.close(4001, "bye")

    async def main() -> None:
        with serve(adapter, make_handler(farewell)) as base, FaultProxy(base) as proxy:
            # Timeline as for Client: two answers carrying the close are lost; a 410 still tells it.
            proxy.drop_answers_containing(b'"closed":{"code":4001', count=2)
            async with AsyncClient(proxy.url + "/poll", **FAST_RETRIES) as client:
                assert await client.receive(timeout=5000 * MS) == "last"
                await client.send("ok")
                with pytest.raises(SessionClosed) as caught:
                    await client.receive(timeout=5000 * MS)
                assert (caught.value.code, caught.value.reason) == (4001, "bye")
            assert proxy.count("drop_response", "GET") == 2 and proxy.count("status_410", "GET") >= 1

    run(main())


def test_a_forgotten_session_closes_with_1006(adapter: str) -> None:
    async def main() -> None:
        with serve(adapter, make_handler(echo)) as first, serve(adapter, make_handler(echo)) as second:
            with FaultProxy(first) as proxy:
                client = AsyncClient(proxy.url + "/poll", poll_wait=100 * MS)
                await client.open()
                await client.send("a")
                assert await client.receive(timeout=5000 * MS) == "a"
                proxy.upstream = second  # a "restarted" server that never saw the session
                with pytest.raises(SessionClosed) as caught:
                    await client.receive(timeout=5000 * MS)
                assert caught.value.code == 1006
                assert "no longer knows this session" in caught.value.reason
                assert client.closed and client.close_code == 1006
                await client.close()
                assert proxy.count("status_410") >= 1

    run(main())


def test_spent_retries_close_with_1006(adapter: str) -> None:
    async def main() -> None:
        with serve(adapter, make_handler(echo)) as base, FaultProxy(base) as proxy:
            client = AsyncClient(proxy.url + "/poll", max_retries=2, **FAST_RETRIES)
            await client.open()
            proxy.plan = FaultPlan(reset_request=1.0)
            with pytest.raises(SessionClosed) as caught:
                await client.receive(timeout=5000 * MS)
            assert caught.value.code == 1006
            assert "gave up after 2 retries" in caught.value.reason
            await client.close()
            assert proxy.count("reset_request") >= 3

    run(main())


def test_a_dead_server_cannot_hang_a_request() -> None:
    # A listener that accepts connections and never answers: every request must end at its deadline.
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)  # accepted by the kernel, never read

    async def main() -> None:
        port = listener.getsockname()[1]
        client = AsyncClient(f"http://127.0.0.1:{port}/poll", request_timeout=100 * MS, max_retries=1,
                             **FAST_RETRIES)
        started = time.monotonic()
        with pytest.raises(httpx.TransportError, match="open failed"):
            await client.open()
        # Two attempts of at most 2 * request_timeout each, and one short backoff.
        assert time.monotonic() - started < 2000 * MS
        await client.close()
        assert client.closed

    try:
        run(main())
    finally:
        listener.close()


def test_cancelling_the_caller_inside_async_with_closes_the_session(adapter: str) -> None:
    codes: queue.Queue[Any] = queue.Queue()

    watch = recording_close(codes)

    async def main() -> None:
        with serve(adapter, make_handler(watch)) as base:
            entered = asyncio.Event()
            seen: list[AsyncClient] = []

            async def user() -> None:
                async with AsyncClient(base + "/poll") as client:
                    seen.append(client)
                    entered.set()
                    await client.receive()  # waits for a message that never comes

            task = asyncio.create_task(user())
            await asyncio.wait_for(entered.wait(), 5000 * MS)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # run() checks that no client task is left; the server saw the DELETE.
            assert seen[0].closed and seen[0].close_code == 1000
            assert await atake(codes, "the coroutine to see the close") == 1000

    run(main())


# -- backpressure and limits -------------------------------------------------


def test_a_coroutine_that_does_not_read_yet_gets_everything_later(adapter: str) -> None:
    gate = threading.Event()
    got: queue.Queue[Any] = queue.Queue()

    async def slow_reader(session: Session) -> None:
        await asyncio.get_running_loop().run_in_executor(None, gate.wait, 10.0)
        async for data in session:
            got.put(data)

    handler = make_handler(slow_reader, inbox_limit=4, retry_after=0)
    count = 40

    async def main() -> None:
        with serve(adapter, handler) as base, FaultProxy(base) as proxy:
            try:
                async with AsyncClient(proxy.url + "/poll", retry_base_delay=20 * MS,
                                       retry_max_delay=200 * MS) as client:
                    for i in range(count):
                        await client.send(i)
                    await await_until(lambda: proxy.count("status_429", "POST") >= 2, "the inbox to be full")
                    with pytest.raises(TimeoutError):
                        await client.flush(timeout=0)
                    gate.set()
                    await client.flush(timeout=5000 * MS)
                    assert await asyncio.to_thread(take_all, got, count) == list(range(count))
            finally:
                gate.set()  # before the server stops: its loop waits for the executor thread

    run(main())


def test_flush_times_out_while_the_server_does_not_take_messages(adapter: str) -> None:
    gate = threading.Event()

    async def stalled(session: Session) -> None:
        await asyncio.get_running_loop().run_in_executor(None, gate.wait, 10.0)

    async def main() -> None:
        with serve(adapter, make_handler(stalled, inbox_limit=1)) as base:
            try:
                client = AsyncClient(base + "/poll")
                await client.open()
                for i in range(3):
                    await client.send(i)
                started = time.monotonic()
                with pytest.raises(TimeoutError):
                    await client.flush(timeout=200 * MS)
                assert time.monotonic() - started >= 200 * MS
                await client.close(timeout=0)
            finally:
                gate.set()

    run(main())


def test_limits_are_checked_when_sending(adapter: str) -> None:
    async def main() -> None:
        with serve(adapter, make_handler(echo, max_message_size=100, max_body_size=300)) as base:
            async with AsyncClient(base + "/poll") as client:
                with pytest.raises(MessageTooLarge):
                    await client.send("x" * 101)
                with pytest.raises(MessageTooLarge):
                    await client.send("\x00" * 60)  # 60 bytes, but six times that once escaped
                with pytest.raises(ValueError):
                    await client.send(float("nan"))
                for bad in ("lone \ud800", {"k": ["ok", "\udfff"]}, {"\ud800": 1}):
                    with pytest.raises(ValueError):
                        await client.send(bad)
                await client.send("x" * 100)
                # Nothing refused was queued: the first message the server echoes is the good one.
                assert await client.receive(timeout=5000 * MS) == "x" * 100
                await client.flush(timeout=5000 * MS)
                with pytest.raises(TimeoutError):
                    await client.receive(timeout=50 * MS)

    run(main())


def test_a_413_closes_the_session_with_1009_and_the_servers_message(adapter: str) -> None:
    codes: queue.Queue[Any] = queue.Queue()

    watch = recording_close(codes, echoing=True)

    async def main() -> None:
        # The open answer is rewritten to claim bigger limits than the server's, which answers 413.
        http = rewrite_open_answer(lambda document: document.update(max_message_size=1 << 20,
                                                                    max_body_size=1 << 20))
        async with http:
            with serve(adapter, make_handler(watch, max_message_size=100, max_body_size=300)) as base:
                async with AsyncClient(base + "/poll", session=http) as client:
                    await client.send("small")
                    assert await client.receive(timeout=5000 * MS) == "small"
                    await client.send("x" * 1000)
                    with pytest.raises(SessionClosed) as caught:
                        await client.receive(timeout=5000 * MS)
                    assert caught.value.code == 1009
                    assert "exceeds max_body_size" in caught.value.reason and "300" in caught.value.reason
                    assert (client.close_code, client.close_reason) == (1009, caught.value.reason)
                assert await atake(codes, "the coroutine to see the DELETE") == 1000

    run(main())


def test_an_open_answer_of_another_version_raises_at_once(adapter: str) -> None:
    async def main() -> None:
        async with rewrite_open_answer(lambda document: document.update(version=2)) as http:
            with serve(adapter, make_handler(echo)) as base:
                started = time.monotonic()
                client = AsyncClient(base + "/poll", session=http, retry_base_delay=1.0, retry_max_delay=1.0)
                with pytest.raises(ProtocolError, match="version 2"):
                    async with client:
                        pass
                assert time.monotonic() - started < 1.0  # not retried
                assert client.closed

    run(main())


def test_a_malformed_open_answer_is_retried_until_the_budget_is_spent(adapter: str) -> None:
    async def main() -> None:
        async with rewrite_open_answer(lambda document: document.update(messages={"not": "a list"})) as http:
            with serve(adapter, make_handler(echo)) as base, FaultProxy(base) as proxy:
                client = AsyncClient(proxy.url + "/poll", session=http, max_retries=2, **FAST_RETRIES)
                with pytest.raises(ProtocolError, match="unreadable open answer"):
                    await client.open()
                await client.close()
                assert proxy.count("status_200", "GET") == 3

    run(main())


def test_a_retry_after_date_is_honoured() -> None:
    # Timeline as for Client: the second client's open meets 503, whose Retry-After is rewritten
    # into an HTTP date 2 s ahead; it must not ask again before the date (> 1 s after the 503).
    answers: list[tuple[float, int]] = []

    async def main() -> None:
        got_503 = asyncio.Event()  # the transport runs on this loop: it can set an asyncio event

        def to_date(request: httpx.Request, status: int, headers: dict[str, str],
                    body: bytes) -> tuple[int, dict[str, str], bytes]:
            if status == 503:
                headers = {key: value for key, value in headers.items() if key.lower() != "retry-after"}
                headers["Retry-After"] = email.utils.formatdate(time.time() + 2, usegmt=True)
                got_503.set()
            answers.append((time.monotonic(), status))
            return status, headers, body

        async with httpx.AsyncClient(transport=Rewriting(to_date)) as http:
            with serve("tornado", make_handler(echo, max_sessions=1, retry_after=0)) as base:
                first = AsyncClient(base + "/poll")
                second = AsyncClient(base + "/poll", session=http, **FAST_RETRIES)
                try:
                    await first.open()
                    opening = asyncio.create_task(second.open())
                    await asyncio.wait_for(got_503.wait(), 5000 * MS)
                    await first.close()
                    await asyncio.wait_for(opening, 10_000 * MS)
                    await second.send("through")
                    assert await second.receive(timeout=5000 * MS) == "through"
                finally:
                    await first.close()
                    await second.close()
        (refused_at, refused), (opened_at, opened) = answers[0], answers[1]
        assert (refused, opened) == (503, 200)
        assert opened_at - refused_at > 1.0

    run(main())


def test_a_long_poll_waits_its_hold_plus_the_margin(adapter: str) -> None:
    timeouts: list[tuple[str, str | None, dict[str, float]]] = []

    async def record(request: httpx.Request) -> None:
        timeouts.append((request.method, request.url.params.get("wait"), dict(request.extensions["timeout"])))

    async def main() -> None:
        async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
            with serve(adapter, make_handler(echo)) as base:
                async with AsyncClient(base + "/poll", session=http, request_timeout=0.5, poll_wait=1.0) as client:
                    await client.send("x")
                    assert await client.receive(timeout=5000 * MS) == "x"
        quick = {"connect": 0.5, "read": 0.5, "write": 0.5, "pool": 0.5}
        assert timeouts[0] == ("GET", None, quick)  # the open
        polls = [timeout for method, wait, timeout in timeouts if method == "GET" and wait == "1"]
        assert polls and all(timeout["read"] == 1.0 + POLL_MARGIN and timeout["connect"] == 0.5
                             for timeout in polls)
        assert ("POST", None, quick) in timeouts

    run(main())


def test_receive_times_out_with_the_builtin_timeout_error(adapter: str) -> None:
    async def main() -> None:
        with serve(adapter, make_handler(echo)) as base:
            async with AsyncClient(base + "/poll") as client:
                started = time.monotonic()
                with pytest.raises(TimeoutError):
                    await client.receive(timeout=100 * MS)
                assert time.monotonic() - started >= 100 * MS

    run(main())


# -- opening -------------------------------------------------------------------


def test_a_refused_open_raises_the_servers_error(adapter: str) -> None:
    def refuse(request: Any) -> None:
        raise Unauthorized("token required")

    async def main() -> None:
        with serve(adapter, make_handler(echo, authenticate=refuse)) as base:
            client = AsyncClient(base + "/poll")
            with pytest.raises(Unauthorized) as caught:
                async with client:
                    pass
            assert caught.value.message == "token required"
            assert client.closed

    run(main())


def test_nothing_happens_before_open(adapter: str) -> None:
    async def main() -> None:
        with serve(adapter, make_handler(echo)) as base:
            client = AsyncClient(base + "/poll")
            assert client.sid is None and not client.closed
            with pytest.raises(RuntimeError):
                await client.send("too early")
            with pytest.raises(RuntimeError):
                await client.receive(timeout=0)
            async with client:
                assert client.sid
                await client.send("now")
                assert await client.receive(timeout=5000 * MS) == "now"
                with pytest.raises(RuntimeError):
                    await client.open()  # once only
            assert client.closed

    run(main())


def test_open_retries_while_the_server_is_unreachable(adapter: str) -> None:
    async def main() -> None:
        with serve(adapter, make_handler(echo)) as base, FaultProxy(base) as proxy:
            proxy.reset_next_opens(2)
            async with AsyncClient(proxy.url + "/poll", **FAST_RETRIES) as client:
                await client.send("hi")
                assert await client.receive(timeout=5000 * MS) == "hi"
            assert proxy.count("reset_request", "GET") == 2

    run(main())


@pytest.mark.parametrize("settings", [{"poll_wait": 0}, {"poll_wait": -1}, {"request_timeout": 0},
                                      {"max_retries": -1}, {"retry_base_delay": 0}])
def test_nonsense_settings_are_refused_before_any_request(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AsyncClient("http://127.0.0.1:9/poll", **settings)


# -- packaging and shared rules --------------------------------------------------


def test_without_httpx_the_import_error_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['httpx'] = None\n"
        "import pollsession, pollsession.client\n"  # importing the package needs no httpx
        "try:\n    pollsession.AsyncClient\nexcept ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'pollsession[async]'" in out


def test_importing_pollsession_does_not_import_httpx() -> None:
    code = "import sys, pollsession, pollsession.client; print('httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# The vectors of kinds "answer", "encode" and "inbound" drive the decision functions both clients
# call (classify_answer, encode_message, Inbound), which tests/test_vectors_client.py runs already;
# the kinds that read a client's own defaults run here once more, with AsyncClient's.
CLIENT_VECTORS = [case for case in vectors.CASES if case.values[0].get("kind") in ("backoff", "defaults")]


def test_there_are_vectors_about_the_clients_defaults() -> None:
    assert CLIENT_VECTORS


@pytest.mark.parametrize("case", CLIENT_VECTORS)
def test_vector_with_the_async_clients_defaults(case: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vectors, "Client", AsyncClient)
    vectors.RUNNERS[case["kind"]](case)


# -- the shared decisions (pollsession.client.core), as plain calls -------------------


def test_exchange_step_decides_as_both_clients_must() -> None:
    ok, retry = Outcome(OutcomeKind.OK), Outcome(OutcomeKind.RETRY)
    throttled = Outcome(OutcomeKind.THROTTLED, ack=1)
    told = Outcome(OutcomeKind.CLOSE, code=4001, reason="bye")
    forgotten = Outcome(OutcomeKind.CLOSE, code=1006)
    assert exchange_step(RequestKind.POLL, ok, 200) == ExchangeStep(Step.USE)
    assert exchange_step(RequestKind.PUSH, throttled, 429) == ExchangeStep(Step.USE)
    assert exchange_step(RequestKind.POLL, throttled, 429) == ExchangeStep(Step.RETRY)  # a rate-limiting proxy
    assert exchange_step(RequestKind.POLL, retry, None) == ExchangeStep(Step.RETRY)
    # A push's 410 with the close leaves it to the poller; without one the session ends, with no DELETE.
    assert exchange_step(RequestKind.PUSH, told, 410) == ExchangeStep(Step.STOP)
    assert exchange_step(RequestKind.PUSH, forgotten, 410) == ExchangeStep(Step.END, delete=False)
    assert exchange_step(RequestKind.POLL, told, 410) == ExchangeStep(Step.END, delete=False)
    assert exchange_step(RequestKind.PUSH, Outcome(OutcomeKind.CLOSE, code=1009), 413) == \
        ExchangeStep(Step.END, delete=True)


def test_open_error_names_what_open_raises() -> None:
    refused = open_error(Outcome(OutcomeKind.CLOSE, code=1006), 401, b'{"error":"x","message":"no"}', None, "")
    assert isinstance(refused, Unauthorized) and refused.message == "no"
    assert isinstance(open_error(Outcome(OutcomeKind.CLOSE, code=1002, reason="v2"), 200, b"{}", None, ""),
                      ProtocolError)
    assert open_error(Outcome(OutcomeKind.RETRY, reason="reset"), None, None, None, "") is None  # the network's
    assert isinstance(open_error(Outcome(OutcomeKind.RETRY, reason="bad"), 200, b"{", None, ""), ProtocolError)


def test_the_core_keeps_one_close_and_refuses_what_it_must() -> None:
    core = ClientCore(poll_wait=None, request_timeout=1.0, max_retries=1, retry_base_delay=0.1,
                      retry_max_delay=1.0, random=random.random)
    with pytest.raises(RuntimeError):
        core.next_message()
    assert not core.decide_close(4000, "not open yet")
    assert core.close_unopened(4000, "never opened") and core.phase is Phase.CLOSED
    assert not core.close_unopened(1000, "") and (core.close_code, core.close_reason) == (4000, "never opened")
    with pytest.raises(SessionClosed):
        core.next_message()


def test_a_decided_close_ends_receiving_before_the_cleanup_request_is_answered() -> None:
    """CLOSING already raises: a server that is stopping may never answer the final poll or DELETE."""
    core = ClientCore(poll_wait=None, request_timeout=1.0, max_retries=1, retry_base_delay=0.1,
                      retry_max_delay=1.0, random=random.random)
    core.begin_open()
    hello = b'{"version":1,"sid":"s","poll_timeout":25,"session_timeout":60,"inbox_limit":64,' \
            b'"max_message_size":1024,"max_body_size":4096,"messages":[],"closed":null}'
    assert core.opened(classify_answer(RequestKind.OPEN, 200, {"Content-Type": "application/json"}, hello))
    last = classify_answer(RequestKind.POLL, 200, {"Content-Type": "application/json"},
                           b'{"messages":[{"seq":1,"type":"text","data":"last"}],"closed":{"code":1001,"reason":"x"}}')
    assert core.deliver(last) and not core.ended
    assert core.decide_close(1001, "x") and core.phase is Phase.CLOSING and core.ended
    assert core.next_message() == (True, "last")  # what came before the close first
    with pytest.raises(SessionClosed) as caught:
        core.next_message()
    assert (caught.value.code, caught.value.reason) == (1001, "x")
    assert core.mark_closed() and core.ended

"""The Python client against real servers (both adapters), directly and through a faulty proxy.

Every test runs once per adapter. Servers hold polls for at most ``POLL``
seconds, so a test that waits for a poll to come back waits at most that long;
anything the server's coroutine observes is reported through a thread-safe
queue, and tests wait on those queues (or on the client) with deadlines.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from pollsession import HttpHandler, MessageTooLarge, ProtocolError, Session, SessionClosed, Unauthorized
from pollsession.client import Client
from pollsession.protocol.wire import POLL_MARGIN
from tests.fault_proxy import FaultPlan, FaultProxy
from tests.utils import ALL_ADAPTERS, MS, serve, wait_until

POLL = 2000 * MS  # the servers' poll_timeout
CLIENT_THREADS = ("pollsession-poller-", "pollsession-sender-")
FAST_RETRIES: dict[str, Any] = {"retry_base_delay": 10 * MS, "retry_max_delay": 200 * MS}


@pytest.fixture(params=ALL_ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def no_client_threads_left() -> Iterator[None]:
    """Every client a test opens must be closed, and close() must leave no thread behind."""
    yield
    wait_until(
        lambda: not [t for t in threading.enumerate() if t.name.startswith(CLIENT_THREADS) and t.is_alive()],
        timeout=5000 * MS,
        what="client threads to end",
    )


def make_handler(target: Callable[[Session], Any], **settings: Any) -> HttpHandler:
    options: dict[str, Any] = {"poll_timeout": POLL, "shutdown_timeout": 1.0}
    options.update(settings)
    return HttpHandler(target, **options)


async def echo(session: Session) -> None:
    async for data in session:
        await session.send(data)


def rewrite_open_answer(http: requests.Session, change: Callable[[dict[str, Any]], None]) -> None:
    """Make ``http`` change every opening answer's JSON (what a misconfigured proxy in front of the server might do)."""

    def hook(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        if response.request.method == "GET" and "Pollsession-Id" not in response.request.headers \
                and response.status_code == 200:
            document = response.json()
            change(document)
            response._content = json.dumps(document).encode()
        return response

    http.hooks["response"].append(hook)


def recording_close(codes: queue.Queue[Any], *, echoing: bool = False) -> Callable[[Session], Any]:
    """A target that reads (and, ``echoing``, sends back) every message, then puts its close code in ``codes``."""

    async def watch(session: Session) -> None:
        async for data in session:
            if echoing:
                await session.send(data)
        codes.put(session.close_code)

    return watch


def take(events: queue.Queue[Any], what: str) -> Any:
    try:
        return events.get(timeout=5000 * MS)
    except queue.Empty:
        raise AssertionError(f"timed out waiting for {what}") from None


def take_all(events: queue.Queue[Any], count: int) -> list[Any]:
    return [take(events, f"item {i + 1} of {count}") for i in range(count)]


# -- delivery ---------------------------------------------------------------


def test_echo_text_binary_and_json_in_order(adapter: str) -> None:
    values: list[Any] = [
        "hello",
        "",
        "ünïcødé ☃ \U0001f600",
        bytes(range(256)),
        b"",
        {"nested": [1, 2.5, None, True, {"k": "v"}]},
        [],
        0,
        None,
        "last",
    ]
    with serve(adapter, make_handler(echo)) as base, Client(base + "/poll") as client:
        for value in values:
            client.send(value)
        received = [client.receive(timeout=5000 * MS) for _ in values]
        client.flush(timeout=5000 * MS)
    assert received == values
    assert isinstance(received[3], bytes)
    assert client.closed and client.close_code == 1000


FAULTS = FaultPlan(reset_request=0.06, drop_response=0.10, truncate_response=0.04)
"""The faults of the 10,000-message runs: with seed 19 every kind meets GETs and POSTs early."""


def ten_thousand_each_way(upstream: str, *, timeout: float) -> None:
    """10,000 messages each way through a ``FaultProxy`` (seed 19, :data:`FAULTS`) in front of an echo at
    ``upstream``; asserts that nothing was lost, doubled or reordered and that every kind of fault was seen.

    The echo maps each message the server's coroutine receives to one it sends back, so an exact,
    ordered round trip means nothing was lost or doubled in either direction.
    """
    count = 10_000
    with FaultProxy(upstream, seed=19, plan=FAULTS) as proxy:
        with Client(proxy.url + "/poll", max_retries=30, **FAST_RETRIES) as client:
            for i in range(count):
                client.send(i)
            received = [client.receive(timeout=timeout) for _ in range(count)]
            client.flush(timeout=timeout)
            with pytest.raises(TimeoutError):
                client.receive(timeout=50 * MS)  # nothing doubled at the end either
    assert received == list(range(count))
    assert_every_fault_seen(proxy)


def assert_every_fault_seen(proxy: FaultProxy) -> None:
    """Every kind of fault of :data:`FAULTS` met both GETs and POSTs (else the run proved less than it claims)."""
    for fate in ("reset_request", "drop_response", "truncate_response"):
        for method in ("GET", "POST"):
            assert proxy.count(fate, method) > 0, (fate, method, proxy.counts)


def test_ten_thousand_messages_each_way_through_a_faulty_proxy(adapter: str) -> None:
    # Batches of up to 250 make at least 40 POSTs and 40 poll answers. With seed 19 the first
    # twelve GETs and the first twelve POSTs already meet every kind of fault (the proxy draws
    # one random stream per method), and the 429s of a full inbox mix in (retry_after=0).
    handler = make_handler(echo, inbox_limit=250, outbox_limit=250, retry_after=0)
    with serve(adapter, handler) as base:
        ten_thousand_each_way(base, timeout=10_000 * MS)


def test_greeting_in_the_opening_answer_is_delivered_once(adapter: str) -> None:
    async def greet(session: Session) -> None:
        await session.send("welcome")
        await echo(session)

    with serve(adapter, make_handler(greet)) as base, Client(base + "/poll") as client:
        assert client.receive(timeout=5000 * MS) == "welcome"
        client.send("ping")
        assert client.receive(timeout=5000 * MS) == "ping"


def test_headers_cookies_and_a_callers_session_reach_the_server(adapter: str) -> None:
    seen: queue.Queue[Any] = queue.Queue()

    async def record(session: Session) -> None:
        seen.put((session.request.headers.get("x-token"), session.request.cookies))
        await echo(session)

    http = requests.Session()
    http.headers["User-Agent"] = "pollsession-test"
    with serve(adapter, make_handler(record)) as base:
        with Client(base + "/poll", headers={"X-Token": "t0k"}, cookies={"flavour": "oat"}, session=http) as client:
            client.send("x")
            assert client.receive(timeout=5000 * MS) == "x"
        assert take(seen, "the opening request") == ("t0k", {"flavour": "oat"})
        # The caller's session is the caller's: the client did not close it.
        assert http.get(base + "/poll", params={"test": "1"}, timeout=5).text == "ok"
    http.close()


# -- closing ------------------------------------------------------------------


def test_client_close_is_seen_by_the_coroutine_as_1000(adapter: str) -> None:
    codes: queue.Queue[Any] = queue.Queue()

    watch = recording_close(codes)

    with serve(adapter, make_handler(watch)) as base:
        client = Client(base + "/poll")
        client.send("before close")
        started = time.monotonic()
        client.close()
        # DELETE answers the held poll at once: closing does not wait out poll_timeout.
        assert time.monotonic() - started < POLL
        assert take(codes, "the coroutine to see the close") == 1000
        assert client.closed and (client.close_code, client.close_reason) == (1000, "")
        with pytest.raises(SessionClosed) as caught:
            client.receive(timeout=0)
        assert caught.value.code == 1000
        with pytest.raises(SessionClosed):
            client.send("after close")
        client.close()  # idempotent
        # The server forgot the session at once.
        gone = requests.get(base + "/poll", headers={"Pollsession-Id": client.sid or ""}, timeout=5)
        assert gone.status_code == 410


def test_server_close_raises_its_code_and_reason_after_the_last_messages(adapter: str) -> None:
    async def farewell(session: Session) -> None:
        await session.receive()
        await session.send("one")
        await session.send("two")
        await session.close(4001, "bye")

    with serve(adapter, make_handler(farewell)) as base:
        with Client(base + "/poll") as client:
            client.send("go")
            assert client.receive(timeout=5000 * MS) == "one"
            assert client.receive(timeout=5000 * MS) == "two"
            with pytest.raises(SessionClosed) as caught:
                client.receive(timeout=5000 * MS)
            assert (caught.value.code, caught.value.reason) == (4001, "bye")
            assert client.closed and (client.close_code, client.close_reason) == (4001, "bye")
            with pytest.raises(SessionClosed):
                client.send("too late")
        assert client.close_code == 4001  # close() keeps the server's code
        # close() waited for the final poll, which carried the last ack: the server has
        # forgotten the session already (its session_timeout is far off).
        gone = requests.get(base + "/poll", headers={"Pollsession-Id": client.sid or ""}, timeout=5)
        assert gone.status_code == 410


def test_iteration_ends_when_the_server_closes(adapter: str) -> None:
    async def count_to_three(session: Session) -> None:
        for i in range(3):
            await session.send(i)

    with serve(adapter, make_handler(count_to_three)) as base, Client(base + "/poll") as client:
        assert list(client) == [0, 1, 2]
        assert client.close_code == 1000


def test_server_close_while_the_client_still_sends(adapter: str) -> None:
    async def read_five(session: Session) -> None:
        for _ in range(5):
            await session.receive()
        await session.close(4002, "enough")

    with serve(adapter, make_handler(read_five, inbox_limit=8)) as base:
        with Client(base + "/poll", **FAST_RETRIES) as client:
            for i in range(200):
                client.send(i)
            with pytest.raises(SessionClosed) as caught:
                client.flush(timeout=5000 * MS)
            with pytest.raises(SessionClosed) as received:
                client.receive(timeout=5000 * MS)
            assert received.value.code == 4002
            assert caught.value.code == 4002


def test_the_close_survives_losing_every_answer_that_carried_it(adapter: str) -> None:
    async def farewell(session: Session) -> None:
        await session.send("last")
        await session.receive()  # the client has "last" (and acks it with its next poll)
        await session.close(4001, "bye")

    with serve(adapter, make_handler(farewell)) as base, FaultProxy(base) as proxy:
        # Timeline: the answer carrying the close is lost; the retried poll, whose ack is the
        # last seq, makes the server forget the session, and its answer is lost too. The 410
        # that answers the next retry still says how the session ended.
        proxy.drop_answers_containing(b'"closed":{"code":4001', count=2)
        with Client(proxy.url + "/poll", **FAST_RETRIES) as client:
            assert client.receive(timeout=5000 * MS) == "last"
            client.send("ok")
            with pytest.raises(SessionClosed) as caught:
                client.receive(timeout=5000 * MS)
            assert (caught.value.code, caught.value.reason) == (4001, "bye")
        assert proxy.count("drop_response", "GET") == 2 and proxy.count("status_410", "GET") >= 1


def test_a_forgotten_session_closes_with_1006(adapter: str) -> None:
    # A "restarted" server: the proxy sends the next requests to a server that never saw the session.
    with serve(adapter, make_handler(echo)) as first, serve(adapter, make_handler(echo)) as second:
        with FaultProxy(first) as proxy:
            client = Client(proxy.url + "/poll", poll_wait=100 * MS)
            client.send("a")
            assert client.receive(timeout=5000 * MS) == "a"
            proxy.upstream = second
            with pytest.raises(SessionClosed) as caught:
                client.receive(timeout=5000 * MS)
            assert caught.value.code == 1006
            assert "no longer knows this session" in caught.value.reason
            assert client.closed and client.close_code == 1006
            client.close()
            assert proxy.count("status_410") >= 1


def test_spent_retries_close_with_1006(adapter: str) -> None:
    with serve(adapter, make_handler(echo)) as base, FaultProxy(base) as proxy:
        client = Client(proxy.url + "/poll", max_retries=2, **FAST_RETRIES)
        proxy.plan = FaultPlan(reset_request=1.0)
        with pytest.raises(SessionClosed) as caught:
            client.receive(timeout=5000 * MS)
        assert caught.value.code == 1006
        assert "gave up after 2 retries" in caught.value.reason
        client.close()
        assert proxy.count("reset_request") >= 3


# -- backpressure and limits -------------------------------------------------


def test_a_coroutine_that_does_not_read_yet_gets_everything_later(adapter: str) -> None:
    gate = threading.Event()
    got: queue.Queue[Any] = queue.Queue()

    async def slow_reader(session: Session) -> None:
        await asyncio.get_running_loop().run_in_executor(None, gate.wait, 10.0)
        async for data in session:
            got.put(data)

    # retry_after=0 keeps the test short; the client waits at least the backoff of consecutive 429s.
    handler = make_handler(slow_reader, inbox_limit=4, retry_after=0)
    count = 40
    with serve(adapter, handler) as base, FaultProxy(base) as proxy:
        try:
            with Client(proxy.url + "/poll", retry_base_delay=20 * MS, retry_max_delay=200 * MS) as client:
                for i in range(count):
                    client.send(i)
                wait_until(lambda: proxy.count("status_429", "POST") >= 2, what="the inbox to be full")
                with pytest.raises(TimeoutError):
                    client.flush(timeout=0)
                gate.set()
                client.flush(timeout=5000 * MS)
                assert take_all(got, count) == list(range(count))
        finally:
            gate.set()  # before the server stops: its loop waits for the executor thread


def test_flush_times_out_while_the_server_does_not_take_messages(adapter: str) -> None:
    gate = threading.Event()

    async def stalled(session: Session) -> None:
        await asyncio.get_running_loop().run_in_executor(None, gate.wait, 10.0)

    with serve(adapter, make_handler(stalled, inbox_limit=1)) as base:
        try:
            client = Client(base + "/poll")
            for i in range(3):
                client.send(i)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                client.flush(timeout=200 * MS)
            assert time.monotonic() - started >= 200 * MS
            client.close(timeout=0)
        finally:
            gate.set()  # before the server stops: its loop waits for the executor thread


def test_limits_are_checked_when_sending(adapter: str) -> None:
    with serve(adapter, make_handler(echo, max_message_size=100, max_body_size=300)) as base:
        with Client(base + "/poll") as client:
            with pytest.raises(MessageTooLarge):
                client.send("x" * 101)
            with pytest.raises(MessageTooLarge):
                client.send("\x00" * 60)  # 60 bytes, but six times that once escaped
            with pytest.raises(ValueError):
                client.send(float("nan"))
            # A lone surrogate is refused, never replaced: changing the data silently is a loss.
            for bad in ("lone \ud800", {"k": ["ok", "\udfff"]}, {"\ud800": 1}):
                with pytest.raises(ValueError):
                    client.send(bad)
            client.send("x" * 100)
            # Nothing refused was queued: the first message the server echoes is the good one.
            assert client.receive(timeout=5000 * MS) == "x" * 100
            client.flush(timeout=5000 * MS)
            with pytest.raises(TimeoutError):
                client.receive(timeout=50 * MS)


def test_a_413_closes_the_session_with_1009_and_the_servers_message(adapter: str) -> None:
    # The server takes bodies of up to 300 bytes, but its open answer is rewritten to claim more,
    # so the client sends a body the server refuses with 413: retrying cannot help, the session ends.
    codes: queue.Queue[Any] = queue.Queue()

    watch = recording_close(codes, echoing=True)

    http = requests.Session()
    rewrite_open_answer(http, lambda document: document.update(max_message_size=1 << 20, max_body_size=1 << 20))
    with serve(adapter, make_handler(watch, max_message_size=100, max_body_size=300)) as base:
        with Client(base + "/poll", session=http) as client:
            client.send("small")
            assert client.receive(timeout=5000 * MS) == "small"
            client.send("x" * 1000)
            with pytest.raises(SessionClosed) as caught:
                client.receive(timeout=5000 * MS)
            assert caught.value.code == 1009
            assert "exceeds max_body_size" in caught.value.reason and "300" in caught.value.reason
            assert (client.close_code, client.close_reason) == (1009, caught.value.reason)
        assert take(codes, "the coroutine to see the DELETE") == 1000  # the client told the server
    http.close()


def test_an_open_answer_of_another_version_raises_at_once(adapter: str) -> None:
    http = requests.Session()
    rewrite_open_answer(http, lambda document: document.update(version=2))
    with serve(adapter, make_handler(echo)) as base:
        started = time.monotonic()
        with pytest.raises(ProtocolError, match="version 2"):
            Client(base + "/poll", session=http, retry_base_delay=1.0, retry_max_delay=1.0)
        assert time.monotonic() - started < 1.0  # not retried
    http.close()


def test_a_malformed_open_answer_is_retried_until_the_budget_is_spent(adapter: str) -> None:
    http = requests.Session()
    rewrite_open_answer(http, lambda document: document.update(messages={"not": "a list"}))
    with serve(adapter, make_handler(echo)) as base, FaultProxy(base) as proxy:
        with pytest.raises(ProtocolError, match="unreadable open answer"):
            Client(proxy.url + "/poll", session=http, max_retries=2, **FAST_RETRIES)
        assert proxy.count("status_200", "GET") == 3
    http.close()


def test_a_retry_after_date_is_honoured() -> None:
    # Timeline: one session fills the target (max_sessions=1). The second client's open meets
    # 503, whose Retry-After (0 s from the server) is rewritten into an HTTP date 2 s ahead;
    # the first client closes at once. The second must not ask again before the date, which,
    # with a date's whole seconds, lies more than 1 s after the 503.
    answers: list[tuple[float, int]] = []
    lock = threading.Lock()

    def to_date(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        if response.status_code == 503:
            response.headers["Retry-After"] = email.utils.formatdate(time.time() + 2, usegmt=True)
        with lock:
            answers.append((time.monotonic(), response.status_code))
        return response

    http = requests.Session()
    http.hooks["response"].append(to_date)
    with serve("tornado", make_handler(echo, max_sessions=1, retry_after=0)) as base:
        first = Client(base + "/poll")
        second = Client(base + "/poll", session=http, open=False, **FAST_RETRIES)
        opening = threading.Thread(target=second.open, name="test-opening")
        opening.start()
        try:
            wait_until(lambda: answers, what="the 503")
            first.close()
            opening.join(10_000 * MS)
            assert not opening.is_alive()
            second.send("through")
            assert second.receive(timeout=5000 * MS) == "through"
        finally:
            first.close()
            second.close()
    http.close()
    (refused_at, refused), (opened_at, opened) = answers[0], answers[1]
    assert (refused, opened) == (503, 200)
    assert opened_at - refused_at > 1.0


def test_a_long_poll_waits_its_hold_plus_the_margin(adapter: str) -> None:
    timeouts: list[tuple[str, Any, Any]] = []

    class Recording(requests.Session):
        def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
            timeouts.append((str(method), kwargs.get("params"), kwargs.get("timeout")))
            assert isinstance(method, str)
            return super().request(method, url, *args, **kwargs)

    http = Recording()
    with serve(adapter, make_handler(echo)) as base:
        with Client(base + "/poll", session=http, request_timeout=0.5, poll_wait=1.0) as client:
            client.send("x")
            assert client.receive(timeout=5000 * MS) == "x"
    http.close()
    assert timeouts[0] == ("GET", None, (0.5, 0.5))  # the open
    polls = [timeout for method, params, timeout in timeouts if method == "GET" and params and "wait" in params
             and params["wait"] == "1"]
    assert polls and set(polls) == {(0.5, 1.0 + POLL_MARGIN)}
    assert ("POST", None, (0.5, 0.5)) in timeouts


def test_receive_times_out_with_the_builtin_timeout_error(adapter: str) -> None:
    with serve(adapter, make_handler(echo)) as base, Client(base + "/poll") as client:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            client.receive(timeout=100 * MS)
        assert time.monotonic() - started >= 100 * MS


# -- opening -------------------------------------------------------------------


def test_a_refused_open_raises_the_servers_error(adapter: str) -> None:
    def refuse(request: Any) -> None:
        raise Unauthorized("token required")

    with serve(adapter, make_handler(echo, authenticate=refuse)) as base:
        with pytest.raises(Unauthorized) as caught:
            Client(base + "/poll")
        assert caught.value.message == "token required"


def test_open_false_defers_until_the_with_block(adapter: str) -> None:
    with serve(adapter, make_handler(echo)) as base:
        client = Client(base + "/poll", open=False)
        assert client.sid is None and not client.closed
        with pytest.raises(RuntimeError):
            client.send("too early")
        with client:
            assert client.sid
            client.send("now")
            assert client.receive(timeout=5000 * MS) == "now"
        assert client.closed


def test_open_retries_while_the_server_is_unreachable(adapter: str) -> None:
    with serve(adapter, make_handler(echo)) as base, FaultProxy(base) as proxy:
        proxy.reset_next_opens(2)
        with Client(proxy.url + "/poll", **FAST_RETRIES) as client:
            client.send("hi")
            assert client.receive(timeout=5000 * MS) == "hi"
        assert proxy.count("reset_request", "GET") == 2


@pytest.mark.parametrize("settings", [{"poll_wait": 0}, {"poll_wait": -1}, {"request_timeout": 0},
                                      {"max_retries": -1}, {"retry_base_delay": 0}])
def test_nonsense_settings_are_refused_before_any_request(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Client("http://127.0.0.1:9/poll", open=False, **settings)

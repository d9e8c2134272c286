"""Connections on every adapter: keep-alive after early answers, no leaked requests, timeouts.

Real servers on loopback. Where a test waits for the server to do something
(free a request, close a connection), it waits on that condition with a
deadline; durations are multiples of ``MS``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from pollsession import HttpHandler, Session
from tests.utils import ALL_ADAPTERS, MS, RawConnection, serve, wait_until

TORNADO = [adapter for adapter in ALL_ADAPTERS if adapter.startswith("tornado")]


async def idle(session: Session) -> None:
    await session.wait_closed()


def make_handler(**options: Any) -> HttpHandler:
    options.setdefault("shutdown_timeout", 1)
    return HttpHandler(idle, **options)


@pytest.fixture
def client() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False
        yield session


# -- 2. a body that never completes frees its request --------------------------------


def live_request_handlers() -> int:
    from pollsession.adapters.tornado import SessionRequestHandler

    gc.collect()
    return sum(1 for item in gc.get_objects() if isinstance(item, SessionRequestHandler))


@pytest.mark.parametrize("adapter", TORNADO)
@pytest.mark.parametrize("framing", ["Content-Length: 1", "Transfer-Encoding: chunked"])
def test_aborted_uploads_leave_no_request_behind(adapter: str, framing: str) -> None:
    with serve(adapter, make_handler()) as base:
        before = live_request_handlers()
        for _ in range(200):
            with RawConnection(base) as connection:
                connection.send(f"POST /poll HTTP/1.1\r\nHost: {connection.host}\r\nPollsession-Id: x\r\n"
                                f"Content-Type: application/json\r\n{framing}\r\n\r\n".encode())
            # closed with the body still to come
        # Every one of them ends once Tornado has seen its connection close.
        wait_until(lambda: live_request_handlers() <= before, what="the aborted requests to be freed")
        # And the server still answers.
        with RawConnection(base) as connection:
            connection.send(f"GET /poll?test=1 HTTP/1.1\r\nHost: {connection.host}\r\n\r\n".encode())
            assert connection.response().body == b"ok"


# -- 4. early answers and keep-alive ---------------------------------------------------


@pytest.mark.parametrize("adapter", ALL_ADAPTERS)
def test_put_patch_get_in_turn_on_one_client_never_fail(adapter: str, client: requests.Session) -> None:
    errors: list[str] = []
    with serve(adapter, make_handler()) as base:
        for number in range(600):
            method = ("PUT", "PATCH", "GET")[number % 3]
            try:
                if method == "GET":
                    response = client.get(base + "/poll", params={"test": "1"}, timeout=10)
                    assert response.status_code == 200 and response.text == "ok"
                else:
                    response = client.request(method, base + "/poll", data=b'{"messages": []}' * 20,
                                              headers={"Content-Type": "application/json"}, timeout=10)
                    assert response.status_code == 405, (response.status_code, response.text)
                    assert response.json()["error"] == "method_not_allowed"
                    assert response.headers["Allow"] == "GET, POST, DELETE, OPTIONS"
            except requests.ConnectionError as error:
                errors.append(f"{number} {method}: {error}")
    assert errors == []


@pytest.mark.parametrize("adapter", TORNADO)
def test_tornado_keeps_the_connection_after_a_405_it_read_whole(adapter: str) -> None:
    with serve(adapter, make_handler()) as base, RawConnection(base) as connection:
        for method in ("PUT", "PATCH", "HEAD"):
            connection.send(f"{method} /poll HTTP/1.1\r\nHost: {connection.host}\r\nContent-Length: 5\r\n\r\n"
                            f"hello".encode())
            response = connection.response(head=method == "HEAD")
            assert response.status == 405 and not response.closes, (method, response.headers)
        connection.send(f"GET /poll?test=1 HTTP/1.1\r\nHost: {connection.host}\r\n\r\n".encode())
        assert connection.response().body == b"ok"


@pytest.mark.parametrize("adapter", ALL_ADAPTERS)
def test_an_answer_before_the_body_says_connection_close(adapter: str, client: requests.Session) -> None:
    with serve(adapter, make_handler()) as base:
        with RawConnection(base) as connection:
            # A method Tornado has no handler method for is answered before its body is read.
            connection.send(f"PROPFIND /poll HTTP/1.1\r\nHost: {connection.host}\r\nContent-Length: 5\r\n\r\n"
                            f"hello".encode())
            response = connection.response()
            assert response.status == 405 and response.json()["error"] == "method_not_allowed"
            if not response.closes:  # then it must serve the next request on the connection
                connection.send(f"GET /poll?test=1 HTTP/1.1\r\nHost: {connection.host}\r\n\r\n".encode())
                assert connection.response().body == b"ok"
            else:
                assert connection.wait_closed() == b""
        for number in range(200):  # and a client reusing its connections never hits a reset
            method = ("PROPFIND", "GET")[number % 2]
            response = client.request(method, base + "/poll", params={"test": "1"} if method == "GET" else None,
                                      data=b"x" * 100 if method != "GET" else None, timeout=10)
            assert response.status_code == (200 if method == "GET" else 405)


# -- 5. idle connections ---------------------------------------------------------------------

TIMEOUT = 300 * MS


@pytest.fixture(params=TORNADO)
def timed_base(request: pytest.FixtureRequest) -> Iterator[str]:
    from pollsession.adapters.tornado import server_options

    handler = make_handler(poll_timeout=4 * TIMEOUT)
    options = server_options(handler, idle_connection_timeout=TIMEOUT, body_timeout=TIMEOUT)
    with serve(request.param, handler, tornado_options=options) as base:
        yield base


def closes_after_a_while(connection: RawConnection) -> float:
    started = time.monotonic()
    assert connection.wait_closed() == b""  # recv's deadline is the connection's timeout
    return time.monotonic() - started


@pytest.mark.parametrize("sent", [b"", b"GET /poll HTTP/1.1\r\nHost: 127.0.0.1\r\n"], ids=["nothing", "half-a-head"])
def test_a_connection_without_a_whole_head_is_closed(timed_base: str, sent: bytes) -> None:
    with RawConnection(timed_base, timeout=30 * TIMEOUT) as connection:
        connection.send(sent)
        assert closes_after_a_while(connection) >= TIMEOUT / 2  # by the timer, not by a refusal


def test_a_body_that_stops_arriving_is_dropped(timed_base: str) -> None:
    with RawConnection(timed_base, timeout=30 * TIMEOUT) as connection:
        connection.send(f"POST /poll HTTP/1.1\r\nHost: {connection.host}\r\nPollsession-Id: x\r\n"
                        f"Content-Type: application/json\r\nContent-Length: 10\r\n\r\n{{".encode())
        assert closes_after_a_while(connection) >= TIMEOUT / 2


def test_an_idle_keep_alive_connection_is_closed_but_a_held_poll_is_not(timed_base: str) -> None:
    with RawConnection(timed_base, timeout=30 * TIMEOUT) as connection:
        connection.send(f"GET /poll HTTP/1.1\r\nHost: {connection.host}\r\n\r\n".encode())
        sid = connection.response().json()["sid"]
        # A poll held for longer than the idle timeout still gets its answer...
        connection.send(f"GET /poll?wait={3 * TIMEOUT:.3f} HTTP/1.1\r\nHost: {connection.host}\r\n"
                        f"Pollsession-Id: {sid}\r\n\r\n".encode())
        started = time.monotonic()
        response = connection.response()
        assert response.status == 200 and response.json()["messages"] == []
        assert time.monotonic() - started >= 2 * TIMEOUT
        # ...then the connection, idle, is closed.
        assert closes_after_a_while(connection) >= TIMEOUT / 2


def test_server_options_are_the_documented_httpserver_arguments() -> None:
    import tornado.httpserver
    import tornado.web

    from pollsession.adapters.tornado import server_options

    handler = make_handler(max_body_size=256 * 1024, max_message_size=64 * 1024)
    options = server_options(handler)
    assert options == {"idle_connection_timeout": 30.0, "body_timeout": 30.0, "max_body_size": 100 * 1024 * 1024}
    big = server_options(make_handler(max_body_size=200 * 1024 * 1024), idle_connection_timeout=5)
    assert big["idle_connection_timeout"] == 5 and big["body_timeout"] == 200 * 16
    assert big["max_body_size"] > 200 * 1024 * 1024
    tornado.httpserver.HTTPServer(tornado.web.Application([]), **options)  # accepted as they are

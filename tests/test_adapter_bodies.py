"""Request bodies on every adapter: bounded reads whatever the framing, JSON refusals.

Each test speaks raw HTTP/1.1 to a real server (``RawConnection``), because
the clients that matter here misbehave: a chunk size of 2**72 bytes, a body
of 64 MiB for a 16 KiB limit, chunked framing that breaks, a body cut off.
Nothing sleeps: a test sends part of a request, then reads the answer with a
deadline, and only then (if at all) sends the rest, so "answered before the
body arrived" is a fact of the timeline, not a race.
"""

from __future__ import annotations

import gc
import socket
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from pollsession import HttpHandler, Session
from tests.utils import ALL_ADAPTERS, RawConnection, RawResponse, serve

LIMIT = 16 * 1024
BIG = 64 * 1024 * 1024  # what the attacker streams; never held in memory at once
PIECE = b"x" * (64 * 1024)
# Peak Python memory allowed while one 64 MiB body is refused: the server keeps
# LIMIT + 1 bytes, reads in 64 KiB pieces, and werkzeug's development server
# drains what is left with 10 MB reads. Reading the body whole would need 64 MiB.
PEAK = 24 * 1024 * 1024


async def record(session: Session) -> None:
    async for _ in session:
        pass


@pytest.fixture(scope="module", params=ALL_ADAPTERS)
def base(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = HttpHandler(record, max_body_size=LIMIT, max_message_size=4096, shutdown_timeout=1)
    with serve(request.param, handler) as url:
        yield url


@pytest.fixture
def adapter(base: str, request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["base"])


def open_session(base: str) -> str:
    with requests.Session() as client:
        client.trust_env = False
        response = client.get(base + "/poll", timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["sid"])


def post_head(connection: RawConnection, sid: str, framing: str) -> bytes:
    return (f"POST /poll HTTP/1.1\r\nHost: {connection.host}\r\nPollsession-Id: {sid}\r\n"
            f"Content-Type: application/json\r\n{framing}\r\n\r\n").encode()


def assert_json_error(response: RawResponse, *statuses: int) -> dict[str, Any]:
    assert response.status in statuses, (response.status, response.body[:300])
    assert (response.header("content-type") or "").startswith("application/json"), response.headers
    document = response.json()
    assert isinstance(document, dict) and isinstance(document.get("error"), str), document
    assert isinstance(document.get("message"), str), document
    return document


def stream_rest(connection: RawConnection, total: int, *, chunked: bool) -> int:
    """Send ``total`` more body bytes in 64 KiB pieces until the server stops taking them; return how many went."""
    sent = 0
    frame = b"%x\r\n" % len(PIECE)
    try:
        while sent < total:
            connection.send(frame + PIECE + b"\r\n" if chunked else PIECE)
            sent += len(PIECE)
        if chunked:
            connection.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server closed after its answer, as it may
    return sent


def assert_still_serving(base: str, sid: str) -> None:
    """The server answers a new connection, and session ``sid`` took no message from what came before."""
    with requests.Session() as client:
        client.trust_env = False
        answer = client.post(base + "/poll", headers={"Pollsession-Id": sid, "Content-Type": "application/json"},
                             data=b'{"messages": []}', timeout=10)
    assert answer.status_code == 200 and answer.json() == {"ack": 0}, answer.text


# -- 1. bounded reads ------------------------------------------------------------


def test_an_absurd_chunk_size_is_refused_at_once_in_bounded_memory(base: str, adapter: str) -> None:
    sid = open_session(base)
    tracemalloc.start()
    try:
        with RawConnection(base) as connection:
            # A chunk of 2**72 - 1 bytes, two of them sent, then the end of the stream:
            # reading it whole drove werkzeug's server to gigabytes (zeros past the end).
            connection.send(post_head(connection, sid, "Transfer-Encoding: chunked") + b"ffffffffffffffffff\r\nab")
            connection.sock.shutdown(socket.SHUT_WR)  # the client sends nothing more, ever
            if adapter == "asgi":
                # uvicorn takes the client's FIN for a disconnect (http.disconnect mid-body): nobody to answer.
                assert connection.wait_closed() == b""
            else:
                response = connection.response()
                connection.wait_closed()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    if adapter == "asgi":
        assert_still_serving(base, sid)
    elif adapter == "flask":
        # The chunk is cut off by the end of the stream: a 400, not a 413 over filler
        # bytes that werkzeug's dechunker pads a short read with.
        assert assert_json_error(response, 400)["error"] == "bad_body"
    else:
        # Tornado's HTTP layer refuses a chunk beyond its own limit before any handler
        # runs, with a bare 400 (documented in the adapter; nothing to answer JSON with).
        assert response.status == 400
    assert peak < PEAK, f"{peak / 2**20:.1f} MiB traced while refusing one request"


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_64_mib_body_is_answered_before_it_is_sent(base: str, chunked: bool) -> None:
    sid = open_session(base)
    with RawConnection(base) as connection:
        if chunked:  # no declared size: the server must stop after LIMIT + 1 bytes
            connection.send(post_head(connection, sid, "Transfer-Encoding: chunked")
                            + b"%x\r\n" % len(PIECE) + PIECE + b"\r\n")
        else:  # the declared size is enough to refuse it
            connection.send(post_head(connection, sid, f"Content-Length: {BIG}"))
        # The answer comes while the client still holds back almost all of the body.
        response = connection.response()
        document = assert_json_error(response, 413)
        assert document["error"] == "body_too_large"
        assert response.closes, response.headers
        # Now the client insists and sends the rest: the server closes, or drains and closes.
        stream_rest(connection, BIG - (len(PIECE) if chunked else 0), chunked=chunked)
        try:
            connection.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # already reset by the server
        assert connection.wait_closed() == b"", "nothing may follow the answer on that connection"


def test_refusing_a_64_mib_body_stays_in_bounded_memory(base: str) -> None:
    sid = open_session(base)
    gc.collect()
    tracemalloc.start()
    try:
        with RawConnection(base) as connection:
            connection.send(post_head(connection, sid, "Transfer-Encoding: chunked")
                            + b"%x\r\n" % len(PIECE) + PIECE + b"\r\n")
            assert_json_error(connection.response(), 413)
            stream_rest(connection, BIG - len(PIECE), chunked=True)
            try:
                connection.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            connection.wait_closed()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK, f"{peak / 2**20:.1f} MiB traced while refusing a 64 MiB body"


def test_an_oversized_body_gets_the_answer_the_order_of_checks_gives(base: str) -> None:
    # The adapter stops reading; the core still decides: an unknown session is 410, not 413.
    with RawConnection(base) as connection:
        connection.send(post_head(connection, "no-such-session", "Transfer-Encoding: chunked")
                        + b"%x\r\n" % len(PIECE) + PIECE + b"\r\n")
        response = connection.response()
        assert_json_error(response, 410)
        assert response.closes


def test_after_an_early_answer_no_leftover_byte_is_taken_for_a_request(base: str) -> None:
    sid = open_session(base)
    with RawConnection(base) as connection:
        # The rest of the body looks like a request; it must never be answered as one.
        smuggled = f"GET /poll?test=1 HTTP/1.1\r\nHost: {connection.host}\r\n\r\n".encode()
        body = PIECE + smuggled
        connection.send(post_head(connection, sid, f"Content-Length: {LIMIT + len(smuggled) + 1}")
                        + body[: LIMIT + len(smuggled) + 1])
        response = connection.response()
        assert_json_error(response, 413)
        assert response.closes
        try:
            connection.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        assert connection.wait_closed() == b""


def test_a_body_of_exactly_the_limit_is_read_whole_and_keeps_the_connection(base: str, adapter: str) -> None:
    sid = open_session(base)
    batch = b'{"messages": [{"seq": 1, "type": "text", "data": "hi"}]}'
    body = batch + b" " * (LIMIT - len(batch))
    with RawConnection(base) as connection:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:5000], body[5000:]))
        connection.send(post_head(connection, sid, "Transfer-Encoding: chunked") + chunks + b"0\r\n\r\n")
        response = connection.response()
        assert response.status == 200 and response.json() == {"ack": 1}
        if adapter != "flask":  # werkzeug's development server closes every connection
            assert not response.closes
            connection.send(f"GET /poll?test=1 HTTP/1.1\r\nHost: {connection.host}\r\n\r\n".encode())
            assert connection.response().body == b"ok"


# -- 3. framing errors are the protocol's JSON errors --------------------------------

BROKEN = {
    "bad-chunk-size": b"zz\r\nhello\r\n0\r\n\r\n",
    "chunk-without-crlf": b"5\r\nhelloXX0\r\n\r\n",
}


@pytest.mark.parametrize("framing", list(BROKEN), ids=list(BROKEN))
def test_broken_chunked_framing_is_a_400(base: str, adapter: str, framing: str) -> None:
    sid = open_session(base)
    with RawConnection(base) as connection:
        connection.send(post_head(connection, sid, "Transfer-Encoding: chunked") + BROKEN[framing])
        response = connection.response()
        if adapter == "flask":  # werkzeug raised OSError: a 500 HTML page before
            assert_json_error(response, 400)
        elif adapter == "asgi":  # uvicorn's h11 refuses the framing itself while the adapter reads the body
            assert (response.status, response.body) == (400, b"Invalid HTTP request received."), response.headers
            assert response.closes
        else:  # Tornado's HTTP layer answers framing errors itself (see the adapter's docstring)
            assert response.status == 400
    # The session took no message and still works.
    with requests.Session() as client:
        client.trust_env = False
        answer = client.post(base + "/poll", headers={"Pollsession-Id": sid, "Content-Type": "application/json"},
                             data=b'{"messages": [{"seq": 1, "type": "text", "data": "fine"}]}', timeout=10)
    assert answer.status_code == 200 and answer.json() == {"ack": 1}


def test_a_body_cut_off_by_the_end_of_the_stream_is_a_json_400_or_no_answer(base: str, adapter: str) -> None:
    sid = open_session(base)
    with RawConnection(base) as connection:
        connection.send(post_head(connection, sid, "Content-Length: 200") + b'{"messages": [{"seq": 1, ')
        connection.sock.shutdown(socket.SHUT_WR)
        rest = connection.wait_closed()
    if adapter == "flask":  # werkzeug's HTML 400 before
        head, _, body = rest.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), rest[:300]
        assert b"application/json" in head and b'"error"' in body, rest[:300]
    else:  # Tornado, and uvicorn (http.disconnect), take the end of the stream for a client gone: nobody to answer
        assert rest == b""
        assert_still_serving(base, sid)


@pytest.mark.parametrize("declared", [str(200 * 1024 * 1024), "9" * 40, "9" * 5000],
                         ids=["past-tornados-limit", "40-digits", "5000-digits"])
def test_an_absurd_content_length_is_a_json_413(base: str, adapter: str, declared: str) -> None:
    sid = open_session(base)
    with RawConnection(base) as connection:
        connection.send(post_head(connection, sid, f"Content-Length: {declared}"))
        response = connection.response()
        if adapter == "asgi" and len(declared) > 20:
            # uvicorn's h11 refuses a Content-Length of over 20 digits before any ASGI app runs: a bare 400.
            assert (response.status, response.body) == (400, b"Invalid HTTP request received."), response.headers
            assert response.closes and connection.wait_closed() == b""
            assert_still_serving(base, sid)
            return
        assert assert_json_error(response, 413)["error"] == "body_too_large"
        assert response.closes

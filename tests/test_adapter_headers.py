"""Headers that frameworks read differently, read one way on every adapter.

Raw HTTP/1.1 (``RawConnection``), because HTTP clients tidy exactly what
these tests need to send: whitespace around a field value, and the headers
of a WebSocket handshake sent to a plain long-poll URL.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pollsession import HttpHandler, Session
from tests.test_adapter_bodies import open_session
from tests.utils import ALL_ADAPTERS, RawConnection, serve


async def record(session: Session) -> None:
    async for _ in session:
        pass


@pytest.fixture(scope="module", params=ALL_ADAPTERS)
def base(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = HttpHandler(record, shutdown_timeout=1)
    with serve(request.param, handler) as url:
        yield url


@pytest.mark.parametrize("padding", [" ", "\t", " \t "], ids=["space", "tab", "mixed"])
def test_whitespace_around_a_header_value_is_not_part_of_it(base: str, padding: str) -> None:
    # RFC 9110, 5.5: optional whitespace around a field value is not part of it
    # (werkzeug's development server kept a trailing tab: 410 before).
    sid = open_session(base)
    body = b'{"messages": [{"seq": 1, "type": "text", "data": "hi"}]}'
    with RawConnection(base) as connection:
        connection.send(
            f"POST /poll HTTP/1.1\r\nHost: {connection.host}\r\nPollsession-Id:{padding}{sid}{padding}\r\n"
            f"Content-Type:{padding}application/json{padding}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n".encode() + body
        )
        response = connection.response()
    assert response.status == 200, (response.status, response.body[:300])
    assert response.json() == {"ack": 1}


def test_a_websocket_handshake_is_a_get_like_any_other(base: str) -> None:
    # werkzeug routes "Upgrade: websocket" only to websocket rules: an HTML 400 before.
    with RawConnection(base) as connection:
        connection.send(
            f"GET /poll HTTP/1.1\r\nHost: {connection.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        response = connection.response()
    assert response.status == 200, (response.status, response.body[:300])
    assert (response.header("content-type") or "").startswith("application/json")
    document = response.json()
    assert document["version"] == 1 and document["sid"] == response.header("pollsession-id")


def test_other_methods_with_a_websocket_upgrade_still_reach_the_core(base: str) -> None:
    with RawConnection(base) as connection:
        connection.send(
            f"PUT /poll HTTP/1.1\r\nHost: {connection.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Content-Length: 0\r\n\r\n".encode()
        )
        response = connection.response()
    assert response.status == 405, (response.status, response.body[:300])
    assert response.json()["error"] == "method_not_allowed"

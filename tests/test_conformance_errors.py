"""Conformance with PROTOCOL.md, section 8 (errors, limits, the order of checks), with
the targets of section 1, and clients that misbehave.

See ``test_conformance.py`` for the layout of the suite.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from pollsession import HttpHandler
from tests.test_conformance_support import (
    SHARED_CONFIG,
    TIMEOUT,
    AppProbe,
    ConformanceServer,
    assert_error,
    make_app,
    make_server,
    raw_exchange,
    server,
    text,
)
from tests.utils import MS, wait_until

__all__ = ["make_server", "server"]  # fixtures, for pytest

BODY_LIMIT: int = SHARED_CONFIG["max_body_size"]
MESSAGE_LIMIT: int = SHARED_CONFIG["max_message_size"]


# -- 405 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
@pytest.mark.parametrize("with_sid", [False, True], ids=["no-id", "live-id"])
def test_other_methods_are_405_with_allow(server: ConformanceServer, method: str, with_sid: bool) -> None:
    sid = server.open()[0] if with_sid else None
    response = server.request(method, sid=sid, data=b"{}", headers={"Content-Type": "application/json"})
    assert_error(response, 405)
    allowed = {token.strip().upper() for token in response.headers["Allow"].split(",")}
    assert {"GET", "POST", "DELETE"} <= allowed and method not in allowed


def test_head_is_405_with_allow(server: ConformanceServer) -> None:
    response = server.request("HEAD")
    assert response.status_code == 405  # a HEAD answer has no body to check
    assert {"GET", "POST", "DELETE"} <= {token.strip().upper() for token in response.headers["Allow"].split(",")}


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND", "FROB"])
def test_any_other_method_is_405_with_allow_and_an_error_body(
    request: pytest.FixtureRequest, server: ConformanceServer, method: str
) -> None:
    response = server.request(method)
    assert_error(response, 405)
    allowed = {token.strip().upper() for token in response.headers["Allow"].split(",")}
    assert {"GET", "POST", "DELETE"} <= allowed and method not in allowed


# -- the order of checks ------------------------------------------------------------------------------

REFUSED = {"Origin": "https://refused.test"}


def _oversize_body() -> bytes:
    return b'{"messages": [' + b" " * BODY_LIMIT + b"]}"


ORDER = {
    # probe > origin
    "probe-before-origin": lambda s, sid: (s.request("GET", params={"test": "1"}, headers=REFUSED), 200),
    # origin > method
    "origin-before-method": lambda s, sid: (s.request("PUT", headers=REFUSED), 403),
    "origin-before-session-id": lambda s, sid: (s.poll("no-such-session", 0, headers=REFUSED), 403),
    # method > session id
    "method-before-unknown-id": lambda s, sid: (s.request("PATCH", sid="no-such-session"), 405),
    "method-before-missing-id": lambda s, sid: (s.request("PUT"), 405),
    # session id > content type > body size > shape
    "missing-id-before-media-type": lambda s, sid: (s.push_raw(None, b"{", content_type="text/plain"), 403),
    "missing-id-before-body-size": lambda s, sid: (s.push_raw(None, _oversize_body()), 403),
    "unknown-id-before-media-type": lambda s, sid: (s.push_raw("no-such-session", b"{}", content_type=None), 410),
    "unknown-id-before-body-size": lambda s, sid: (s.push_raw("no-such-session", _oversize_body()), 410),
    "unknown-id-before-shape": lambda s, sid: (s.push_raw("no-such-session", b"{"), 410),
    "unknown-id-before-seq": lambda s, sid: (s.push("no-such-session", [text(True, "x")]), 410),
    "unknown-id-before-message-size": lambda s, sid: (
        s.push("no-such-session", [text(1, "x" * (MESSAGE_LIMIT + 1))]), 410),
    "unknown-id-before-ack-syntax": lambda s, sid: (s.poll("no-such-session", "01"), 410),
    "unknown-id-before-repeated-ack": lambda s, sid: (
        s.request("GET", sid="no-such-session", params=[("ack", "0"), ("ack", "0")]), 410),
    "unknown-id-before-wait-syntax": lambda s, sid: (s.poll("no-such-session", 0, wait="-1"), 410),
    "media-type-before-body-size": lambda s, sid: (s.push_raw(sid, _oversize_body(), content_type="text/plain"), 415),
    "missing-media-type-before-shape": lambda s, sid: (s.push_raw(sid, b"{", content_type=None), 415),
    "body-size-before-shape": lambda s, sid: (s.push_raw(sid, b"{" + b"x" * BODY_LIMIT), 413),
    # shape and values > message size
    "shape-before-message-size": lambda s, sid: (
        s.push(sid, [text(1, "x" * (MESSAGE_LIMIT + 1)), {"seq": 2, "type": "blob", "data": ""}]), 400),
    "seq-before-message-size": lambda s, sid: (
        s.push(sid, [text(1, "x" * (MESSAGE_LIMIT + 1)), text(1.5, "y")]), 400),
    "base64-before-message-size": lambda s, sid: (
        s.push(sid, [text(1, "x" * (MESSAGE_LIMIT + 1)), {"seq": 2, "type": "binary", "data": "QR=="}]), 400),
}


@pytest.mark.parametrize("make_request", ORDER.values(), ids=ORDER.keys())
def test_checks_apply_in_the_protocol_order(server: ConformanceServer, make_request: Any) -> None:
    sid, _ = server.open()
    response, status = make_request(server, sid)
    if status == 200:
        assert response.text == "ok"
    else:
        assert_error(response, status)
    # Whatever was refused, the live session is untouched: seq 1 is still the next one.
    assert server.push_ok(sid, [text(1, "after")]) == 1


def test_a_gap_is_400_before_a_message_is_413(request: pytest.FixtureRequest, server: ConformanceServer) -> None:
    sid, _ = server.open()
    assert_error(server.push(sid, [text(2, "x" * (MESSAGE_LIMIT + 1))]), 400)


MULTIPART = "multipart/form-data; boundary=x"


@pytest.mark.parametrize(
    "make_request, status",
    [
        (lambda s: s.push_raw(None, b"{}", content_type=MULTIPART), 403),
        (lambda s: s.push_raw("no-such-session", b"{}", content_type=MULTIPART), 410),
        (lambda s: s.push_raw(None, b"{}", content_type=MULTIPART, headers=REFUSED), 403),
    ],
    ids=["no-id", "unknown-id", "refused-origin"],
)
def test_a_malformed_form_body_does_not_jump_the_order(
    request: pytest.FixtureRequest, server: ConformanceServer, make_request: Any, status: int
) -> None:
    assert_error(make_request(server), status)


# -- targets ----------------------------------------------------------------------------------------------


def test_a_session_belongs_to_the_url_that_opened_it(make_server: Any) -> None:
    srv = make_server(also_at={"/poll2": None}, **SHARED_CONFIG)  # the same handler, a second URL
    sid, _ = srv.open("greet")
    assert_error(srv.request("GET", sid=sid, path="/poll2", params={"ack": "1"}), 410)
    assert_error(srv.request("POST", sid=sid, path="/poll2", data=json.dumps({"messages": [text(1, "x")]}),
                             headers={"Content-Type": "application/json"}), 410)
    assert srv.request("DELETE", sid=sid, path="/poll2").status_code == 204  # harmless: unknown there
    # At its own URL the session is untouched: greeting unacked, seq 1 expected, not closed.
    assert srv.poll_ok(sid, 0, wait=0)["messages"][0]["data"] == "welcome"
    assert srv.push_ok(sid, [text(1, "x")]) == 1
    assert not srv.probe(sid).ended.is_set()
    other = srv.request("GET", path="/poll2").json()["sid"]
    assert_error(srv.poll(other, 0, wait=0), 410)


def test_each_target_has_its_own_sessions_and_limits(make_server: Any) -> None:
    other_probes: dict[str, AppProbe] = {}
    other = HttpHandler(make_app(other_probes), max_sessions=1, shutdown_timeout=1000 * MS)
    try:
        srv = make_server(also_at={"/other": other}, max_sessions=1)
        sid, _ = srv.open()
        response = srv.request("GET", path="/other")  # the first target's limit is not the second's
        assert response.status_code == 200
        other_sid = response.json()["sid"]
        assert other_sid in other_probes
        assert_error(srv.request("GET"), 503)
        assert_error(srv.request("GET", path="/other"), 503)
        assert_error(srv.request("GET", sid=other_sid, params={"wait": "0"}), 410)
        assert_error(srv.request("GET", sid=sid, path="/other", params={"wait": "0"}), 410)
    finally:
        other.close()


# -- bad requests do no harm ----------------------------------------------------------------------------


def _http(server: ConformanceServer, head: str, body: bytes = b"") -> bytes:
    host = urlsplit(server.base).netloc
    return f"{head}\r\nHost: {host}\r\n".encode() + body


def test_bad_requests_leave_every_session_working(server: ConformanceServer) -> None:
    echo, _ = server.open("echo")
    waiting, _ = server.open()
    held = server.in_background(server.poll_ok, waiting, 0)
    token = server.wait_held(waiting)

    bad: list[Callable[[str], requests.Response]] = [
        lambda sid: server.poll(sid, "01"),
        lambda sid: server.poll(sid, 7),
        lambda sid: server.request("GET", sid=sid, params=[("ack", "0"), ("ack", "0")]),
        lambda sid: server.push_raw(sid, b"{", content_type="application/json"),
        lambda sid: server.push_raw(sid, b"\xff\xfe", content_type="application/json"),
        lambda sid: server.push_raw(sid, b"{}", content_type="text/plain"),
        lambda sid: server.push(sid, [text(2, "gap")]),
        lambda sid: server.push(sid, [text(1, "x" * (MESSAGE_LIMIT + 1))]),
        lambda sid: server.push(sid, [{"seq": 1, "type": "binary", "data": "QR=="}]),
        lambda sid: server.push_raw(sid, b" " * (BODY_LIMIT + 1)),
        lambda sid: server.request("PUT", sid=sid),
        lambda sid: server.poll(sid, 0, headers=REFUSED),
        lambda sid: server.delete(sid, headers=REFUSED),
    ]
    for sid in (echo, waiting, "no-such-session"):
        for make_request in bad:
            response = make_request(sid)
            assert 400 <= response.status_code < 500, (response.status_code, response.text)
            assert_error(response, response.status_code)

    # Malformed HTTP, and a body cut short by a client that leaves: the server lives on.
    for raw in (
        b"GARBAGE\r\n\r\n",
        _http(server, "POST /poll HTTP/1.1\r\nContent-Length: nope") + b"\r\n",
        _http(server, f"POST /poll HTTP/1.1\r\nPollsession-Id: {echo}\r\nContent-Type: application/json"
                      f"\r\nContent-Length: 200") + b'\r\n{"messages": [{"seq": 1, ',
    ):
        raw_exchange(server.base, raw, read=False)
    assert server.request("GET", params={"test": "1"}).text == "ok"

    # The held poll was neither answered nor replaced, and gets its message.
    assert server.held_poll(waiting) is token and not held.done()
    server.send(waiting, "still here").result(TIMEOUT)
    assert held.result(TIMEOUT)["messages"] == [{"seq": 1, "type": "text", "data": "still here"}]
    # The echo session still expects seq 1 and answers it.
    assert server.push_ok(echo, [text(1, "ping")]) == 1
    assert server.poll_ok(echo, 0)["messages"] == [{"seq": 1, "type": "text", "data": "ping"}]
    assert server.probe(echo).received == [("text", "ping")]


def test_a_client_dropping_a_held_poll_loses_nothing(server: ConformanceServer) -> None:
    sid, _ = server.open("echo")
    parts = urlsplit(server.base)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT)
    sock.sendall(_http(server, f"GET /poll?ack=0 HTTP/1.1\r\nPollsession-Id: {sid}") + b"\r\n")
    token = server.wait_held(sid)
    sock.close()  # the client goes away while its poll is held
    if server.adapter.startswith("tornado"):  # Tornado notices and releases the hold
        wait_until(lambda: server.held_poll(sid) is not token, what="the dropped poll to be released")

    # The message goes out after the drop (maybe into the dead connection): a new poll gets it.
    assert server.push_ok(sid, [text(1, "after the drop")]) == 1
    assert server.poll_ok(sid, 0)["messages"] == [{"seq": 1, "type": "text", "data": "after the drop"}]
    assert server.poll_ok(sid, 0)["messages"] == [{"seq": 1, "type": "text", "data": "after the drop"}]
    assert server.push_ok(sid, [text(2, "again")]) == 2
    assert server.poll_ok(sid, 1)["messages"] == [{"seq": 2, "type": "text", "data": "again"}]
    assert not server.probe(sid).ended.is_set()

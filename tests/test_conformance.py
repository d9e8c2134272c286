"""Conformance with PROTOCOL.md, sections 1-3: endpoint and framing, messages, opening.

The suite runs every numbered rule of the wire protocol over real HTTP against
each adapter (the ``server`` and ``make_server`` fixtures are parametrized by
adapter). It is split by section:

* this file: 1 endpoint and framing, 2 messages, 3 opening (auth hook, limits);
* ``test_conformance_poll.py``: 4 the long poll, 9 backpressure;
* ``test_conformance_push.py``: 5 pushing, and the validity rules of section 2;
* ``test_conformance_close.py``: 6 closing, expiry, shutdown;
* ``test_conformance_origins.py``: 7 origins and CORS;
* ``test_conformance_errors.py``: 8 errors, limits and the order of checks,
  targets (section 1), and clients that misbehave.

Shared machinery (the server application, fixtures, request helpers) is in
``test_conformance_support.py``.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from pollsession import Forbidden, RequestInfo, Unauthorized
from tests.test_conformance_support import (
    SHARED_CONFIG,
    TIMEOUT,
    ConformanceServer,
    assert_error,
    binary,
    json_msg,
    make_server,
    media_type,
    raw_exchange,
    server,
    server_fixture,
    text,
)
from tests.utils import MS, wait_until

__all__ = ["auth_server", "make_server", "server"]  # fixtures, for pytest


# -- 1. Endpoint and framing ---------------------------------------------------------------


def test_probe_answers_ok_in_plain_text_and_opens_nothing(server: ConformanceServer) -> None:
    before = server.sessions_started
    response = server.request("GET", params={"test": "1"})
    assert response.status_code == 200
    assert media_type(response) == "text/plain"
    assert response.text == "ok"
    assert "Pollsession-Id" not in response.headers
    assert server.sessions_started == before


@pytest.mark.parametrize(
    "params, headers",
    [
        ([("test", "1")], {"Origin": "https://refused.example"}),
        ([("test", "1")], {"Pollsession-Id": "no-such-session"}),
        ([("test", "1"), ("ack", "01"), ("wait", "-1")], {}),
        ([("ack", "1e3"), ("test", "1"), ("ack", "2")], {"Origin": "null", "Pollsession-Id": "nope"}),
    ],
    ids=["refused-origin", "unknown-sid", "bad-query", "everything-wrong"],
)
def test_probe_answers_ok_whatever_else_the_request_carries(
    server: ConformanceServer, params: list[tuple[str, str]], headers: dict[str, str]
) -> None:
    before = server.sessions_started
    response = server.request("GET", params=params, headers=headers)
    assert (response.status_code, media_type(response), response.text) == (200, "text/plain", "ok")
    assert server.sessions_started == before


def test_probe_is_a_get_only(server: ConformanceServer) -> None:
    # POST ?test=1 is an ordinary POST: without a session id it is refused.
    assert_error(server.push(None, [], params={"test": "1"}), 403)
    assert_error(server.request("PUT", params={"test": "1"}), 405)


def test_session_ids_are_unguessable_and_url_safe(server: ConformanceServer) -> None:
    sids = {server.open()[0] for _ in range(6)}
    assert len(sids) == 6
    for sid in sids:
        # 128 bits need at least 22 characters of a 64-66 character URL-safe alphabet.
        assert re.fullmatch(r"[A-Za-z0-9._~-]{22,}", sid), sid


def test_session_id_header_name_is_case_insensitive(server: ConformanceServer) -> None:
    sid, _ = server.open("echo")
    response = server.push(None, [text(1, "hi")], headers={"pollsession-id": sid})
    assert response.status_code == 200 and response.json() == {"ack": 1}
    response = server.request("GET", params={"ack": "0"}, headers={"POLLSESSION-ID": sid})
    assert response.status_code == 200
    assert response.json()["messages"] == [{"seq": 1, "type": "text", "data": "hi"}]


def test_an_empty_session_id_counts_as_absent(server: ConformanceServer) -> None:
    # GET with an empty id opens a session (sent raw, so the empty header surely travels).
    port = server.base.rsplit(":", 1)[1]
    answer = raw_exchange(
        server.base,
        f"GET /poll HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nPollsession-Id: \r\nConnection: close\r\n\r\n".encode(),
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b'"version"' in body and b'"sid"' in body, body[:200]
    assert_error(server.push("", []), 403)
    assert server.delete("").status_code == 204


def test_session_id_is_never_read_from_the_url(server: ConformanceServer) -> None:
    sid, _ = server.open("greet")
    response = server.request("GET", params={"Pollsession-Id": sid, "sid": sid, "ack": "1"})
    assert response.status_code == 200
    document = response.json()
    assert document["sid"] != sid  # no id header: this opened a new session
    assert server.poll_ok(sid, 0, wait=0)["messages"][0]["data"] == "welcome"  # and acked nothing


# -- 2. Messages: each type, both directions -------------------------------------------------

TEXTS = [
    "", "hello", "héllo wörld", "日本語", "astral 😀 𝄞",
    'quote " backslash \\', "\x00\x01\x1f\n\t\r", "\u2028\u2029\ufeff",
]
JSON_VALUES: list[Any] = [
    {"x": 1, "nested": {"list": [{"deep": [[]]}]}},
    [1, "two", None, True, False, 2.5],
    "a json string stays json",
    0,
    -1.5,
    2**53,
    1.7976931348623157e308,
    5e-324,
    True,
    False,
    None,
    {"unicode": "😀 é", "": ""},
]
BINARIES = [b"", b"\x00", b"\xff\xfe", b"abc", bytes(range(256)), bytes(range(255, -1, -1)) * 3]


def _push_in_batches(server: ConformanceServer, sid: str, messages: list[dict[str, Any]]) -> None:
    """Push without ever overfilling the inbox: batches of inbox_limit, each read before the next."""
    probe = server.probe(sid)
    limit = SHARED_CONFIG["inbox_limit"]
    for start in range(0, len(messages), limit):
        batch = messages[start : start + limit]
        assert server.push_ok(sid, batch) == batch[-1]["seq"]
        wait_until(lambda: len(probe.received) >= batch[-1]["seq"], what="the app to read the batch")


def _collect(server: ConformanceServer, sid: str, count: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while len(got) < count:
        got.extend(server.poll_ok(sid, len(got))["messages"])
    return got


@pytest.mark.parametrize(
    "kind, values",
    [("text", TEXTS), ("json", JSON_VALUES), ("binary", BINARIES)],
)
def test_every_message_type_round_trips(server: ConformanceServer, kind: str, values: list[Any]) -> None:
    sid, _ = server.open("echo")
    build = {"text": text, "json": json_msg, "binary": binary}[kind]
    messages = [build(seq, value) for seq, value in enumerate(values, 1)]
    _push_in_batches(server, sid, messages)

    # The application got Python values: str, decoded JSON, bytes.
    received = server.probe(sid).received
    assert [got_kind for got_kind, _ in received] == [kind] * len(values)
    if kind == "json":  # compare as JSON text, so that 0 and False, 1 and 1.0 differ
        assert [json.dumps(data) for _, data in received] == [json.dumps(value) for value in values]
    else:
        assert [data for _, data in received] == values
    # The echoes come back numbered from 1, with the same type, canonical on the wire.
    echoes = _collect(server, sid, len(values))
    assert echoes == messages


def test_binary_goes_out_as_standard_padded_base64(server: ConformanceServer) -> None:
    sid, _ = server.open()
    sent = [bytes(range(256)), b"\xfb\xff", b"\xff", b"\xff\xff"]
    for raw in sent:
        server.send(sid, raw).result(TIMEOUT)
    messages = _collect(server, sid, len(sent))
    assert [m["data"] for m in messages] == [base64.b64encode(raw).decode("ascii") for raw in sent]
    assert "+" in messages[0]["data"] and "/" in messages[0]["data"]  # the standard alphabet
    assert [m["data"] for m in messages[2:]] == ["/w==", "//8="]  # padded
    assert all(m["type"] == "binary" for m in messages)


@pytest.mark.parametrize(
    "message, fits",
    [
        (text(1, "é" * 2048), True),  # 4096 bytes of UTF-8 (2048 characters)
        (text(1, "é" * 2048 + "a"), False),
        (text(1, "a" * 4097), False),
        (binary(1, b"\x00" * 4096), True),  # the decoded bytes count, not the base64
        (binary(1, b"\x00" * 4097), False),
        (json_msg(1, "x" * 4094), True),  # '"xx…x"' is 4096 bytes
        (json_msg(1, "x" * 4095), False),
        (json_msg(1, "é" * 2047), True),  # compact UTF-8 JSON, not \\u escapes
        (json_msg(1, ["a" * 2044, "b" * 2045]), True),  # compact: the wire's ", " does not count
        (json_msg(1, ["a" * 2045, "b" * 2045]), False),
    ],
    ids=["text-4096", "text-4097", "ascii-4097", "binary-4096", "binary-4097", "json-4096",
         "json-4097", "json-utf8-4096", "json-compact-4096", "json-compact-4097"],
)
def test_message_size_is_the_size_the_application_sees(
    server: ConformanceServer, message: dict[str, Any], fits: bool
) -> None:
    assert SHARED_CONFIG["max_message_size"] == 4096
    sid, _ = server.open()
    response = server.push(sid, [message])
    if fits:
        assert response.status_code == 200 and response.json() == {"ack": 1}
        wait_until(lambda: server.probe(sid).received, what="the message to be read")
    else:
        assert_error(response, 413)
        assert server.push_ok(sid, [text(1, "small")]) == 1  # nothing was taken
        wait_until(lambda: server.probe(sid).received, what="the message to be read")
        assert server.probe(sid).received == [("text", "small")]


# -- 3. Opening a session ----------------------------------------------------------------------


def test_open_answer_carries_the_configuration_and_the_id_header(server: ConformanceServer) -> None:
    response = server.request("GET")
    assert response.status_code == 200
    assert media_type(response) == "application/json"
    document = response.json()
    assert response.headers["Pollsession-Id"] == document["sid"]
    assert document == {
        "version": 1,
        "sid": document["sid"],
        "poll_timeout": SHARED_CONFIG["poll_timeout"],
        "session_timeout": SHARED_CONFIG["session_timeout"],
        "inbox_limit": SHARED_CONFIG["inbox_limit"],
        "max_message_size": SHARED_CONFIG["max_message_size"],
        "max_body_size": SHARED_CONFIG["max_body_size"],
        "messages": [],
        "closed": None,
    }
    assert server.probe(document["sid"]).mode == "record"  # the coroutine was started


def test_open_answer_may_carry_a_greeting_which_stays_buffered(server: ConformanceServer) -> None:
    sid, document = server.open("greet")
    greeting = [{"seq": 1, "type": "text", "data": "welcome"}]
    assert document["messages"] == greeting and document["closed"] is None
    assert server.poll_ok(sid, 0, wait=0)["messages"] == greeting  # not acknowledged yet
    assert server.poll_ok(sid, 1, wait=0) == {"messages": [], "closed": None}


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("application/json", b'{"messages": [{"seq": 1, "type": "text", "data": "x"}]}'),
        ("application/x-www-form-urlencoded", b"messages=x"),  # a cross-site form post
        ("text/plain", b"not even json"),  # 403 comes before 415 and 400
    ],
)
def test_post_without_a_session_id_is_refused_and_opens_nothing(
    server: ConformanceServer, content_type: str, body: bytes
) -> None:
    before = server.sessions_started
    assert_error(server.push_raw(None, body, content_type=content_type), 403)
    assert server.sessions_started == before


class _Hook:
    """An authentication hook that records what it saw."""

    def __init__(self) -> None:
        self.calls: list[RequestInfo] = []

    def __call__(self, request: RequestInfo) -> Any:
        self.calls.append(request)
        token = request.headers.get("Authorization")
        if token is None:
            raise Unauthorized("log in first")
        if token == "Bearer banned":
            raise Forbidden("you are banned")
        if token == "Bearer false":
            return False
        return {
            "user": token.split()[1],
            "cookie": request.cookies.get("flavour"),
            "query": request.query.get("q"),
            "client": request.client_address,
        }


auth_server = server_fixture("auth_server", lambda: dict(SHARED_CONFIG, authenticate=_Hook()))


def test_authentication_hook_attaches_an_identity(auth_server: ConformanceServer) -> None:
    sid, document = auth_server.open(
        "identity", headers={"Authorization": "Bearer alice", "Cookie": "flavour=lemon"}, q="search"
    )
    identity = {"user": "alice", "cookie": "lemon", "query": "search", "client": "127.0.0.1"}
    assert document["messages"] == [{"seq": 1, "type": "json", "data": identity}]
    assert auth_server.probe(sid).session.identity == identity


@pytest.mark.parametrize(
    "headers, status",
    [({}, 401), ({"Authorization": "Bearer banned"}, 403), ({"Authorization": "Bearer false"}, 403)],
    ids=["unauthorized", "forbidden", "returned-false"],
)
def test_authentication_hook_refuses_with_an_error_body_and_no_session(
    auth_server: ConformanceServer, headers: dict[str, str], status: int
) -> None:
    hook, before = auth_server.config["authenticate"], auth_server.sessions_started
    calls = len(hook.calls)
    assert_error(auth_server.request("GET", headers=headers), status)
    assert len(hook.calls) == calls + 1
    assert auth_server.sessions_started == before


def test_authentication_hook_is_not_passed_by_the_probe_nor_by_refused_origins(auth_server: ConformanceServer) -> None:
    hook, before = auth_server.config["authenticate"], auth_server.sessions_started
    calls = len(hook.calls)
    assert auth_server.request("GET", params={"test": "1"}).text == "ok"
    refused = auth_server.request("GET", headers={"Origin": "https://elsewhere.example", "Authorization": "Bearer a"})
    assert_error(refused, 403)
    assert len(hook.calls) == calls  # the origin check (step 1) comes before the hook (step 2)
    assert auth_server.sessions_started == before


def test_authentication_comes_before_the_session_limit(make_server: Any) -> None:
    srv = make_server(authenticate=_Hook(), max_sessions=1, retry_after=2)
    srv.open(headers={"Authorization": "Bearer alice"})
    assert_error(srv.request("GET"), 401)  # step 2 refuses before step 3 would
    response = srv.request("GET", headers={"Authorization": "Bearer bob"})
    assert_error(response, 503)
    assert response.headers["Retry-After"] == "2"
    assert srv.sessions_started == 1


def test_session_limit_answers_503_and_counts_closed_sessions_until_forgotten(make_server: Any) -> None:
    srv = make_server(max_sessions=2, retry_after=3, poll_timeout=5000 * MS)
    finished, _ = srv.open("return")  # closes at once, but is not forgotten yet
    alive, _ = srv.open()
    response = srv.request("GET")
    assert_error(response, 503)
    assert response.headers["Retry-After"] == "3"
    assert srv.sessions_started == 2  # no session was created

    # Forget the closed session: an answer carrying closed, then ack = last seq.
    assert srv.poll_ok(finished, 0)["closed"] == {"code": 1000, "reason": ""}
    assert srv.poll_ok(finished, 1) == {"messages": [], "closed": {"code": 1000, "reason": ""}}
    assert_error(srv.poll(finished, 1), 410)
    srv.open()
    assert_error(srv.request("GET"), 503)
    assert srv.delete(alive).status_code == 204  # a DELETE forgets at once
    srv.open()
    assert srv.sessions_started == 4

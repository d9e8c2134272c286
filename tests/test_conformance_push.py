"""Conformance with PROTOCOL.md, section 5 (pushing), with the validity rules of section 2.

Every refused batch is checked to have delivered nothing: after it, the same
session accepts ``seq`` 1 and the application has read exactly that message.
See ``test_conformance.py`` for the layout of the suite.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.test_conformance_support import (
    SHARED_CONFIG,
    ConformanceServer,
    assert_error,
    binary,
    json_msg,
    server,
    text,
)
from tests.utils import wait_until

__all__ = ["server"]  # fixture, for pytest



def _read(server: ConformanceServer, sid: str, count: int) -> list[tuple[str, Any]]:
    """What the app has read once it has read ``count`` messages (a later extra one would show)."""
    probe = server.probe(sid)
    wait_until(lambda: len(probe.received) >= count, what=f"the app to read {count} messages")
    return list(probe.received)


def _delivers_nothing(server: ConformanceServer, sid: str) -> None:
    """The refused batch left no trace: seq 1 is still the next, and only it is read."""
    assert server.push_ok(sid, [text(1, "after")]) == 1
    assert _read(server, sid, 1) == [("text", "after")]


def _bad(server: ConformanceServer, body: bytes | str | list[dict[str, Any]], status: int = 400) -> None:
    sid, _ = server.open()
    response = server.push(sid, body) if isinstance(body, list) else server.push_raw(sid, body)
    assert_error(response, status)
    _delivers_nothing(server, sid)


# -- acks and de-duplication ------------------------------------------------------------------


def test_push_answers_the_highest_seq_held(server: ConformanceServer) -> None:
    sid, _ = server.open()
    assert server.push_ok(sid, []) == 0  # an empty batch answers the current M
    assert server.push_ok(sid, [text(1, "a")]) == 1
    assert server.push_ok(sid, [text(2, "b"), json_msg(3, {"c": 3})]) == 3
    assert server.push_ok(sid, []) == 3
    assert _read(server, sid, 3) == [("text", "a"), ("text", "b"), ("json", {"c": 3})]


def test_a_retried_push_never_delivers_a_message_twice(server: ConformanceServer) -> None:
    sid, _ = server.open()
    batch = [text(1, "a"), text(2, "b")]
    assert server.push_ok(sid, batch) == 2
    assert server.push_ok(sid, batch) == 2  # the answer "was lost"; same batch again
    assert server.push_ok(sid, [text(2, "b"), text(3, "c")]) == 3  # overlapping retry
    assert server.push_ok(sid, [text(1, "a")]) == 3
    assert server.push_ok(sid, [text(1, "a"), text(2, "b"), text(3, "c")]) == 3
    assert server.push_ok(sid, [text(4, "marker")]) == 4
    # Read in order, so a duplicate would sit before the marker.
    assert _read(server, sid, 4) == [("text", "a"), ("text", "b"), ("text", "c"), ("text", "marker")]


def test_a_gap_is_400_changes_nothing_and_a_later_valid_push_works(server: ConformanceServer) -> None:
    sid, _ = server.open()
    assert_error(server.push(sid, [text(2, "too soon")]), 400)  # a fresh session expects 1
    assert server.push_ok(sid, [text(1, "a")]) == 1
    assert_error(server.push(sid, [text(3, "c")]), 400)
    assert_error(server.push(sid, [text(3, "c"), text(4, "d")]), 400)
    assert_error(server.push(sid, [text(1, "a"), text(3, "c")]), 400)  # not consecutive
    assert server.push_ok(sid, []) == 1
    assert server.push_ok(sid, [text(2, "b")]) == 2
    assert _read(server, sid, 2) == [("text", "a"), ("text", "b")]


SEQ_BATCHES: dict[str, list[dict[str, Any]]] = {
    "true": [text(True, "x")],
    "false": [text(False, "x")],
    "float-1.0": [text(1.0, "x")],
    "float-1.5": [text(1.5, "x")],
    "zero": [text(0, "x")],
    "negative": [text(-1, "x")],
    "string": [text("1", "x")],
    "null": [text(None, "x")],
    "missing": [{"type": "text", "data": "x"}],
    "gap-in-batch": [text(1, "x"), text(3, "y")],
    "decreasing": [text(2, "x"), text(1, "y")],
    "repeated": [text(1, "x"), text(1, "y")],
    "then-true": [text(1, "x"), text(True, "y")],
    "then-float": [text(1, "x"), text(2.0, "y")],
    "then-bad-type": [text(1, "x"), {"seq": 2, "type": "blob", "data": "y"}],
}


@pytest.mark.parametrize("batch", SEQ_BATCHES.values(), ids=SEQ_BATCHES.keys())
def test_seq_rules_refuse_the_whole_batch(server: ConformanceServer, batch: list[dict[str, Any]]) -> None:
    _bad(server, batch)


def test_seq_in_exponent_notation_is_a_float(server: ConformanceServer) -> None:
    _bad(server, '{"messages": [{"seq": 1e0, "type": "text", "data": "x"}]}')


SHAPES: dict[str, bytes] = {
    "empty": b"",
    "truncated": b'{"messages": [',
    "null": b"null",
    "array": b"[]",
    "string": b'"messages"',
    "messages-null": b'{"messages": null}',
    "messages-object": b'{"messages": {}}',
    "no-messages": b'{"msgs": []}',
    "trailing-garbage": b'{"messages": []} x',
    "message-number": b'{"messages": [1]}',
    "message-array": b'{"messages": [[1, "text", "x"]]}',
    "no-type": b'{"messages": [{"seq": 1, "data": "x"}]}',
    "unknown-type": b'{"messages": [{"seq": 1, "type": "blob", "data": "x"}]}',
    "type-case": b'{"messages": [{"seq": 1, "type": "TEXT", "data": "x"}]}',
    "type-null": b'{"messages": [{"seq": 1, "type": null, "data": "x"}]}',
    "no-data": b'{"messages": [{"seq": 1, "type": "text"}]}',
    "text-number": b'{"messages": [{"seq": 1, "type": "text", "data": 5}]}',
    "text-null": b'{"messages": [{"seq": 1, "type": "text", "data": null}]}',
    "binary-number": b'{"messages": [{"seq": 1, "type": "binary", "data": 5}]}',
    "binary-list": b'{"messages": [{"seq": 1, "type": "binary", "data": [0, 1]}]}',
    "not-utf8": b'{"messages": [{"seq": 1, "type": "text", "data": "\xff\xfe"}]}',
    "bad-utf8-sequence": b'{"messages": [{"seq": 1, "type": "text", "data": "\xc3\x28"}]}',
    "overlong-utf8": b'{"messages": [{"seq": 1, "type": "text", "data": "\xc0\xaf"}]}',
    "utf8-encoded-surrogate": b'{"messages": [{"seq": 1, "type": "text", "data": "\xed\xa0\x80"}]}',
    "latin1": '{"messages": [{"seq": 1, "type": "text", "data": "é"}]}'.encode("latin-1"),
}


@pytest.mark.parametrize("body", SHAPES.values(), ids=SHAPES.keys())
def test_a_body_of_the_wrong_shape_is_400(server: ConformanceServer, body: bytes) -> None:
    _bad(server, body)


# -- section 2: values ------------------------------------------------------------------------

BAD_BASE64 = ["QR==", "QQ", "QQ=", "QQ===", "Q===", "====", "=", "QQ==\n", " QQ==", "QQ ==", "Q Q==", "QQ==QQ==",
              "-_8=", "AAE_", "YWJj\r\n", "AB\tC", "QUJD\\n", "QUJ", "QUI=QUI="]


@pytest.mark.parametrize("data", BAD_BASE64, ids=[repr(item) for item in BAD_BASE64])
def test_binary_must_be_canonical_padded_standard_base64(server: ConformanceServer, data: str) -> None:
    _bad(server, [{"seq": 1, "type": "binary", "data": data}])


@pytest.mark.parametrize(
    "data, raw",
    [("", b""), ("AA==", b"\x00"), ("AAE=", b"\x00\x01"), ("AAEC", b"\x00\x01\x02"), ("+/8=", b"\xfb\xff")],
)
def test_canonical_base64_is_decoded(server: ConformanceServer, data: str, raw: bytes) -> None:
    sid, _ = server.open()
    assert server.push_ok(sid, [{"seq": 1, "type": "binary", "data": data}]) == 1
    assert _read(server, sid, 1) == [("binary", raw)]


def test_every_byte_value_arrives_as_bytes(server: ConformanceServer) -> None:
    sid, _ = server.open()
    every_byte = bytes(range(256))
    assert server.push_ok(sid, [binary(1, every_byte)] + [binary(seq, bytes([seq - 2])) for seq in range(2, 9)]) == 8
    assert _read(server, sid, 8) == [("binary", every_byte)] + [("binary", bytes([n])) for n in range(7)]


LONE_SURROGATES = {
    "text-high": r'{"seq": 1, "type": "text", "data": "\ud800"}',
    "text-low": r'{"seq": 1, "type": "text", "data": "a\udfffb"}',
    "text-reversed-pair": r'{"seq": 1, "type": "text", "data": "\ude00\ud83d"}',
    "text-high-at-end": r'{"seq": 1, "type": "text", "data": "ok\udbff"}',
    "json-value": r'{"seq": 1, "type": "json", "data": {"k": "\ud800"}}',
    "json-key": r'{"seq": 1, "type": "json", "data": {"\udc00": 1}}',
    "json-list": r'{"seq": 1, "type": "json", "data": ["\udbff"]}',
    "json-string": r'{"seq": 1, "type": "json", "data": "\ud800"}',
}


@pytest.mark.parametrize("message", LONE_SURROGATES.values(), ids=LONE_SURROGATES.keys())
def test_a_lone_surrogate_is_400(server: ConformanceServer, message: str) -> None:
    _bad(server, '{"messages": [%s]}' % message)


def test_an_escaped_surrogate_pair_is_valid_unicode(server: ConformanceServer) -> None:
    sid, _ = server.open()
    body = r'{"messages": [{"seq": 1, "type": "text", "data": "\ud83d\ude00"},' \
           r' {"seq": 2, "type": "json", "data": {"\ud83d\ude00": "\u00e9"}}]}'
    response = server.push_raw(sid, body)
    assert response.status_code == 200 and response.json() == {"ack": 2}
    assert _read(server, sid, 2) == [("text", "😀"), ("json", {"😀": "é"})]


BAD_NUMBERS = {
    "NaN": "NaN",
    "Infinity": "Infinity",
    "-Infinity": "-Infinity",
    "1e400": "1e400",
    "-1e400": "-1e400",
    "1e999-nested": '{"a": [1, {"b": 1e999}]}',
    "NaN-nested": '[1, {"a": NaN}]',
    "int-beyond-double": "2" + "0" * 308,
    "negative-int-beyond-double": "-2" + "0" * 308,
}


@pytest.mark.parametrize("value", BAD_NUMBERS.values(), ids=BAD_NUMBERS.keys())
def test_json_without_nan_infinity_or_numbers_beyond_a_double(server: ConformanceServer, value: str) -> None:
    _bad(server, '{"messages": [{"seq": 1, "type": "json", "data": %s}]}' % value)


def test_json_numbers_within_a_double_are_valid(server: ConformanceServer) -> None:
    sid, _ = server.open()
    values = ["1.7976931348623157e308", "-1e308", "5e-324", "1" + "0" * 308, str(2**64), "-0.0", "0"]
    body = '{"messages": [%s]}' % ", ".join(
        '{"seq": %d, "type": "json", "data": %s}' % (seq, value) for seq, value in enumerate(values, 1)
    )
    response = server.push_raw(sid, body)
    assert response.status_code == 200 and response.json() == {"ack": len(values)}
    assert [data for _, data in _read(server, sid, len(values))] == [json.loads(value) for value in values]


# -- sizes and media types ----------------------------------------------------------------------


def _padded_body(size: int) -> bytes:
    body = json.dumps({"messages": [text(1, "x")]}).encode()
    return body + b" " * (size - len(body))


def test_a_body_of_max_body_size_is_accepted(server: ConformanceServer) -> None:
    sid, _ = server.open()
    response = server.push_raw(sid, _padded_body(SHARED_CONFIG["max_body_size"]))
    assert response.status_code == 200 and response.json() == {"ack": 1}


def test_a_body_beyond_max_body_size_is_413(server: ConformanceServer) -> None:
    _bad(server, _padded_body(SHARED_CONFIG["max_body_size"] + 1), 413)


def test_a_chunked_body_beyond_max_body_size_is_413(server: ConformanceServer) -> None:
    sid, _ = server.open()
    body = _padded_body(SHARED_CONFIG["max_body_size"] + 1)
    chunks = iter([body[:1000], body[1000:]])  # no Content-Length: Transfer-Encoding: chunked
    response = server.request("POST", sid=sid, data=chunks, headers={"Content-Type": "application/json"})
    assert_error(response, 413)
    _delivers_nothing(server, sid)


def test_one_message_beyond_max_message_size_refuses_the_batch(server: ConformanceServer) -> None:
    limit = SHARED_CONFIG["max_message_size"]
    _bad(server, [text(1, "fine"), text(2, "x" * (limit + 1)), text(3, "fine")], 413)


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
     "application/jsonx", "application/json-patch+json", "text/json", "json", ""],
)
def test_a_post_that_is_not_application_json_is_415(
    request: pytest.FixtureRequest, server: ConformanceServer, content_type: str | None
) -> None:
    sid, _ = server.open()
    assert_error(server.push_raw(sid, json.dumps({"messages": [text(1, "x")]}), content_type=content_type), 415)
    _delivers_nothing(server, sid)


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "Application/JSON", "APPLICATION/JSON;CHARSET=UTF-8",
     "application/json ; charset=utf-8"],
)
def test_the_media_type_ignores_parameters_and_case(server: ConformanceServer, content_type: str) -> None:
    sid, _ = server.open()
    response = server.push_raw(sid, json.dumps({"messages": [text(1, "x")]}), content_type=content_type)
    assert response.status_code == 200 and response.json() == {"ack": 1}


# -- inbox full: 429 --------------------------------------------------------------------------------


def test_a_full_inbox_takes_what_fits_and_answers_429_with_the_ack(server: ConformanceServer) -> None:
    limit = SHARED_CONFIG["inbox_limit"]
    sid, _ = server.open("gated")  # the app reads nothing until the gate opens
    batch = [text(seq, f"m{seq}") for seq in range(1, limit + 3)]

    response = server.push(sid, batch)
    document = assert_error(response, 429, "inbox_full")
    assert document["ack"] == limit  # the first `limit` were taken
    assert int(response.headers["Retry-After"]) >= 0
    # Still full: nothing more fits, and the answer says so again.
    document = assert_error(server.push(sid, batch[limit:]), 429, "inbox_full")
    assert document["ack"] == limit
    # The message-size check comes before the inbox check.
    assert_error(server.push(sid, [text(limit + 1, "x" * (SHARED_CONFIG["max_message_size"] + 1))]), 413)

    server.open_gate(sid)
    _read(server, sid, limit)  # the coroutine emptied its inbox
    assert server.push_ok(sid, batch) == limit + 2  # the client sends the rest (here: all) again
    assert _read(server, sid, limit + 2) == [("text", f"m{seq}") for seq in range(1, limit + 3)]

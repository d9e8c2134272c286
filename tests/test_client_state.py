"""The client's reliability bookkeeping through plain calls: no sockets, no threads, no sleeps."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from pollsession import HttpError, InboxFull, MessageTooLarge, ServiceUnavailable, Unauthorized, UnknownSession
from pollsession.client import Client
from pollsession.client.answers import (
    Outcome,
    OutcomeKind,
    RequestKind,
    classify_answer,
    decode_message,
    format_seconds,
    http_error,
    parse_error_body,
    parse_gone_answer,
    parse_open_answer,
    parse_poll_answer,
    parse_post_answer,
    parse_retry_after,
)
from pollsession.client.state import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_BASE_DELAY,
    DEFAULT_RETRY_MAX_DELAY,
    Backoff,
    Inbound,
    Outbox,
    ProtocolError,
    backoff_delay,
    body_size_of,
    encode_message,
)
from pollsession.protocol.wire import (
    DEFAULT_LIMITS,
    POLL_MARGIN,
    REQUEST_TIMEOUT,
    Closed,
    Delivered,
    ErrorBody,
    Limits,
    MessageType,
    OpenAnswer,
    PollAnswer,
    PushAnswer,
)


def wire(data: Any, seq: int = 1) -> dict[str, Any]:
    """The wire form of one message, as the server would parse it."""
    outbox = Outbox()
    for _ in range(seq - 1):
        outbox.push(encode_message(0))
    outbox.push(encode_message(data))
    outbox.acknowledge(seq - 1)
    batch = outbox.batch(max_body_size=1 << 30, max_count=1)
    assert batch is not None
    (message,) = json.loads(batch[0])["messages"]
    return message  # type: ignore[no-any-return]


def seqs_of(body: bytes) -> list[int]:
    return [m["seq"] for m in json.loads(body)["messages"]]


# -- encoding ---------------------------------------------------------------


def test_str_is_text_with_utf8_size() -> None:
    encoded = encode_message("héllo ☃")
    assert (encoded.type, encoded.size) == ("text", len("héllo ☃".encode()))
    assert wire("héllo ☃") == {"seq": 1, "type": "text", "data": "héllo ☃"}


@pytest.mark.parametrize("data", [bytes(range(256)), bytearray(b"\x00\xff"), memoryview(b"abc"), b""])
def test_bytes_like_is_canonical_base64(data: Any) -> None:
    encoded = encode_message(data)
    raw = bytes(data)
    assert (encoded.type, encoded.size) == ("binary", len(raw))
    assert wire(data)["data"] == base64.b64encode(raw).decode("ascii")


@pytest.mark.parametrize("value", [{"a": [1, 2.5, None, True]}, [], 0, None, False, "x" * 0, 2**53])
def test_anything_else_is_compact_json(value: Any) -> None:
    if isinstance(value, str):
        value = {"s": value}
    encoded = encode_message(value)
    compact = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    assert (encoded.type, encoded.size) == ("json", len(compact))
    assert wire(value) == {"seq": 1, "type": "json", "data": value}


@pytest.mark.parametrize(
    "value, error",
    [
        ("lone \ud800 surrogate", ValueError),
        ({"x": float("nan")}, ValueError),
        ([float("inf")], ValueError),
        ({"big": 10**400}, ValueError),
        ({"k": {1, 2}}, TypeError),
        (object(), TypeError),
        ({"s": "\udfff"}, ValueError),
    ],
)
def test_values_the_protocol_forbids_are_refused(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        encode_message(value)


def test_message_size_limit_counts_application_bytes() -> None:
    assert encode_message(b"x" * 10, max_message_size=10).size == 10  # base64 growth does not count
    with pytest.raises(MessageTooLarge) as caught:
        encode_message("é" * 6, max_message_size=11)
    assert (caught.value.size, caught.value.limit) == (12, 11)


def test_body_size_of_matches_a_one_message_batch() -> None:
    encoded = encode_message({"k": "v" * 100})
    outbox = Outbox()
    outbox.push(encoded)
    batch = outbox.batch(max_body_size=1 << 20, max_count=10)
    assert batch is not None
    assert body_size_of(encoded, 1) == len(batch[0])


# -- decoding -----------------------------------------------------------------


def test_decode_each_type() -> None:
    assert decode_message({"seq": 3, "type": "text", "data": "hi"}) == Delivered(3, MessageType.TEXT, "hi")
    assert decode_message({"seq": 4, "type": "binary", "data": "AP8="}) == Delivered(4, MessageType.BINARY, b"\x00\xff")
    assert decode_message({"seq": 5, "type": "json", "data": None}) == Delivered(5, MessageType.JSON, None)


@pytest.mark.parametrize(
    "message",
    [
        [],
        {"type": "text", "data": "x"},
        {"seq": 0, "type": "text", "data": "x"},
        {"seq": True, "type": "text", "data": "x"},
        {"seq": 1.5, "type": "text", "data": "x"},  # (1.0 is the integer 1: JSON has one kind of number)
        {"seq": 1, "type": "text"},
        {"seq": 1, "type": "text", "data": 5},
        {"seq": 1, "type": "binary", "data": "not base64!"},
        {"seq": 1, "type": "binary", "data": "é"},
        {"seq": 1, "type": "binary", "data": "AAE"},
        {"seq": 1, "type": "binary", "data": "AB=="},
        {"seq": 1, "type": "binary", "data": "AA\nAA=="},
        {"seq": 1, "type": "frame", "data": "x"},
    ],
)
def test_decode_refuses_malformed_messages(message: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_message(message)


def test_parse_answers_into_the_wire_types() -> None:
    answer = parse_poll_answer(
        b'{"messages":[{"seq":1,"type":"text","data":"a"}],"closed":{"code":4001,"reason":"bye"}}'
    )
    assert answer == PollAnswer((Delivered(1, MessageType.TEXT, "a"),), Closed(4001, "bye"))
    assert parse_poll_answer(b'{"messages":[],"closed":null}') == PollAnswer()
    assert parse_poll_answer(b'{"messages":[],"closed":{"code":1000}}').closed == Closed(1000, "")
    assert parse_post_answer(b'{"ack":7}') == PushAnswer(7)
    assert parse_post_answer(b'{"error":"inbox_full","message":"m","ack":3}') == PushAnswer(3)
    for bad in (b"<html>", b"[]", b'{"messages":{}}', b'{"messages":[],"closed":{"code":"x"}}',
                b'{"messages":[],"closed":{"code":true}}', b'{"messages":[],"closed":7}', b'{"closed":null}',
                b'{"messages":[{"seq":1,"type":"text","data":"\\ud800"}]}', b'{"messages":[],"x":NaN}'):
        with pytest.raises(ProtocolError):
            parse_poll_answer(bad)
    for bad in (b"{}", b'{"ack":-1}', b'{"ack":true}', b'{"ack":1.5}', b"\xff"):
        with pytest.raises(ProtocolError):
            parse_post_answer(bad)


def test_the_server_s_own_serialization_parses_back_to_the_same_values() -> None:
    poll = PollAnswer((Delivered(1, MessageType.TEXT, "é"), Delivered(2, MessageType.BINARY, b"\x00\xff"),
                       Delivered(3, MessageType.JSON, {"k": [1.5, None]})), Closed(4001, "bye"))
    assert parse_poll_answer(poll.encode()) == poll
    opened = OpenAnswer("s1", Limits(poll_timeout=2.0, inbox_limit=3), poll)
    assert parse_open_answer(opened.encode()) == opened
    assert parse_post_answer(PushAnswer(9).encode()) == PushAnswer(9)
    for error in (ErrorBody("inbox_full", "m", ack=4), ErrorBody("session_ended", "m", closed=Closed(1001, "x")),
                  ErrorBody("bad_request", "m")):
        assert parse_error_body(error.encode()) == error


def test_error_bodies_are_read_leniently() -> None:
    assert parse_error_body(b"<html>") is None and parse_error_body(None) is None
    assert parse_error_body(b'{"ack":true,"error":5,"closed":{"code":"x"}}') == ErrorBody("", "")
    assert parse_gone_answer(b'{"error":"e","message":"m","closed":{"code":4000,"reason":"r"}}') == Closed(4000, "r")
    assert parse_gone_answer(b'{"error":"e","message":"m"}') is None


def test_parse_open_answer_reads_limits() -> None:
    body = json.dumps(
        {"version": 1, "sid": "abc", "poll_timeout": 2.0, "session_timeout": 9.0, "inbox_limit": 4,
         "max_message_size": 100, "max_body_size": 1000,
         "messages": [{"seq": 1, "type": "json", "data": {"hello": 1}}], "closed": None}
    ).encode()
    opened = parse_open_answer(body, "ignored-when-the-body-has-one")
    assert opened == OpenAnswer(
        "abc", Limits(poll_timeout=2.0, session_timeout=9.0, inbox_limit=4, max_message_size=100, max_body_size=1000),
        PollAnswer((Delivered(1, MessageType.JSON, {"hello": 1}),)))
    defaulted = parse_open_answer(b'{"messages":[]}', "from-header")
    assert defaulted == OpenAnswer("from-header", DEFAULT_LIMITS, PollAnswer())
    assert parse_open_answer(b'{"sid":"a"}') == OpenAnswer("a")  # messages may be left out of an open answer
    for bad in (b'{"messages":[]}', b'{"sid":"a","version":2}', b'{"sid":"a","version":true}',
                b'{"sid":"a","inbox_limit":-1}', b'{"sid":"a","poll_timeout":"25"}'):
        with pytest.raises(ProtocolError):
            parse_open_answer(bad)


OCT_21_2015 = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT


@pytest.mark.parametrize(
    "header, expected",
    [(None, None), ("2", 2.0), (" 3 ", 3.0), ("0", 0.0), ("0.25", 0.25), ("-1", None), ("soon", None), ("", None),
     ("1e3", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 30.0), ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
     # Only the three forms of RFC 9110 section 5.6.7, as the browser client reads them:
     ("Wednesday, 21-Oct-15 07:28:00 GMT", 30.0), ("Wed Oct 21 07:28:00 2015", 30.0),
     ("Wed, 21 Oct 2015 08:28:30 +0100", None), ("Wed, 21 Oct 2015 07:28:00 -0000", None),
     ("21 Oct 2015 07:28:00 GMT", None), ("Wed, 32 Oct 2015 07:28:00 GMT", None)],
)
def test_retry_after_is_seconds_or_an_http_date(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=OCT_21_2015 - 30) == expected


def test_a_retry_after_date_is_measured_from_the_wall_clock_by_default() -> None:
    import email.utils
    import time

    after = parse_retry_after(email.utils.formatdate(time.time() + 100, usegmt=True))
    assert after is not None and 98 <= after <= 100


# -- classifying answers (docs/protocol.md section 13; the shared vectors hold the rest) --------


def classify(request: str, status: int, body: bytes | str | None = None, headers: dict[str, str] | None = None,
             sent: int = 0) -> Outcome:
    return classify_answer(request, status, headers or {}, body, sent=sent, now=OCT_21_2015)


@pytest.mark.parametrize("request_", list(RequestKind))
@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
def test_every_5xx_is_retried_with_its_retry_after(request_: RequestKind, status: int) -> None:
    assert classify(request_, status, "<html>", {"Retry-After": "4"}) == Outcome(
        OutcomeKind.RETRY, after=4.0, reason=f"{request_.value} answered HTTP {status}")
    assert classify(request_, status).after is None


@pytest.mark.parametrize("request_", list(RequestKind))
@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 415, 418, 451, 302, 304, 101])
def test_other_refusals_close_with_1006_and_the_servers_message(request_: RequestKind, status: int) -> None:
    outcome = classify(request_, status, '{"error":"nope","message":"not today"}')
    assert (outcome.kind, outcome.code) == (OutcomeKind.CLOSE, 1006)
    assert outcome.reason == f"the server refused the {request_.value}: {status} nope: not today"


@pytest.mark.parametrize("request_", list(RequestKind))
def test_413_closes_with_1009_and_the_servers_message(request_: RequestKind) -> None:
    assert classify(request_, 413, '{"error":"payload_too_large","message":"body over 300 bytes"}') == Outcome(
        OutcomeKind.CLOSE, code=1009, reason="body over 300 bytes")
    assert classify(request_, 413, "<html>Request Entity Too Large</html>").code == 1009


@pytest.mark.parametrize("request_", list(RequestKind))
def test_410_closes_with_the_close_it_reports_else_1006(request_: RequestKind) -> None:
    assert classify(request_, 410, '{"error":"e","message":"m","closed":{"code":4001,"reason":"bye"}}') == Outcome(
        OutcomeKind.CLOSE, code=4001, reason="bye")
    gone = classify(request_, 410, '{"error":"unknown_session","message":"no such session"}')
    assert (gone.kind, gone.code) == (OutcomeKind.CLOSE, 1006)
    assert "no longer knows this session" in gone.reason and "no such session" in gone.reason
    assert classify(request_, 410, '{"closed":{"code":4001,"reason":5}}').code == 1006
    assert classify(request_, 410).code == 1006


def test_429_is_throttled_with_its_ack_and_retry_after() -> None:
    body = '{"error":"inbox_full","message":"m","ack":3}'
    assert classify("push", 429, body, {"Retry-After": "2"}, sent=5) == Outcome(
        OutcomeKind.THROTTLED, ack=3, after=2.0, reason="the inbox is full at ack 3")
    assert classify("push", 429, body, {"retry-after": "Wed, 21 Oct 2015 07:28:05 GMT"}, sent=3).after == 5.0
    assert classify("push", 429, body, sent=3).after is None
    for bad in ('{"error":"inbox_full","message":"m"}', '{"ack":true}', '{"ack":-1}', "<html>", None):
        assert classify("push", 429, bad, {"Retry-After": "2"}, sent=5).kind is OutcomeKind.RETRY
        assert classify("push", 429, bad, {"Retry-After": "2"}, sent=5).after is None
    assert classify("push", 429, body, sent=2).kind is OutcomeKind.RETRY  # acknowledges more than was sent


GREETING = {"version": 1, "sid": "s", "messages": [{"seq": 1, "type": "text", "data": "hi"}], "closed": None}


def test_an_ok_open_carries_the_session_and_its_limits() -> None:
    outcome = classify("open", 200, json.dumps(GREETING | {"inbox_limit": 3}))
    assert outcome == Outcome(OutcomeKind.OK, messages=(Delivered(1, MessageType.TEXT, "hi"),), sid="s",
                              limits=Limits(inbox_limit=3))
    header = classify_answer("open", 200, {"pollsession-id": "h"}, '{"messages":[]}')
    assert header.sid == "h" and header.limits == DEFAULT_LIMITS


@pytest.mark.parametrize("version", [2, 0, "1", True, None, [1], 1.5])
def test_an_open_answer_of_another_version_closes_with_1002(version: Any) -> None:
    outcome = classify("open", 200, json.dumps(GREETING | {"version": version}))
    assert (outcome.kind, outcome.code) == (OutcomeKind.CLOSE, 1002)
    # Even without anything else an open answer needs: the version decides first.
    assert classify("open", 200, json.dumps({"version": version})).code == 1002


@pytest.mark.parametrize(
    "request_, body, sent",
    [("open", "<html>", 0), ("open", '{"version":1}', 0), ("open", None, 0), ("open", '{"sid":"s","inbox_limit":-4}', 0),
     ("poll", '{"messages":[{"seq":1,"type":"binary","data":"AB=="}]}', 0),
     ("poll", '{"messages":[{"seq":1,"type":"text","data":"\\udc00"}]}', 0),
     ("poll", '{"messages":[{"seq":1,"type":"json","data":{"k":"\\ud800x"}}]}', 0),
     ("poll", '{"messages":[{"seq":1,"type":"json","data":NaN}]}', 0),
     ("poll", '{"messages":[{"seq":1,"type":"json","data":1e400}]}', 0),
     ("poll", '{"messages":[{"seq":1,"type":"json"}]}', 0),
     ("poll", '{"messages":[{"seq":"1","type":"text","data":"a"}]}', 0),
     ("poll", '{"messages":[],"closed":{"code":1000,"reason":null}}', 0),
     ("poll", b'{"messages":[{"seq":1,"type":"text","data":"\xff"}]}', 0),
     ("poll", '{"messages":[{"seq":1,"type":"te', 0), ("poll", "", 0), ("poll", "[]", 0),
     ("push", '{"ack":4}', 3), ("push", '{"ack":"3"}', 3), ("push", "{}", 3), ("push", None, 3)],
)
def test_a_malformed_answer_is_retried_like_a_network_failure(request_: str, body: Any, sent: int) -> None:
    outcome = classify(request_, 200, body, {"Retry-After": "9"}, sent=sent)
    assert (outcome.kind, outcome.after) == (OutcomeKind.RETRY, None), outcome
    assert outcome.reason.startswith(f"unreadable {request_} answer")


def test_ok_answers() -> None:
    poll = classify("poll", 200, '{"messages":[{"seq":2,"type":"binary","data":"AP8="}],"closed":{"code":1000}}')
    assert poll == Outcome(OutcomeKind.OK, messages=(Delivered(2, MessageType.BINARY, b"\x00\xff"),),
                           closed=Closed(1000, ""))
    assert classify("push", 200, '{"ack":3}', sent=3) == Outcome(OutcomeKind.OK, ack=3)
    assert classify("push", 200, '{"ack":0}', sent=3) == Outcome(OutcomeKind.OK, ack=0)  # a stale ack is harmless
    for status in (200, 204):
        assert classify("delete", status) == Outcome(OutcomeKind.OK)
    assert classify(RequestKind.POLL, 204).kind is OutcomeKind.RETRY  # a poll answer needs a body


def test_the_clients_defaults_are_the_decided_ones() -> None:
    assert (DEFAULT_RETRY_BASE_DELAY, DEFAULT_RETRY_MAX_DELAY, DEFAULT_MAX_RETRIES) == (0.25, 10.0, 8)
    import inspect

    defaults = {name: p.default for name, p in inspect.signature(Client).parameters.items()}
    assert (defaults["retry_base_delay"], defaults["retry_max_delay"], defaults["max_retries"]) == (0.25, 10.0, 8)
    assert defaults["request_timeout"] == REQUEST_TIMEOUT
    backoff = Backoff(random=lambda: 0.0)
    assert (backoff.base, backoff.max_delay, backoff.max_retries) == (0.25, 10.0, 8)
    assert POLL_MARGIN > 0


# -- the outbox -----------------------------------------------------------------


def filled_outbox(count: int, data: Any = "m") -> Outbox:
    outbox = Outbox()
    for _ in range(count):
        outbox.push(encode_message(data))
    return outbox


def test_outbox_numbers_from_one_and_keeps_until_acknowledged() -> None:
    outbox = filled_outbox(3)
    assert (len(outbox), outbox.last_seq) == (3, 3)
    batch = outbox.batch(max_body_size=1 << 20, max_count=100)
    assert batch is not None and seqs_of(batch[0]) == [1, 2, 3] and batch[1] == 3
    # The answer was lost: the next batch is the same one.
    again = outbox.batch(max_body_size=1 << 20, max_count=100)
    assert again == batch
    assert outbox.acknowledge(2) == 2
    batch = outbox.batch(max_body_size=1 << 20, max_count=100)
    assert batch is not None and seqs_of(batch[0]) == [3]
    assert outbox.acknowledge(1) == 0  # a stale ack changes nothing
    assert outbox.acknowledge(3) == 1
    assert outbox.batch(max_body_size=1 << 20, max_count=100) is None
    assert outbox.acked == 3


def test_outbox_batch_body_is_valid_protocol_json() -> None:
    outbox = Outbox()
    values: list[Any] = ["t", b"\x00\x01", {"j": [1]}]
    for value in values:
        outbox.push(encode_message(value))
    batch = outbox.batch(max_body_size=1 << 20, max_count=10)
    assert batch is not None
    assert json.loads(batch[0]) == {
        "messages": [
            {"seq": 1, "type": "text", "data": "t"},
            {"seq": 2, "type": "binary", "data": "AAE="},
            {"seq": 3, "type": "json", "data": {"j": [1]}},
        ]
    }


def test_outbox_batch_respects_count_limit() -> None:
    outbox = filled_outbox(10)
    batch = outbox.batch(max_body_size=1 << 20, max_count=4)
    assert batch is not None and seqs_of(batch[0]) == [1, 2, 3, 4]
    outbox.acknowledge(4)
    batch = outbox.batch(max_body_size=1 << 20, max_count=4)
    assert batch is not None and seqs_of(batch[0]) == [5, 6, 7, 8]


def test_outbox_batch_respects_body_limit_exactly() -> None:
    outbox = filled_outbox(5, "x" * 20)
    full = outbox.batch(max_body_size=1 << 20, max_count=100)
    assert full is not None
    size_of_two = len(filled_outbox(2, "x" * 20).batch(max_body_size=1 << 20, max_count=100)[0])  # type: ignore[index]
    exact = outbox.batch(max_body_size=size_of_two, max_count=100)
    assert exact is not None and seqs_of(exact[0]) == [1, 2] and len(exact[0]) == size_of_two
    short = outbox.batch(max_body_size=size_of_two - 1, max_count=100)
    assert short is not None and seqs_of(short[0]) == [1]


def test_outbox_sends_one_oversized_message_alone_rather_than_never() -> None:
    outbox = filled_outbox(2, "x" * 100)
    batch = outbox.batch(max_body_size=10, max_count=100)
    assert batch is not None and seqs_of(batch[0]) == [1]


def test_outbox_refuses_an_ack_beyond_what_was_sent() -> None:
    outbox = filled_outbox(2)
    with pytest.raises(ProtocolError):
        outbox.acknowledge(3)


def test_outbox_after_partial_ack_of_a_throttled_batch() -> None:
    # 429: the server took 1..3 of 1..6; the client sends 4..6 again, then more that was queued meanwhile.
    outbox = filled_outbox(6)
    outbox.acknowledge(3)
    outbox.push(encode_message("late"))
    batch = outbox.batch(max_body_size=1 << 20, max_count=100)
    assert batch is not None and seqs_of(batch[0]) == [4, 5, 6, 7]


# -- incoming ---------------------------------------------------------------


def texts(*pairs: tuple[int, str]) -> list[Delivered]:
    return [Delivered(seq, MessageType.TEXT, data) for seq, data in pairs]


def test_inbound_drops_duplicates_and_advances_ack() -> None:
    inbound = Inbound()
    assert inbound.accept(texts((1, "a"), (2, "b"))) == ["a", "b"]
    assert inbound.ack == 2
    # The answer carrying 1..2 was lost on its way and is sent again with 3.
    assert inbound.accept(texts((1, "a"), (2, "b"), (3, "c"))) == ["c"]
    assert (inbound.ack, inbound.duplicates) == (3, 2)


def test_inbound_refuses_to_skip_a_gap() -> None:
    inbound = Inbound()
    assert inbound.accept(texts((2, "b"), (3, "c"))) == []
    assert (inbound.ack, inbound.gaps) == (0, 2)
    assert inbound.accept(texts((1, "a"), (2, "b"), (4, "d"))) == ["a", "b"]
    assert inbound.ack == 2


def test_inbound_ten_thousand_with_every_answer_lost_once() -> None:
    inbound = Inbound()
    received: list[int] = []
    for start in range(1, 10_001, 100):
        batch = [Delivered(seq, MessageType.JSON, seq) for seq in range(start, start + 100)]
        received += inbound.accept(batch[:50])  # a truncated first answer
        received += inbound.accept(batch)  # the whole batch again
    assert received == list(range(1, 10_001))
    assert inbound.duplicates == 50 * 100


# -- backoff ----------------------------------------------------------------


class FakeRandom:
    """Returns the given values in turn."""

    def __init__(self, *values: float) -> None:
        self._values: Iterator[float] = iter(values)

    def __call__(self) -> float:
        return next(self._values)


def test_backoff_doubles_up_to_the_cap_and_jitters_within_half() -> None:
    backoff = Backoff(base=0.1, max_delay=1.0, max_retries=6, random=FakeRandom(0, 0.999999, 0.5, 0, 0, 0))
    delays = [backoff.failure() for _ in range(6)]
    assert delays == pytest.approx([0.05, 0.2, 0.3, 0.4, 0.5, 0.5], abs=1e-5)


def test_backoff_gives_up_after_max_retries_and_resets_on_success() -> None:
    backoff = Backoff(base=0.1, max_delay=5.0, max_retries=2, random=lambda: 1.0)
    assert backoff.failure() == pytest.approx(0.1)
    assert backoff.failure() == pytest.approx(0.2)
    assert backoff.failure() is None
    backoff.reset()
    assert backoff.failure() == pytest.approx(0.1)


def test_backoff_defaults_double_from_a_quarter_second_to_ten() -> None:
    backoff = Backoff(random=lambda: 0.0)
    assert [backoff.failure() for _ in range(9)] == pytest.approx([0.125, 0.25, 0.5, 1, 2, 4, 5, 5, None])
    assert [backoff_delay(n, base=0.25, max_delay=10.0, random=0.999999) for n in (0, 6)] == pytest.approx(
        [0.25, 10.0], abs=1e-5)


def test_backoff_with_no_retries_gives_up_at_once() -> None:
    assert Backoff(base=0.1, max_delay=1.0, max_retries=0, random=lambda: 0.0).failure() is None


def test_backoff_never_overflows() -> None:
    backoff = Backoff(base=0.1, max_delay=2.0, max_retries=10_000, random=lambda: 0.0)
    delays = [backoff.failure() for _ in range(2000)]
    assert delays[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs", [{"base": 0}, {"base": 2.0, "max_delay": 1.0}, {"max_retries": -1}])
def test_backoff_refuses_nonsense(kwargs: dict[str, Any]) -> None:
    settings: dict[str, Any] = {"base": 0.1, "max_delay": 1.0, "max_retries": 3, "random": lambda: 0.0}
    with pytest.raises(ValueError):
        Backoff(**(settings | kwargs))


@pytest.mark.parametrize("seconds, text", [(0, "0"), (0.0, "0"), (2, "2"), (10, "10"), (0.25, "0.25"), (1.0004, "1"),
                                           (100.5, "100.5"), (-1, "0")])
def test_format_seconds_matches_the_wait_syntax(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


def test_http_error_keeps_the_servers_code_and_message() -> None:
    error = http_error(401, b'{"error":"unauthorized","message":"token required"}')
    assert isinstance(error, Unauthorized) and (error.status, error.code, error.message) == (
        401, "unauthorized", "token required")
    full = http_error(429, b'{"error":"inbox_full","message":"m","ack":5}', "2")
    assert isinstance(full, InboxFull) and (full.ack, full.retry_after) == (5, 2)
    busy = http_error(503, b"<html>busy</html>", None, "Service Unavailable")
    assert isinstance(busy, ServiceUnavailable) and (busy.message, busy.retry_after) == ("Service Unavailable", 1)
    assert isinstance(http_error(410, b""), UnknownSession)
    odd = http_error(418, b"{}")
    assert type(odd) is HttpError and odd.status == 418 and odd.message == "HTTP 418"

"""Message validation and wire form: plain calls."""

from __future__ import annotations

import base64
import json

import pytest

from pollsession import BadRequest, MessageTooLarge, MessageType
from pollsession._messages import from_value, parse_batch, parse_json, to_wire


def batch(*items: dict[str, object]) -> bytes:
    return json.dumps({"messages": list(items)}).encode()


def test_values_are_classified_and_sized() -> None:
    assert from_value("é", 10).type is MessageType.TEXT and from_value("é", 10).size == 2
    assert from_value(bytearray(b"\x00\xff"), 10).type is MessageType.BINARY
    message = from_value({"a": [1, "é"]}, 100)
    assert message.type is MessageType.JSON and message.size == len('{"a":[1,"é"]}'.encode())
    with pytest.raises(MessageTooLarge):
        from_value("x" * 11, 10)
    with pytest.raises(ValueError):
        from_value(float("nan"), 10)
    with pytest.raises(ValueError):
        from_value("\ud800", 10)
    with pytest.raises(TypeError):
        from_value(object(), 10)


def test_binary_goes_out_as_standard_base64() -> None:
    data = bytes(range(256))
    wire = to_wire(3, from_value(data, 1000))
    assert wire == {"seq": 3, "type": "binary", "data": base64.b64encode(data).decode()}


def test_all_three_types_decode() -> None:
    raw = bytes(range(256))
    parsed = parse_batch(batch(
        {"seq": 1, "type": "text", "data": "hi"},
        {"seq": 2, "type": "binary", "data": base64.b64encode(raw).decode()},
        {"seq": 3, "type": "json", "data": {"x": [1.5, None]}},
    ))
    assert [(seq, m.data) for seq, m in parsed] == [(1, "hi"), (2, raw), (3, {"x": [1.5, None]})]


@pytest.mark.parametrize("data", ["AAE", "AA E=", "AAF=", "AA\nE=", "A===", "****"])
def test_non_canonical_base64_is_refused(data: str) -> None:
    with pytest.raises(BadRequest):
        parse_batch(batch({"seq": 1, "type": "binary", "data": data}))


@pytest.mark.parametrize("body", [
    b'{"messages": [{"seq": 1, "type": "json", "data": NaN}]}',
    b'{"messages": [{"seq": 1, "type": "json", "data": -Infinity}]}',
    b'{"messages": [{"seq": 1, "type": "json", "data": 1e400}]}',
    b'{"messages": [{"seq": 1, "type": "json", "data": ' + b"9" * 400 + b"}]}",
    b'{"messages": [{"seq": 1, "type": "text", "data": "\\ud800"}]}',
    b'{"messages": [{"seq": 1, "type": "json", "data": {"\\udfff": 1}}]}',
    b'\xff{"messages": []}',
    b"[]", b"{}", b'{"messages": {}}', b'{"messages": [1]}',
    b'{"messages": [{"seq": true, "type": "text", "data": "x"}]}',
    b'{"messages": [{"seq": 1.0, "type": "text", "data": "x"}]}',
    b'{"messages": [{"seq": 0, "type": "text", "data": "x"}]}',
    b'{"messages": [{"seq": 1, "type": "text", "data": "x"}, {"seq": 3, "type": "text", "data": "x"}]}',
    b'{"messages": [{"seq": 2, "type": "text", "data": "x"}, {"seq": 1, "type": "text", "data": "x"}]}',
    b'{"messages": [{"seq": 1, "type": "frame", "data": "x"}]}',
    b'{"messages": [{"seq": 1, "type": "text", "data": 5}]}',
    b'{"messages": [{"seq": 1, "type": "text"}]}',
])
def test_malformed_batches_are_refused(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_batch(body)


def test_message_size_counts_decoded_bytes() -> None:
    (seq, message), = parse_batch(batch({"seq": 1, "type": "binary", "data": base64.b64encode(b"x" * 10).decode()}))
    assert message.size == 10
    (seq, message), = parse_batch(batch({"seq": 1, "type": "text", "data": "éé"}))
    assert message.size == 4


def test_parse_json_accepts_large_but_finite_numbers() -> None:
    assert parse_json(b"[1e308, -1e308, 123456789012345678901234567890]")[0] == 1e308

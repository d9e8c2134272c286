"""Message validation and wire form: plain calls."""

from __future__ import annotations

import base64
import json

import pytest

from pollsession import BadRequest, MessageTooLarge, MessageType
from pollsession.protocol.messages import encode_outgoing, parse_batch, parse_json


def batch(*items: dict[str, object]) -> bytes:
    return json.dumps({"messages": list(items)}).encode()


def test_values_are_classified_and_sized() -> None:
    assert encode_outgoing("é", 10).type is MessageType.TEXT and encode_outgoing("é", 10).size == 2
    assert encode_outgoing(bytearray(b"\x00\xff"), 10).type is MessageType.BINARY
    message = encode_outgoing({"a": [1, "é"]}, 100)
    assert message.type is MessageType.JSON and message.size == len('{"a":[1,"é"]}'.encode())
    with pytest.raises(MessageTooLarge):
        encode_outgoing("x" * 11, 10)
    with pytest.raises(ValueError):
        encode_outgoing(float("nan"), 10)
    with pytest.raises(ValueError):
        encode_outgoing("\ud800", 10)
    with pytest.raises(TypeError):
        encode_outgoing(object(), 10)


def test_binary_goes_out_as_standard_base64() -> None:
    data = bytes(range(256))
    wire = json.loads(b'{"seq":3,' + encode_outgoing(data, 1000).fragment + b"}")
    assert wire == {"seq": 3, "type": "binary", "data": base64.b64encode(data).decode()}


def test_a_fragment_is_the_compact_wire_form_and_as_json_forces_json() -> None:
    assert encode_outgoing("é", 10).fragment == '"type":"text","data":"é"'.encode()
    assert encode_outgoing({"a": 1}, 10).fragment == b'"type":"json","data":{"a":1}'
    forced = encode_outgoing("x", 10, as_json=True)
    assert (forced.type, forced.fragment, forced.size) == (MessageType.JSON, b'"type":"json","data":"x"', 3)


def test_all_three_types_decode() -> None:
    raw = bytes(range(256))
    parsed = parse_batch(batch(
        {"seq": 1, "type": "text", "data": "hi"},
        {"seq": 2, "type": "binary", "data": base64.b64encode(raw).decode()},
        {"seq": 3, "type": "json", "data": {"x": [1.5, None]}},
    ))
    assert [(seq, m.unpack().data) for seq, m in parsed] == [(1, "hi"), (2, raw), (3, {"x": [1.5, None]})]


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

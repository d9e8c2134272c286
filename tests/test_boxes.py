"""The outbox and inbox bounds, in messages and in bytes, with plain calls."""

from __future__ import annotations

import json

import pytest

from pollsession import BadRequest, MessageType, PayloadTooLarge
from pollsession.protocol.boxes import Inbox, Outbox
from pollsession.protocol.messages import Packed, encode_outgoing


def fragment(data: str) -> bytes:
    return encode_outgoing(data, 1 << 20).fragment


def text(seq: int, data: str) -> tuple[int, Packed]:
    return seq, Packed(MessageType.TEXT, data.encode())


def test_outbox_counts_bytes_and_an_ack_frees_them() -> None:
    outbox = Outbox(max_messages=10, max_bytes=130)  # two fragments of 63 bytes
    first = fragment("x" * 40)
    assert outbox.fits(len(first))
    outbox.append(first)
    outbox.append(fragment("y" * 40))
    assert outbox.nbytes == 2 * len(first)
    assert not outbox.fits(len(first))  # a third would pass 130 bytes
    assert outbox.acknowledge(1)
    assert outbox.nbytes == len(first) and outbox.fits(len(first))
    assert not outbox.acknowledge(1)  # a stale ack changes nothing
    with pytest.raises(BadRequest):
        outbox.acknowledge(3)


def test_one_message_always_fits_an_empty_outbox() -> None:
    outbox = Outbox(max_messages=10, max_bytes=10)
    big = fragment("z" * 100)
    assert outbox.fits(len(big))
    outbox.append(big)
    assert not outbox.fits(1)


def test_room_reserved_for_a_woken_sender_counts() -> None:
    outbox = Outbox(max_messages=10, max_bytes=10)
    assert outbox.fits(5, reserved_messages=1, reserved_bytes=5)
    assert not outbox.fits(5, reserved_messages=1, reserved_bytes=8)


def test_outbox_counts_messages_too() -> None:
    outbox = Outbox(max_messages=2, max_bytes=1 << 20)
    outbox.append(fragment("a"))
    outbox.append(fragment("b"))
    assert not outbox.fits(1)


def test_messages_json_is_the_wire_form_joined_from_fragments() -> None:
    outbox = Outbox(max_messages=10, max_bytes=1 << 20)
    assert outbox.messages_json() == b"[]"
    outbox.append(fragment("a"))
    outbox.append(encode_outgoing({"k": [1, None]}, 100).fragment)
    first = outbox.messages_json()
    assert json.loads(first) == [{"seq": 1, "type": "text", "data": "a"},
                                 {"seq": 2, "type": "json", "data": {"k": [1, None]}}]
    assert outbox.messages_json() == first  # a repeated poll of the same data gets the same bytes
    outbox.acknowledge(1)
    assert json.loads(outbox.messages_json()) == [{"seq": 2, "type": "json", "data": {"k": [1, None]}}]
    outbox.append(fragment("c"))
    assert [m["seq"] for m in json.loads(outbox.messages_json())] == [2, 3]


def test_inbox_takes_what_fits_in_bytes_and_counts_the_rest_as_refused() -> None:
    inbox = Inbox(max_messages=10, max_bytes=10, max_message_size=100)
    assert inbox.accept([text(1, "aaaa"), text(2, "bbbb"), text(3, "cccc")]) == (2, False)
    assert inbox.nbytes == 8
    assert inbox.pop().raw == b"aaaa"
    assert inbox.accept([text(2, "bbbb"), text(3, "cccc")]) == (3, True)  # the repeat is ignored
    assert inbox.nbytes == 8 and len(inbox) == 2


def test_one_message_always_fits_an_empty_inbox() -> None:
    inbox = Inbox(max_messages=10, max_bytes=4, max_message_size=100)
    assert inbox.accept([text(1, "x" * 50), text(2, "y")]) == (1, False)
    inbox.pop()
    assert inbox.accept([text(2, "y")]) == (2, True)


def test_inbox_gap_and_size_refuse_the_whole_batch() -> None:
    inbox = Inbox(max_messages=10, max_bytes=1000, max_message_size=5)
    with pytest.raises(BadRequest):
        inbox.accept([text(2, "a")])
    with pytest.raises(PayloadTooLarge):
        inbox.accept([text(1, "a"), text(2, "toolong")])
    assert inbox.received == 0 and len(inbox) == 0


def test_packed_messages_decode_only_when_read() -> None:
    assert Packed(MessageType.TEXT, "é".encode()).unpack().data == "é"
    assert Packed(MessageType.BINARY, b"\x00\xff").unpack().data == b"\x00\xff"
    message = Packed(MessageType.JSON, b'{"a":[1,2]}').unpack()
    assert (message.type, message.data, message.size) == (MessageType.JSON, {"a": [1, 2]}, 11)

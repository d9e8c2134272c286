"""Messages and their wire form, with no I/O.

A message is text, binary or JSON, mirroring WebSocket frames plus JSON. This
module owns every rule about what a valid message is: strict JSON decoding
(no NaN, no Infinity, no number beyond a double, valid Unicode), canonical
base64 for binary, the size of a message as the application sees it, and the
shape of a pushed batch. Nothing here touches sessions or sockets.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

from .errors import BadRequest, MessageTooLarge
from .wire import MessageType, dump_json, encode_json_string

__all__ = [
    "MessageType",
    "Message",
    "Packed",
    "Outgoing",
    "encode_outgoing",
    "parse_json",
    "parse_batch",
    "dump_json",
    "decode_data",
    "pack_data",
]


@dataclass(frozen=True, slots=True)
class Message:
    """One message as the application sees it, with its size in bytes."""

    type: MessageType
    data: Any
    size: int


@dataclass(frozen=True, slots=True)
class Packed:
    """A pushed message kept compact while it waits in a session's inbox.

    Decoded JSON costs 24-32 times its wire size in Python objects, and a str
    with one astral character costs 4 bytes per character; so a queued
    message is kept as bytes (UTF-8 for text, the decoded bytes for binary,
    compact UTF-8 JSON for json), whose length is exactly the message's size,
    and is decoded only when the application reads it (:meth:`unpack`).
    """

    type: MessageType
    raw: bytes

    @property
    def size(self) -> int:
        return len(self.raw)

    def unpack(self) -> Message:
        """The message as the application sees it (``raw`` was validated when packed)."""
        if self.type is MessageType.TEXT:
            return Message(self.type, self.raw.decode("utf-8"), len(self.raw))
        if self.type is MessageType.BINARY:
            return Message(self.type, self.raw, len(self.raw))
        return Message(self.type, json.loads(self.raw), len(self.raw))


@dataclass(slots=True)
class Outgoing:
    """A message encoded for the wire once, when it is sent (once per broadcast).

    ``fragment`` is the UTF-8 JSON ``"type":...,"data":...`` without braces, so
    the wire form with sequence number N is ``{"seq":N,`` + fragment + ``}``;
    one fragment is shared by every member of a broadcast. ``size`` is the
    message's size as the protocol counts it (section 2).

    Never changed once made, but not ``frozen``: one is made per message
    sent, and a frozen dataclass's ``__init__`` costs three times as much.
    """

    type: MessageType
    fragment: bytes
    size: int


def _utf8_size(text: str) -> int:
    return len(_utf8(text))


def encode_outgoing(value: Any, max_size: int, *, as_json: bool = False) -> Outgoing:
    """Classify and encode a value the application sends, encoding JSON once.

    ``str`` is text, bytes-like is binary, anything else (or anything, with
    ``as_json``) is json. Raises ``TypeError``/``ValueError`` for a value
    JSON cannot carry (or a lone surrogate), and :class:`MessageTooLarge`
    past ``max_size``.
    """
    if isinstance(value, str) and not as_json:
        # The common case, kept short: a burst of sends spends most of its time here.
        size = len(value) if value.isascii() else _utf8_size(value)
        if size > max_size:
            raise MessageTooLarge(size, max_size)
        return Outgoing(MessageType.TEXT, _TEXT_PREFIX + encode_json_string(value).encode("utf-8"), size)
    if isinstance(value, (bytes, bytearray, memoryview)) and not as_json:
        raw = bytes(value)
        if len(raw) > max_size:
            raise MessageTooLarge(len(raw), max_size)
        return Outgoing(MessageType.BINARY, b'%s"%s"' % (_BINARY_PREFIX, base64.b64encode(raw)), len(raw))
    data = dump_json(value)
    _check_json_number_range(value)
    encoded = _utf8(data)
    if len(encoded) > max_size:
        raise MessageTooLarge(len(encoded), max_size)
    return Outgoing(MessageType.JSON, _JSON_PREFIX + encoded, len(encoded))


_TEXT_PREFIX, _BINARY_PREFIX, _JSON_PREFIX = (b'"type":"%s","data":' % kind.value.encode("ascii")
                                              for kind in (MessageType.TEXT, MessageType.BINARY, MessageType.JSON))


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("text is not valid Unicode (lone surrogate)") from exc


def _check_json_number_range(value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("JSON cannot carry NaN or Infinity")
    if isinstance(value, int) and not isinstance(value, bool):
        _check_int(value)
    elif isinstance(value, dict):
        for item in value.values():
            _check_json_number_range(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_json_number_range(item)


def _check_int(value: int) -> None:
    try:
        float(value)
    except OverflowError:
        raise ValueError("JSON number is beyond the range of a double") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is beyond the range of a double")
    return value


def _parse_int(text: str) -> int:
    value = int(text)
    _check_int(value)
    return value


def parse_json(body: bytes) -> Any:
    """Decode a request body as strict UTF-8 JSON, or raise :class:`BadRequest`."""
    try:
        text = body.decode("utf-8")
        value = json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_parse_float,
            parse_int=_parse_int,
        )
        # A lone surrogate (an escaped "\ud800") decodes fine but is not Unicode.
        dump_json(value).encode("utf-8")
    except (UnicodeError, ValueError, RecursionError) as exc:
        raise BadRequest(f"body is not valid UTF-8 JSON: {exc}", code="invalid_json") from None
    return value


def _text_data(data: Any, index: int) -> str:
    if not isinstance(data, str):
        raise BadRequest(f"messages[{index}].data must be a string for type text")
    return data


def _binary_data(data: Any, index: int) -> bytes:
    if not isinstance(data, str):
        raise BadRequest(f"messages[{index}].data must be a base64 string for type binary")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raw = None
    if raw is None or base64.b64encode(raw).decode("ascii") != data:
        raise BadRequest(f"messages[{index}].data is not canonical padded base64", code="invalid_base64")
    return raw


def decode_data(type_: MessageType, data: Any, index: int) -> Message:
    """Check ``data`` against its type and decode it; BadRequest names ``messages[index]``."""
    if type_ is MessageType.TEXT:
        text = _text_data(data, index)
        return Message(type_, text, len(text.encode("utf-8")))
    if type_ is MessageType.BINARY:
        raw = _binary_data(data, index)
        return Message(type_, raw, len(raw))
    return Message(type_, data, len(dump_json(data).encode("utf-8")))


def pack_data(type_: MessageType, data: Any, index: int) -> Packed:
    """Check ``data`` (from :func:`parse_json`, so valid Unicode) against its type; keep it compact."""
    if type_ is MessageType.TEXT:
        return Packed(type_, _text_data(data, index).encode("utf-8"))
    if type_ is MessageType.BINARY:
        return Packed(type_, _binary_data(data, index))
    return Packed(type_, dump_json(data).encode("utf-8"))


def parse_batch(body: bytes) -> list[tuple[int, Packed]]:
    """Validate the shape of a pushed batch ``{"messages": [...]}``; return ``(seq, message)`` pairs.

    The messages come back packed (:class:`Packed`): the decoded body is
    dropped when the request ends, and only compact bytes are queued.

    A bad batch is refused whole (400) and delivers nothing. Sequence numbers
    are checked here to be integers >= 1, consecutive and increasing; how they
    relate to what the session already holds (gaps, repeats), and the size of
    the new messages, are checked by the session (``Delivery.accept``).
    """
    document = parse_json(body)
    if not isinstance(document, dict) or not isinstance(document.get("messages"), list):
        raise BadRequest('body must be an object {"messages": [...]}')
    batch: list[tuple[int, Packed]] = []
    for index, item in enumerate(document["messages"]):
        if not isinstance(item, dict):
            raise BadRequest(f"messages[{index}] must be an object with seq, type and data")
        seq = item.get("seq")
        if type(seq) is not int or seq < 1:
            raise BadRequest(f"messages[{index}].seq must be an integer >= 1, got {seq!r:.40}", code="bad_seq")
        if batch and seq != batch[-1][0] + 1:
            raise BadRequest(
                f"messages[{index}].seq is {seq}, expected {batch[-1][0] + 1}: a batch must be consecutive",
                code="bad_seq",
            )
        try:
            type_ = MessageType(item.get("type"))
        except ValueError:
            raise BadRequest(
                f"messages[{index}].type must be text, binary or json, got {item.get('type')!r:.40}",
                code="bad_type",
            ) from None
        if "data" not in item:
            raise BadRequest(f"messages[{index}] has no data")
        batch.append((seq, pack_data(type_, item["data"], index)))
    return batch

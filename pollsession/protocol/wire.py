"""The answers of docs/protocol.md as typed values, and their one serialization.

Every document the server writes is built here, and the Python client's
parser (``pollsession.client.state``) reads answers back into the same types:

* :class:`Closed`: the ``closed`` object ``{"code": c, "reason": r}`` (section 8).
* :class:`Limits`: what an open answer tells a client about the target (section 5),
  with the protocol's defaults written once (:data:`DEFAULT_LIMITS`).
* :class:`Delivered`: one message of a poll answer, ``{"seq": n, "type": t, "data": d}``.
* :class:`PollAnswer`: ``{"messages": [...], "closed": ...}`` (section 6).
* :class:`OpenAnswer`: a poll answer plus ``version``, ``sid`` and the limits.
* :class:`PushAnswer`: ``{"ack": n}`` (section 7).
* :class:`ErrorBody`: ``{"error": code, "message": text}`` with ``ack`` (429)
  or ``closed`` (410) when they apply (section 10).

A poll answer's messages are never encoded twice: the server keeps each
message's wire fragment from the moment it was sent (``messages.Outgoing``)
and the answer is *joined* from those fragments
(:func:`poll_answer_parts`, :func:`open_answer_parts`); :meth:`PollAnswer.encode`
is the same serialization for decoded values (tests, tools, vectors).

The timeouts a client gives its requests are protocol constants too, shared
by both clients (``tests/vectors/client/defaults.json`` holds the browser
client to them): :data:`POLL_MARGIN` and :data:`REQUEST_TIMEOUT`.
"""

from __future__ import annotations

import base64
import enum
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PROTOCOL_VERSION",
    "MessageType",
    "dump_json",
    "POLL_MARGIN",
    "REQUEST_TIMEOUT",
    "Closed",
    "Limits",
    "DEFAULT_LIMITS",
    "Delivered",
    "PollAnswer",
    "OpenAnswer",
    "PushAnswer",
    "ErrorBody",
    "closed_json",
    "message_array_parts",
    "poll_answer_parts",
    "open_answer_parts",
    "limits_fields",
    "join_object",
    "SUPERSEDED_PARTS",
]

PROTOCOL_VERSION = 1

POLL_MARGIN = 10.0
"""Seconds a client waits beyond a poll's hold before it presumes the answer lost.

A held poll answers within its hold (``poll_timeout`` or the client's
``wait``); past that plus this margin the connection is dead (a silent proxy,
a laptop that slept) and the client asks again."""

REQUEST_TIMEOUT = 10.0
"""Seconds a client waits for an answer the server gives at once (open, push, delete, a short poll)."""


class MessageType(str, enum.Enum):
    """A message's ``type`` on the wire: WebSocket's two frame kinds, plus JSON."""

    TEXT = "text"
    BINARY = "binary"
    JSON = "json"


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_encode_basestring = json.encoder.encode_basestring  # what _ENCODER.encode does for a str (ensure_ascii=False)


def encode_json_string(text: str) -> str:
    """``dump_json(text)`` for a str, without the encoder's dispatch (one per text message sent)."""
    return _encode_basestring(text)


def dump_json(value: Any) -> str:
    """Compact JSON, UTF-8 friendly; refuses NaN and Infinity. Every document pollsession writes goes through it."""
    return _ENCODER.encode(value)


@dataclass(frozen=True, slots=True)
class Closed:
    """How a session ended: ``{"code": c, "reason": r}``."""

    code: int
    reason: str = ""

    def document(self) -> dict[str, Any]:
        return {"code": self.code, "reason": self.reason}

    def encode(self) -> bytes:
        return dump_json(self.document()).encode("utf-8")


def closed_json(closed: Closed | None) -> bytes:
    """The ``closed`` member's value: the object, or ``null``."""
    return b"null" if closed is None else closed.encode()


@dataclass(frozen=True, slots=True)
class Limits:
    """What an open answer tells the client about the target; the protocol's defaults."""

    poll_timeout: float = 25.0
    session_timeout: float = 60.0
    inbox_limit: int = 64
    max_message_size: int = 1 << 20
    max_body_size: int = 4 << 20

    def document(self) -> dict[str, Any]:
        return {
            "poll_timeout": float(self.poll_timeout),
            "session_timeout": float(self.session_timeout),
            "inbox_limit": self.inbox_limit,
            "max_message_size": self.max_message_size,
            "max_body_size": self.max_body_size,
        }


DEFAULT_LIMITS = Limits()
"""The defaults of a target and what a client assumes of a field an open answer leaves out."""


@dataclass(frozen=True, slots=True)
class Delivered:
    """One message of a poll answer, decoded: ``data`` is ``str``, ``bytes`` or a JSON value."""

    seq: int
    type: MessageType
    data: Any

    def wire_data(self) -> Any:
        """``data`` as the wire carries it (binary as standard padded base64)."""
        if self.type is MessageType.BINARY:
            return base64.b64encode(bytes(self.data)).decode("ascii")
        return self.data

    def document(self) -> dict[str, Any]:
        return {"seq": self.seq, "type": self.type.value, "data": self.wire_data()}


@dataclass(frozen=True, slots=True)
class PollAnswer:
    """``{"messages": [...], "closed": ...}``: every unacknowledged message, and the close if any."""

    messages: tuple[Delivered, ...] = ()
    closed: Closed | None = None

    def fields(self) -> dict[str, Any]:
        return {"messages": [m.document() for m in self.messages],
                "closed": None if self.closed is None else self.closed.document()}

    def encode(self) -> bytes:
        return dump_json(self.fields()).encode("utf-8")


@dataclass(frozen=True, slots=True)
class OpenAnswer:
    """The answer to the opening ``GET``: the session id, the target's limits and a first poll answer."""

    sid: str
    limits: Limits = DEFAULT_LIMITS
    poll: PollAnswer = field(default_factory=PollAnswer)
    version: int = PROTOCOL_VERSION

    def encode(self) -> bytes:
        return dump_json({"version": self.version, "sid": self.sid, **self.limits.document(),
                          **self.poll.fields()}).encode("utf-8")


@dataclass(frozen=True, slots=True)
class PushAnswer:
    """``{"ack": n}``: the highest client seq the server holds."""

    ack: int

    def encode(self) -> bytes:
        return b'{"ack":%d}' % self.ack


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """A refusal's body: ``error`` (a short code) and ``message``, with ``ack`` or ``closed`` when they apply."""

    error: str
    message: str
    ack: int | None = None
    closed: Closed | None = None

    def document(self) -> dict[str, Any]:
        document: dict[str, Any] = {"error": self.error, "message": self.message}
        if self.ack is not None:
            document["ack"] = self.ack
        if self.closed is not None:
            document["closed"] = self.closed.document()
        return document

    def encode(self) -> bytes:
        return dump_json(self.document()).encode("utf-8")


# -- the server's joined answers ---------------------------------------------

SUPERSEDED_PARTS: tuple[bytes, ...] = (b'{"messages":[],"closed":null}',)
"""The answer to a poll that a newer poll of the same session replaced."""


def message_array_parts(entries: Iterable[tuple[int, bytes]]) -> list[bytes]:
    """The JSON array of numbered messages, in pieces: ``{"seq":n,`` + fragment + ``}`` each.

    The fragments are not copied: whoever writes the answer joins it once.
    """
    parts = [b"["]
    for seq, fragment in entries:
        parts += (b'{"seq":%d,' % seq, fragment, b"},")
    if len(parts) > 1:
        parts[-1] = b"}"
    parts.append(b"]")
    return parts


def poll_answer_parts(messages: Sequence[bytes], closed: bytes) -> list[bytes]:
    """A poll answer in pieces, from a message array's pieces and the ``closed`` value's JSON."""
    return [b'{"messages":', *messages, b',"closed":', closed, b"}"]


def open_answer_parts(sid: str, limits_json: bytes, messages: Sequence[bytes], closed: bytes) -> list[bytes]:
    """An open answer in pieces; ``limits_json`` is :func:`limits_fields` of the target, encoded once."""
    return [b'{"version":%d,"sid":"%s",' % (PROTOCOL_VERSION, sid.encode("ascii")), limits_json,
            b',"messages":', *messages, b',"closed":', closed, b"}"]


def limits_fields(limits: Limits) -> bytes:
    """The limits' members without braces, to splice into every open answer."""
    return dump_json(limits.document())[1:-1].encode("utf-8")


def join_object(parts: Iterable[bytes]) -> bytes:
    """Join an answer's pieces in one copy."""
    return b"".join(parts)

"""Reliability bookkeeping of the Python client, as plain objects without I/O.

Everything that decides *what* the client sends and *what* it keeps lives in
this module; :mod:`pollsession.client` only moves bytes and waits. Nothing here
touches a socket, a clock or a thread, so every rule can be tested with plain
calls (``tests/test_client_state.py``).

Invariants kept here:

- :class:`Outbox` numbers outgoing messages 1, 2, 3, ... in the order they were
  queued and keeps each one until the server acknowledges it, so a batch can be
  sent again after any failure; the server drops the seqs it already holds.
- A batch is always a contiguous run starting at the first unacknowledged
  message, and respects the server's ``max_message_size``, ``max_body_size``
  and ``inbox_limit`` (a batch larger than the inbox is bound to meet 429).
- :class:`Inbound` accepts a server message only if its ``seq`` is exactly one
  more than the last accepted: duplicates of a lost poll answer are dropped, and
  its ``ack`` is always the highest seq received contiguously.
- :class:`Backoff` draws its jitter from an injected ``random`` callable.

Thread-safety: none. The client guards every object here with its own lock.
"""

from __future__ import annotations

import enum
import json
import math
import re
import sys
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ._errors import (
    BadRequest,
    Forbidden,
    HttpError,
    InboxFull,
    MethodNotAllowed,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
    UnknownSession,
    UnsupportedMediaType,
)
from ._messages import MessageType, decode_data, encode_outgoing

__all__ = [
    "ProtocolError",
    "Encoded",
    "encode_message",
    "decode_message",
    "ServerConfig",
    "parse_open_answer",
    "PollAnswer",
    "parse_poll_answer",
    "parse_post_answer",
    "parse_gone_answer",
    "parse_retry_after",
    "format_seconds",
    "http_error",
    "Outbox",
    "Inbound",
    "body_size_of",
    "Backoff",
    "Disposition",
    "classify_status",
]


class ProtocolError(Exception):
    """The server answered something this client cannot understand.

    Raised by the ``parse_*`` functions; the client treats it like a failed
    request (retry with backoff), because a broken proxy or a truncated answer
    looks exactly like this.
    """


# --------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """One outgoing message, encoded once when it is queued.

    ``fragment`` is the UTF-8 JSON of ``"type":...,"data":...`` without braces,
    so the wire form of the message is ``{"seq":N,`` + fragment + ``}``.
    ``size`` is the message size as PROTOCOL.md section 2 defines it.
    """

    type: str
    fragment: bytes
    size: int


def encode_message(data: Any, *, max_message_size: int | None = None) -> Encoded:
    """Encode an application value as a wire message, by the core's rules (``_messages``).

    ``str`` becomes ``text``; ``bytes``, ``bytearray`` and ``memoryview`` become
    ``binary`` (standard padded base64); anything else becomes ``json``.
    Raises :class:`ValueError` for what the protocol forbids (a lone surrogate,
    NaN, Infinity, an integer beyond a double), :class:`TypeError` for a value
    JSON cannot hold, and :class:`MessageTooLarge` above ``max_message_size``.
    """
    outgoing = encode_outgoing(data, sys.maxsize if max_message_size is None else max_message_size)
    return Encoded(outgoing.type.value, outgoing.fragment, outgoing.size)


def decode_message(message: Any) -> tuple[int, Any]:
    """Check one incoming wire message and return ``(seq, value)``.

    Raises :class:`ProtocolError` if the message does not have the shape of
    the protocol (the same rules the server applies to what it receives).
    """
    if not isinstance(message, dict):
        raise ProtocolError(f"expected a message object, got {type(message).__name__}")
    seq = message.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ProtocolError(f"expected an integer seq >= 1, got {seq!r}")
    if "data" not in message:
        raise ProtocolError(f"message {seq} has no data")
    try:
        type_ = MessageType(message.get("type"))
        return seq, decode_data(type_, message["data"], 0).data
    except (ValueError, BadRequest) as exc:
        raise ProtocolError(f"message {seq} is malformed: {exc}") from None


# --------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------


def _load_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(f"answer is not JSON: {body[:80]!r}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _closed(value: Any) -> tuple[int, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError(f"expected closed to be null or an object, got {value!r}")
    code, reason = value.get("code"), value.get("reason", "")
    if not isinstance(code, int) or isinstance(code, bool) or not isinstance(reason, str):
        raise ProtocolError(f"expected closed to hold an integer code and a string reason, got {value!r}")
    return code, reason


def parse_gone_answer(body: bytes) -> tuple[int, str] | None:
    """The close a ``410`` answer reports for a session that ended recently, if any.

    The server remembers how a forgotten session ended for a while, so a
    client whose answer carrying the close was lost still learns it.
    """
    try:
        return _closed(_load_object(body).get("closed"))
    except ProtocolError:
        return None


def _number(obj: dict[str, Any], key: str, default: float) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ProtocolError(f"expected {key} to be a non-negative number, got {value!r}")
    return value


@dataclass(frozen=True)
class PollAnswer:
    """A parsed poll answer: ``messages`` as ``(seq, value)`` pairs, and the close if any."""

    messages: list[tuple[int, Any]]
    closed: tuple[int, str] | None


@dataclass(frozen=True)
class ServerConfig:
    """What the opening answer told us (PROTOCOL.md section 3)."""

    sid: str
    poll_timeout: float = 25.0
    session_timeout: float = 60.0
    inbox_limit: int = 64
    max_message_size: int = 1 << 20
    max_body_size: int = 4 << 20


def parse_poll_answer(body: bytes) -> PollAnswer:
    """Parse a ``200`` poll answer ``{"messages": [...], "closed": ...}``."""
    obj = _load_object(body)
    messages = obj.get("messages")
    if not isinstance(messages, list):
        raise ProtocolError(f"expected messages to be a list, got {messages!r:.80}")
    return PollAnswer([decode_message(m) for m in messages], _closed(obj.get("closed")))


def parse_open_answer(body: bytes, header_sid: str | None = None) -> tuple[ServerConfig, PollAnswer]:
    """Parse the ``200`` answer to the opening ``GET``: the server's limits and a first poll answer."""
    obj = _load_object(body)
    sid = obj.get("sid") or header_sid
    if not isinstance(sid, str) or not sid:
        raise ProtocolError("the opening answer carries no session id")
    if obj.get("version", 1) != 1:
        raise ProtocolError(f"unsupported protocol version {obj.get('version')!r}")
    config = ServerConfig(
        sid=sid,
        poll_timeout=_number(obj, "poll_timeout", ServerConfig.poll_timeout),
        session_timeout=_number(obj, "session_timeout", ServerConfig.session_timeout),
        inbox_limit=max(1, int(_number(obj, "inbox_limit", ServerConfig.inbox_limit))),
        max_message_size=int(_number(obj, "max_message_size", ServerConfig.max_message_size)),
        max_body_size=int(_number(obj, "max_body_size", ServerConfig.max_body_size)),
    )
    messages = obj.get("messages", [])
    if not isinstance(messages, list):
        raise ProtocolError(f"expected messages to be a list, got {messages!r:.80}")
    return config, PollAnswer([decode_message(m) for m in messages], _closed(obj.get("closed")))


def parse_post_answer(body: bytes) -> int:
    """Return the ``ack`` of a ``200`` or ``429`` answer to a ``POST``."""
    ack = _load_object(body).get("ack")
    if not isinstance(ack, int) or isinstance(ack, bool) or ack < 0:
        raise ProtocolError(f"expected an integer ack, got {ack!r}")
    return ack


_DELAY = re.compile(r"[0-9]+(\.[0-9]+)?")


def parse_retry_after(value: str | None, default: float = 1.0) -> float:
    """Seconds to wait from a ``Retry-After`` header.

    Only the delay-seconds form is understood (decimals tolerated); an absent
    or HTTP-date value gives ``default``, which keeps the client from reading
    the wall clock.
    """
    if value is None or not _DELAY.fullmatch(value.strip()):
        return default
    return float(value.strip())


def format_seconds(value: float) -> str:
    """Format a duration as the protocol's ``[0-9]+(\\.[0-9]+)?`` (millisecond precision)."""
    text = f"{max(0.0, value):.3f}".rstrip("0").rstrip(".")
    return text or "0"


_ERRORS: dict[int, type[HttpError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    405: MethodNotAllowed,
    410: UnknownSession,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


def http_error(status: int, body: bytes, retry_after: str | None = None, reason: str = "") -> HttpError:
    """Turn a refusal into the matching :class:`pollsession.HttpError` subclass.

    The server's short code and message are kept when the body has them
    (PROTOCOL.md section 8); a status without a subclass gives a plain
    :class:`HttpError` carrying that status.
    """
    code: str | None = None
    message = reason or f"HTTP {status}"
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        document = None
    if isinstance(document, dict):
        code = document["error"] if isinstance(document.get("error"), str) else None
        message = document["message"] if isinstance(document.get("message"), str) else message
    if status == 429:
        ack = document.get("ack") if isinstance(document, dict) else None
        ack = ack if isinstance(ack, int) and not isinstance(ack, bool) else 0
        return InboxFull(message, ack=ack, retry_after=int(parse_retry_after(retry_after)))
    if status == 503:
        return ServiceUnavailable(message, retry_after=int(parse_retry_after(retry_after)), code=code)
    cls = _ERRORS.get(status)
    if cls is not None:
        return cls(message, code=code)
    error = HttpError(message, code=code)
    error.status = status
    return error


class Disposition(enum.Enum):
    """What the client does with an HTTP status (see :func:`classify_status`)."""

    OK = "ok"  # 200/204: use the answer
    THROTTLED = "throttled"  # 429: keep what was acknowledged, wait Retry-After, send the rest
    RETRY = "retry"  # 5xx (503 included): transient, back off and retry
    GONE = "gone"  # 410: the server does not know the session any more
    FATAL = "fatal"  # any other 4xx: retrying the same request cannot help


def classify_status(status: int) -> Disposition:
    """Map an HTTP status to what the client does next."""
    if 200 <= status < 300:
        return Disposition.OK
    if status == 429:
        return Disposition.THROTTLED
    if status == 410:
        return Disposition.GONE
    if status >= 500:
        return Disposition.RETRY
    return Disposition.FATAL


# --------------------------------------------------------------------------
# Outgoing
# --------------------------------------------------------------------------

_BODY_OPEN = b'{"messages":['
_BODY_CLOSE = b"]}"


class Outbox:
    """Outgoing messages with their seqs, kept until acknowledged.

    Call :meth:`push` to queue, :meth:`batch` to get the next body to ``POST``
    (always starting at the first unacknowledged message), and
    :meth:`acknowledge` with the ``ack`` of each answer, including a 429's.
    After a failed ``POST`` just call :meth:`batch` again.
    """

    def __init__(self) -> None:
        self._pending: deque[tuple[int, bytes]] = deque()
        self._last_seq = 0
        self.acked = 0  # the highest seq the server acknowledged

    def __len__(self) -> int:
        """How many messages are queued and not yet acknowledged."""
        return len(self._pending)

    @property
    def last_seq(self) -> int:
        """The seq of the most recently queued message (0 before the first)."""
        return self._last_seq

    def push(self, message: Encoded) -> int:
        """Queue an encoded message; return its seq."""
        self._last_seq += 1
        item = b'{"seq":%d,%s}' % (self._last_seq, message.fragment)
        self._pending.append((self._last_seq, item))
        return self._last_seq

    def batch(self, *, max_body_size: int, max_count: int) -> tuple[bytes, int] | None:
        """Return ``(body, last_seq)`` for the next ``POST``, or None if nothing is pending.

        The batch holds as many leading messages as fit in ``max_body_size``
        bytes and ``max_count`` messages, and at least one. A single message too
        big for the body limit is refused at :meth:`Client.send` time, so the
        "at least one" rule never sends an oversized body in practice.
        """
        if not self._pending:
            return None
        parts: list[bytes] = []
        size = len(_BODY_OPEN) + len(_BODY_CLOSE)
        last = 0
        for seq, item in self._pending:
            extra = len(item) + (1 if parts else 0)
            if parts and (size + extra > max_body_size or len(parts) >= max_count):
                break
            parts.append(item)
            size += extra
            last = seq
        return _BODY_OPEN + b",".join(parts) + _BODY_CLOSE, last

    def acknowledge(self, ack: int) -> int:
        """Forget every message with ``seq <= ack``; return how many were forgotten.

        An ``ack`` lower than one already seen changes nothing. An ``ack`` above
        the last queued seq is a server bug: :class:`ProtocolError`.
        """
        if ack > self._last_seq:
            raise ProtocolError(f"server acknowledged seq {ack}, but only {self._last_seq} were sent")
        dropped = 0
        while self._pending and self._pending[0][0] <= ack:
            self._pending.popleft()
            dropped += 1
        self.acked = max(self.acked, ack)
        return dropped


def body_size_of(message: Encoded, seq: int) -> int:
    """The size of a ``POST`` body that carries only ``message`` (for the send-time limit check)."""
    return len(_BODY_OPEN) + len(b'{"seq":%d,' % seq) + len(message.fragment) + 1 + len(_BODY_CLOSE)


# --------------------------------------------------------------------------
# Incoming
# --------------------------------------------------------------------------


class Inbound:
    """De-duplication of server messages by seq.

    Feed every poll answer's messages to :meth:`accept`; it returns the values
    that are new, in order. :attr:`ack` is what the next poll must carry.
    """

    def __init__(self) -> None:
        self.ack = 0
        self.duplicates = 0  # messages dropped because their seq was already received
        self.gaps = 0  # messages dropped because an earlier seq was missing

    def accept(self, messages: Iterable[tuple[int, Any]]) -> list[Any]:
        """Return the new values among ``messages``, advancing :attr:`ack`.

        A seq at or below ``ack`` is a duplicate from a lost answer. A seq
        beyond ``ack + 1`` would leave a hole; it is dropped without advancing
        ``ack``, so the server sends it again on the next poll.
        """
        fresh: list[Any] = []
        for seq, value in messages:
            if seq <= self.ack:
                self.duplicates += 1
            elif seq == self.ack + 1:
                self.ack = seq
                fresh.append(value)
            else:
                self.gaps += 1
        return fresh


# --------------------------------------------------------------------------
# Retrying
# --------------------------------------------------------------------------


class Backoff:
    """Exponential backoff with jitter, and a budget of consecutive retries.

    Call :meth:`failure` after each failed attempt: it returns how long to wait
    before the next one, or None once ``max_retries`` retries have failed (then
    give up). Call :meth:`reset` after any success.

    The n-th delay (from 0) is ``d = min(max_delay, base * 2**n)`` scaled into
    ``[d/2, d)`` by ``random()``: never zero, so retries cannot become a busy
    loop, and spread out so many clients do not retry in lockstep.
    """

    def __init__(
        self,
        *,
        base: float,
        max_delay: float,
        max_retries: int,
        random: Callable[[], float],
    ) -> None:
        if base <= 0 or max_delay < base:
            raise ValueError(f"expected 0 < base <= max_delay, got base={base} max_delay={max_delay}")
        if max_retries < 0:
            raise ValueError(f"expected max_retries >= 0, got {max_retries}")
        self.base = base
        self.max_delay = max_delay
        self.max_retries = max_retries
        self._random = random
        self.failures = 0

    def failure(self) -> float | None:
        """Record a failed attempt; return the delay before the next one, or None to give up."""
        if self.failures >= self.max_retries:
            self.failures += 1
            return None
        exponent = min(self.failures, 64)  # 2**64 * base is past any max_delay
        delay = min(self.max_delay, self.base * math.pow(2, exponent))
        self.failures += 1
        return delay * (0.5 + 0.5 * self._random())

    def reset(self) -> None:
        """Record a success: the next failure starts again from ``base``."""
        self.failures = 0

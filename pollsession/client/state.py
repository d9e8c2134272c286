"""Reliability rules of the Python client, as plain objects without I/O.

Everything that decides *what* the client sends, *what* it keeps and *what it
does with an answer* lives in this module, :mod:`pollsession.client.answers`
and :mod:`pollsession.client.core`; both clients (:mod:`pollsession.client.sync`
and :mod:`pollsession.client.aio`) only move bytes and wait. Nothing here touches a socket or a thread, so every rule
can be tested with plain calls (``tests/test_client_state.py``) and held to the
shared vectors (``tests/vectors/client``, which the browser client obeys too).

Invariants kept here:

- What the client does with each answer is decided in
  :mod:`pollsession.client.answers` (:func:`classify_answer`).
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

Thread-safety: none. The threaded client guards every object here with its lock;
the asyncio client uses them from its event loop only.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..protocol.errors import ProtocolError
from ..protocol.messages import encode_outgoing
from ..protocol.wire import Delivered

__all__ = [
    "ProtocolError",
    "DEFAULT_RETRY_BASE_DELAY",
    "DEFAULT_RETRY_MAX_DELAY",
    "DEFAULT_MAX_RETRIES",
    "Encoded",
    "encode_message",
    "Outbox",
    "Inbound",
    "body_size_of",
    "backoff_delay",
    "Backoff",
]

DEFAULT_RETRY_BASE_DELAY = 0.25
"""Seconds before the first retry (jittered into [0.125, 0.25)); shared with the browser client."""

DEFAULT_RETRY_MAX_DELAY = 10.0
"""The cap of the doubling delay between retries; shared with the browser client."""

DEFAULT_MAX_RETRIES = 8
"""Consecutive failures retried before the session ends with 1006 (about 40 s with the defaults)."""


# --------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """One outgoing message, encoded once when it is queued.

    ``fragment`` is the UTF-8 JSON of ``"type":...,"data":...`` without braces,
    so the wire form of the message is ``{"seq":N,`` + fragment + ``}``.
    ``size`` is the message size as docs/protocol.md section 3 defines it.
    """

    type: str
    fragment: bytes
    size: int


def encode_message(data: Any, *, max_message_size: int | None = None) -> Encoded:
    """Encode an application value as a wire message, by the server's own rules (``protocol.messages``).

    ``str`` becomes ``text``; ``bytes``, ``bytearray`` and ``memoryview`` become
    ``binary`` (standard padded base64); anything else becomes ``json``.
    Raises :class:`ValueError` for what the protocol forbids (a lone surrogate
    anywhere, NaN, Infinity, an integer beyond a double), :class:`TypeError`
    for a value JSON cannot hold, and :class:`MessageTooLarge` above
    ``max_message_size``. A lone surrogate is refused rather than replaced:
    silently changing the data is the loss this library exists to prevent.
    """
    outgoing = encode_outgoing(data, sys.maxsize if max_message_size is None else max_message_size)
    return Encoded(outgoing.type.value, outgoing.fragment, outgoing.size)


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

    def accept(self, messages: Iterable[Delivered]) -> list[Any]:
        """Return the data of the new messages among ``messages``, advancing :attr:`ack`.

        A seq at or below ``ack`` is a duplicate from a lost answer. A seq
        beyond ``ack + 1`` would leave a hole; it is dropped without advancing
        ``ack``, so the server sends it again on the next poll.
        """
        fresh: list[Any] = []
        for message in messages:
            if message.seq <= self.ack:
                self.duplicates += 1
            elif message.seq == self.ack + 1:
                self.ack = message.seq
                fresh.append(message.data)
            else:
                self.gaps += 1
        return fresh


# --------------------------------------------------------------------------
# Retrying
# --------------------------------------------------------------------------


def backoff_delay(failures: int, *, base: float, max_delay: float, random: float) -> float:
    """The wait after the ``failures``-th consecutive failure (from 0), jittered by ``random`` in [0, 1).

    ``d = min(max_delay, base * 2**failures)`` scaled into ``[d/2, d)``: never
    zero, so retries cannot become a busy loop, and spread out so many
    clients do not retry in lockstep.
    """
    exponent = min(failures, 64)  # 2**64 * base is past any max_delay
    delay = min(max_delay, base * math.pow(2, exponent))
    return delay * (0.5 + 0.5 * random)


class Backoff:
    """Exponential backoff with jitter (:func:`backoff_delay`), and a budget of consecutive retries.

    Call :meth:`failure` after each failed attempt: it returns how long to wait
    before the next one, or None once ``max_retries`` retries have failed (then
    give up). Call :meth:`reset` after any success. The defaults are the
    client's (and the browser client's).
    """

    def __init__(
        self,
        *,
        base: float = DEFAULT_RETRY_BASE_DELAY,
        max_delay: float = DEFAULT_RETRY_MAX_DELAY,
        max_retries: int = DEFAULT_MAX_RETRIES,
        random: Callable[[], float],
    ) -> None:
        if not base > 0 or not max_delay >= base:
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
        delay = backoff_delay(self.failures, base=self.base, max_delay=self.max_delay, random=self._random())
        self.failures += 1
        return delay

    def retry(self, after: float | None) -> float | None:
        """Record a failed attempt answered with ``Retry-After: after`` (None: none understood).

        Returns how long to wait, ``max(after, the backoff's delay)``, or None to give up:
        a server's ``Retry-After`` never stretches the budget, and ``0`` never makes a busy loop.
        """
        delay = self.failure()
        return None if delay is None else max(delay, after or 0.0)

    def reset(self) -> None:
        """Record a success: the next failure starts again from ``base``."""
        self.failures = 0

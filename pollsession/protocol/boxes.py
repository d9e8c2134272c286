"""A session's two queues, bounded in messages and in bytes, with no I/O.

Both queues keep messages in their wire (or compact) form, never as decoded
Python objects, so what a session holds is what its limits say:

* :class:`Outbox`: messages sent to the client and not yet acknowledged, as
  encoded fragments (``messages.Outgoing``), numbered from 1. It holds at most
  ``max_messages`` and at most ``max_bytes`` of fragments, except that one
  message always fits into an empty outbox (so a message of
  ``max_message_size`` can always be sent). The JSON of a poll answer's
  ``messages`` is joined from the fragments, never encoded again: a client
  that polls again and again for the same data costs a copy of at most
  ``max_bytes``, not a JSON encoding, and holds no second copy.
* :class:`Inbox`: pushed messages not yet read by the application, packed
  (``messages.Packed``), at most ``max_messages`` and ``max_bytes``, the same
  empty-box rule applying; and the highest client sequence number held, which
  makes a retried push harmless.

Invariants kept here: sequence numbers in the outbox are consecutive, so what
an ack frees is a prefix; the inbox's ``received`` only grows, by exactly the
messages taken. Nothing here waits: the core (``delivery``) decides who
waits for room, and the asyncio layer (``server.channel``) wakes them.
"""

from __future__ import annotations

from .errors import BadRequest, PayloadTooLarge
from .messages import Packed
from .wire import message_array_parts

__all__ = ["Outbox", "Inbox"]


class Outbox:
    """Unacknowledged outgoing fragments, bounded in count and bytes."""

    __slots__ = ("_max_messages", "_max_bytes", "_entries", "_bytes", "last_sent", "acked")

    def __init__(self, *, max_messages: int, max_bytes: int) -> None:
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        # A list, not a deque: an empty deque costs ~600 bytes per idle session,
        # and an ack trims a prefix with one slice.
        self._entries: list[tuple[int, bytes]] = []
        self._bytes = 0
        self.last_sent = 0
        self.acked = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes of fragments held."""
        return self._bytes

    def fits(self, size: int, *, reserved_messages: int = 0, reserved_bytes: int = 0) -> bool:
        """Whether a fragment of ``size`` bytes fits beside what is held and reserved."""
        count = len(self._entries) + reserved_messages
        if count >= self._max_messages:
            return False
        return count == 0 or self._bytes + reserved_bytes + size <= self._max_bytes

    def append_if_fits(self, fragment: bytes, reserved_messages: int = 0, reserved_bytes: int = 0) -> int | None:
        """:meth:`fits` and :meth:`append` in one call (once per message sent): the seq, or None if it does not fit."""
        entries = self._entries
        count = len(entries) + reserved_messages
        if count >= self._max_messages or (count and self._bytes + reserved_bytes + len(fragment) > self._max_bytes):
            return None
        self.last_sent += 1
        entries.append((self.last_sent, fragment))
        self._bytes += len(fragment)
        return self.last_sent

    def append(self, fragment: bytes) -> int:
        """Add a fragment (the caller checked :meth:`fits`); return its sequence number."""
        self.last_sent += 1
        self._entries.append((self.last_sent, fragment))
        self._bytes += len(fragment)
        return self.last_sent

    def acknowledge(self, ack: int) -> bool:
        """Forget every message up to ``ack``; True if that freed room.

        Raises :class:`BadRequest` for an ack beyond the last message sent,
        changing nothing. A lower ack than one already received is that one.
        """
        if ack > self.last_sent:
            raise BadRequest(f"ack {ack} is beyond the last message sent ({self.last_sent})", code="bad_ack")
        if ack <= self.acked:
            return False
        self.acked = ack
        if self._entries:
            done = ack - self._entries[0][0] + 1
            self._bytes -= sum(len(fragment) for _, fragment in self._entries[:done])
            del self._entries[:done]
        return True

    def entries(self) -> list[tuple[int, bytes]]:
        """Every unacknowledged ``(seq, fragment)``, oldest first (not a copy: do not keep it)."""
        return self._entries

    def messages_json(self) -> bytes:
        """The JSON array of every unacknowledged message, as a poll answer carries it."""
        return b"".join(message_array_parts(self._entries))


class Inbox:
    """Pushed messages the application has not read, and the highest seq held."""

    __slots__ = ("_max_messages", "_max_bytes", "_max_message_size", "_messages", "_bytes", "received")

    def __init__(self, *, max_messages: int, max_bytes: int, max_message_size: int) -> None:
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._max_message_size = max_message_size
        self._messages: list[Packed] = []
        self._bytes = 0
        self.received = 0

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def max_messages(self) -> int:
        return self._max_messages

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def nbytes(self) -> int:
        """Bytes of messages held."""
        return self._bytes

    def accept(self, batch: list[tuple[int, Packed]]) -> tuple[int, bool]:
        """Take the new messages of a validated batch; return ``(received, all_taken)``.

        Messages already held (``seq <= received``) are ignored, so a retried
        push delivers nothing twice. Raises :class:`BadRequest` (a gap) or
        :class:`PayloadTooLarge` (a new message past ``max_message_size``),
        taking nothing. Takes what fits, in order; the rest is refused.
        """
        fresh = [(seq, message) for seq, message in batch if seq > self.received]
        if fresh and fresh[0][0] != self.received + 1:
            raise BadRequest(
                f"message seq {fresh[0][0]} leaves a gap: the server holds up to {self.received}",
                code="seq_gap",
            )
        for seq, message in fresh:
            if message.size > self._max_message_size:
                raise PayloadTooLarge(
                    f"message seq {seq} is {message.size} bytes, over max_message_size of {self._max_message_size}",
                    code="message_too_large",
                )
        taken = 0
        for seq, message in fresh:
            count = len(self._messages)
            if count >= self._max_messages or (count and self._bytes + message.size > self._max_bytes):
                break
            self._messages.append(message)
            self._bytes += message.size
            self.received = seq
            taken += 1
        return self.received, taken == len(fresh)

    def pop(self) -> Packed:
        """The oldest unread message (IndexError when empty)."""
        message = self._messages.pop(0)
        self._bytes -= message.size
        return message

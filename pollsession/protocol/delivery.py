"""One session's protocol state, driven by plain method calls: no asyncio, no I/O.

:class:`Delivery` is everything docs/protocol.md says a server keeps for a
session (sections 4 and 6-8, 11):

* the outbox: messages sent and not yet acknowledged, numbered from 1, in
  wire form (``boxes.Outbox``), resent whole on every poll until
  acknowledged; and the senders waiting for room in it (backpressure), as
  numbered *tickets* served in FIFO order;
* the inbox: pushed messages not yet read, de-duplicated by seq, with the gap
  rule and its limits (``boxes.Inbox``);
* the close and its lifecycle: open, closed (the close is decided), told (an
  answer carried it), finished (everything was acknowledged: forget it);
* the held poll: at most one, superseded by a newer one;
* what each answer carries.

The asyncio layer (``pollsession.server.session``) owns the futures: it asks
this object what to do and wakes the tasks the answer names. Every method
here returns at once; none waits, sleeps or reads a clock. Not thread-safe:
one owner (the session's loop) drives it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .boxes import Inbox, Outbox
from .errors import HttpError, InboxFull, SessionClosed, UnknownSession
from .messages import Outgoing, Packed
from .wire import Closed, closed_json, message_array_parts, poll_answer_parts

__all__ = ["Delivery", "PollAction", "Accepted", "SERVER_CLOSE_CODES", "check_close"]

SERVER_CLOSE_CODES = (1000, 1001, 1003, 1007, 1008, 1009, 1011)
"""The WebSocket close codes a server may give, besides the application's 3000-4999."""


def check_close(code: int, reason: str) -> None:
    """Refuse a close the protocol cannot carry (ValueError)."""
    if type(code) is not int or not (code in SERVER_CLOSE_CODES or 3000 <= code <= 4999):
        raise ValueError(f"close code must be one of {SERVER_CLOSE_CODES} or 3000-4999, got {code!r}")
    if not isinstance(reason, str) or len(reason.encode("utf-8")) > 123:
        raise ValueError("reason must be a str of at most 123 UTF-8 bytes")


class PollAction(enum.Enum):
    """What to do with a poll once its ack is applied (:meth:`Delivery.poll`)."""

    ANSWER = "answer"  # answer now with what there is
    FINAL = "final"  # answer now, and forget the session: the client has seen everything and the close
    HOLD = "hold"  # nothing to say yet: hold the poll until there is, or the hold ends


@dataclass(frozen=True, slots=True)
class Accepted:
    """What a push did: the ack to answer, whether every new message fit, whether the inbox grew."""

    ack: int
    complete: bool
    grew: bool


class Delivery:
    """The delivery state of one session; see the module docstring."""

    __slots__ = (
        "_outbox", "_inbox", "_waiting", "_next_ticket", "_granted", "_reserved", "_reserved_bytes",
        "_poll", "_next_poll", "_close", "_closed_json", "_close_told",
    )

    def __init__(
        self, *, inbox_limit: int, outbox_limit: int, max_message_size: int,
        max_inbox_bytes: int, max_outbox_bytes: int,
    ) -> None:
        self._outbox = Outbox(max_messages=outbox_limit, max_bytes=max_outbox_bytes)
        self._inbox = Inbox(max_messages=inbox_limit, max_bytes=max_inbox_bytes, max_message_size=max_message_size)
        # Senders waiting for room, FIFO: (ticket, fragment size). A granted
        # ticket's room is reserved for it until it claims or withdraws. Plain
        # lists and dicts made on first use: an idle session pays for neither
        # (an empty deque alone costs ~600 bytes).
        self._waiting: list[tuple[int, int]] = []
        self._next_ticket = 0
        self._granted: dict[int, int] | None = None
        self._reserved = 0
        self._reserved_bytes = 0
        self._poll = 0  # the held poll's number, 0 when none is held
        self._next_poll = 0
        self._close: Closed | None = None
        self._closed_json = b"null"
        self._close_told = False

    # -- what it holds ---------------------------------------------------------

    @property
    def closed(self) -> Closed | None:
        """The close once decided (by either side), else None."""
        return self._close

    @property
    def last_sent(self) -> int:
        return self._outbox.last_sent

    @property
    def acked(self) -> int:
        """The highest server seq the client acknowledged."""
        return self._outbox.acked

    @property
    def received(self) -> int:
        """The highest client seq held (the ack of a push)."""
        return self._inbox.received

    @property
    def unacknowledged(self) -> int:
        return len(self._outbox)

    @property
    def outbox_bytes(self) -> int:
        return self._outbox.nbytes

    @property
    def unread(self) -> int:
        """Messages pushed and not yet read by the application."""
        return len(self._inbox)

    @property
    def inbox_bytes(self) -> int:
        return self._inbox.nbytes

    @property
    def holds_poll(self) -> bool:
        return self._poll != 0

    @property
    def held_poll(self) -> int:
        """The number of the poll held now (each hold gets a new one), 0 when none is."""
        return self._poll

    def ready_to_answer(self) -> bool:
        """Whether a poll would be answered at once: there is something unacknowledged, or the close."""
        return bool(len(self._outbox)) or self._close is not None

    def finished(self) -> bool:
        """Closed, the close was told, and everything was acknowledged: the session can be forgotten."""
        return self._close_told and self._outbox.acked == self._outbox.last_sent

    def _raise_if_closed(self) -> None:
        if self._close is not None:
            raise SessionClosed(self._close.code, self._close.reason)

    # -- sending (the application's side) --------------------------------------

    def _fits(self, size: int) -> bool:
        return self._outbox.fits(size, reserved_messages=self._reserved, reserved_bytes=self._reserved_bytes)

    def send(self, message: Outgoing) -> int | None:
        """Append ``message`` if there is room and nobody waits before it; return its seq.

        None means it must wait: call :meth:`wait_for_room` for a ticket.
        Raises ``SessionClosed`` once closed.
        """
        if self._close is not None:
            self._raise_if_closed()
        # First come, first numbered: nobody passes a sender still waiting, or one granted room
        # that has not appended yet.
        if self._waiting or self._granted:
            return None
        return self._outbox.append_if_fits(message.fragment, self._reserved, self._reserved_bytes)

    def offer(self, message: Outgoing) -> bool:
        """A broadcast's append: now if there is room beside what is reserved, never waiting; False if not.

        A broadcast does not queue behind waiting senders (it would block every
        member), but it never takes the room reserved for a granted one.
        """
        if self._close is not None:
            self._raise_if_closed()
        if self._waiting:
            return False
        return self._outbox.append_if_fits(message.fragment, self._reserved, self._reserved_bytes) is not None

    def wait_for_room(self, size: int) -> int:
        """Queue a sender of a ``size``-byte fragment; return its ticket (granted by :meth:`acknowledge`)."""
        self._raise_if_closed()
        self._next_ticket += 1
        self._waiting.append((self._next_ticket, size))
        return self._next_ticket

    def claim(self, ticket: int, message: Outgoing) -> int:
        """A granted ticket's sender appends its message into the room reserved for it; return its seq.

        A sender granted room before the session closed still appends: it
        called ``send`` before the close, and what was sent before a close is
        delivered with it. A ticket the close refused raises ``SessionClosed``.
        """
        if self._granted and ticket in self._granted:
            self._release(ticket)
            return self._outbox.append(message.fragment)
        self._raise_if_closed()
        raise ValueError(f"ticket {ticket} was not granted room")

    def withdraw(self, ticket: int) -> list[int]:
        """A waiting sender gave up (cancelled): free its place or its room; return tickets granted now."""
        if self._granted and ticket in self._granted:
            self._release(ticket)
            return self._grant()
        self._waiting = [entry for entry in self._waiting if entry[0] != ticket]
        return self._grant() if self._waiting else []

    def _release(self, ticket: int) -> None:
        assert self._granted is not None
        size = self._granted.pop(ticket)
        self._reserved -= 1
        self._reserved_bytes -= size

    def _grant(self) -> list[int]:
        granted: list[int] = []
        while self._waiting:
            ticket, size = self._waiting[0]
            if not self._fits(size):
                break
            self._waiting.pop(0)
            if self._granted is None:
                self._granted = {}
            self._granted[ticket] = size
            self._reserved += 1
            self._reserved_bytes += size
            granted.append(ticket)
        return granted

    # -- polls ----------------------------------------------------------------

    def acknowledge(self, ack: int) -> list[int]:
        """Apply a poll's ack: forget what the client has; return the tickets granted the freed room.

        Raises ``BadRequest`` (``bad_ack``) for an ack beyond the last message
        sent, changing nothing.
        """
        if self._outbox.acknowledge(ack) and self._waiting:
            return self._grant()
        return []

    def poll(self, hold: float) -> PollAction:
        """What to do with a poll whose ack was applied, allowed to be held ``hold`` seconds."""
        if self._close is not None and self.finished():
            return PollAction.FINAL
        if self.ready_to_answer() or hold <= 0:
            return PollAction.ANSWER
        return PollAction.HOLD

    def hold_poll(self) -> tuple[int, int]:
        """Become the held poll; return ``(its number, the superseded poll's number or 0)``."""
        superseded = self._poll
        self._next_poll += 1
        self._poll = self._next_poll
        return self._poll, superseded

    def supersede(self) -> int:
        """A poll answered at once replaces a held one; return the superseded poll's number or 0."""
        superseded, self._poll = self._poll, 0
        return superseded

    def release_poll(self, number: int) -> None:
        """The held poll ``number`` was answered (or gave up)."""
        if self._poll == number:
            self._poll = 0

    def answer(self) -> list[bytes]:
        """A poll answer in pieces: everything unacknowledged, and the close (which is then told)."""
        if self._close is not None:
            self._close_told = True
        return poll_answer_parts(message_array_parts(self._outbox.entries()), self._closed_json)

    def answer_parts(self) -> tuple[list[bytes], bytes]:
        """The open answer's pieces: the messages array and the ``closed`` JSON (then told)."""
        if self._close is not None:
            self._close_told = True
        return message_array_parts(self._outbox.entries()), self._closed_json

    # -- pushes ---------------------------------------------------------------

    def accept(self, batch: list[tuple[int, Packed]]) -> Accepted:
        """Take the new messages of a validated batch (duplicates dropped, gaps refused).

        Raises ``UnknownSession`` (``session_closed``, with the close) once
        closed, ``BadRequest`` (``seq_gap``) for a gap and ``PayloadTooLarge``
        for a new message past ``max_message_size``, taking nothing.
        """
        if self._close is not None:
            raise UnknownSession("the session is closed", code="session_closed", closed=self._close)
        before = len(self._inbox)
        ack, complete = self._inbox.accept(batch)
        return Accepted(ack, complete, len(self._inbox) > before)

    def push(self, batch: list[tuple[int, Packed]], *, refused: HttpError | None, retry_after: int) -> int:
        """A push to this session, in the protocol's order of checks; return the ack.

        A closed session answers 410 with its close, before ``refused`` (a
        refusal found while parsing the request, raised only once the session
        is known to be open); then the batch is taken (:meth:`accept`), and
        if part of it did not fit, ``InboxFull`` (429) carries the ack.
        """
        if self._close is not None:
            raise UnknownSession("the session is closed", code="session_closed", closed=self._close)
        if refused is not None:
            raise refused
        accepted = self.accept(batch)
        if not accepted.complete:
            raise InboxFull(
                f"the session's inbox is full ({self._inbox.max_messages} messages or "
                f"{self._inbox.max_bytes} bytes); the server holds up to seq {accepted.ack}, "
                "send the rest again later",
                ack=accepted.ack,
                retry_after=retry_after,
            )
        return accepted.ack

    def read(self) -> Packed | None:
        """The oldest unread pushed message, or None."""
        return self._inbox.pop() if len(self._inbox) else None

    # -- closing --------------------------------------------------------------

    def close(self, code: int, reason: str = "") -> list[int]:
        """Decide the close (the first one wins); return the waiting senders' tickets, now refused.

        Senders already granted room keep it (:meth:`claim`). Returns an empty
        list when the session was already closed; see :attr:`closed` for
        which close won.
        """
        if self._close is not None:
            return []
        self._close = Closed(code, reason)
        self._closed_json = closed_json(self._close)
        refused = [ticket for ticket, _ in self._waiting]
        self._waiting = []
        return refused

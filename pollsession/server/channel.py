"""The server's side of one session: its pure delivery state and the tasks waiting on it.

A :class:`Channel` pairs one ``protocol.delivery.Delivery`` (what the protocol
keeps) with the asyncio futures of whoever waits on it: senders waiting for
room, the application's reader, tasks waiting for the end, and the held poll.
It asks the ``Delivery`` what to do and wakes the tasks the answer names;
it decides nothing itself. The registry and rooms drive a session through
these public methods; the application sees the :class:`~pollsession.Session`
facade over it.

Loop thread only: every method must be called on the handler's loop.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
from typing import TYPE_CHECKING

from ..protocol.delivery import Accepted, Delivery
from ..protocol.errors import HttpError, SessionClosed
from ..protocol.messages import Outgoing, Packed
from ..protocol.wire import Closed

if TYPE_CHECKING:
    from .rooms import Rooms
    from .session import Session

__all__ = ["Channel", "PollWake", "session_tag"]


def session_tag(sid: str) -> str:
    """A short tag naming a session in logs; it cannot be turned back into the id.

    The id is the client's only credential, so logs never carry it (not even
    a prefix, which shortens what is left to guess).
    """
    return hashlib.blake2s(sid.encode("utf-8"), digest_size=5).hexdigest()


class PollWake(enum.Enum):
    """Why a held poll was woken."""

    READY = "ready"  # messages or a close to answer with, or the hold is over
    SUPERSEDED = "superseded"  # a newer poll of the same session arrived


def _wake(future: asyncio.Future[PollWake] | None, why: PollWake) -> None:
    if future is not None and not future.done():
        future.set_result(why)


class Channel:
    """One session's delivery state and its waiters; see the module docstring."""

    __slots__ = ("id", "tag", "delivery", "session", "_loop", "_rooms", "_room_book", "_poll",
                 "_reader", "_senders", "_ended")

    def __init__(self, sid: str, delivery: Delivery, room_book: Rooms) -> None:
        self.id = sid
        self.tag = session_tag(sid)
        self.delivery = delivery
        self.session: Session | None = None  # the application's facade, set by it
        self._loop = asyncio.get_running_loop()
        self._room_book = room_book
        self._rooms: set[str] | None = None
        self._poll: asyncio.Future[PollWake] | None = None
        self._reader: asyncio.Future[None] | None = None
        self._senders: dict[int, asyncio.Future[None]] | None = None
        self._ended: list[asyncio.Future[None]] | None = None

    @property
    def closed(self) -> Closed | None:
        return self.delivery.closed

    # -- sending --------------------------------------------------------------

    def try_send(self, message: Outgoing) -> bool:
        """Append ``message`` now if it need not wait; False: await :meth:`send`. SessionClosed once closed.

        The path of almost every message, so ``Session.send`` calls it without
        a coroutine of its own.
        """
        if self.delivery.send(message) is None:
            return False
        poll = self._poll
        if poll is not None and not poll.done():
            poll.set_result(PollWake.READY)
        return True

    async def send(self, message: Outgoing) -> None:
        """Append ``message``, waiting (FIFO) while the outbox is full; SessionClosed once closed."""
        if self.try_send(message):
            return
        ticket = self.delivery.wait_for_room(len(message.fragment))
        waiter: asyncio.Future[None] = self._loop.create_future()
        if self._senders is None:
            self._senders = {}
        self._senders[ticket] = waiter
        try:
            await waiter
        except asyncio.CancelledError:
            self._senders.pop(ticket, None)
            self._grant(self.delivery.withdraw(ticket))
            raise
        self.delivery.claim(ticket, message)
        _wake(self._poll, PollWake.READY)

    def offer(self, message: Outgoing) -> bool:
        """A broadcast's append: now, never waiting; False when the outbox is full."""
        if not self.delivery.offer(message):
            return False
        _wake(self._poll, PollWake.READY)
        return True

    def _grant(self, tickets: list[int]) -> None:
        if not tickets or self._senders is None:
            return
        for ticket in tickets:
            waiter = self._senders.pop(ticket, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    # -- receiving ------------------------------------------------------------

    async def next_message(self, timeout: float | None) -> Packed:
        """The oldest unread pushed message, waiting for one; SessionClosed once closed and read."""
        if self._reader is not None:
            raise RuntimeError("receive() is already being awaited for this session")
        while True:
            message = self.delivery.read()
            if message is not None:
                return message
            closed = self.delivery.closed
            if closed is not None:
                raise SessionClosed(closed.code, closed.reason)
            self._reader = self._loop.create_future()
            try:
                if timeout is None:
                    await self._reader
                else:
                    await asyncio.wait_for(self._reader, timeout)
            finally:
                self._reader = None

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    async def wait_closed(self) -> None:
        if self.delivery.closed is not None:
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        if self._ended is None:
            self._ended = []
        self._ended.append(waiter)
        try:
            await waiter
        finally:
            if self._ended is not None and waiter in self._ended:
                self._ended.remove(waiter)

    # -- rooms ----------------------------------------------------------------

    @property
    def rooms(self) -> frozenset[str]:
        return frozenset(self._rooms or ())

    def join(self, room: str) -> None:
        closed = self.delivery.closed
        if closed is not None:
            raise SessionClosed(closed.code, closed.reason)
        self._room_book.join(room, self)
        if self._rooms is None:
            self._rooms = set()
        self._rooms.add(room)

    def leave(self, room: str) -> None:
        self._room_book.leave(room, self)
        if self._rooms is not None:
            self._rooms.discard(room)

    # -- the protocol's operations (the registry's side) -----------------------

    def acknowledge(self, ack: int) -> None:
        """Apply a poll's ack (BadRequest beyond what was sent); wake the senders the freed room lets in."""
        self._grant(self.delivery.acknowledge(ack))

    def answer(self) -> list[bytes]:
        """The answer's pieces, leaving a held poll alone (the last answer of a finished session)."""
        return self.delivery.answer()

    def answer_now(self) -> list[bytes]:
        """Answer a poll at once: a held one is superseded. Returns the answer's pieces."""
        if self.delivery.supersede():
            _wake(self._poll, PollWake.SUPERSEDED)
            self._poll = None
        return self.delivery.answer()

    async def hold(self, seconds: float) -> PollWake:
        """Hold a poll until there is something to answer, ``seconds`` pass, or a newer poll supersedes it."""
        number, superseded = self.delivery.hold_poll()
        if superseded:
            _wake(self._poll, PollWake.SUPERSEDED)
        poll: asyncio.Future[PollWake] = self._loop.create_future()
        self._poll = poll
        timer = self._loop.call_later(seconds, _wake, poll, PollWake.READY)
        try:
            return await poll
        finally:
            timer.cancel()
            self.delivery.release_poll(number)
            if self._poll is poll:
                self._poll = None

    def push(self, batch: list[tuple[int, Packed]], *, refused: HttpError | None, retry_after: int) -> int:
        """A push (see ``Delivery.push``): the ack, or the refusal; wakes the reader for what was taken."""
        unread = self.delivery.unread
        try:
            return self.delivery.push(batch, refused=refused, retry_after=retry_after)
        finally:
            if self.delivery.unread > unread:
                self._wake_reader()

    def accept(self, batch: list[tuple[int, Packed]]) -> Accepted:
        """Hand a validated batch to the inbox (see ``Delivery.accept``); wake the reader."""
        accepted = self.delivery.accept(batch)
        if accepted.grew:
            self._wake_reader()
        return accepted

    def end(self, code: int, reason: str = "") -> bool:
        """Close the session (the first close wins); wake everything waiting on it. False if it already was."""
        if self.delivery.closed is not None:
            return False
        refused = self.delivery.close(code, reason)
        if self._rooms:
            for room in self._rooms:
                self._room_book.leave(room, self)
            self._rooms = None
        if self._senders:
            closed = SessionClosed(code, reason)
            for ticket in refused:
                waiter = self._senders.pop(ticket, None)
                if waiter is not None and not waiter.done():
                    waiter.set_exception(closed)
            # A sender granted room before the close wakes normally and appends: it sent before the close.
        if self._ended:
            ended, self._ended = self._ended, None
            for waiter in ended:
                if not waiter.done():
                    waiter.set_result(None)
        self._wake_reader()
        _wake(self._poll, PollWake.READY)
        return True

    def senders_waiting(self) -> int:
        """How many ``send`` calls wait for room (for tests and metrics)."""
        return len(self._senders or ())

"""One session: the application's view of it, and its delivery state.

Everything here runs on the handler's event-loop thread. A session keeps:

* an outbox of messages sent and not yet acknowledged by the client, numbered
  from 1; ``send`` waits while ``outbox_limit`` of them are unacknowledged
  (backpressure), handing freed room to waiting senders in FIFO order;
* an inbox of pushed messages not yet read by the application, at most
  ``inbox_limit`` long, and the highest client sequence number held;
* at most one held poll, woken when there is something to answer;
* its close code and reason once closed, by either side.

The handler drives the delivery side (``_acknowledge``, ``_pending``,
``_accept``, ``_hold_poll``); the application uses the public methods.
"""

from __future__ import annotations

import asyncio
import enum
import types
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ._context import RequestInfo
from ._errors import BadRequest, MessageTooLarge, PayloadTooLarge, SessionClosed
from ._messages import Message, from_value, json_message, to_wire
from ._rooms import Rooms

__all__ = ["Session", "CloseInfo", "PollWake"]


@dataclass(frozen=True, slots=True)
class CloseInfo:
    code: int
    reason: str

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "reason": self.reason}


class PollWake(enum.Enum):
    """Why a held poll was woken."""

    READY = "ready"  # messages or a close to answer with
    SUPERSEDED = "superseded"  # a newer poll of the same session arrived


_SERVER_CLOSE_CODES = (1000, 1001, 1003, 1007, 1008, 1009, 1011)


def _check_close_code(code: int) -> None:
    if type(code) is not int or not (code in _SERVER_CLOSE_CODES or 3000 <= code <= 4999):
        raise ValueError(f"close code must be one of {_SERVER_CLOSE_CODES} or 3000-4999, got {code!r}")


class Session:
    """A two-way message session with one client.

    The application's coroutine receives one of these. ``receive`` and ``send``
    raise :class:`~pollsession.SessionClosed` once the session has ended (after
    every message received before the end has been read). Use ``state`` for
    per-session application data and ``identity`` for what the authentication
    hook attached. Not thread-safe: use it on the handler's loop only.
    """

    def __init__(
        self,
        sid: str,
        request: RequestInfo,
        *,
        identity: Any = None,
        rooms: Rooms | None = None,
        inbox_limit: int,
        outbox_limit: int,
        max_message_size: int,
    ) -> None:
        self._id = sid
        self._request = request
        self.identity: Any = identity
        self.state = types.SimpleNamespace()
        self._room_book = rooms if rooms is not None else Rooms()
        self._rooms: set[str] = set()
        self._inbox_limit = inbox_limit
        self._outbox_limit = outbox_limit
        self._max_message_size = max_message_size
        self._loop = asyncio.get_running_loop()
        # Delivery to the client.
        # Lists, not deques: an empty deque costs ~600 bytes per idle session, and
        # these stay short (the outbox is trimmed with one slice per ack).
        self._outbox: list[tuple[int, Message]] = []
        self._last_sent = 0
        self._acked = 0
        self._room_waiters: list[asyncio.Future[None]] = []
        self._reserved = 0
        self._poll: asyncio.Future[PollWake] | None = None
        # Delivery from the client.
        self._inbox: list[Message] = []
        self._received = 0
        self._reader: asyncio.Future[None] | None = None
        # Ending.
        self._close: CloseInfo | None = None
        self._close_sent = False

    def __repr__(self) -> str:
        state = f"closed {self._close.code}" if self._close else "open"
        return f"<Session {self._id[:8]}… {state}>"

    # -- the application's side ------------------------------------------

    @property
    def id(self) -> str:
        """The session id (secret: it is the client's only credential for this session)."""
        return self._id

    @property
    def request(self) -> RequestInfo:
        """What the opening request carried: headers, query, cookies, client address."""
        return self._request

    @property
    def closed(self) -> bool:
        return self._close is not None

    @property
    def close_code(self) -> int | None:
        return self._close.code if self._close else None

    @property
    def close_reason(self) -> str | None:
        return self._close.reason if self._close else None

    async def send(self, data: Any) -> None:
        """Send ``data``: ``str`` as text, bytes-like as binary, anything else as JSON.

        Waits while ``outbox_limit`` messages are unacknowledged. Raises
        ``SessionClosed`` if the session has ended, ``MessageTooLarge`` past
        ``max_message_size``, and ``TypeError``/``ValueError`` for a value
        JSON cannot carry.
        """
        await self._send(from_value(data, self._max_message_size))

    async def send_text(self, text: str) -> None:
        if not isinstance(text, str):
            raise TypeError(f"send_text expects str, got {type(text).__name__}")
        await self.send(text)

    async def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"send_bytes expects a bytes-like object, got {type(data).__name__}")
        await self.send(data)

    async def send_json(self, value: Any) -> None:
        """Send ``value`` as a json message, even when it is a str."""
        message = json_message(value)
        if message.size > self._max_message_size:
            raise MessageTooLarge(message.size, self._max_message_size)
        await self._send(message)

    async def receive(self, timeout: float | None = None) -> Any:
        """The next message's data: ``str``, ``bytes``, or a decoded JSON value.

        Raises ``asyncio.TimeoutError`` after ``timeout`` seconds (the
        message, if it arrives later, is kept for the next call), and
        ``SessionClosed`` once the session has ended and the inbox is empty.
        """
        return (await self.receive_message(timeout)).data

    async def receive_message(self, timeout: float | None = None) -> Message:
        """Like :meth:`receive`, but returns the :class:`Message` with its type."""
        if self._reader is not None:
            raise RuntimeError("receive() is already being awaited for this session")
        while not self._inbox:
            if self._close is not None:
                raise SessionClosed(self._close.code, self._close.reason)
            self._reader = self._loop.create_future()
            try:
                if timeout is None:
                    await self._reader
                else:
                    await asyncio.wait_for(self._reader, timeout)
            finally:
                self._reader = None
        return self._inbox.pop(0)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            try:
                yield await self.receive()
            except SessionClosed:
                return

    @property
    def rooms(self) -> frozenset[str]:
        """The rooms this session is in."""
        return frozenset(self._rooms)

    def join(self, room: str) -> None:
        """Join ``room``, so that broadcasts to it reach this session."""
        if self._close is not None:
            raise SessionClosed(self._close.code, self._close.reason)
        self._room_book.join(room, self)
        self._rooms.add(room)

    def leave(self, room: str) -> None:
        """Leave ``room``; leaving a room one is not in does nothing."""
        self._room_book.leave(room, self)
        self._rooms.discard(room)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the session; messages already sent are still delivered. Idempotent."""
        _check_close_code(code)
        if not isinstance(reason, str) or len(reason.encode("utf-8")) > 123:
            raise ValueError("reason must be a str of at most 123 UTF-8 bytes")
        self._end(code, reason)

    # -- the handler's side (loop thread) ------------------------------------

    async def _send(self, message: Message) -> None:
        if self._close is not None:
            raise SessionClosed(self._close.code, self._close.reason)
        if self._room_waiters or len(self._outbox) + self._reserved >= self._outbox_limit:
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._room_waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._room_waiters:
                    self._room_waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._reserved -= 1  # the room handed to us goes to the next sender
                    self._hand_out_room()
                raise
            self._reserved -= 1
        self._append(message)

    def _try_send(self, message: Message) -> bool:
        """Append ``message`` now if there is room; never waits (used by broadcasts)."""
        if self._close is not None:
            raise SessionClosed(self._close.code, self._close.reason)
        if self._room_waiters or len(self._outbox) + self._reserved >= self._outbox_limit:
            return False
        self._append(message)
        return True

    def _append(self, message: Message) -> None:
        self._last_sent += 1
        self._outbox.append((self._last_sent, message))
        self._wake_poll(PollWake.READY)

    def _hand_out_room(self) -> None:
        while self._room_waiters and len(self._outbox) + self._reserved < self._outbox_limit:
            waiter = self._room_waiters.pop(0)
            if not waiter.done():  # a cancelled sender gives its turn away
                self._reserved += 1
                waiter.set_result(None)

    def _acknowledge(self, ack: int) -> None:
        """Forget what the client acknowledged; 400 for an ack beyond what was sent."""
        if ack > self._last_sent:
            raise BadRequest(f"ack {ack} is beyond the last message sent ({self._last_sent})", code="bad_ack")
        if ack <= self._acked:
            return
        self._acked = ack
        if self._outbox:  # seqs are consecutive: the acknowledged ones are a prefix
            del self._outbox[: ack - self._outbox[0][0] + 1]
        self._hand_out_room()

    def _pending(self) -> list[dict[str, Any]]:
        """Wire form of every unacknowledged message."""
        return [to_wire(seq, message) for seq, message in self._outbox]

    def _answer(self) -> dict[str, Any]:
        """A poll answer with everything unacknowledged, and the close if closed."""
        closed = None
        if self._close is not None:
            closed = self._close.to_wire()
            self._close_sent = True
        return {"messages": self._pending(), "closed": closed}

    def _ready_to_answer(self) -> bool:
        return bool(self._outbox) or self._close is not None

    def _finished(self) -> bool:
        """Closed, the close was told, and everything was acknowledged: forget it."""
        return self._close_sent and self._acked == self._last_sent

    def _hold_poll(self) -> asyncio.Future[PollWake]:
        """Become the held poll, answering an older one at once (it is superseded)."""
        self._wake_poll(PollWake.SUPERSEDED)
        self._poll = self._loop.create_future()
        return self._poll

    def _release_poll(self, poll: asyncio.Future[PollWake]) -> None:
        if self._poll is poll:
            self._poll = None

    @property
    def _holds_poll(self) -> bool:
        return self._poll is not None

    def _wake_poll(self, why: PollWake) -> None:
        if self._poll is not None and not self._poll.done():
            self._poll.set_result(why)
        if why is PollWake.SUPERSEDED:
            self._poll = None

    def _accept(self, batch: list[tuple[int, Message]]) -> tuple[int, bool]:
        """Take the new messages of a validated batch; return ``(ack, all_taken)``.

        Messages already held are ignored. Raises BadRequest (a gap) or
        PayloadTooLarge (a new message past ``max_message_size``), changing
        nothing.
        """
        fresh = [(seq, message) for seq, message in batch if seq > self._received]
        if fresh and fresh[0][0] != self._received + 1:
            raise BadRequest(
                f"message seq {fresh[0][0]} leaves a gap: the server holds up to {self._received}",
                code="seq_gap",
            )
        for seq, message in fresh:
            if message.size > self._max_message_size:
                raise PayloadTooLarge(
                    f"message seq {seq} is {message.size} bytes, over max_message_size of {self._max_message_size}",
                    code="message_too_large",
                )
        room = max(0, self._inbox_limit - len(self._inbox))
        taken = fresh[:room]
        if taken:
            self._inbox.extend(message for _, message in taken)
            self._received = taken[-1][0]
            if self._reader is not None and not self._reader.done():
                self._reader.set_result(None)
        return self._received, len(taken) == len(fresh)

    def _end(self, code: int, reason: str) -> bool:
        """Mark the session closed; wake everything waiting on it. False if it already was."""
        if self._close is not None:
            return False
        self._close = CloseInfo(code, reason)
        for room in self._rooms:
            self._room_book.leave(room, self)
        self._rooms.clear()
        closed = SessionClosed(code, reason)
        waiters, self._room_waiters = self._room_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(closed)
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)
        self._wake_poll(PollWake.READY)
        return True

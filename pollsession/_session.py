"""One session: the application's view of it, and its delivery state.

Everything here runs on the handler's event-loop thread. A session keeps:

* an outbox of messages sent and not yet acknowledged by the client, in wire
  form, numbered from 1 (``_boxes.Outbox``); ``send`` waits while it holds
  ``outbox_limit`` messages or ``max_outbox_bytes`` (backpressure), handing
  freed room to waiting senders in FIFO order;
* an inbox of pushed messages not yet read by the application, packed, at most
  ``inbox_limit`` messages and ``max_inbox_bytes`` (``_boxes.Inbox``), and the
  highest client sequence number held;
* at most one held poll, woken when there is something to answer;
* its close code and reason once closed, by either side.

The handler drives the delivery side (``_acknowledge``, ``_pending``,
``_accept``, ``_hold_poll``); the application uses the public methods.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import types
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ._boxes import Inbox, Outbox
from ._context import RequestInfo
from ._errors import SessionClosed
from ._messages import Message, Outgoing, Packed, dump_json, encode_outgoing
from ._rooms import Rooms

__all__ = ["Session", "CloseInfo", "PollWake", "session_tag"]


@dataclass(frozen=True, slots=True)
class CloseInfo:
    code: int
    reason: str

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "reason": self.reason}


def session_tag(sid: str) -> str:
    """A short tag naming a session in logs; it cannot be turned back into the id.

    The id is the client's only credential, so logs never carry it (not even
    a prefix, which shortens what is left to guess).
    """
    return hashlib.blake2s(sid.encode("utf-8"), digest_size=5).hexdigest()


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
        max_inbox_bytes: int | None = None,
        max_outbox_bytes: int | None = None,
    ) -> None:
        self._id = sid
        self._tag = session_tag(sid)
        self._request = request
        self.identity: Any = identity
        self.state = types.SimpleNamespace()
        self._room_book = rooms if rooms is not None else Rooms()
        self._rooms: set[str] = set()
        self._max_message_size = max_message_size
        self._loop = asyncio.get_running_loop()
        unbounded = 1 << 62
        # Delivery to the client. Senders waiting for room, in FIFO order, each
        # with the size of its fragment; room handed to a woken sender is
        # reserved for it until it runs.
        self._outbox = Outbox(max_messages=outbox_limit, max_bytes=max_outbox_bytes or unbounded)
        self._room_waiters: list[tuple[asyncio.Future[None], int]] = []
        self._reserved = 0
        self._reserved_bytes = 0
        self._poll: asyncio.Future[PollWake] | None = None
        # Delivery from the client.
        self._inbox = Inbox(max_messages=inbox_limit, max_bytes=max_inbox_bytes or unbounded,
                            max_message_size=max_message_size)
        self._reader: asyncio.Future[None] | None = None
        self._closed_waiters: list[asyncio.Future[None]] = []
        # Ending.
        self._close: CloseInfo | None = None
        self._closed_json = b"null"
        self._close_sent = False

    def __repr__(self) -> str:
        state = f"closed {self._close.code}" if self._close else "open"
        return f"<Session {self._tag} {state}>"

    # -- the application's side ------------------------------------------

    @property
    def id(self) -> str:
        """The session id (secret: it is the client's only credential for this session)."""
        return self._id

    @property
    def tag(self) -> str:
        """A short, non-reversible tag for this session in logs (see :func:`session_tag`)."""
        return self._tag

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

        The message is encoded for the wire at once. Waits while
        ``outbox_limit`` messages (or ``max_outbox_bytes``) are unacknowledged.
        Raises ``SessionClosed`` if the session has ended, ``MessageTooLarge``
        past ``max_message_size``, and ``TypeError``/``ValueError`` for a
        value JSON cannot carry.
        """
        await self._send(encode_outgoing(data, self._max_message_size))

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
        await self._send(encode_outgoing(value, self._max_message_size, as_json=True))

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
        while not len(self._inbox):
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
        return self._inbox.pop().unpack()

    async def wait_closed(self) -> None:
        """Wait until the session has ended, by either side, without reading its inbox.

        For a target that only pushes: ``await session.wait_closed()`` returns
        when the client closes, the session expires or the server shuts down;
        ``close_code`` then says which.
        """
        if self._close is not None:
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._closed_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._closed_waiters:
                self._closed_waiters.remove(waiter)

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

    def _has_room(self, size: int) -> bool:
        return not self._room_waiters and self._outbox.fits(
            size, reserved_messages=self._reserved, reserved_bytes=self._reserved_bytes
        )

    async def _send(self, message: Outgoing) -> None:
        if self._close is not None:
            raise SessionClosed(self._close.code, self._close.reason)
        size = len(message.fragment)
        if not self._has_room(size):
            waiter: asyncio.Future[None] = self._loop.create_future()
            entry = (waiter, size)
            self._room_waiters.append(entry)
            try:
                await waiter
            except asyncio.CancelledError:
                if entry in self._room_waiters:
                    self._room_waiters.remove(entry)
                elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._unreserve(size)  # the room handed to us goes to the next sender
                    self._hand_out_room()
                raise
            self._unreserve(size)
        self._append(message)

    def _unreserve(self, size: int) -> None:
        self._reserved -= 1
        self._reserved_bytes -= size

    def _try_send(self, message: Outgoing) -> bool:
        """Append ``message`` now if there is room; never waits (used by broadcasts)."""
        if self._close is not None:
            raise SessionClosed(self._close.code, self._close.reason)
        if not self._has_room(len(message.fragment)):
            return False
        self._append(message)
        return True

    def _append(self, message: Outgoing) -> None:
        self._outbox.append(message.fragment)
        self._wake_poll(PollWake.READY)

    def _hand_out_room(self) -> None:
        while self._room_waiters:
            waiter, size = self._room_waiters[0]
            if waiter.done():  # a cancelled sender gives its turn away
                self._room_waiters.pop(0)
                continue
            if not self._outbox.fits(size, reserved_messages=self._reserved, reserved_bytes=self._reserved_bytes):
                return
            self._room_waiters.pop(0)
            self._reserved += 1
            self._reserved_bytes += size
            waiter.set_result(None)

    def _acknowledge(self, ack: int) -> None:
        """Forget what the client acknowledged; 400 for an ack beyond what was sent."""
        if self._outbox.acknowledge(ack):
            self._hand_out_room()

    def _answer_fields(self) -> list[bytes]:
        """``"messages":[...],"closed":...`` of a poll answer, in pieces: everything unacknowledged, and the close."""
        if self._close is not None:
            self._close_sent = True
        return [b'"messages":', *self._outbox.message_parts(), b',"closed":', self._closed_json]

    def _ready_to_answer(self) -> bool:
        return bool(len(self._outbox)) or self._close is not None

    def _finished(self) -> bool:
        """Closed, the close was told, and everything was acknowledged: forget it."""
        return self._close_sent and self._outbox.acked == self._outbox.last_sent

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

    def _accept(self, batch: list[tuple[int, Packed]]) -> tuple[int, bool]:
        """Take the new messages of a validated batch; return ``(ack, all_taken)``.

        See ``Inbox.accept``: a gap is 400 and a new message past
        ``max_message_size`` is 413, changing nothing.
        """
        before = len(self._inbox)
        ack, complete = self._inbox.accept(batch)
        if len(self._inbox) > before and self._reader is not None and not self._reader.done():
            self._reader.set_result(None)
        return ack, complete

    def _end(self, code: int, reason: str) -> bool:
        """Mark the session closed; wake everything waiting on it. False if it already was."""
        if self._close is not None:
            return False
        self._close = CloseInfo(code, reason)
        self._closed_json = dump_json(self._close.to_wire()).encode("utf-8")
        for room in self._rooms:
            self._room_book.leave(room, self)
        self._rooms.clear()
        closed = SessionClosed(code, reason)
        waiters, self._room_waiters = self._room_waiters, []
        for waiter, _ in waiters:
            if not waiter.done():
                waiter.set_exception(closed)
        ended, self._closed_waiters = self._closed_waiters, []
        for done in ended:
            if not done.done():
                done.set_result(None)
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)
        self._wake_poll(PollWake.READY)
        return True

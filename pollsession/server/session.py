"""``Session``: the application's object for one session, a thin asyncio facade.

Everything the protocol keeps for a session (outbox with seq and ack, inbox
with dedup and the gap rule, the close and its lifecycle) lives in the pure
``protocol.delivery.Delivery``; the futures that wait on it live in its
``server.channel.Channel``. ``Session`` only encodes what the application
sends, decodes what it reads and forwards the rest: it holds no protocol
state of its own. Loop thread only.
"""

from __future__ import annotations

import types
from collections.abc import AsyncIterator
from typing import Any

from ..protocol.delivery import check_close
from ..protocol.errors import SessionClosed
from ..protocol.http import RequestInfo
from ..protocol.messages import Message, encode_outgoing
from .channel import Channel, session_tag

__all__ = ["Session", "session_tag"]


class Session:
    """A two-way message session with one client.

    The application's coroutine receives one of these. ``receive`` and ``send``
    raise :class:`~pollsession.SessionClosed` once the session has ended (after
    every message received before the end has been read). Use ``state`` for
    per-session application data and ``identity`` for what the authentication
    hook attached. Not thread-safe: use it on the handler's loop only.
    """

    def __init__(self, channel: Channel, request: RequestInfo, *, identity: Any = None,
                 max_message_size: int) -> None:
        self._channel = channel
        self._request = request
        self.identity: Any = identity
        self.state = types.SimpleNamespace()
        self._max_message_size = max_message_size
        channel.session = self

    def __repr__(self) -> str:
        closed = self._channel.closed
        state = f"closed {closed.code}" if closed else "open"
        return f"<Session {self._channel.tag} {state}>"

    # -- the application's side ------------------------------------------

    @property
    def id(self) -> str:
        """The session id (secret: it is the client's only credential for this session)."""
        return self._channel.id

    @property
    def tag(self) -> str:
        """A short, non-reversible tag for this session in logs (see :func:`session_tag`)."""
        return self._channel.tag

    @property
    def request(self) -> RequestInfo:
        """What the opening request carried: headers, query, cookies, client address."""
        return self._request

    @property
    def closed(self) -> bool:
        return self._channel.closed is not None

    @property
    def close_code(self) -> int | None:
        closed = self._channel.closed
        return closed.code if closed else None

    @property
    def close_reason(self) -> str | None:
        closed = self._channel.closed
        return closed.reason if closed else None

    async def send(self, data: Any) -> None:
        """Send ``data``: ``str`` as text, bytes-like as binary, anything else as JSON.

        The message is encoded for the wire at once. Waits while
        ``outbox_limit`` messages (or ``max_outbox_bytes``) are unacknowledged.
        Raises ``SessionClosed`` if the session has ended, ``MessageTooLarge``
        past ``max_message_size``, and ``TypeError``/``ValueError`` for a
        value JSON cannot carry.
        """
        message = encode_outgoing(data, self._max_message_size)
        if not self._channel.try_send(message):
            await self._channel.send(message)

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
        message = encode_outgoing(value, self._max_message_size, as_json=True)
        if not self._channel.try_send(message):
            await self._channel.send(message)

    async def receive(self, timeout: float | None = None) -> Any:
        """The next message's data: ``str``, ``bytes``, or a decoded JSON value.

        Raises ``asyncio.TimeoutError`` after ``timeout`` seconds (the
        message, if it arrives later, is kept for the next call), and
        ``SessionClosed`` once the session has ended and the inbox is empty.
        """
        return (await self.receive_message(timeout)).data

    async def receive_message(self, timeout: float | None = None) -> Message:
        """Like :meth:`receive`, but returns the :class:`Message` with its type."""
        return (await self._channel.next_message(timeout)).unpack()

    async def wait_closed(self) -> None:
        """Wait until the session has ended, by either side, without reading its inbox.

        For a target that only pushes: ``await session.wait_closed()`` returns
        when the client closes, the session expires or the server shuts down;
        ``close_code`` then says which.
        """
        await self._channel.wait_closed()

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
        return self._channel.rooms

    def join(self, room: str) -> None:
        """Join ``room``, so that broadcasts to it reach this session."""
        self._channel.join(room)

    def leave(self, room: str) -> None:
        """Leave ``room``; leaving a room one is not in does nothing."""
        self._channel.leave(room)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the session; messages already sent are still delivered. Idempotent."""
        check_close(code, reason)
        self._channel.end(code, reason)

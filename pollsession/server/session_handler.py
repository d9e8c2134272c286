"""Class-based session targets: callbacks instead of one coroutine.

Subclass :class:`SessionHandler`, override what you need, and give the class
to ``HttpHandler``; one instance is made per session. ``decode`` picks what
``on_receive`` gets, whatever type the client sent:

* ``"auto"`` (default): as sent: ``str`` for text, ``bytes`` for binary, the value for json;
* ``"text"``: a ``str`` (binary is decoded as UTF-8, json is re-encoded);
* ``"bytes"``: ``bytes`` (text and json as UTF-8);
* ``"json"``: a decoded JSON value (text and binary are parsed as JSON).

A message that cannot be decoded as asked closes the session with 1007.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from ..protocol.errors import BadRequest, SessionClosed
from ..protocol.messages import Message, MessageType, dump_json, parse_json
from .session import Session

__all__ = ["SessionHandler", "Decode"]

Decode = Literal["auto", "text", "bytes", "json"]


def _as_text(message: Message) -> str:
    if message.type is MessageType.TEXT:
        return str(message.data)
    if message.type is MessageType.BINARY:
        return bytes(message.data).decode("utf-8")
    return dump_json(message.data)


def _decode(message: Message, decode: Decode) -> Any:
    """``message.data`` as ``decode`` asks; ValueError (or BadRequest) when it cannot be."""
    if decode == "auto" or (decode == "bytes" and message.type is MessageType.BINARY) or (
        decode == "json" and message.type is MessageType.JSON
    ):
        return message.data
    if decode == "text":
        return _as_text(message)
    if decode == "bytes":
        return _as_text(message).encode("utf-8")
    # As strict as a json message on the wire: no NaN, no Infinity, valid Unicode.
    raw = message.data if message.type is MessageType.BINARY else str(message.data).encode("utf-8", "surrogatepass")
    return parse_json(raw)


class SessionHandler:
    """One instance per session; override ``on_connect``, ``on_receive``, ``on_disconnect``.

    ``self.session`` is the :class:`~pollsession.Session`; ``self.send`` and
    ``self.close`` are shortcuts to it. Returning from a callback keeps the
    session open; raising closes it with 1011 (and logs the traceback).
    """

    decode: ClassVar[Decode] = "auto"

    def __init__(self, session: Session) -> None:
        self.session = session

    async def on_connect(self) -> None:
        """The session has opened; the client may already be waiting for a greeting."""

    async def on_receive(self, data: Any) -> None:
        """A message arrived, decoded as the class's ``decode`` says."""

    async def on_disconnect(self, code: int) -> None:
        """The session ended with ``code`` (client close 1000, expiry 1001, ...)."""

    async def send(self, data: Any) -> None:
        await self.session.send(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.session.close(code, reason)

    @classmethod
    async def serve(cls, session: Session) -> None:
        """Run one instance over ``session``: the coroutine ``HttpHandler`` uses."""
        if cls.decode not in ("auto", "text", "bytes", "json"):
            raise ValueError(f"{cls.__name__}.decode must be auto, text, bytes or json, got {cls.decode!r}")
        handler = cls(session)
        try:
            await handler.on_connect()
            while True:
                message = await session.receive_message()
                try:
                    data = _decode(message, cls.decode)
                except (ValueError, BadRequest):
                    await session.close(1007, f"message cannot be decoded as {cls.decode}")
                    continue
                await handler.on_receive(data)
        except SessionClosed:
            pass
        except Exception:
            # Clean-up in on_disconnect runs on a failure too; the handler logs the error.
            await session.close(1011)
            await handler.on_disconnect(1011)
            raise
        await handler.on_disconnect(session.close_code if session.close_code is not None else 1000)

"""The demo's chat, framework-neutral: one session coroutine and one clock task.

The conversation, every server message a JSON object with a ``type``:

* server: ``{"type": "hello", "room": R, "time": "HH:MM:SS", "nick_timeout": S}`` at once
  (the page opens its session as it loads, so its clock runs before you join);
* client: a nickname, as a text message; it must be accepted within
  ``nick_timeout`` seconds of the open. A session that sends none in time, or
  sends something that is not a nickname, is closed with 1008, "nickname required";
* server, when the nickname is already used in the room (ignoring case):
  ``{"type": "nick_taken", "nick": N, "message": "..."}``; the client may send
  another one, within the same deadline;
* server, to the newcomer only: ``{"type": "welcome", "nick": N, "members": [...]}``
  (``N`` as the room shows it: whitespace collapsed, at most 32 characters);
* server, to the room: ``{"type": "join", "nick": N, "members": [...]}``, the
  newcomer included;
* client: a chat line, as a text message (other types are ignored);
* server, to the room: ``{"type": "message", "nick": N, "text": T}``;
* server, to the room, when a member goes: ``{"type": "leave", "nick": N, "members": [...]}``;
* server, to every session, every ``clock_interval`` seconds:
  ``{"type": "clock", "time": "HH:MM:SS"}``.

The room is the ``room`` query parameter of the URL that opened the session
(``/poll?room=lobby``). Who is in which room, and which worker pushes each
tick, is kept by a :class:`~pollsession.demo._store.ChatStore`: in this
process by default, in Redis when several workers serve one chat (with a
``RedisBackend``). Everything here runs on the handler's loop, except
:meth:`Chat.start` and :meth:`Chat.close`, which are called from the thread
that runs the web server (:meth:`Chat.aclose` from a loop, when the handler
runs on that loop: ``use_running_loop``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import logging
import re
import time
from typing import Any

from ..protocol.errors import SessionClosed
from ..server.handler import HttpHandler
from ..server.session import Session
from ._store import ChatStore, LocalStore

__all__ = ["Chat", "ROOM_NAME", "NICK_REQUIRED", "clean_nick"]

logger = logging.getLogger("pollsession.demo")

ROOM_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
"""What a room name may be: it appears in URLs and on the page."""

NICK_REQUIRED = "nickname required"
MAX_NICK = 32
MAX_TEXT = 500


def wall_clock(at: float | None = None) -> str:
    """The local time of day at ``at`` (seconds since the epoch; default now), for people to read."""
    return datetime.datetime.fromtimestamp(time.time() if at is None else at).strftime("%H:%M:%S")


def clean_nick(data: Any) -> str | None:
    """The nickname a first message carries, whitespace collapsed, or None if it carries none."""
    if not isinstance(data, str):
        return None
    nick = " ".join(data.split())[:MAX_NICK]
    return nick or None


class Chat:
    """Chat rooms over one :class:`~pollsession.HttpHandler`, plus a clock.

    Mount ``chat.handler`` in a web app, call :meth:`start` once the app is
    about to serve (it starts the clock on the handler's loop), and
    :meth:`close` when it stops. ``store`` keeps the members and the clock's
    turns (a :class:`~pollsession.demo._store.LocalStore` by default; a
    ``RedisStore`` with ``backend=RedisBackend(...)`` for many workers).
    Other keyword arguments go to ``HttpHandler``.
    """

    def __init__(self, *, nick_timeout: float = 10.0, clock_interval: float = 5.0,
                 store: ChatStore | None = None, **handler_options: Any) -> None:
        if nick_timeout <= 0 or clock_interval <= 0:
            raise ValueError(f"nick_timeout and clock_interval must be > 0, got {nick_timeout} and {clock_interval}")
        self.nick_timeout = nick_timeout
        self.clock_interval = clock_interval
        self.store = store if store is not None else LocalStore()
        self.handler = HttpHandler(self.serve_session, **handler_options)
        self._clock: concurrent.futures.Future[None] | None = None

    def start(self) -> None:
        """Start the clock (one task on the handler's loop for every session) and the store's upkeep. Idempotent.

        The upkeep outlives :meth:`close`: the sessions' last words (their
        leaves) still reach the store. It ends, closing the store, with the
        handler's loop.
        """
        if self._clock is None:
            self._clock = self.handler.submit(self._tick())
            self.handler.submit(self._keep_store())

    def close(self) -> None:
        """Stop the clock, then close every session with 1001 (``HttpHandler.close``). Idempotent."""
        if self._clock is not None:
            self._clock.cancel()
        self.handler.close()

    async def aclose(self) -> None:
        """:meth:`close` for async code (``HttpHandler.aclose``): on the handler's loop, or any other."""
        if self._clock is not None:
            self._clock.cancel()
        await self.handler.aclose()

    async def _keep_store(self) -> None:
        try:
            await self.store.run()
        finally:
            await self.store.aclose()

    async def _tick(self) -> None:
        # Ticks fall on multiples of the interval of the wall clock, so that
        # every worker of a chat agrees on which slot a tick belongs to; the
        # store lets one of them push it.
        while True:
            await asyncio.sleep(self.clock_interval - time.time() % self.clock_interval)
            slot = round(time.time() / self.clock_interval)  # a wake-up a little early or late: the same slot
            try:
                if await self.store.take_tick(slot):
                    await self.handler.broadcast({"type": "clock", "time": wall_clock(slot * self.clock_interval)})
            except Exception:  # a bad tick must not stop the clock
                logger.exception("pollsession demo: the clock's tick failed")

    async def members(self, room: str) -> list[str]:
        """The nicknames in ``room``, sorted ignoring case."""
        return await self.store.members(room)

    async def _nickname(self, session: Session, room: str) -> str | None:
        """The first free nickname the client sends within the deadline, claimed for it; or None."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.nick_timeout
        while True:
            try:
                nick = clean_nick(await session.receive(timeout=max(0.0, deadline - loop.time())))
            except TimeoutError:
                return None
            if nick is None or await self.store.claim(room, session.id, nick):
                return nick
            await session.send({"type": "nick_taken", "nick": nick,
                                "message": f'the nickname "{nick}" is taken in #{room}: choose another'})

    async def serve_session(self, session: Session) -> None:
        """The target of ``self.handler``: one chat member, from hello to leave."""
        room = session.request.query.get("room", "lobby")
        if not ROOM_NAME.fullmatch(room):
            await session.close(1008, "bad room name")
            return
        await session.send({"type": "hello", "room": room, "time": wall_clock(), "nick_timeout": self.nick_timeout})
        try:
            nick = await self._nickname(session, room)
        except SessionClosed:
            return
        if nick is None:
            await session.close(1008, NICK_REQUIRED)
            return

        session.join(room)
        try:
            await session.send({"type": "welcome", "nick": nick, "members": await self.members(room)})
            await self.handler.broadcast({"type": "join", "nick": nick, "members": await self.members(room)},
                                         room=room)
            async for data in session:
                text = data.strip()[:MAX_TEXT] if isinstance(data, str) else ""
                if text:
                    await self.handler.broadcast({"type": "message", "nick": nick, "text": text}, room=room)
        finally:
            await self.store.release(room, session.id, nick)
        await self.handler.broadcast({"type": "leave", "nick": nick, "members": await self.members(room)}, room=room)

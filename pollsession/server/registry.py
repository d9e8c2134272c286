"""The sessions of one target and every state change the protocol makes to them.

Everything in this module runs on the handler's event-loop thread; the
handler reaches it only through ``EventLoopThread.submit``. Requests arrive
here already parsed and validated as far as can be done without session
state (``protocol.requests``), so each coroutine below is short: find the session,
apply the rule, return a document for the answer.

Expiry is driven by a timer on the loop every ``cleanup_interval`` seconds and
costs time in proportion to the sessions that expire (``ExpiryQueue``). A
session that has had no request since its open sits in a queue of its own,
with ``open_timeout`` (when set): an orphaned or abandoned open expires
sooner than a session in use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..protocol.config import Settings
from ..protocol.delivery import Delivery, PollAction
from ..protocol.errors import HttpError, InboxFull, ServiceUnavailable, SessionClosed, UnknownSession
from ..protocol.expiry import ExpiryQueue
from ..protocol.http import RequestInfo
from ..protocol.limits import ClientLimits
from ..protocol.messages import Outgoing, Packed
from ..protocol.wire import SUPERSEDED_PARTS, Closed, PushAnswer
from .backend import Backend, LocalBackend
from .channel import Channel, PollWake
from .rooms import Rooms
from .session import Session

__all__ = ["Registry", "Target"]

logger = logging.getLogger("pollsession")

Target = Callable[[Session], Awaitable[None]]


class Registry:
    """Sessions by id, their tasks, their expiry order; loop thread only."""

    def __init__(self, target: Target, settings: Settings, *, backend: Backend | None = None) -> None:
        self._target = target
        self._backend = backend if backend is not None else LocalBackend()
        self._settings = settings
        self._sessions: dict[str, Channel] = {}
        self._paths: dict[str, str] = {}
        self._expiry: ExpiryQueue[str] = ExpiryQueue(settings.session_timeout)
        # Sessions with no request since their open, when open_timeout is set.
        self._unused: ExpiryQueue[str] = ExpiryQueue(settings.open_timeout or settings.session_timeout)
        self._limits = ClientLimits(
            max_sessions=settings.max_sessions_per_client, rate=settings.open_rate_limit,
            retry_after=settings.retry_after,
        )
        self._client_keys: dict[str, str] = {}
        # Sessions forgotten recently, with their close, for session_timeout seconds.
        self._ended: dict[str, tuple[str, Closed]] = {}
        self._ended_order: ExpiryQueue[str] = ExpiryQueue(settings.session_timeout)
        self._tasks: set[asyncio.Task[None]] = set()
        self.rooms = Rooms()
        self._timer: asyncio.TimerHandle | None = None
        self._shutting_down = False
        self._opening = 0  # opens waiting for the backend's admission

    # -- lookups ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, sid: str) -> Session | None:
        """The application's object of a known session."""
        channel = self._sessions.get(sid)
        return channel.session if channel is not None else None

    def channel(self, sid: str) -> Channel | None:
        """The server's side of a known session."""
        return self._sessions.get(sid)

    def _find(self, sid: str, path: str) -> Channel:
        session = self._sessions.get(sid)
        if session is None or self._paths[sid] != path:
            ended = self._ended.get(sid)
            if ended is not None and ended[0] == path:
                raise UnknownSession("the session has ended and is forgotten", code="session_ended",
                                     closed=ended[1])
            raise UnknownSession("unknown, expired or closed session")
        return session

    def _touch(self, session: Channel) -> None:
        self._unused.discard(session.id)
        if not session.delivery.holds_poll:
            self._expiry.touch(session.id, self._settings.clock())

    def _forget(self, session: Channel) -> None:
        path = self._paths.pop(session.id, None)
        if self._sessions.pop(session.id, None) is not None:
            self._backend.sessions_changed(len(self._sessions))
        self._expiry.discard(session.id)
        self._unused.discard(session.id)
        self._limits.closed(self._client_keys.pop(session.id, None))
        closed = session.closed
        if path is not None and closed is not None:
            # Remember how it ended for a while: a client whose answer carrying
            # the close was lost learns it from the 410 instead of guessing.
            self._ended[session.id] = (path, closed)
            self._ended_order.touch(session.id, self._settings.clock())
            if len(self._ended) > self._settings.max_sessions:
                self._ended.pop(self._ended_order.pop_oldest(), None)

    # -- the protocol's operations ------------------------------------------

    async def open(
        self, request: RequestInfo, identity: Any, client_key: str | None = None
    ) -> tuple[str, list[bytes], bytes]:
        """Create a session, start its task; return its id and its first answer's messages and close.

        ``client_key`` names the client for the per-client limits.
        """
        if self._shutting_down:
            raise ServiceUnavailable("the server is shutting down", retry_after=self._settings.retry_after,
                                     code="shutting_down")
        opening, self._opening = self._opening, self._opening + 1  # opens admitted but not yet added count
        try:
            admitted = await self._backend.admit(self._settings.max_sessions, len(self._sessions) + opening)
        finally:
            self._opening -= 1
        if not admitted:
            raise ServiceUnavailable(
                f"the maximum of {self._settings.max_sessions} sessions is reached",
                retry_after=self._settings.retry_after,
                code="too_many_sessions",
            )
        now = self._settings.clock()
        self._limits.check(client_key, now)
        sid = self._backend.new_session_id()  # 192 bits from the OS CSPRNG, URL-safe
        delivery = Delivery(
            inbox_limit=self._settings.inbox_limit,
            outbox_limit=self._settings.outbox_limit,
            max_message_size=self._settings.max_message_size,
            max_inbox_bytes=self._settings.inbox_bytes,
            max_outbox_bytes=self._settings.outbox_bytes,
        )
        session = Channel(sid, delivery, self.rooms)
        application = Session(session, request, identity=identity, max_message_size=self._settings.max_message_size)
        self._sessions[sid] = session
        self._paths[sid] = request.path
        if client_key is not None and self._limits.active:
            self._limits.opened(client_key, now)
            self._client_keys[sid] = client_key
        if self._settings.open_timeout is not None:
            self._unused.touch(sid, now)
        else:
            self._expiry.touch(sid, now)
        task = asyncio.create_task(self._run(session, application), name=f"pollsession-{session.tag}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._ensure_timer()
        # Counted by every worker before the answer; and it lets the coroutine run to its
        # first wait, so a greeting rides on this answer.
        await self._backend.opened(len(self._sessions))
        await asyncio.sleep(0)
        messages, closed = session.delivery.answer_parts()
        return sid, messages, closed

    async def poll(
        self, sid: str, path: str, ack: int, wait: float | None, error: HttpError | None = None
    ) -> list[bytes]:
        """Answer a long poll: at once when there is something to say, else hold it.

        Returns the answer in pieces. ``error`` is a refusal found before the
        session was known; it is raised once the session is known to exist
        (410 wins over 400).
        """
        session = self._find(sid, path)
        if error is not None:
            raise error
        session.acknowledge(ack)
        hold = min(wait, self._settings.poll_timeout) if wait is not None else self._settings.poll_timeout
        action = session.delivery.poll(hold)
        if action is PollAction.FINAL:
            self._forget(session)
            return session.answer()
        if action is PollAction.ANSWER:
            parts = session.answer_now()  # supersedes a held poll first, so the touch below counts
            self._touch(session)
            return parts
        self._unused.discard(sid)
        self._expiry.discard(sid)  # a held poll is activity for as long as it is held
        try:
            why = await session.hold(hold)
        finally:
            if session.id in self._sessions:
                self._touch(session)
        if why is PollWake.SUPERSEDED:
            return list(SUPERSEDED_PARTS)
        return session.answer()

    def push(
        self, sid: str, path: str, batch: list[tuple[int, Packed]], error: HttpError | None = None
    ) -> PushAnswer:
        """Hand pushed messages to the session (``Delivery.push``: 410, the request's refusal, 429 or the ack)."""
        session = self._find(sid, path)
        try:
            ack = session.push(batch, refused=error, retry_after=self._settings.retry_after)
        except InboxFull:
            self._touch(session)  # a push that was taken in part is activity
            raise
        self._touch(session)
        return PushAnswer(ack)

    def delete(self, sid: str, path: str) -> None:
        """The client closed: the coroutine sees 1000 and the session is forgotten."""
        session = self._sessions.get(sid)
        if session is None or self._paths[sid] != path:
            return
        session.end(1000, "")
        self._forget(session)

    def broadcast(self, message: Outgoing, room: str | None, exclude: str | None) -> int:
        """Append ``message`` to every open session (of ``room``, if given) but ``exclude``."""
        members = self.rooms.members(room) if room is not None else list(self._sessions.values())
        return Rooms.deliver(message, members, exclude)

    async def send_to(self, sid: str, message: Outgoing) -> None:
        """Send to one session by id, waiting for room; KeyError when unknown, SessionClosed when closed."""
        session = self._sessions.get(sid)
        if session is None:
            raise KeyError(sid)
        await session.send(message)

    def close_all(self, code: int, reason: str) -> int:
        """Close every open session with ``code`` (they are forgotten once their clients learn it); return how many."""
        closed = 0
        for session in list(self._sessions.values()):
            closed += session.end(code, reason)
        return closed

    # -- the session's task ----------------------------------------------------

    async def _run(self, session: Channel, application: Session) -> None:
        try:
            await self._target(application)
        except SessionClosed:
            if session.closed is None:
                logger.exception("session %s: SessionClosed raised while open", session.tag)
                session.end(1011, "")
        except Exception:
            logger.exception("session %s: the application's coroutine raised", session.tag)
            session.end(1011, "")
        except asyncio.CancelledError:
            session.end(1001, "")
            raise
        else:
            session.end(1000, "")

    # -- expiry and shutdown -------------------------------------------------

    def _ensure_timer(self) -> None:
        if self._timer is None and not self._shutting_down:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._settings.cleanup_interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.expire()
        if self._sessions or self._ended:
            self._ensure_timer()

    def expire(self, now: float | None = None) -> list[str]:
        """Forget every session idle for ``session_timeout``; return their ids.

        An open session's coroutine sees a disconnect with code 1001.
        """
        if now is None:
            now = self._settings.clock()
        for sid in self._ended_order.pop_expired(now):
            self._ended.pop(sid, None)
        expired = self._unused.pop_expired(now) + self._expiry.pop_expired(now)
        for sid in expired:
            session = self._sessions.get(sid)
            if session is not None:
                session.end(1001, "session expired")
                self._forget(session)
        return expired

    async def shutdown(self, timeout: float) -> dict[str, tuple[str, Closed]]:
        """Close every session with 1001, answer held polls, and wait for the tasks.

        Returns how each session still known ended, by id: ``(path, close)``,
        so that the handler can still tell a client its close after the loop
        is gone.
        """
        self._shutting_down = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for session in list(self._sessions.values()):
            session.end(1001, "server shutting down")
        # The sessions stay known while their tasks finish: a poll that arrives
        # meanwhile is answered with the session's close, as at any other time.
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        final = dict(self._ended)
        for sid, session in self._sessions.items():
            closed = session.closed
            if closed is not None:
                final[sid] = (self._paths[sid], closed)
        # Until the handler answers without the loop, a poll still finds the close here.
        self._ended.update(final)
        self._sessions.clear()
        self._backend.sessions_changed(0)
        self._paths.clear()
        self._client_keys.clear()
        return final

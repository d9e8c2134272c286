"""The seam between one worker's sessions and the other workers of a deployment.

A session lives in the worker that opened it: its coroutine and its
``Delivery`` are there. A :class:`Backend` tells the handler whether a
request's session is its own and, when it is not, carries the request to the
worker that owns it and brings the answer back. Every protocol rule is still
applied once, by the owner's registry; a backend moves operations and
answers, nothing more.

* :class:`LocalBackend` (the default): one process, every session is local,
  nothing is installed or started.
* ``pollsession.backends.redis.RedisBackend``: many workers and machines,
  through Redis (``pip install pollsession[redis]``).

A backend runs on the handler's loop: ``start`` is awaited there before the
first session opens, and ``close`` during the handler's shutdown, after the
sessions were closed (so answers to forwarded polls still go out).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..protocol.http import HttpResponse
from ..protocol.messages import Outgoing
from ..protocol.requests import Delete, Poll, Push

__all__ = ["Backend", "LocalBackend", "LocalSide", "Serve", "Deliver", "Forwardable"]

Forwardable = Poll | Push | Delete
"""The operations that name a session, and so may belong to another worker."""

Serve = Callable[[Forwardable, str], Awaitable[HttpResponse]]
"""How a backend hands an operation that reached it from another worker to this
worker's sessions: ``serve(operation, path)`` returns the answer."""

Deliver = Callable[[Outgoing, "str | None", "str | None"], int]
"""How a backend hands a broadcast to this worker's sessions: ``deliver(message,
room, exclude)`` appends it to every local member at once and returns how many
got it (``Rooms.deliver``'s rule: a member with a full outbox is closed with 1008)."""


@dataclass(frozen=True, slots=True)
class LocalSide:
    """What a backend may do to this worker's sessions, given to it by the handler at ``start``."""

    serve: Serve
    deliver: Deliver
    close_all: Callable[[int, str], int]
    """``close_all(code, reason)``: close every session of this worker (they may have missed a broadcast)."""
    send_to: Callable[[str, Outgoing], Awaitable[None]]
    """``send_to(sid, message)``: send to a session of this worker, waiting for room (KeyError, SessionClosed)."""


class Backend:
    """Where sessions live; see the module docstring. Subclass it for a new store."""

    _local: LocalSide

    def bind(self, poll_timeout: float) -> None:
        """Called once by the handler that uses this backend, with its ``poll_timeout`` (ValueError if it cannot)."""

    def new_session_id(self) -> str:
        """A new, unguessable session id (192 bits from the OS CSPRNG, URL-safe)."""
        return secrets.token_urlsafe(24)

    def is_local(self, sid: str) -> bool:
        """Whether this worker owns the session ``sid`` (or no worker does)."""
        return True

    async def start(self, local: LocalSide) -> None:
        """Begin taking operations and broadcasts from other workers; ``local`` applies them here."""
        self._local = local

    async def broadcast(self, message: Outgoing, room: str | None, exclude: str | None) -> int:
        """Deliver a broadcast to every member on every worker, all in the same order.

        Returns how many sessions got it here and now (the local backend: all
        of them); a backend of many workers returns how many workers it reached.
        """
        return self._local.deliver(message, room, exclude)

    async def admit(self, limit: int, local_count: int) -> bool:
        """Whether one more session fits ``max_sessions`` (``limit``) with ``local_count`` held here."""
        return local_count < limit

    def sessions_changed(self, local_count: int) -> None:
        """This worker now holds ``local_count`` sessions (called when sessions are forgotten)."""

    async def opened(self, local_count: int) -> None:
        """A session opened here (``local_count`` now): counted everywhere before its open is answered."""
        self.sessions_changed(local_count)

    async def settle(self) -> None:
        """Before a request's answer: make what it changed visible to every worker (a forgotten session's count)."""

    async def count_sessions(self, local_count: int) -> int:
        """The sessions of every worker, ``local_count`` being this one's."""
        return local_count

    async def send_to(self, sid: str, message: Outgoing) -> None:
        """Send to another worker's session, waiting for room there; KeyError or SessionClosed as locally."""
        raise KeyError(sid)

    async def forward(self, operation: Forwardable, path: str) -> HttpResponse:
        """Carry ``operation`` to the worker that owns its session and return that worker's answer."""
        raise NotImplementedError("a LocalBackend owns every session")

    async def drain(self) -> None:
        """The handler is stopping: answer at once what this worker forwards and may wait long for (held polls)."""

    async def close(self) -> None:
        """Stop taking operations from other workers (the handler is shutting down)."""


class LocalBackend(Backend):
    """One process: every session is local (the default)."""

"""Named rooms of sessions and the broadcast rule, on the loop thread only.

A broadcast is encoded once and appended to every member's outbox in one
step, with no wait in between, so every member receives every broadcast
exactly once and in the same order as every other member. A member whose
outbox is full would either block the broadcaster or miss a message; it is
closed instead with code 1008 ("too slow for a broadcast"), and the others
go on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..protocol.messages import Outgoing

if TYPE_CHECKING:
    from .channel import Channel

__all__ = ["Rooms", "SLOW_MEMBER_CODE", "SLOW_MEMBER_REASON"]

logger = logging.getLogger("pollsession")

SLOW_MEMBER_CODE = 1008
SLOW_MEMBER_REASON = "too slow for a broadcast"


class Rooms:
    """Which sessions are in which room."""

    def __init__(self) -> None:
        self._members: dict[str, dict[str, Channel]] = {}

    def join(self, room: str, session: Channel) -> None:
        if not isinstance(room, str) or not room:
            raise ValueError(f"a room name must be a non-empty str, got {room!r}")
        self._members.setdefault(room, {})[session.id] = session

    def leave(self, room: str, session: Channel) -> None:
        members = self._members.get(room)
        if members is not None:
            members.pop(session.id, None)
            if not members:
                del self._members[room]

    def members(self, room: str) -> list[Channel]:
        return list(self._members.get(room, {}).values())

    @staticmethod
    def deliver(message: Outgoing, sessions: Iterable[Channel], exclude: str | None) -> int:
        """Append ``message`` to each open session's outbox now; return how many got it."""
        delivered = 0
        for session in sessions:
            if session.id == exclude or session.closed is not None:
                continue
            if session.offer(message):
                delivered += 1
                continue
            logger.warning("session %s: outbox full during a broadcast, closing it with %d",
                           session.tag, SLOW_MEMBER_CODE)
            session.end(SLOW_MEMBER_CODE, SLOW_MEMBER_REASON)
        return delivered

"""Least-recently-active ordering of sessions, with no I/O and no clock of its own.

Every activity moves a session to the young end of an ordered map; expiry pops
from the old end while the oldest is past its deadline. Finding what expired
therefore costs time in proportion to what expires, never to how many
sessions exist. A session with a held poll is active for as long as the poll
is held, so it is taken out of the order (``hold``) and put back when the poll
ends (``touch``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["ExpiryQueue"]

K = TypeVar("K")


class ExpiryQueue(Generic[K]):
    """Keys ordered by last activity; ``pop_expired(now)`` yields the idle ones."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._last_active: OrderedDict[K, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last_active)

    def __contains__(self, key: object) -> bool:
        return key in self._last_active

    def touch(self, key: K, now: float) -> None:
        """Record activity of ``key`` at ``now`` (monotonic seconds)."""
        self._last_active[key] = now
        self._last_active.move_to_end(key)

    def discard(self, key: K) -> None:
        """Stop tracking ``key`` (forgotten, or busy with a held poll)."""
        self._last_active.pop(key, None)

    def pop_expired(self, now: float) -> list[K]:
        """Remove and return every key idle for at least ``timeout`` seconds."""
        expired: list[K] = []
        deadline = now - self.timeout
        while self._last_active:
            key, last = next(iter(self._last_active.items()))
            if last > deadline:
                break
            self._last_active.popitem(last=False)
            expired.append(key)
        return expired

    def pop_oldest(self) -> K:
        """Remove and return the least recently active key (KeyError when empty)."""
        return self._last_active.popitem(last=False)[0]


"""Per-client limits on opening sessions, with no I/O and no clock of its own.

Two opt-in limits keep one client from taking every session slot of a
target: a cap on the sessions one client holds at once, and a rate limit on
the sessions it opens (a token bucket: ``opens`` per ``seconds``, bursts up to
``opens``). A client is whatever key the handler's ``client_key`` gives the
opening request (its address by default); a request without a key is not
limited. Many users can share one address behind a corporate NAT or proxy,
so size the limits for the largest such group, or key by something better
(a cookie, an authenticated user).

Memory stays bounded by the clients actually active: a session count is
dropped when it reaches zero, and a bucket as soon as it would be full again,
oldest first, at a cost in proportion to what is dropped.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from .errors import ServiceUnavailable

__all__ = ["ClientLimits"]


class ClientLimits:
    """Sessions held and opens made per client key; ``check`` before an open, then ``opened``."""

    def __init__(self, *, max_sessions: int | None, rate: tuple[int, float] | None, retry_after: int) -> None:
        self._max_sessions = max_sessions
        self._rate = rate
        self._retry_after = retry_after
        self._sessions: dict[str, int] = {}
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    @property
    def active(self) -> bool:
        """Whether any limit is configured (otherwise nothing is tracked)."""
        return self._max_sessions is not None or self._rate is not None

    def _tokens(self, key: str, now: float) -> float:
        assert self._rate is not None
        opens, seconds = self._rate
        tokens, at = self._buckets.get(key, (float(opens), now))
        return min(float(opens), tokens + (now - at) * opens / seconds)

    def check(self, key: str | None, now: float) -> None:
        """Raise :class:`ServiceUnavailable` (503) if ``key`` may not open a session now."""
        if key is None or not self.active:
            return
        if self._max_sessions is not None and self._sessions.get(key, 0) >= self._max_sessions:
            raise ServiceUnavailable(
                f"this client holds its maximum of {self._max_sessions} sessions",
                retry_after=self._retry_after,
                code="too_many_client_sessions",
            )
        if self._rate is not None:
            self._forget_full_buckets(now)
            tokens = self._tokens(key, now)
            if tokens < 1:
                opens, seconds = self._rate
                wait = math.ceil((1 - tokens) * seconds / opens)
                raise ServiceUnavailable(
                    f"this client opened more than {opens} sessions in {seconds:g} seconds",
                    retry_after=max(1, wait),
                    code="open_rate_limited",
                )

    def opened(self, key: str | None, now: float) -> None:
        """A session was opened for ``key`` (after :meth:`check` passed)."""
        if key is None or not self.active:
            return
        self._sessions[key] = self._sessions.get(key, 0) + 1
        if self._rate is not None:
            self._buckets[key] = (self._tokens(key, now) - 1, now)
            self._buckets.move_to_end(key)

    def closed(self, key: str | None) -> None:
        """A session of ``key`` was forgotten."""
        if key is None or key not in self._sessions:
            return
        left = self._sessions[key] - 1
        if left:
            self._sessions[key] = left
        else:
            del self._sessions[key]

    def sessions_of(self, key: str) -> int:
        """How many sessions ``key`` holds."""
        return self._sessions.get(key, 0)

    def tracked_buckets(self) -> int:
        """How many rate buckets are kept (for tests of the memory bound)."""
        return len(self._buckets)

    def _forget_full_buckets(self, now: float) -> None:
        assert self._rate is not None
        seconds = self._rate[1]
        while self._buckets:
            key, (_, at) = next(iter(self._buckets.items()))
            if now - at < seconds:  # refilling from empty takes `seconds`: it may not be full yet
                break
            self._buckets.popitem(last=False)

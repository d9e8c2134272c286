"""The tunables of a session target, checked once when the handler is built."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .wire import DEFAULT_LIMITS, Limits

__all__ = ["Settings"]


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every limit and timeout of one mounted target; see ``HttpHandler``."""

    poll_timeout: float = DEFAULT_LIMITS.poll_timeout
    session_timeout: float = DEFAULT_LIMITS.session_timeout
    cleanup_interval: float = 1.0
    shutdown_timeout: float = 5.0
    max_sessions: int = 10_000
    max_message_size: int = DEFAULT_LIMITS.max_message_size
    max_body_size: int = DEFAULT_LIMITS.max_body_size
    inbox_limit: int = DEFAULT_LIMITS.inbox_limit
    outbox_limit: int = 1024
    max_inbox_bytes: int | None = None
    max_outbox_bytes: int | None = None
    max_held_polls: int = 32
    max_sessions_per_client: int | None = None
    open_rate_limit: tuple[int, float] | None = None
    open_timeout: float | None = None
    retry_after: int = 1
    preflight_max_age: int = 600
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        for name in ("poll_timeout", "session_timeout", "cleanup_interval"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {getattr(self, name)!r}")
        if self.shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must be >= 0, got {self.shutdown_timeout!r}")
        for name in ("max_sessions", "max_message_size", "max_body_size", "inbox_limit", "outbox_limit"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("retry_after", "preflight_max_age"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be a whole number of seconds >= 0, got {value!r}")
        if self.max_message_size > self.max_body_size:
            raise ValueError("max_message_size cannot exceed max_body_size")
        for name in ("max_inbox_bytes", "max_outbox_bytes", "max_sessions_per_client"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if type(self.max_held_polls) is not int or self.max_held_polls < 0:
            raise ValueError(f"max_held_polls must be an integer >= 0, got {self.max_held_polls!r}")
        if self.open_timeout is not None and not self.open_timeout > 0:
            raise ValueError(f"open_timeout must be a positive number of seconds or None, got {self.open_timeout!r}")
        if self.open_rate_limit is not None:
            try:
                count, period = self.open_rate_limit
            except (TypeError, ValueError):
                raise ValueError(f"open_rate_limit must be (opens, seconds), got {self.open_rate_limit!r}") from None
            if type(count) is not int or count < 1 or not (isinstance(period, (int, float)) and period > 0):
                raise ValueError(f"open_rate_limit must be (opens >= 1, seconds > 0), got {self.open_rate_limit!r}")

    @property
    def inbox_bytes(self) -> int:
        """``max_inbox_bytes``, by default ``max_body_size``: one whole POST fits an empty inbox."""
        return self.max_inbox_bytes if self.max_inbox_bytes is not None else self.max_body_size

    @property
    def outbox_bytes(self) -> int:
        """``max_outbox_bytes``, by default ``max_body_size``: a poll answer is about that large at most."""
        return self.max_outbox_bytes if self.max_outbox_bytes is not None else self.max_body_size

    def limits(self) -> Limits:
        """The limits a client learns when it opens a session."""
        return Limits(
            poll_timeout=float(self.poll_timeout),
            session_timeout=float(self.session_timeout),
            inbox_limit=self.inbox_limit,
            max_message_size=self.max_message_size,
            max_body_size=self.max_body_size,
        )

"""The life of one client session, as a plain object without I/O, locks or threads.

Both Python clients (:class:`~pollsession.client.sync.Client` on threads,
:class:`~pollsession.client.aio.AsyncClient` on asyncio tasks) keep their
session in a :class:`ClientCore` and decide with the functions here; each of
them only moves bytes, waits, and wakes its waiters when a method here says
something changed. So the two cannot drift apart: what is queued, when a
session counts as open or closed, what a poll asks for, what ends the session
after which answer, and what ``open()`` raises are written once.

Invariants kept here:

- The phases go one way: ``NEW`` -> ``OPEN`` -> ``CLOSING`` -> ``CLOSED``
  (``NEW`` may go straight to ``CLOSED``). The close code and reason are set
  once, by whoever first moves the session out of ``OPEN``.
- Messages are queued only while ``OPEN``, after passing the server's limits;
  received messages are kept in order, each exactly once (:class:`Inbound`),
  and stay readable after the close.
- What every answer means comes from :func:`~pollsession.client.answers.classify_answer`;
  :func:`exchange_step` and :func:`open_error` only say what a client does with it.

Thread-safety: none. The threaded client calls every method with its lock
held; the asyncio client from its event loop only.
"""

from __future__ import annotations

import enum
import logging
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..protocol.errors import HttpError, MessageTooLarge, ProtocolError, SessionClosed
from ..protocol.wire import POLL_MARGIN, Limits
from .answers import ABNORMAL_CLOSURE, PROTOCOL_ERROR, Outcome, OutcomeKind, RequestKind, format_seconds, http_error
from .state import Backoff, Encoded, Inbound, Outbox, body_size_of, encode_message

__all__ = ["Phase", "Step", "ExchangeStep", "ClientCore", "exchange_step", "open_error", "end_log_level"]


class Phase(enum.Enum):
    """Where a client session is in its life."""

    NEW = "new"  # open() not called yet
    OPEN = "open"  # sending and receiving
    CLOSING = "closing"  # the close is decided (code known); cleanup (final poll or DELETE) under way
    CLOSED = "closed"  # cleanup done; receive() raises once the buffered messages are consumed


class Step(enum.Enum):
    """What a background loop does with the outcome of one request (see :func:`exchange_step`)."""

    USE = "use"  # an ok answer (or a push's 429): use it
    RETRY = "retry"  # wait max(after, backoff) and send the same request again
    END = "end"  # end the session here with the outcome's code and reason
    STOP = "stop"  # stop this loop; the other one meets the close (a push's 410 reporting it)


@dataclass(frozen=True)
class ExchangeStep:
    """One decision of :func:`exchange_step`; ``delete`` (for ``END``): tell the server with a ``DELETE``."""

    step: Step
    delete: bool = False


def exchange_step(kind: RequestKind, outcome: Outcome, status: int | None) -> ExchangeStep:
    """Decide what the poller or the sender does with ``outcome`` (``status``: None when nothing answered).

    A push's 410 with the close says the server closed the session: the poller
    still fetches what the session sent before it (and meets the same close),
    so the sender just stops. Without a close the server no longer knows the
    session: it ends here, as in the browser client. After a 410 no ``DELETE``
    is sent: the server has forgotten the session already. A 429 to anything
    but a push (a rate-limiting proxy) is retried like a 5xx.
    """
    if outcome.kind is OutcomeKind.OK or (outcome.kind is OutcomeKind.THROTTLED and kind is RequestKind.PUSH):
        return ExchangeStep(Step.USE)
    if outcome.kind is OutcomeKind.CLOSE:
        gone = status == 410
        if gone and kind is RequestKind.PUSH and outcome.code != ABNORMAL_CLOSURE:
            return ExchangeStep(Step.STOP)
        return ExchangeStep(Step.END, delete=not gone)
    return ExchangeStep(Step.RETRY)


def open_error(outcome: Outcome, status: int | None, body: bytes | None, retry_after: str | None,
               reason: str) -> HttpError | ProtocolError | None:
    """What ``open()`` raises for an opening request that closed, or failed once too often.

    ``status``, ``body``, ``retry_after`` and ``reason`` (the HTTP reason
    phrase) describe the answer; ``status`` None means there was none. Returns
    None when the failure was the network's: the client raises its HTTP
    library's error then, as the caller of that library knows it.
    """
    if outcome.kind is OutcomeKind.CLOSE and (outcome.code == PROTOCOL_ERROR or status is None):
        return ProtocolError(outcome.reason)
    if status is None:
        return None
    if outcome.kind is OutcomeKind.CLOSE or status >= 400:
        return http_error(status, body, retry_after, reason)
    return ProtocolError(outcome.reason)  # a malformed 2xx, retried until the budget was spent


def end_log_level(code: int, *, delete: bool) -> int:
    """The log level of a session ended by a background loop: a 410 telling the close is no failure."""
    return logging.INFO if not delete and code != ABNORMAL_CLOSURE else logging.WARNING


class ClientCore:
    """The state of one client session: phase, server limits, the queues both ways, the close.

    The client calls :meth:`begin_open` and :meth:`opened` around its opening
    request; :meth:`encode` and :meth:`queue` from ``send``;
    :meth:`next_message` and :meth:`flushed` from ``receive`` and ``flush``
    (each says whether to wait); :meth:`poll_params`, :meth:`deliver`,
    :meth:`next_batch` and :meth:`acknowledge` from its loops; and
    :meth:`decide_close` and :meth:`mark_closed` to end the session. A method
    that returns True changed something the client's waiters must hear of.
    """

    def __init__(self, *, poll_wait: float | None, request_timeout: float, max_retries: int,
                 retry_base_delay: float, retry_max_delay: float, random: Callable[[], float]) -> None:
        if poll_wait is not None and not poll_wait > 0:
            # wait=0 is a short poll; polling in a loop without a hold would be a busy loop.
            raise ValueError(f"expected poll_wait to be None or > 0 seconds, got {poll_wait!r}")
        if not request_timeout > 0:
            raise ValueError(f"expected request_timeout > 0, got {request_timeout!r}")
        self.poll_wait = poll_wait
        self.request_timeout = request_timeout
        self._max_retries = max_retries
        self._retry_base_delay = retry_base_delay
        self._retry_max_delay = retry_max_delay
        self._random = random
        self.backoff()  # check the retry settings now rather than in a background loop
        self.phase = Phase.NEW
        self.opening = False
        self.sid: str | None = None
        self.limits: Limits | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed_in_hello: Outcome | None = None  # an open answer that already carried the close
        self._outbox = Outbox()
        self._inbound = Inbound()
        self._inbox: deque[Any] = deque()

    def backoff(self, *, unlimited: bool = False) -> Backoff:
        """A fresh backoff with the client's settings; ``unlimited`` for 429s (the server is alive)."""
        return Backoff(base=self._retry_base_delay, max_delay=self._retry_max_delay,
                       max_retries=sys.maxsize if unlimited else self._max_retries, random=self._random)

    @property
    def max_retries(self) -> int:
        """Consecutive failed retries before a session ends with 1006."""
        return self._max_retries

    @property
    def ended(self) -> bool:
        """True once the close is decided (CLOSING or CLOSED): what the user sees as closed."""
        return self.phase is Phase.CLOSING or self.phase is Phase.CLOSED

    def closed_error(self, default: int = ABNORMAL_CLOSURE) -> SessionClosed:
        """The :class:`SessionClosed` to raise now (``default``: the code when none was recorded)."""
        return SessionClosed(self.close_code or default, self.close_reason or "")

    # ------------------------------------------------------------ opening

    def begin_open(self) -> None:
        """Called when ``open()`` starts; raises :class:`RuntimeError` unless it is the first call."""
        if self.phase is not Phase.NEW or self.opening:
            raise RuntimeError(f"open() may be called once; the client is {self.phase.value}")
        self.opening = True

    def opened(self, outcome: Outcome) -> bool:
        """Take the ok answer of the opening request; return False if the client was closed meanwhile.

        When False, the client forgets the new session (a ``DELETE``) and
        raises :meth:`closed_error` with the default 1000.
        """
        assert outcome.sid is not None and outcome.limits is not None
        self.sid, self.limits = outcome.sid, outcome.limits
        if self.phase is not Phase.NEW:
            return False
        self.phase = Phase.OPEN
        self._inbox.extend(self._inbound.accept(outcome.messages))
        self.closed_in_hello = outcome if outcome.closed is not None else None
        return True

    # ------------------------------------------------------------ sending

    def require_open(self) -> Limits:
        """The server's limits; raises :class:`RuntimeError` before the open, :class:`SessionClosed` after the end."""
        if self.phase is Phase.NEW:
            raise RuntimeError("the client is not open: call open() first")
        if self.phase is not Phase.OPEN or self.limits is None:
            raise self.closed_error()
        return self.limits

    @staticmethod
    def encode(data: Any, limits: Limits) -> Encoded:
        """Encode ``data`` for :meth:`queue` within ``limits`` (from :meth:`require_open`).

        Touches no state, so the threaded client calls it without its lock: a big value takes a while.
        """
        return encode_message(data, max_message_size=limits.max_message_size)

    def queue(self, encoded: Encoded) -> None:
        """Queue an encoded message; raises if the session ended meanwhile or one body cannot carry it."""
        limits = self.require_open()
        body_size = body_size_of(encoded, self._outbox.last_seq + 1)
        if body_size > limits.max_body_size:
            # Escaping (for example of control characters) made it too big for one request.
            raise MessageTooLarge(body_size, limits.max_body_size, "max_body_size")
        self._outbox.push(encoded)

    @property
    def unacknowledged(self) -> int:
        """How many queued messages the server has not acknowledged yet."""
        return len(self._outbox)

    def flushed(self) -> bool:
        """True once the server acknowledged everything queued; raises :class:`SessionClosed` if it never will."""
        if not len(self._outbox):
            return True
        if self.phase is not Phase.OPEN:
            raise self.closed_error()
        return False

    def has_work(self) -> bool:
        """Whether the sender has something to do: a batch to send, or (not open) its end."""
        return self.phase is not Phase.OPEN or bool(len(self._outbox))

    def next_batch(self) -> tuple[bytes, int] | None:
        """``(body, last seq)`` of the next ``POST``, or None when the sender must end (not open, or nothing)."""
        if self.phase is not Phase.OPEN or self.limits is None:
            return None
        return self._outbox.batch(max_body_size=self.limits.max_body_size, max_count=self.limits.inbox_limit)

    def acknowledge(self, ack: int) -> bool:
        """Take a push answer's ``ack``; True if messages were acknowledged (``flush`` waiters must hear)."""
        return bool(self._outbox.acknowledge(ack))

    # ------------------------------------------------------------ receiving

    def next_message(self) -> tuple[bool, Any]:
        """``(True, message)`` if one is there, ``(False, None)`` to wait for news.

        Raises :class:`SessionClosed` once the close is decided (CLOSING: its
        code is known and no message comes after it) and every message received
        before was returned; the cleanup request (final poll or ``DELETE``) does
        not hold it up, since a server that is stopping may never answer that.
        :class:`RuntimeError` before the open.
        """
        if self._inbox:
            return True, self._inbox.popleft()
        if self.ended:
            raise self.closed_error()
        if self.phase is Phase.NEW:
            raise RuntimeError("the client is not open: call open() first")
        return False, None

    def poll_hold(self) -> float:
        """Seconds the server holds each poll: ``poll_wait`` capped at its ``poll_timeout``."""
        assert self.limits is not None
        timeout = self.limits.poll_timeout
        return timeout if self.poll_wait is None else min(self.poll_wait, timeout)

    def poll_read_timeout(self) -> float:
        """How long a long poll waits for its answer: its hold plus ``max(request_timeout, POLL_MARGIN)``."""
        return self.poll_hold() + max(self.request_timeout, POLL_MARGIN)

    def poll_params(self) -> dict[str, str] | None:
        """The query of the next long poll, or None when the poller must end (not open)."""
        if self.phase is not Phase.OPEN:
            return None
        ack = str(self._inbound.ack)
        return {"ack": ack} if self.poll_wait is None else {"ack": ack, "wait": format_seconds(self.poll_hold())}

    def final_poll_params(self) -> dict[str, str]:
        """The query of the poll that lets the server forget a closed session at once (docs/protocol.md 8)."""
        return {"ack": str(self._inbound.ack), "wait": "0"}

    def deliver(self, outcome: Outcome) -> bool:
        """Take a poll answer's messages while open; True if some were new (``receive`` waiters must hear)."""
        if self.phase is not Phase.OPEN:
            return False
        fresh = self._inbound.accept(outcome.messages)
        self._inbox.extend(fresh)
        return bool(fresh)

    # ------------------------------------------------------------ closing

    def close_unopened(self, code: int, reason: str) -> bool:
        """``close()`` before the open succeeded: True if the session was still NEW (now CLOSED)."""
        if self.phase is not Phase.NEW:
            return False
        self.close_code, self.close_reason, self.phase = code, reason, Phase.CLOSED
        return True

    def decide_close(self, code: int, reason: str) -> bool:
        """Record the close (first caller wins): True if the session was open and is now CLOSING."""
        if self.phase is not Phase.OPEN:
            return False
        self.close_code, self.close_reason, self.phase = code, reason, Phase.CLOSING
        return True

    def mark_closed(self) -> bool:
        """The cleanup is done: True if the phase changed to CLOSED."""
        if self.phase is Phase.CLOSED:
            return False
        self.phase = Phase.CLOSED
        return True

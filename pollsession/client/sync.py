"""A WebSocket-like session over HTTP long-polling, for Python programs.

::

    from pollsession.client import Client

    with Client("https://example.com/poll") as client:
        client.send("hello")                 # queued at once, delivered in order, exactly once
        client.send({"type": "join"})       # anything that is not str or bytes goes as JSON
        for message in client:             # ends when the session closes
            print(message)

The client speaks docs/protocol.md version 1 with :mod:`requests`. What to
send again, what to drop as a duplicate, what an answer means and how long to
back off is decided by the plain objects of :mod:`pollsession.client.state`
and :mod:`pollsession.client.core` (every answer goes through
``classify_answer``), which :class:`~pollsession.client.aio.AsyncClient`
shares; this module only moves bytes and waits.

Threads
-------
Once open, a client runs two daemon threads:

- the *poller* holds one long poll (``GET ?ack=N``) at a time, drops messages it
  already has, queues the rest for :meth:`Client.receive`, and on a close does
  the final poll that lets the server forget the session;
- the *sender* ``POST``\\ s everything queued by :meth:`Client.send` in batches,
  one request in flight at a time, and sends a batch again until the server
  acknowledges it (the server drops the seqs it already holds).

Every public method is safe to call from any thread. :meth:`Client.close`
joins both threads. Nothing waits by polling a flag: waiting is done on one
lock with two conditions (work for the sender; news for readers) and a stop
event that cuts every backoff sleep short.

Failures (docs/protocol.md section 13)
--------------------------------------
A network error, a timeout, a 5xx or a malformed answer is retried after
``max(Retry-After, backoff)``, up to ``max_retries`` times in a row; then the
session ends with 1006. A 429 keeps what the server acknowledged and sends the
rest after ``max(Retry-After, backoff of consecutive 429s)``. A 410 ends the
session with the close it reports, else 1006; a 413 with 1009; any other 4xx
with 1006. A long poll waits its hold plus ``max(request_timeout,
wire.POLL_MARGIN)``, so a short ``request_timeout`` never cuts a held poll.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

import requests

from ..protocol.errors import SessionClosed
from ..protocol.wire import REQUEST_TIMEOUT
from .answers import ABNORMAL_CLOSURE, Outcome, OutcomeKind, RequestKind, classify_answer
from .core import ClientCore, Phase, Step, end_log_level, exchange_step, open_error
from .state import DEFAULT_MAX_RETRIES, DEFAULT_RETRY_BASE_DELAY, DEFAULT_RETRY_MAX_DELAY, Backoff

__all__ = ["Client", "ABNORMAL_CLOSURE"]

_log = logging.getLogger("pollsession.client")


class Client:
    """One pollsession session, seen from a Python program.

    ``url`` is the mounted endpoint (``https://host/poll``; a query string is
    kept). ``headers`` and ``cookies`` go with every request (authentication,
    for example); ``session`` lets you bring your own :class:`requests.Session`
    (proxies, TLS settings, a cookie jar for a sticky load balancer), which the
    client uses from its threads and does not close.

    ``poll_wait`` asks the server to hold each poll at most that many seconds
    (None: the server's ``poll_timeout``; it must be > 0). ``request_timeout``
    (default ``wire.REQUEST_TIMEOUT``, 10 s) bounds connecting and waiting for
    an answer the server gives at once; a long poll waits its hold plus
    ``max(request_timeout, wire.POLL_MARGIN)``. Failed requests are retried
    ``max_retries`` (8) times in a row, the n-th after a delay jittered into
    ``[d/2, d)`` with ``d = min(retry_max_delay, retry_base_delay * 2**n)``
    (0.25 s doubling up to 10 s); then the session ends with 1006.

    With ``open=True`` (the default) the constructor opens the session and may
    raise what :meth:`open` raises; with ``open=False`` call :meth:`open`, or
    enter the client as a context manager. Always end with :meth:`close` (the
    ``with`` block does it), which stops and joins the background threads.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        cookies: Mapping[str, str] | None = None,
        session: requests.Session | None = None,
        poll_wait: float | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_base_delay: float = DEFAULT_RETRY_BASE_DELAY,
        retry_max_delay: float = DEFAULT_RETRY_MAX_DELAY,
        open: bool = True,
    ) -> None:
        # The core checks the settings now rather than in a thread.
        self._core = ClientCore(poll_wait=poll_wait, request_timeout=request_timeout, max_retries=max_retries,
                                retry_base_delay=retry_base_delay, retry_max_delay=retry_max_delay,
                                random=random.Random().random)
        self._url = url
        self._headers = dict(headers or {})
        self._cookies = dict(cookies or {})
        self._own_http = session is None
        self._http = session if session is not None else requests.Session()
        self._request_timeout = request_timeout

        # _core is guarded by _lock. _work wakes the sender; _news wakes
        # receive() and flush(). _stop cuts sleeps short once closing.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._news = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._closing = threading.Lock()
        self._threads: list[threading.Thread] = []
        if open:
            try:
                self.open()
            except BaseException:
                self.close()
                raise

    # ------------------------------------------------------------------ public

    @property
    def sid(self) -> str | None:
        """The session id, or None before :meth:`open`. Treat it as a secret."""
        return self._core.sid

    @property
    def closed(self) -> bool:
        """True once the session has ended: its close code is known and nothing more arrives.

        :meth:`receive` may still return messages that arrived before the end.
        Telling the server (the final poll or ``DELETE``) may still be under
        way; :meth:`close` waits for it.
        """
        return self._core.ended

    @property
    def close_code(self) -> int | None:
        """The close code once the session is ending (1006: ended without a close), else None."""
        return self._core.close_code

    @property
    def close_reason(self) -> str | None:
        """The close reason once the session is ending, else None."""
        return self._core.close_reason

    def open(self) -> None:
        """Open the session with ``GET url`` and start the background threads.

        Network errors, 5xx (503 "too many sessions" included, honouring its
        ``Retry-After``) and malformed answers are retried like any request.
        Raises the matching :class:`pollsession.HttpError` subclass if the
        server refuses (for example :class:`pollsession.Unauthorized` from an
        authentication hook), :class:`pollsession.ProtocolError` if it speaks
        another protocol version, or the last failure (a
        :class:`requests.RequestException`, :class:`pollsession.HttpError` or
        :class:`pollsession.ProtocolError`) once the retries are spent. After
        it returns, :meth:`send` and :meth:`receive` work.
        """
        with self._lock:
            self._core.begin_open()
        try:
            opened = self._open_request()
        finally:
            with self._lock:
                self._core.opening = False
        with self._lock:
            still_wanted = self._core.opened(opened)
        if not still_wanted:  # close() ran while the GET was in flight: forget the new session
            self._best_effort(RequestKind.DELETE, attempts=1)
            raise self._core.closed_error(1000)
        tag = f"{id(self):x}"
        self._threads = [
            threading.Thread(target=self._poll_loop, name=f"pollsession-poller-{tag}", daemon=True),
            threading.Thread(target=self._send_loop, name=f"pollsession-sender-{tag}", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def send(self, data: Any) -> None:
        """Queue ``data`` for the server and return at once.

        ``str`` goes as text, ``bytes``/``bytearray``/``memoryview`` as binary,
        anything else as JSON. Messages arrive in the order they were queued,
        exactly once, however often a request has to be retried. Invalid values
        raise here, not later, and queue nothing: :class:`ValueError` (NaN, a
        lone surrogate anywhere in a str or a JSON value, ...),
        :class:`TypeError` (not JSON-serializable), or
        :class:`pollsession.MessageTooLarge`. Raises
        :class:`pollsession.SessionClosed` once the session is ending. Call
        :meth:`flush` to wait until the server has everything.
        """
        with self._lock:
            limits = self._core.require_open()
        encoded = self._core.encode(data, limits)  # outside the lock: a big value takes a while
        with self._lock:
            self._core.queue(encoded)
            self._work.notify()

    def receive(self, timeout: float | None = None) -> Any:
        """Return the next message from the server, in order, waiting if none is there.

        Returns ``str`` for text, ``bytes`` for binary and the decoded value for
        JSON. Raises the builtin :class:`TimeoutError` if nothing arrives within
        ``timeout`` seconds (None waits as long as it takes), and
        :class:`pollsession.SessionClosed` with the close code and reason once
        the session has closed and every message received before was returned.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._news:
            while True:
                ready, message = self._core.next_message()
                if ready:
                    return message
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no message within {timeout} seconds")
                self._news.wait(remaining)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the server has acknowledged every message sent so far.

        Raises the builtin :class:`TimeoutError` after ``timeout`` seconds (the
        messages stay queued and are still sent), and
        :class:`pollsession.SessionClosed` if the session ends with messages
        unacknowledged (those are lost: the server closed, or was unreachable).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._news:
            while not self._core.flushed():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"{self._core.unacknowledged} messages still unacknowledged after {timeout} seconds")
                self._news.wait(remaining)

    def close(self, code: int = 1000, reason: str = "", *, timeout: float | None = 5.0) -> None:
        """End the session: wait for queued messages, send ``DELETE``, join the threads.

        First waits up to ``timeout`` seconds (None: as long as the retries
        last; 0: not at all) for the server to acknowledge what :meth:`send`
        queued, so that closing right after sending does not lose messages.
        The server's coroutine then sees a close with code 1000: protocol
        version 1 carries no code in ``DELETE``, so ``code`` and ``reason`` are
        only what :attr:`close_code`, :attr:`close_reason` and the
        :class:`pollsession.SessionClosed` raised by :meth:`receive` report.
        Idempotent; a session the server already closed keeps its code.
        """
        with self._closing:  # a second close() waits for the first, then finds nothing to do
            self._close(code, reason, timeout)

    def _close(self, code: int, reason: str, timeout: float | None) -> None:
        with self._lock:
            never_opened = self._core.close_unopened(code, reason)
            if never_opened:
                self._wake_all()
            was_open = self._core.phase is Phase.OPEN
        if never_opened:
            self._stop.set()  # an open() in progress gives up
            if self._own_http:
                self._http.close()
            return
        if was_open and timeout != 0:
            try:
                self.flush(timeout)
            except (TimeoutError, SessionClosed):
                pass
        with self._lock:
            delete = self._core.decide_close(code, reason)
            if delete:
                self._wake_all()
        self._stop.set()
        if delete:
            self._best_effort(RequestKind.DELETE, attempts=3)
        self._mark_closed()
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                # A poll still held after a failed DELETE ends by itself: the thread is a daemon.
                thread.join(self._request_timeout)
        if self._own_http:
            self._http.close()

    def __enter__(self) -> Client:
        """Open the session if the constructor did not, and return the client."""
        if self._core.phase is Phase.NEW:
            self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Close the session (see :meth:`close`)."""
        self.close()

    def __iter__(self) -> Iterator[Any]:
        """Iterate over incoming messages; the loop ends when the session closes.

        Check :attr:`close_code` after the loop to tell a normal end from 1006.
        """
        while True:
            try:
                yield self.receive()
            except SessionClosed:
                return

    def __repr__(self) -> str:
        return f"<pollsession.Client {self._url} {self._core.phase.value}>"

    # ------------------------------------------------------------ helpers

    def _wake_all(self) -> None:
        """Call with the lock held: something every waiter must hear of changed (the phase)."""
        self._news.notify_all()
        self._work.notify_all()

    def _mark_closed(self) -> None:
        with self._lock:
            if self._core.mark_closed():
                self._wake_all()
        self._stop.set()

    def _end(self, code: int, reason: str, *, delete: bool) -> None:
        """End the session from a background thread without a close from a poll answer (first caller wins).

        ``delete``: tell the server (best effort: it may well be unreachable);
        not after a 410, when it has forgotten the session already.
        """
        with self._lock:
            if not self._core.decide_close(code, reason):
                return
            self._wake_all()
        _log.log(end_log_level(code, delete=delete), "pollsession session ended with %d: %s", code, reason)
        self._stop.set()
        if delete:
            self._best_effort(RequestKind.DELETE, attempts=1)
        self._mark_closed()

    def _attempt(self, kind: RequestKind, *, read_timeout: float, params: Mapping[str, str] | None = None,
                 body: bytes | None = None, sent: int = 0) -> tuple[Outcome, requests.Response | None]:
        """One request, decided by ``classify_answer``; a network failure is a retry without ``after``."""
        headers = dict(self._headers)
        sid = self._core.sid
        if sid is not None:
            headers["Pollsession-Id"] = sid
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = self._http.request(
                kind.method, self._url, params=params, data=body, headers=headers, cookies=self._cookies,
                timeout=(self._request_timeout, read_timeout), allow_redirects=False,
            )
        except requests.RequestException as exc:
            return Outcome(OutcomeKind.RETRY, reason=f"{kind.value} failed: {exc}"), None
        outcome = classify_answer(kind, response.status_code, response.headers, response.content, sent=sent)
        if outcome.kind is OutcomeKind.RETRY:
            _log.debug("pollsession %s", outcome.reason)
        return outcome, response

    # ------------------------------------------------------------ opening

    def _open_request(self) -> Outcome:
        backoff = self._core.backoff()
        while True:
            outcome, response = self._attempt(RequestKind.OPEN, read_timeout=self._request_timeout)
            if outcome.kind is OutcomeKind.OK:
                return outcome
            delay = None if outcome.kind is OutcomeKind.CLOSE else backoff.retry(outcome.after)
            if delay is None:  # refused, or the last failure, as the caller knows it
                if response is None:
                    error = open_error(outcome, None, None, None, "")
                else:
                    error = open_error(outcome, response.status_code, response.content,
                                       response.headers.get("Retry-After"), response.reason or "")
                raise error if error is not None else requests.ConnectionError(outcome.reason)
            if self._stop.wait(delay):
                raise self._core.closed_error(1000)

    # ------------------------------------------------------------ the poller

    def _poll_loop(self) -> None:
        hello = self._core.closed_in_hello
        if hello is not None:
            self._on_remote_close(hello)
            return
        read_timeout = self._core.poll_read_timeout()
        backoff = self._core.backoff()
        while True:
            with self._lock:
                params = self._core.poll_params()
            if params is None:
                return
            outcome = self._exchange(backoff, RequestKind.POLL, params=params, read_timeout=read_timeout)
            if outcome is None:
                return
            with self._lock:
                if self._core.phase is not Phase.OPEN:
                    return
                if self._core.deliver(outcome):
                    self._news.notify_all()
            if outcome.closed is not None:
                self._on_remote_close(outcome)
                return

    def _on_remote_close(self, outcome: Outcome) -> None:
        """The server closed: stop sending, let it forget the session, then mark closed."""
        assert outcome.closed is not None
        with self._lock:
            if not self._core.decide_close(outcome.closed.code, outcome.closed.reason):
                return
            self._wake_all()
            params = self._core.final_poll_params()
        # Every message up to ack is in the inbox: a poll with that ack lets the server forget
        # the session now rather than at expiry (docs/protocol.md section 8). A 410 means an
        # earlier final poll got through.
        self._best_effort(RequestKind.POLL, params=params, attempts=3)
        self._mark_closed()

    # ------------------------------------------------------------ the sender

    def _send_loop(self) -> None:
        backoff = self._core.backoff()
        throttle = self._core.backoff(unlimited=True)  # 429s: the server is alive, never give up
        while True:
            with self._work:
                while not self._core.has_work():
                    self._work.wait()
                batch = self._core.next_batch()
            if batch is None:
                return
            # A lost answer leaves us unsure whether the server took the batch: sending it again is
            # safe, the server drops the seqs it holds. So _exchange retries the same body.
            body, sent = batch
            outcome = self._exchange(backoff, RequestKind.PUSH, body=body, sent=sent,
                                     read_timeout=self._request_timeout)
            if outcome is None:
                return
            assert outcome.ack is not None
            with self._lock:
                if self._core.acknowledge(outcome.ack):
                    self._news.notify_all()
            if outcome.kind is OutcomeKind.OK:
                throttle.reset()
                continue
            # 429: the session's inbox is full; the rest goes again after max(Retry-After, backoff).
            delay = throttle.retry(outcome.after)
            assert delay is not None
            _log.debug("pollsession inbox full at ack %d; sending the rest in %.2fs", outcome.ack, delay)
            if self._stop.wait(delay):
                return

    def _exchange(self, backoff: Backoff, kind: RequestKind, *, read_timeout: float,
                  params: Mapping[str, str] | None = None, body: bytes | None = None, sent: int = 0) -> Outcome | None:
        """One request of a background loop, retried while :func:`exchange_step` says retry.

        Returns an ok outcome (or, for a push, a throttled one), or None when
        the loop must end (closing, retries spent, or the session ended here).
        """
        while True:
            outcome, response = self._attempt(kind, params=params, body=body, sent=sent, read_timeout=read_timeout)
            decision = exchange_step(kind, outcome, None if response is None else response.status_code)
            if decision.step is Step.USE:
                backoff.reset()
                return outcome
            if decision.step is Step.END:
                assert outcome.code is not None
                self._end(outcome.code, outcome.reason, delete=decision.delete)
                return None
            if decision.step is Step.STOP or self._stop.is_set():
                return None
            delay = backoff.retry(outcome.after)
            if delay is None:
                self._end(ABNORMAL_CLOSURE, f"{outcome.reason}; gave up after {backoff.max_retries} retries",
                          delete=True)
                return None
            if self._stop.wait(delay):
                return None

    # ------------------------------------------------------------ closing

    def _best_effort(self, kind: RequestKind, *, attempts: int, params: Mapping[str, str] | None = None) -> None:
        """Send a closing request (``DELETE``, final poll) until it is not to be retried, at most ``attempts`` times."""
        backoff = self._core.backoff()
        for attempt in range(attempts):
            outcome, _ = self._attempt(kind, params=params, read_timeout=self._request_timeout)
            if outcome.kind is not OutcomeKind.RETRY:
                return
            _log.debug("pollsession %s while closing", outcome.reason)
            delay = backoff.failure()
            if delay is None or attempt + 1 == attempts:
                return
            # Short and not cut by _stop, which is set by now: closing must not hang on it.
            time.sleep(min(delay, 1.0))

"""A WebSocket-like session over HTTP long-polling, for Python programs.

::

    from pollsession.client import Client

    with Client("https://example.com/poll") as client:
        client.send("hello")                 # queued at once, delivered in order, exactly once
        client.send({"type": "join"})       # anything that is not str or bytes goes as JSON
        for message in client:             # ends when the session closes
            print(message)

The client speaks PROTOCOL.md version 1 with :mod:`requests`. What to send
again, what to drop as a duplicate and how long to back off is decided by the
plain objects of :mod:`pollsession._client_state`; this module only moves
bytes and waits.

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

Failures
--------
A network error, a timeout, a 5xx or an unreadable answer is retried with
exponential backoff and jitter, up to ``max_retries`` consecutive retries; then
the session ends with code 1006. A 410 ends it at once: with the close the
server reports in it for a session that ended recently (the answer carrying
the close was lost), else with 1006 (the server no longer knows the session). A 429 is not a failure: the client keeps what the
server acknowledged, waits ``Retry-After`` and sends the rest. Any other 4xx
means retrying cannot help: 1006 with the server's message as the reason.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

import requests

from ._client_state import (
    Backoff,
    Disposition,
    Inbound,
    Outbox,
    PollAnswer,
    ProtocolError,
    ServerConfig,
    body_size_of,
    classify_status,
    encode_message,
    format_seconds,
    http_error,
    parse_gone_answer,
    parse_open_answer,
    parse_poll_answer,
    parse_post_answer,
    parse_retry_after,
)
from ._errors import HttpError, MessageTooLarge, SessionClosed

__all__ = ["Client"]

_log = logging.getLogger("pollsession.client")

#: Close code of a session that ended without a close from the server.
ABNORMAL_CLOSURE = 1006


class _State(enum.Enum):
    NEW = "new"  # open() not called yet
    OPEN = "open"  # sending and receiving
    CLOSING = "closing"  # the close is decided (code known); cleanup (final poll or DELETE) under way
    CLOSED = "closed"  # cleanup done; receive() raises once the buffered messages are consumed


class Client:
    """One pollsession session, seen from a Python program.

    ``url`` is the mounted endpoint (``https://host/poll``; a query string is
    kept). ``headers`` and ``cookies`` go with every request (authentication,
    for example); ``session`` lets you bring your own :class:`requests.Session`
    (proxies, TLS settings, a cookie jar for a sticky load balancer), which the
    client uses from its threads and does not close.

    ``poll_wait`` asks the server to hold each poll at most that many seconds
    (None: the server's ``poll_timeout``; it must be > 0). ``request_timeout`` bounds connecting
    and, beyond the hold, waiting for an answer. Failed requests are retried
    ``max_retries`` times in a row, after delays growing from
    ``retry_base_delay`` to ``retry_max_delay``; then the session ends with 1006.

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
        request_timeout: float = 10.0,
        max_retries: int = 8,
        retry_base_delay: float = 0.1,
        retry_max_delay: float = 5.0,
        open: bool = True,
    ) -> None:
        if poll_wait is not None and not poll_wait > 0:
            # wait=0 is a short poll; polling in a loop without a hold would be a busy loop.
            raise ValueError(f"expected poll_wait to be None or > 0 seconds, got {poll_wait!r}")
        if not request_timeout > 0:
            raise ValueError(f"expected request_timeout > 0, got {request_timeout!r}")
        self._url = url
        self._headers = dict(headers or {})
        self._cookies = dict(cookies or {})
        self._own_http = session is None
        self._http = session if session is not None else requests.Session()
        self._poll_wait = poll_wait
        self._request_timeout = request_timeout
        self._retry_base_delay = retry_base_delay
        self._retry_max_delay = retry_max_delay
        self._max_retries = max_retries
        self._random = random.Random()
        self._backoff()  # check the retry settings now rather than in a thread

        # Everything below is guarded by _lock. _work wakes the sender; _news
        # wakes receive() and flush(). _stop cuts sleeps short once closing.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._news = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._closing = threading.Lock()
        self._state = _State.NEW
        self._opening = False
        self._config: ServerConfig | None = None
        self._outbox = Outbox()
        self._inbound = Inbound()
        self._inbox: deque[Any] = deque()
        self._close_code: int | None = None
        self._close_reason: str | None = None
        self._closed_in_hello: tuple[int, str] | None = None
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
        config = self._config
        return config.sid if config is not None else None

    @property
    def closed(self) -> bool:
        """True once the session has ended and the server was told or has forgotten it.

        :meth:`receive` may still return messages that arrived before the end.
        """
        return self._state is _State.CLOSED

    @property
    def close_code(self) -> int | None:
        """The close code once the session is ending (1006: ended without a close), else None."""
        return self._close_code

    @property
    def close_reason(self) -> str | None:
        """The close reason once the session is ending, else None."""
        return self._close_reason

    def open(self) -> None:
        """Open the session with ``GET url`` and start the background threads.

        Network errors and 5xx (503 "too many sessions" included, honouring its
        ``Retry-After``) are retried like any request. Raises the matching
        :class:`pollsession.HttpError` subclass if the server refuses (for
        example :class:`pollsession.Unauthorized` from an authentication hook),
        or the last :class:`requests.RequestException` once the retries are
        spent. After it returns, :meth:`send` and :meth:`receive` work.
        """
        with self._lock:
            if self._state is not _State.NEW or self._opening:
                raise RuntimeError(f"open() may be called once; the client is {self._state.value}")
            self._opening = True
        try:
            config, answer = self._open_request()
        finally:
            with self._lock:
                self._opening = False
        with self._lock:
            closed_meanwhile = self._state is not _State.NEW
            self._config = config
            if not closed_meanwhile:
                self._state = _State.OPEN
                self._inbox.extend(self._inbound.accept(answer.messages))
                self._closed_in_hello = answer.closed
        if closed_meanwhile:  # close() ran while the GET was in flight: forget the new session
            self._best_effort("DELETE", attempts=1)
            raise SessionClosed(self._close_code or 1000, self._close_reason or "")
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
        raise here, not later: :class:`ValueError` (NaN, a lone surrogate, ...),
        :class:`TypeError` (not JSON-serializable), or
        :class:`pollsession.MessageTooLarge`. Raises
        :class:`pollsession.SessionClosed` once the session is ending. Call
        :meth:`flush` to wait until the server has everything.
        """
        with self._lock:
            config = self._require_open()
        encoded = encode_message(data, max_message_size=config.max_message_size)
        with self._lock:
            self._require_open()
            body_size = body_size_of(encoded, self._outbox.last_seq + 1)
            if body_size > config.max_body_size:
                # Escaping (for example of control characters) made it too big for one request.
                raise MessageTooLarge(body_size, config.max_body_size, "max_body_size")
            self._outbox.push(encoded)
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
                if self._inbox:
                    return self._inbox.popleft()
                if self._state is _State.CLOSED:
                    raise SessionClosed(self._close_code or ABNORMAL_CLOSURE, self._close_reason or "")
                if self._state is _State.NEW:
                    raise RuntimeError("the client is not open: call open() first")
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
            while len(self._outbox):
                if self._state is not _State.OPEN:
                    raise SessionClosed(self._close_code or ABNORMAL_CLOSURE, self._close_reason or "")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"{len(self._outbox)} messages still unacknowledged after {timeout} seconds")
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
            never_opened = self._state is _State.NEW
            if never_opened:
                self._set_close(code, reason, _State.CLOSED)
            was_open = self._state is _State.OPEN
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
            delete = self._state is _State.OPEN
            if delete:
                self._set_close(code, reason, _State.CLOSING)
        self._stop.set()
        if delete:
            self._best_effort("DELETE", attempts=3)
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
        if self._state is _State.NEW:
            self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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
        return f"<pollsession.Client {self._url} {self._state.value}>"

    # ------------------------------------------------------------ helpers

    def _backoff(self) -> Backoff:
        return Backoff(
            base=self._retry_base_delay,
            max_delay=self._retry_max_delay,
            max_retries=self._max_retries,
            random=self._random.random,
        )

    def _require_open(self) -> ServerConfig:
        """Call with the lock held; return the server's limits."""
        if self._state is _State.NEW:
            raise RuntimeError("the client is not open: call open() first")
        if self._state is not _State.OPEN or self._config is None:
            raise SessionClosed(self._close_code or ABNORMAL_CLOSURE, self._close_reason or "")
        return self._config

    def _set_close(self, code: int, reason: str, state: _State) -> None:
        """Call with the lock held: record the close and wake everyone who waits."""
        self._close_code, self._close_reason, self._state = code, reason, state
        self._news.notify_all()
        self._work.notify_all()

    def _mark_closed(self) -> None:
        with self._lock:
            if self._state is not _State.CLOSED:
                self._state = _State.CLOSED
                self._news.notify_all()
                self._work.notify_all()
        self._stop.set()

    def _on_forgotten(self, code: int, reason: str) -> None:
        """The server closed and already forgot the session (our final answers were lost)."""
        with self._lock:
            if self._state is not _State.OPEN:
                return
            self._set_close(code, reason, _State.CLOSING)
        self._mark_closed()

    def _fail(self, reason: str, *, delete: bool) -> None:
        """End the session with 1006 from a background thread (first caller wins)."""
        with self._lock:
            if self._state is not _State.OPEN:
                return
            self._set_close(ABNORMAL_CLOSURE, reason, _State.CLOSING)
        _log.warning("pollsession session ended: %s", reason)
        self._stop.set()
        if delete:
            self._best_effort("DELETE", attempts=1)  # best effort: the server may well be unreachable
        self._mark_closed()

    def _request(
        self,
        method: str,
        *,
        read_timeout: float,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> requests.Response:
        headers = dict(self._headers)
        config = self._config
        if config is not None:
            headers["Pollsession-Id"] = config.sid
        if body is not None:
            headers["Content-Type"] = "application/json"
        return self._http.request(
            method,
            self._url,
            params=params,
            data=body,
            headers=headers,
            cookies=self._cookies,
            timeout=(self._request_timeout, read_timeout),
            allow_redirects=False,
        )

    @staticmethod
    def _error_of(response: requests.Response) -> HttpError:
        return http_error(
            response.status_code, response.content, response.headers.get("Retry-After"), response.reason or ""
        )

    def _retry_later(self, backoff: Backoff, what: str, retry_after: str | None = None) -> bool:
        """After a failed request: sleep before the next try and return True, or end the session."""
        delay = backoff.failure()
        if delay is None:
            self._fail(f"{what}; gave up after {backoff.max_retries} retries", delete=True)
            return False
        if retry_after is not None:
            delay = max(delay, parse_retry_after(retry_after, delay))
        _log.debug("pollsession %s; retrying in %.2fs", what, delay)
        return not self._stop.wait(delay)

    # ------------------------------------------------------------ opening

    def _open_request(self) -> tuple[ServerConfig, PollAnswer]:
        backoff = self._backoff()
        while True:
            retry_after = None
            failure: Exception
            try:
                response = self._request("GET", read_timeout=self._request_timeout)
            except requests.RequestException as exc:
                failure, what = exc, f"opening failed: {exc}"
            else:
                disposition = classify_status(response.status_code)
                if disposition is Disposition.OK:
                    try:
                        return parse_open_answer(response.content, response.headers.get("Pollsession-Id"))
                    except ProtocolError as exc:
                        failure, what = exc, f"unreadable opening answer: {exc}"
                elif disposition is Disposition.RETRY:
                    # 503 is "too many sessions": worth another try after its Retry-After.
                    failure, what = self._error_of(response), f"opening answered {response.status_code}"
                    retry_after = response.headers.get("Retry-After")
                else:
                    raise self._error_of(response)
            delay = backoff.failure()
            if delay is None:
                raise failure
            if retry_after is not None:
                delay = max(delay, parse_retry_after(retry_after, delay))
            _log.debug("pollsession %s; retrying in %.2fs", what, delay)
            if self._stop.wait(delay):
                raise SessionClosed(self._close_code or 1000, self._close_reason or "")

    # ------------------------------------------------------------ the poller

    def _poll_loop(self) -> None:
        if self._closed_in_hello is not None:
            self._on_remote_close(*self._closed_in_hello)
            return
        assert self._config is not None
        hold = self._config.poll_timeout if self._poll_wait is None else min(self._poll_wait, self._config.poll_timeout)
        wait = format_seconds(hold)
        backoff = self._backoff()
        while True:
            with self._lock:
                if self._state is not _State.OPEN:
                    return
                ack = self._inbound.ack
            params = {"ack": str(ack)} if self._poll_wait is None else {"ack": str(ack), "wait": wait}
            response = self._exchange(backoff, "GET", params=params, read_timeout=hold + self._request_timeout)
            if response is None:
                return
            try:
                answer = parse_poll_answer(response.content)
            except ProtocolError as exc:
                if not self._retry_later(backoff, f"unreadable poll answer: {exc}"):
                    return
                continue
            backoff.reset()
            with self._lock:
                if self._state is not _State.OPEN:
                    return
                fresh = self._inbound.accept(answer.messages)
                if fresh:
                    self._inbox.extend(fresh)
                    self._news.notify_all()
            if answer.closed is not None:
                self._on_remote_close(*answer.closed)
                return

    def _on_remote_close(self, code: int, reason: str) -> None:
        """The server closed: stop sending, let it forget the session, then mark closed."""
        with self._lock:
            if self._state is not _State.OPEN:
                return
            self._set_close(code, reason, _State.CLOSING)
            ack = self._inbound.ack
        # Every message up to ack is in the inbox: a poll with that ack lets the server forget
        # the session now rather than at expiry (PROTOCOL.md section 6). A 410 means an earlier
        # final poll got through.
        self._best_effort("GET", params={"ack": str(ack), "wait": "0"}, attempts=3)
        self._mark_closed()

    # ------------------------------------------------------------ the sender

    def _send_loop(self) -> None:
        assert self._config is not None
        config = self._config
        backoff = self._backoff()
        while True:
            with self._work:
                while self._state is _State.OPEN and not len(self._outbox):
                    self._work.wait()
                if self._state is not _State.OPEN:
                    return
                batch = self._outbox.batch(max_body_size=config.max_body_size, max_count=config.inbox_limit)
            assert batch is not None
            # A lost answer leaves us unsure whether the server took the batch: sending it again is
            # safe, the server drops the seqs it holds. So _exchange retries the same body.
            response = self._exchange(backoff, "POST", body=batch[0], read_timeout=self._request_timeout)
            if response is None:
                return
            try:
                ack = parse_post_answer(response.content)
                with self._lock:
                    if self._outbox.acknowledge(ack):
                        self._news.notify_all()
            except ProtocolError as exc:
                if not self._retry_later(backoff, f"unreadable POST answer: {exc}"):
                    return
                continue
            backoff.reset()
            if response.status_code == 429:
                # The session's inbox is full: the rest goes again after Retry-After, floored at
                # retry_base_delay so that "Retry-After: 0" cannot become a busy loop.
                delay = max(self._retry_base_delay, parse_retry_after(response.headers.get("Retry-After")))
                _log.debug("pollsession inbox full at ack %d; sending the rest in %.2fs", ack, delay)
                if self._stop.wait(delay):
                    return

    def _exchange(
        self,
        backoff: Backoff,
        method: str,
        *,
        read_timeout: float,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> requests.Response | None:
        """One request of a background loop, retried after network errors and 5xx.

        Returns a 2xx or 429 answer, or None when the loop must end (closing,
        retries spent, session gone or refused: then the session is ended here).
        """
        while True:
            try:
                response = self._request(method, params=params, body=body, read_timeout=read_timeout)
            except requests.RequestException as exc:
                if self._stop.is_set() or not self._retry_later(backoff, f"{method} failed: {exc}"):
                    return None
                continue
            disposition = classify_status(response.status_code)
            if disposition in (Disposition.OK, Disposition.THROTTLED):
                return response
            if disposition is Disposition.RETRY:
                what = f"{method} answered {response.status_code}"
                if not self._retry_later(backoff, what, response.headers.get("Retry-After")):
                    return None
            elif disposition is Disposition.GONE:
                # A POST's 410 may mean the server just closed: the poller learns the close code
                # (or meets the 410 itself) and ends the session.
                if method != "POST":
                    ended = parse_gone_answer(response.content)
                    if ended is not None:
                        self._on_forgotten(*ended)
                    else:
                        self._fail(f"the server no longer knows this session: {self._error_of(response)}",
                                   delete=False)
                return None
            else:
                self._fail(f"the server refused a {method}: {self._error_of(response)}", delete=True)
                return None

    # ------------------------------------------------------------ closing

    def _best_effort(self, method: str, *, attempts: int, params: Mapping[str, str] | None = None) -> None:
        """Send a closing request (``DELETE``, final poll) until an answer below 500, at most ``attempts`` times."""
        for attempt in range(attempts):
            try:
                response = self._request(method, params=params, read_timeout=self._request_timeout)
            except requests.RequestException as exc:
                _log.debug("pollsession %s while closing failed: %s", method, exc)
            else:
                if response.status_code < 500:
                    return
            if attempt + 1 < attempts:
                # Short and not cut by _stop, which is set by now: closing must not hang on it.
                time.sleep(min(self._retry_max_delay, self._retry_base_delay * 2**attempt))

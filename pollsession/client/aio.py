"""A WebSocket-like session over HTTP long-polling, for asyncio programs.

::

    from pollsession.client import AsyncClient

    async with AsyncClient("https://example.com/poll") as client:
        await client.send("hello")           # queued at once, delivered in order, exactly once
        await client.send({"type": "join"})  # anything that is not str or bytes goes as JSON
        async for message in client:         # ends when the session closes
            print(message)

The client speaks docs/protocol.md version 1 with :mod:`httpx`. It keeps its
session in the same :class:`~pollsession.client.core.ClientCore` as the
threaded :class:`~pollsession.client.sync.Client` and decides with the same
functions (``classify_answer``, ``exchange_step``, :class:`Backoff`); this
module only moves bytes and waits, so the two clients behave alike by
construction.

Tasks
-----
Once open, a client runs two tasks on the loop that opened it:

- the *poller* holds one long poll (``GET ?ack=N``) at a time, drops messages it
  already has, queues the rest for :meth:`AsyncClient.receive`, and on a close
  does the final poll that lets the server forget the session;
- the *sender* ``POST``\\ s everything queued by :meth:`AsyncClient.send` in
  batches, one request in flight at a time, and sends a batch again until the
  server acknowledges it (the server drops the seqs it already holds).

Use a client from the event loop that opened it only; it is not thread-safe.
Nothing waits by polling a flag: the sender waits on an :class:`asyncio.Event`
(work), readers on a broadcast event replaced at each change (news), and
every backoff sleep on a stop event that cuts it short. :meth:`AsyncClient.close`
(and leaving ``async with``, also by cancellation) ends both tasks before it
returns.

Timeouts
--------
Every request has a deadline for the whole exchange, not only per read: an
answer the server gives at once waits at most ``request_timeout``, a long
poll its hold plus ``max(request_timeout, wire.POLL_MARGIN)``. A dead
connection (a silent proxy, a laptop that slept) costs one retry, never a hang.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any

try:
    import httpx
except ModuleNotFoundError as exc:  # pragma: no cover - exercised by a subprocess test
    if exc.name != "httpx":
        raise
    raise ImportError("pollsession's AsyncClient needs httpx: pip install 'pollsession[async]'") from exc

from ..protocol.errors import SessionClosed
from ..protocol.wire import REQUEST_TIMEOUT
from .answers import ABNORMAL_CLOSURE, Outcome, OutcomeKind, RequestKind, classify_answer
from .core import ClientCore, Phase, Step, end_log_level, exchange_step, open_error
from .state import DEFAULT_MAX_RETRIES, DEFAULT_RETRY_BASE_DELAY, DEFAULT_RETRY_MAX_DELAY, Backoff

__all__ = ["AsyncClient", "ABNORMAL_CLOSURE"]

_log = logging.getLogger("pollsession.client")

class _Answer:
    """What came back for one request: its status, raw body and the two headers a decision reads."""

    __slots__ = ("status", "body", "retry_after", "reason")

    def __init__(self, response: httpx.Response, body: bytes) -> None:
        self.status = response.status_code
        self.body = body
        self.retry_after = response.headers.get("Retry-After")
        self.reason = response.reason_phrase


class AsyncClient:
    """One pollsession session, seen from an asyncio program.

    ``url`` is the mounted endpoint (``https://host/poll``; a query string is
    kept). ``headers`` and ``cookies`` go with every request (authentication,
    for example); ``session`` lets you bring your own :class:`httpx.AsyncClient`
    (proxies, TLS settings, a cookie jar for a sticky load balancer), which the
    client does not close.

    ``poll_wait`` asks the server to hold each poll at most that many seconds
    (None: the server's ``poll_timeout``; it must be > 0). ``request_timeout``
    (default ``wire.REQUEST_TIMEOUT``, 10 s) bounds an exchange the server
    answers at once; a long poll waits its hold plus ``max(request_timeout,
    wire.POLL_MARGIN)``. Failed requests are retried ``max_retries`` (8) times
    in a row, the n-th after a delay jittered into ``[d/2, d)`` with
    ``d = min(retry_max_delay, retry_base_delay * 2**n)`` (0.25 s doubling up
    to 10 s); then the session ends with 1006.

    The constructor makes no request and raises only :class:`ValueError` for
    nonsense settings. Open with ``await client.open()`` or ``async with``;
    always end with :meth:`close` (``async with`` does it), which ends the
    background tasks.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        cookies: Mapping[str, str] | None = None,
        session: httpx.AsyncClient | None = None,
        poll_wait: float | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_base_delay: float = DEFAULT_RETRY_BASE_DELAY,
        retry_max_delay: float = DEFAULT_RETRY_MAX_DELAY,
    ) -> None:
        self._core = ClientCore(poll_wait=poll_wait, request_timeout=request_timeout, max_retries=max_retries,
                                retry_base_delay=retry_base_delay, retry_max_delay=retry_max_delay,
                                random=random.Random().random)
        self._url = url
        self._headers = dict(headers or {})
        self._cookies = dict(cookies or {})
        self._own_http = session is None
        self._http = session if session is not None else httpx.AsyncClient()
        self._request_timeout = request_timeout
        # _work wakes the sender. _news is replaced by a fresh event each time it
        # is set, so every receive() and flush() waiting on it wakes exactly once.
        # _stop cuts backoff sleeps short once closing.
        self._work = asyncio.Event()
        self._news = asyncio.Event()
        self._stop = asyncio.Event()
        self._cleaned = asyncio.Event()  # set once CLOSED: the final poll or DELETE is done
        self._closing = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

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

    async def open(self) -> None:
        """Open the session with ``GET url`` and start the background tasks.

        Network errors, 5xx (503 "too many sessions" included, honouring its
        ``Retry-After``) and malformed answers are retried like any request.
        Raises the matching :class:`pollsession.HttpError` subclass if the
        server refuses (for example :class:`pollsession.Unauthorized` from an
        authentication hook), :class:`pollsession.ProtocolError` if it speaks
        another protocol version, or the last failure (an
        :class:`httpx.TransportError`, :class:`pollsession.HttpError` or
        :class:`pollsession.ProtocolError`) once the retries are spent. After
        it returns, :meth:`send` and :meth:`receive` work. Call it once.
        """
        self._core.begin_open()
        try:
            opened = await self._open_request()
            if not self._core.opened(opened):  # close() ran while the GET was in flight: forget the new session
                await self._best_effort(RequestKind.DELETE, attempts=1)
                raise self._core.closed_error(1000)
        finally:
            self._core.opening = False
            if self._core.phase is Phase.CLOSED and self._own_http:
                await self._http.aclose()  # close() left that to us: we were still using it
        tag = f"{id(self):x}"
        self._tasks = [
            asyncio.create_task(self._poll_loop(), name=f"pollsession-poller-{tag}"),
            asyncio.create_task(self._send_loop(), name=f"pollsession-sender-{tag}"),
        ]

    async def send(self, data: Any) -> None:
        """Queue ``data`` for the server and return at once (it never waits for the network).

        ``str`` goes as text, ``bytes``/``bytearray``/``memoryview`` as binary,
        anything else as JSON. Messages arrive in the order they were queued,
        exactly once, however often a request has to be retried. Invalid values
        raise here, not later, and queue nothing: :class:`ValueError` (NaN, a
        lone surrogate anywhere in a str or a JSON value, ...),
        :class:`TypeError` (not JSON-serializable), or
        :class:`pollsession.MessageTooLarge`. Raises
        :class:`pollsession.SessionClosed` once the session is ending. Await
        :meth:`flush` to wait until the server has everything.
        """
        limits = self._core.require_open()
        self._core.queue(self._core.encode(data, limits))
        self._work.set()

    async def receive(self, timeout: float | None = None) -> Any:
        """Return the next message from the server, in order, waiting if none is there.

        Returns ``str`` for text, ``bytes`` for binary and the decoded value for
        JSON. Raises the builtin :class:`TimeoutError` if nothing arrives within
        ``timeout`` seconds (None waits as long as it takes), and
        :class:`pollsession.SessionClosed` with the close code and reason once
        the session has closed and every message received before was returned.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            ready, message = self._core.next_message()
            if ready:
                return message
            if not await self._wait_for_news(deadline):
                raise TimeoutError(f"no message within {timeout} seconds")

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until the server has acknowledged every message sent so far.

        Raises the builtin :class:`TimeoutError` after ``timeout`` seconds (the
        messages stay queued and are still sent), and
        :class:`pollsession.SessionClosed` if the session ends with messages
        unacknowledged (those are lost: the server closed, or was unreachable).
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._core.flushed():
            if not await self._wait_for_news(deadline):
                raise TimeoutError(
                    f"{self._core.unacknowledged} messages still unacknowledged after {timeout} seconds")

    async def close(self, code: int = 1000, reason: str = "", *, timeout: float | None = 5.0) -> None:
        """End the session: wait for queued messages, send ``DELETE``, end the background tasks.

        First waits up to ``timeout`` seconds (None: as long as the retries
        last; 0: not at all) for the server to acknowledge what :meth:`send`
        queued, so that closing right after sending does not lose messages.
        The server's coroutine then sees a close with code 1000: protocol
        version 1 carries no code in ``DELETE``, so ``code`` and ``reason`` are
        only what :attr:`close_code`, :attr:`close_reason` and the
        :class:`pollsession.SessionClosed` raised by :meth:`receive` report.
        Idempotent; a session the server already closed keeps its code. Even
        when cancelled, it returns (or raises) only once both tasks have ended.
        """
        async with self._closing:  # a second close() waits for the first, then finds nothing to do
            try:
                await self._close(code, reason, timeout)
            finally:
                await self._end_tasks()
                if self._own_http and not self._core.opening:  # else open() closes it when done with it
                    await self._http.aclose()

    async def _close(self, code: int, reason: str, timeout: float | None) -> None:
        if self._core.close_unopened(code, reason):
            self._announce()
            self._stop.set()  # an open() in progress gives up
            return
        if self._core.phase is Phase.OPEN and timeout != 0:
            try:
                await self.flush(timeout)
            except (TimeoutError, SessionClosed):
                pass
        delete = self._core.decide_close(code, reason)
        if delete:
            self._announce()
        self._stop.set()
        if delete:
            # Nothing the tasks do matters any more (a held poll is answered by the DELETE anyway).
            await self._end_tasks()
            await self._best_effort(RequestKind.DELETE, attempts=3)
        elif not self._cleaned.is_set():
            # A background task is doing the cleanup (a final poll, a DELETE after a failure): let it
            # finish, within what its three attempts may take. A poll still held is of no use any more.
            try:
                await asyncio.wait_for(self._cleaned.wait(), 3 * (2 * self._request_timeout + 1.0))
            except TimeoutError:
                pass
        self._mark_closed()

    async def _end_tasks(self) -> None:
        """Cancel both tasks and wait for them, whatever happens to the caller meanwhile."""
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current and not task.done()]
        for task in tasks:
            task.cancel()
        cancelled = False
        while tasks:
            # Each task ends at its next await. If we are cancelled meanwhile, wait all the same
            # (shielded), then pass the cancellation on: no task may outlive close().
            try:
                await asyncio.shield(asyncio.wait(tasks))
            except asyncio.CancelledError:
                cancelled = True
            tasks = [task for task in tasks if not task.done()]
        if cancelled:
            raise asyncio.CancelledError

    async def __aenter__(self) -> AsyncClient:
        """Open the session (unless :meth:`open` was awaited already) and return the client."""
        if self._core.phase is Phase.NEW:
            try:
                await self.open()
            except BaseException:
                await self.close(timeout=0)
                raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        """Close the session (see :meth:`close`); when cancelled, without waiting for queued messages."""
        cancelled = exc_type is not None and issubclass(exc_type, asyncio.CancelledError)
        await self.close(timeout=0 if cancelled else 5.0)

    async def __aiter__(self) -> AsyncIterator[Any]:
        """Iterate over incoming messages; the loop ends when the session closes.

        Check :attr:`close_code` after the loop to tell a normal end from 1006.
        """
        while True:
            try:
                yield await self.receive()
            except SessionClosed:
                return

    def __repr__(self) -> str:
        return f"<pollsession.AsyncClient {self._url} {self._core.phase.value}>"

    # ------------------------------------------------------------ helpers

    def _announce(self) -> None:
        """Something waiters must hear of changed: wake every receive() and flush(), and the sender."""
        news, self._news = self._news, asyncio.Event()
        news.set()
        self._work.set()

    async def _wait_for_news(self, deadline: float | None) -> bool:
        """Wait for the next change until ``deadline`` (loop time; None: forever); False once it passed."""
        news = self._news
        if deadline is None:
            await news.wait()
            return True
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return False
        try:
            await asyncio.wait_for(news.wait(), remaining)
        except TimeoutError:
            return False
        return True

    async def _pause(self, delay: float) -> bool:
        """Sleep ``delay`` seconds unless closing; True if closing cut it short (or had begun)."""
        if self._stop.is_set():
            return True
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
        except TimeoutError:
            return False
        return True

    def _mark_closed(self) -> None:
        if self._core.mark_closed():
            self._announce()
        self._stop.set()
        self._cleaned.set()

    async def _end(self, code: int, reason: str, *, delete: bool) -> None:
        """End the session from a background task without a close from a poll answer (first caller wins).

        ``delete``: tell the server (best effort: it may well be unreachable);
        not after a 410, when it has forgotten the session already.
        """
        if not self._core.decide_close(code, reason):
            return
        self._announce()
        _log.log(end_log_level(code, delete=delete), "pollsession session ended with %d: %s", code, reason)
        self._stop.set()
        if delete:
            await self._best_effort(RequestKind.DELETE, attempts=1)
        self._mark_closed()

    async def _attempt(self, kind: RequestKind, *, read_timeout: float, params: Mapping[str, str] | None = None,
                       body: bytes | None = None, sent: int = 0) -> tuple[Outcome, _Answer | None]:
        """One request, decided by ``classify_answer``; a network failure or timeout is a retry without ``after``."""
        headers = dict(self._headers)
        sid = self._core.sid
        if sid is not None:
            headers["Pollsession-Id"] = sid
        if body is not None:
            headers["Content-Type"] = "application/json"
        timeout = httpx.Timeout(read_timeout, connect=self._request_timeout)
        # build_request merges per-request cookies without httpx's deprecation warning for request(cookies=...).
        request = self._http.build_request(kind.method, self._url, params=params, content=body, headers=headers,
                                           cookies=self._cookies or None, timeout=timeout)
        try:
            # httpx's timeouts are per read; the deadline bounds the whole exchange (a trickling answer too).
            async with asyncio.timeout(self._request_timeout + read_timeout):
                response = await self._http.send(request, follow_redirects=False)
                answer = _Answer(response, response.content)
        except (httpx.HTTPError, TimeoutError) as exc:
            what = str(exc) or type(exc).__name__
            return Outcome(OutcomeKind.RETRY, reason=f"{kind.value} failed: {what}"), None
        outcome = classify_answer(kind, answer.status, response.headers, answer.body, sent=sent)
        if outcome.kind is OutcomeKind.RETRY:
            _log.debug("pollsession %s", outcome.reason)
        return outcome, answer

    # ------------------------------------------------------------ opening

    async def _open_request(self) -> Outcome:
        backoff = self._core.backoff()
        while True:
            outcome, answer = await self._attempt(RequestKind.OPEN, read_timeout=self._request_timeout)
            if outcome.kind is OutcomeKind.OK:
                return outcome
            delay = None if outcome.kind is OutcomeKind.CLOSE else backoff.retry(outcome.after)
            if delay is None:  # refused, or the last failure, as the caller knows it
                if answer is None:
                    error = open_error(outcome, None, None, None, "")
                else:
                    error = open_error(outcome, answer.status, answer.body, answer.retry_after, answer.reason)
                raise error if error is not None else httpx.ConnectError(outcome.reason)
            if await self._pause(delay):
                raise self._core.closed_error(1000)

    # ------------------------------------------------------------ the poller

    async def _poll_loop(self) -> None:
        hello = self._core.closed_in_hello
        if hello is not None:
            await self._on_remote_close(hello)
            return
        read_timeout = self._core.poll_read_timeout()
        backoff = self._core.backoff()
        while True:
            params = self._core.poll_params()
            if params is None:
                return
            outcome = await self._exchange(backoff, RequestKind.POLL, params=params, read_timeout=read_timeout)
            if outcome is None or self._core.phase is not Phase.OPEN:
                return
            if self._core.deliver(outcome):
                self._announce()
            if outcome.closed is not None:
                await self._on_remote_close(outcome)
                return

    async def _on_remote_close(self, outcome: Outcome) -> None:
        """The server closed: stop sending, let it forget the session, then mark closed."""
        assert outcome.closed is not None
        if not self._core.decide_close(outcome.closed.code, outcome.closed.reason):
            return
        self._announce()
        # Every message up to ack is in the inbox: a poll with that ack lets the server forget
        # the session now rather than at expiry (docs/protocol.md section 8). A 410 means an
        # earlier final poll got through.
        await self._best_effort(RequestKind.POLL, params=self._core.final_poll_params(), attempts=3)
        self._mark_closed()

    # ------------------------------------------------------------ the sender

    async def _send_loop(self) -> None:
        backoff = self._core.backoff()
        throttle = self._core.backoff(unlimited=True)  # 429s: the server is alive, never give up
        while True:
            while not self._core.has_work():
                self._work.clear()
                await self._work.wait()
            batch = self._core.next_batch()
            if batch is None:
                return
            # A lost answer leaves us unsure whether the server took the batch: sending it again is
            # safe, the server drops the seqs it holds. So _exchange retries the same body.
            body, sent = batch
            outcome = await self._exchange(backoff, RequestKind.PUSH, body=body, sent=sent,
                                           read_timeout=self._request_timeout)
            if outcome is None:
                return
            assert outcome.ack is not None
            if self._core.acknowledge(outcome.ack):
                self._announce()
            if outcome.kind is OutcomeKind.OK:
                throttle.reset()
                continue
            # 429: the session's inbox is full; the rest goes again after max(Retry-After, backoff).
            delay = throttle.retry(outcome.after)
            assert delay is not None
            _log.debug("pollsession inbox full at ack %d; sending the rest in %.2fs", outcome.ack, delay)
            if await self._pause(delay):
                return

    async def _exchange(self, backoff: Backoff, kind: RequestKind, *, read_timeout: float,
                        params: Mapping[str, str] | None = None, body: bytes | None = None,
                        sent: int = 0) -> Outcome | None:
        """One request of a background loop, retried while :func:`exchange_step` says retry.

        Returns an ok outcome (or, for a push, a throttled one), or None when
        the loop must end (closing, retries spent, or the session ended here).
        """
        while True:
            outcome, answer = await self._attempt(kind, params=params, body=body, sent=sent,
                                                  read_timeout=read_timeout)
            decision = exchange_step(kind, outcome, None if answer is None else answer.status)
            if decision.step is Step.USE:
                backoff.reset()
                return outcome
            if decision.step is Step.END:
                assert outcome.code is not None
                await self._end(outcome.code, outcome.reason, delete=decision.delete)
                return None
            if decision.step is Step.STOP or self._stop.is_set():
                return None
            delay = backoff.retry(outcome.after)
            if delay is None:
                await self._end(ABNORMAL_CLOSURE, f"{outcome.reason}; gave up after {backoff.max_retries} retries",
                                delete=True)
                return None
            if await self._pause(delay):
                return None

    # ------------------------------------------------------------ closing

    async def _best_effort(self, kind: RequestKind, *, attempts: int,
                           params: Mapping[str, str] | None = None) -> None:
        """Send a closing request (``DELETE``, final poll) until it is not to be retried, at most ``attempts`` times."""
        backoff = self._core.backoff()
        for attempt in range(attempts):
            outcome, _ = await self._attempt(kind, params=params, read_timeout=self._request_timeout)
            if outcome.kind is not OutcomeKind.RETRY:
                return
            _log.debug("pollsession %s while closing", outcome.reason)
            delay = backoff.failure()
            if delay is None or attempt + 1 == attempts:
                return
            # Short and not cut by _stop, which is set by now: closing must not hang on it.
            await asyncio.sleep(min(delay, 1.0))

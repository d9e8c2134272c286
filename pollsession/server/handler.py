"""``HttpHandler``: one session target, speaking the protocol for every framework.

A request goes through two stages. In the framework's thread the handler
runs every check that needs no session (probe, origin, method, session id,
media type, body size and shape; ``protocol.requests``), and answers at once when one
fails. What is left is a coroutine that it hands to its event-loop thread
(``EventLoopThread.submit``), where the registry applies it to the session
and the answer is built. Errors become responses in one place,
:func:`error_response`.

Thread-safety
-------------

``handle_request`` may be called from any number of framework threads at once
(never from the handler's own loop thread); ``handle_request_async`` from any
other running event loop, such as Tornado's. ``submit`` is the one way for
application code in other threads to run a coroutine next to the sessions.
``close`` is idempotent and safe from any thread but the loop's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from ..protocol.config import Settings
from ..protocol.errors import BadRequest, Forbidden, HttpError, ServiceUnavailable, UnknownSession
from ..protocol.http import HttpContext, HttpResponse, RequestInfo
from ..protocol.messages import encode_outgoing
from ..protocol.origins import HostPolicy, OriginPolicy
from ..protocol.requests import ALLOW, SESSION_HEADER, Delete, Open, Operation, Poll, Preflight, Push, is_probe, parse_operation
from ..protocol.wire import DEFAULT_LIMITS, SUPERSEDED_PARTS, Closed, PollAnswer, join_object, limits_fields, open_answer_parts
from .backend import Backend, Forwardable, LocalBackend, LocalSide
from .loop import EventLoopThread, LoopStopped
from .registry import Registry, Target
from .session import Session
from .session_handler import SessionHandler

__all__ = ["HttpHandler", "AuthHook", "ClientKey", "error_response", "poll_again_response"]

logger = logging.getLogger("pollsession")
T = TypeVar("T")

AuthHook = Callable[[RequestInfo], Any]
"""``authenticate(request)``: return an identity (any value) to accept, raise
``Unauthorized``/``Forbidden`` (or return ``False``) to refuse. It may be a
plain function, run in the framework's request thread, or an ``async`` one,
run on the handler's loop."""

ClientKey = Callable[[RequestInfo], "str | None"]
"""``client_key(request)``: the key that names a client for the per-client
limits (``max_sessions_per_client``, ``open_rate_limit``); by default the
client address. Behind a proxy, derive it from the header your proxy sets.
Return None to exempt a request."""

_THREAD_MARGIN = 60.0
"""Seconds a framework thread waits beyond ``poll_timeout`` for the loop's answer to any request
(a slow async authentication hook, a busy loop) before it answers 503; only a stuck loop reaches it."""

_JSON_HEADERS = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]


def _answer_response(parts: Iterable[bytes], headers: Iterable[tuple[str, str]] = ()) -> HttpResponse:
    """A 200 JSON answer, joined in one copy from pieces encoded once (``protocol.wire``)."""
    return HttpResponse(200, [*_JSON_HEADERS, *headers], join_object(parts))


def _default_client_key(request: RequestInfo) -> str | None:
    return request.client_address


def _accepted(identity: Any) -> Any:
    """What an authentication hook returned, unless it refused with ``False``."""
    if identity is False:
        raise Forbidden("the authentication hook refused the session")
    return identity


def poll_again_response() -> HttpResponse:
    """An empty poll answer: the client polls again at once with the same ack (nothing is lost).

    The answer to a superseded poll, and to a poll its forwarding worker stops
    waiting for because it is shutting down.
    """
    return _answer_response(SUPERSEDED_PARTS)


def error_response(error: HttpError) -> HttpResponse:
    """A refusal as the protocol's JSON error response; the error renders its own status, headers and body.

    Public for adapters, which answer the errors they find themselves (a
    body the framework could not read, say) exactly as the core would.
    """
    return HttpResponse(error.status, [*_JSON_HEADERS, *error.headers()], error.body().encode(),
                        routine=error.is_routine())


class HttpHandler:
    """Serves one session target: mount one handler at one URL of your app.

    ``target`` is an ``async def`` taking a :class:`~pollsession.Session`; it
    runs as one task per session on the handler's own event-loop thread,
    started on first use. Every tunable is keyword-only:

    * ``poll_timeout`` (25.0 s): longest hold of a long poll.
    * ``session_timeout`` (60.0 s): a session with no request for this long expires (1001).
    * ``cleanup_interval`` (1.0 s): how often the expiry timer runs.
    * ``shutdown_timeout`` (5.0 s): how long ``close()`` waits for coroutines before cancelling them.
    * ``allowed_origins`` (none): shell-style patterns of cross-origin sites allowed, e.g. ``"https://*.example.com"``.
    * ``check_origin`` (None): a callable ``origin -> bool`` replacing ``allowed_origins``.
    * ``allow_credentials`` (False): send ``Access-Control-Allow-Credentials: true`` to allowed origins.
    * ``max_sessions`` (10,000): open (and closed, not yet forgotten) sessions; past it, 503.
    * ``max_message_size`` (1 MiB) and ``max_body_size`` (4 MiB): 413 past them.
    * ``inbox_limit`` (64): messages pushed and not yet read by the coroutine; past it, 429.
    * ``outbox_limit`` (1024): messages sent and not yet acknowledged; past it, ``send`` waits.
    * ``max_inbox_bytes`` and ``max_outbox_bytes`` (None: ``max_body_size``): the same
      bounds in bytes of compact message data (inbox) and of wire form
      (outbox); one message always fits an empty box.
    * ``max_held_polls`` (32): for blocking callers of ``handle_request`` (Flask,
      WSGI): at most this many framework threads wait in a held poll at once;
      later polls are answered at once, so POSTs and opens still get threads.
    * ``max_sessions_per_client`` (None) and ``open_rate_limit`` (None, or
      ``(opens, seconds)``): opt-in limits per ``client_key`` (default: the
      client address); past them, 503 with ``Retry-After``.
    * ``client_key`` (None): a :data:`ClientKey` naming the client of a request.
    * ``open_timeout`` (None: ``session_timeout``): a session with no request
      since its open expires after this long.
    * ``allowed_hosts`` (None: any): shell-style patterns of the ``Host``
      names served, against DNS rebinding; another host answers 400.
    * ``retry_after`` (1 s): the ``Retry-After`` of 429 and 503 answers.
    * ``preflight_max_age`` (600 s): ``Access-Control-Max-Age`` of preflight answers.
    * ``authenticate`` (None): an :data:`AuthHook` that sees the opening request.
    * ``clock`` (``time.monotonic``): the clock of expiry, injectable for tests.
    * ``use_running_loop`` (False): run the sessions on the event loop of the
      first request that reaches the handler (Tornado's), not on a thread of
      their own, which saves two thread hand-offs per request. Close it from
      that loop with ``await handler.aclose()``, or from another thread with
      ``close()``.
    * ``backend`` (None: one process, ``LocalBackend``): where sessions live
      when several workers serve one target, e.g.
      ``pollsession.backends.redis.RedisBackend``: any worker then answers any
      request (it forwards to the session's owner), and broadcasts,
      ``send_to``, ``session_count`` and ``max_sessions`` cover every worker.
    """

    def __init__(
        self,
        target: Target | type[SessionHandler],
        *,
        poll_timeout: float = DEFAULT_LIMITS.poll_timeout,
        session_timeout: float = DEFAULT_LIMITS.session_timeout,
        cleanup_interval: float = 1.0,
        shutdown_timeout: float = 5.0,
        allowed_origins: Iterable[str] = (),
        check_origin: Callable[[str], bool] | None = None,
        allow_credentials: bool = False,
        max_sessions: int = 10_000,
        max_message_size: int = DEFAULT_LIMITS.max_message_size,
        max_body_size: int = DEFAULT_LIMITS.max_body_size,
        inbox_limit: int = DEFAULT_LIMITS.inbox_limit,
        outbox_limit: int = 1024,
        max_inbox_bytes: int | None = None,
        max_outbox_bytes: int | None = None,
        max_held_polls: int = 32,
        max_sessions_per_client: int | None = None,
        open_rate_limit: tuple[int, float] | None = None,
        client_key: ClientKey | None = None,
        open_timeout: float | None = None,
        allowed_hosts: Iterable[str] | None = None,
        retry_after: int = 1,
        preflight_max_age: int = 600,
        authenticate: AuthHook | None = None,
        clock: Callable[[], float] = time.monotonic,
        use_running_loop: bool = False,
        backend: Backend | None = None,
    ) -> None:
        coroutine_function: Target
        if isinstance(target, type) and issubclass(target, SessionHandler):
            coroutine_function = target.serve
        elif callable(target) and not isinstance(target, type):
            coroutine_function = target
        else:
            raise TypeError(f"target must be an async function taking a Session, or a SessionHandler "
                            f"subclass, got {target!r}")
        self.settings = Settings(
            poll_timeout=poll_timeout,
            session_timeout=session_timeout,
            cleanup_interval=cleanup_interval,
            shutdown_timeout=shutdown_timeout,
            max_sessions=max_sessions,
            max_message_size=max_message_size,
            max_body_size=max_body_size,
            inbox_limit=inbox_limit,
            outbox_limit=outbox_limit,
            max_inbox_bytes=max_inbox_bytes,
            max_outbox_bytes=max_outbox_bytes,
            max_held_polls=max_held_polls,
            max_sessions_per_client=max_sessions_per_client,
            open_rate_limit=open_rate_limit,
            open_timeout=open_timeout,
            retry_after=retry_after,
            preflight_max_age=preflight_max_age,
            clock=clock,
        )
        self._origins = OriginPolicy(
            allowed_origins, check_origin, allow_credentials=allow_credentials, max_age=preflight_max_age
        )
        self._hosts = HostPolicy(allowed_hosts)
        self._authenticate = authenticate
        self._client_key = client_key or _default_client_key
        self._backend = backend if backend is not None else LocalBackend()
        self._backend.bind(self.settings.poll_timeout)
        self._backend_started = False
        self._backend_lock: asyncio.Lock | None = None
        self._registry = Registry(coroutine_function, self.settings, backend=self._backend)
        # The open answer's limits, encoded once.
        self._open_limits = limits_fields(self.settings.limits())
        # Threads blocked in a held poll (handle_request), under _lock.
        self._blocked_polls = 0
        self._warned_held_polls = False
        # How each session ended, set once by the shutdown (then only read).
        self._final_closes: dict[str, tuple[str, Closed]] = {}
        self._loop_thread = EventLoopThread(borrow_running_loop=use_running_loop)
        self._use_running_loop = use_running_loop
        self._inflight: set[asyncio.Task[Any]] = set()
        self._lock = threading.Lock()
        # _closing: close() has begun (the loop still answers, and refuses opens);
        # _closed: the loop is done and _final_closes is set; both under _lock.
        self._closing = False
        self._closed = False

    # -- serving requests ----------------------------------------------------

    def handle_request(self, context: HttpContext) -> HttpResponse:
        """Answer one request, blocking the calling thread while a poll is held."""
        if self._loop_thread.in_loop_thread():
            raise RuntimeError("handle_request() cannot be called from the handler's own loop thread")
        cors, step = self._start(context, blocking=True)
        if isinstance(step, HttpResponse):
            return self._finish(step, cors)
        future, holds_thread = step
        try:
            response = future.result(timeout=self.settings.poll_timeout + _THREAD_MARGIN)
        except (concurrent.futures.CancelledError, concurrent.futures.TimeoutError):
            future.cancel()
            response = self._unavailable()
        finally:
            if holds_thread:
                with self._lock:
                    self._blocked_polls -= 1
        return self._finish(response, cors)

    async def handle_request_async(self, context: HttpContext) -> HttpResponse:
        """Answer one request from another event loop without blocking it.

        Cancelling the awaiting task (the client went away) releases a held poll.
        """
        if self._use_running_loop and not self._loop_thread.started:
            self._loop_thread.start()  # take the loop we are called on
        if self._loop_thread.in_loop_thread():  # use_running_loop: no hand-off at all
            cors, direct = self._begin(context)
            return self._finish(direct if isinstance(direct, HttpResponse) else await direct[0], cors)
        cors, step = self._begin(context)
        if isinstance(step, HttpResponse):
            return self._finish(step, cors)
        try:
            answer = self._loop_thread.run_from_loop(step[0])
        except LoopStopped:
            return self._finish(self._unavailable(), cors)
        try:
            response = await answer
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our caller gave up on the request
            response = self._unavailable()  # the handler's loop stopped under the request
        return self._finish(response, cors)

    def _start(
        self, context: HttpContext, *, blocking: bool
    ) -> tuple[list[tuple[str, str]], HttpResponse | tuple[concurrent.futures.Future[HttpResponse], bool]]:
        """An immediate answer, or the future of the answer being made on the loop.

        With the future comes whether it counts against ``max_held_polls``.
        """
        cors, step = self._begin(context, blocking=blocking)
        if isinstance(step, HttpResponse):
            return cors, step
        coroutine, holds_thread = step
        try:
            return cors, (self._loop_thread.submit(coroutine), holds_thread)
        except LoopStopped:
            if holds_thread:
                with self._lock:
                    self._blocked_polls -= 1
            return cors, self._unavailable()

    def _begin(
        self, context: HttpContext, *, blocking: bool = False
    ) -> tuple[list[tuple[str, str]], HttpResponse | tuple[Coroutine[Any, Any, HttpResponse], bool]]:
        """Checks that need no session; an immediate answer, or the coroutine to run on the loop."""
        method = context.method().upper()
        origin = context.header("Origin") or ""
        host = context.header("Host")
        cross_origin = not self._origins.is_same_origin(origin, context.scheme(), host)
        allowed = not cross_origin or self._origins.is_allowed_origin(origin)
        cors = self._origins.cors_headers(origin, preflight=method == "OPTIONS") if cross_origin and allowed else []
        if is_probe(method, context):  # answers whatever else the request carries
            return cors, HttpResponse(200, [("Content-Type", "text/plain"), ("Cache-Control", "no-store")], b"ok")
        if not self._hosts.is_allowed_host(host):
            return [], error_response(BadRequest(f"host {(host or '')[:100]!r} is not served here",
                                                 code="host_not_allowed"))
        if not allowed:
            return [], error_response(Forbidden(f"origin {origin[:100]} is not allowed", code="origin_not_allowed"))
        if self._origins.is_cross_site_refused(context.header("Sec-Fetch-Site"), context.header("Sec-Fetch-Mode"),
                                               cross_origin):
            return [], error_response(Forbidden("a request from another site must be a CORS request from an "
                                                "allowed origin", code="cross_site_request"))
        try:
            operation = parse_operation(context, method, self.settings)
            if isinstance(operation, Preflight):
                return cors, HttpResponse(204, [] if cors else [("Allow", ALLOW)])
            if self._closed:
                return cors, self._after_close(operation, context.path())
            if isinstance(operation, Delete) and operation.sid is None:
                return cors, HttpResponse(204)
            if isinstance(operation, Open):
                request = RequestInfo.from_context(context)
                identity = self._run_auth(request)
                client = self._run_client_key(request)
                return cors, (self._serve(operation, context.path(), request, identity, client), False)
            holds_thread = False
            if blocking and isinstance(operation, Poll) and operation.wait != 0:
                operation, holds_thread = self._bound_blocked_polls(operation)
            return cors, (self._serve(operation, context.path()), holds_thread)
        except HttpError as error:
            return cors, error_response(error)

    def _bound_blocked_polls(self, poll: Poll) -> tuple[Poll, bool]:
        """Count a thread about to block in a held poll; past ``max_held_polls``, make it a short poll."""
        with self._lock:
            if self._blocked_polls < self.settings.max_held_polls:
                self._blocked_polls += 1
                return poll, True
            warn = not self._warned_held_polls
            self._warned_held_polls = True
        if warn:
            logger.warning(
                "pollsession: %d framework threads are holding long polls (max_held_polls); further polls are "
                "answered at once so that other requests still get threads. Give the server more threads than "
                "max_held_polls (gunicorn -k gthread --threads N), or use the Tornado adapter.",
                self.settings.max_held_polls,
            )
        return Poll(poll.sid, poll.ack, 0.0, poll.error), False

    def _after_close(self, operation: Operation, path: str) -> HttpResponse:
        """Answer a request that arrives after ``close()``, telling a known session its close at once."""
        sid = getattr(operation, "sid", None)
        final = self._final_closes.get(sid) if isinstance(sid, str) else None
        if final is None or final[0] != path or isinstance(operation, Open):
            if isinstance(operation, Delete):
                return HttpResponse(204)
            return self._unavailable()
        close = final[1]
        if isinstance(operation, Poll):
            return _answer_response([PollAnswer(closed=close).encode()])
        if isinstance(operation, Push):
            return error_response(UnknownSession("the session is closed", code="session_closed", closed=close))
        return HttpResponse(204)

    def _run_auth(self, request: RequestInfo) -> Any:
        if self._authenticate is None:
            return None
        try:
            identity = self._authenticate(request)
        except HttpError:
            raise
        except Exception:
            logger.exception("pollsession: the authentication hook raised")
            raise HttpError("internal server error") from None
        return _accepted(identity)

    def _run_client_key(self, request: RequestInfo) -> str | None:
        try:
            return self._client_key(request)
        except Exception:
            logger.exception("pollsession: the client_key callable raised")
            raise HttpError("internal server error") from None

    async def _serve(
        self, operation: Operation, path: str, request: RequestInfo | None = None, identity: Any = None,
        client: str | None = None,
    ) -> HttpResponse:
        """Apply one operation to the sessions; runs on the loop."""
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        try:
            if isinstance(operation, (Poll, Push, Delete)) and operation.sid is not None and not (
                    self._backend.is_local(operation.sid)):
                await self._start_backend()
                return await self._backend.forward(operation, path)  # another worker's session
            if isinstance(operation, Open):
                assert request is not None
                if inspect.isawaitable(identity):
                    identity = _accepted(await identity)
                await self._start_backend()
                sid, messages, closed = await self._registry.open(request, identity, client)
                return _answer_response(open_answer_parts(sid, self._open_limits, messages, closed),
                                        [(SESSION_HEADER, sid)])
            if isinstance(operation, Poll):
                parts = await self._registry.poll(operation.sid, path, operation.ack, operation.wait, operation.error)
                await self._backend.settle()  # a final poll forgot its session: every worker counts that now
                return _answer_response(parts)
            if isinstance(operation, Push):
                answer = self._registry.push(operation.sid, path, operation.batch, operation.error)
                return _answer_response([answer.encode()])
            assert isinstance(operation, Delete) and operation.sid is not None
            self._registry.delete(operation.sid, path)
            await self._backend.settle()
            return HttpResponse(204)
        except HttpError as error:
            return error_response(error)
        except Exception:
            logger.exception("pollsession: internal error while serving %s", type(operation).__name__)
            return error_response(HttpError("internal server error"))
        finally:
            self._inflight.discard(task)

    async def _start_backend(self) -> None:
        """Start the backend once, before the first session opens (503 while it cannot start)."""
        if self._backend_started:
            return
        if self._backend_lock is None:
            self._backend_lock = asyncio.Lock()
        async with self._backend_lock:
            if not self._backend_started:
                await self._backend.start(LocalSide(self._serve_forwarded, self._registry.broadcast,
                                                    self._registry.close_all, self._registry.send_to))
                self._backend_started = True

    async def _serve_forwarded(self, operation: Forwardable, path: str) -> HttpResponse:
        """An operation another worker received for a session of this one (never forwarded again)."""
        if operation.sid is not None and not self._backend.is_local(operation.sid):
            return error_response(UnknownSession("unknown, expired or closed session"))
        return await self._serve(operation, path)

    def _finish(self, response: HttpResponse, cors: list[tuple[str, str]]) -> HttpResponse:
        if cors:
            response.headers.extend(cors)
        return response

    def _unavailable(self) -> HttpResponse:
        return error_response(
            ServiceUnavailable("the server is shutting down", retry_after=self.settings.retry_after,
                               code="shutting_down")
        )

    # -- the loop and the sessions ---------------------------------------------

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the handler's loop from any thread; the documented way in."""
        return self._loop_thread.submit(coro)

    @property
    def uses_running_loop(self) -> bool:
        """Whether the sessions run on the loop of the first request (``use_running_loop=True``)."""
        return self._use_running_loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The handler's event loop (started if needed). From other threads, use ``submit``."""
        return self._loop_thread.loop

    # -- reaching sessions from application code ---------------------------

    async def broadcast(self, data: Any, *, room: str | None = None, exclude: Session | str | None = None) -> int:
        """Send ``data`` to every open session, or to the members of ``room``; await on the handler's loop.

        ``exclude`` (a session or an id) is skipped. Every member gets every
        broadcast once, in the same order as the others; a member whose
        outbox is full is closed with 1008 instead of holding everyone up.
        Returns how many sessions got the message (with a backend of several
        workers, ``RedisBackend``, how many workers it reached: each delivers
        it to its own members, in the same order everywhere). From another
        thread, use :meth:`broadcast_threadsafe`.
        """
        self._require_loop_thread("broadcast")
        message = encode_outgoing(data, self.settings.max_message_size)
        excluded = exclude.id if isinstance(exclude, Session) else exclude
        await self._start_backend()
        return await self._backend.broadcast(message, room, excluded)

    def broadcast_threadsafe(
        self, data: Any, *, room: str | None = None, exclude: Session | str | None = None
    ) -> concurrent.futures.Future[int]:
        """:meth:`broadcast` from any other thread (a Flask view, a worker); returns its future."""
        return self.submit(self.broadcast(data, room=room, exclude=exclude))

    async def send_to(self, sid: str, data: Any) -> None:
        """Send ``data`` to one session by id, waiting for room like ``Session.send``.

        Raises ``KeyError`` for an unknown id and ``SessionClosed`` for a closed session.
        """
        self._require_loop_thread("send_to")
        if not self._backend.is_local(sid):  # another worker's session
            await self._start_backend()
            await self._backend.send_to(sid, encode_outgoing(data, self.settings.max_message_size))
            return
        await self._registry.send_to(sid, encode_outgoing(data, self.settings.max_message_size))

    def get_session(self, sid: str) -> Session | None:
        """The open or closing session with this id, if any. Use the session on the loop only."""
        return self._call_on_loop(self._registry.get, sid)

    def session_count(self) -> int:
        """How many sessions the target holds (closed ones count until forgotten), on every worker.

        With a backend of several workers (``RedisBackend``) this asks Redis:
        call it from any thread but the handler's loop (on the loop,
        ``await handler.count_sessions()``).
        """
        if isinstance(self._backend, LocalBackend):
            return self._call_on_loop(len, self._registry)
        if self._loop_thread.in_loop_thread():
            raise RuntimeError("session_count() would block the handler's loop: use 'await handler.count_sessions()'")
        return self.submit(self.count_sessions()).result()

    async def count_sessions(self) -> int:
        """:meth:`session_count` for code on the handler's loop."""
        self._require_loop_thread("count_sessions")
        await self._start_backend()
        return await self._backend.count_sessions(len(self._registry))

    def _call_on_loop(self, function: Callable[..., T], *args: Any) -> T:
        if self._loop_thread.in_loop_thread() or not self._loop_thread.started:
            return function(*args)

        async def call() -> T:
            return function(*args)

        return self.submit(call()).result()

    def _require_loop_thread(self, what: str) -> None:
        if not self._loop_thread.in_loop_thread():
            raise RuntimeError(
                f"{what}() must be awaited on the handler's loop; from another thread use "
                f"handler.submit(handler.{what}(...)) or broadcast_threadsafe()"
            )

    def expire_idle_sessions(self, now: float | None = None) -> list[str]:
        """Run expiry now (the timer does this every ``cleanup_interval``); return the expired ids."""
        return self._call_on_loop(self._registry.expire, now)

    def close(self) -> None:
        """Close every session with 1001, answer held polls, and join the loop thread. Idempotent.

        Call it from any thread but the handler's loop; on that loop (with
        ``use_running_loop``), ``await handler.aclose()`` instead.
        """
        if self._loop_thread.in_loop_thread():
            raise RuntimeError("close() would block the handler's own loop: use 'await handler.aclose()' there")
        if not self._begin_closing():
            return
        try:
            if self._loop_thread.started:
                self.submit(self._shutdown()).result(timeout=self.settings.shutdown_timeout + 10)
        except Exception:
            logger.exception("pollsession: error while closing sessions")
        finally:
            self._end_closing()
        self._loop_thread.stop()

    async def aclose(self) -> None:
        """:meth:`close` for async code: on the handler's own loop, or on any other. Idempotent."""
        if not self._begin_closing():
            return
        try:
            if self._loop_thread.in_loop_thread():
                await self._shutdown()
            elif self._loop_thread.started:
                await asyncio.wrap_future(self.submit(self._shutdown()))
        except Exception:
            logger.exception("pollsession: error while closing sessions")
        finally:
            self._end_closing()
        await asyncio.to_thread(self._loop_thread.stop)

    def _begin_closing(self) -> bool:
        with self._lock:
            if self._closing:
                return False
            self._closing = True
            return True

    def _end_closing(self) -> None:
        """From now on requests are answered from ``_final_closes``, without the loop."""
        with self._lock:
            self._closed = True

    async def _shutdown(self) -> None:
        self._final_closes = await self._registry.shutdown(self.settings.shutdown_timeout)
        if self._backend_started:
            await self._backend.drain()  # polls held for us by other workers: their clients ask again elsewhere
        current = asyncio.current_task()
        pending = {task for task in self._inflight if task is not current}
        if pending:
            await asyncio.wait(pending, timeout=self.settings.shutdown_timeout)
        if self._backend_started:
            await self._backend.close()  # after the sessions' last answers went out

    def __enter__(self) -> HttpHandler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

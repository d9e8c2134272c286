"""``RedisBackend``: many workers, no sticky sessions, through Redis (``pip install pollsession[redis]``).

A session is owned by the worker that opened it: its coroutine and its
protocol state live there, and its id begins with the owner's worker id. A
request that reaches another worker is checked and parsed there as usual,
then forwarded to the owner over Redis pub/sub (``frames``); the owner
applies it to the session exactly as a local request and publishes the
answer back. Every protocol rule is applied once, by the owner.

Failures, and what a client sees:

* Every worker announces itself every ``liveness_interval`` (1 s): an
  "alive" key for three of them, a "known" key for ``worker_ttl``.
* The owner is not subscribed but alive (its connection dropped, it is
  resubscribing): 503 ``owner_unavailable``, retried; the session goes on.
* The owner is dead (killed: silent for three heartbeats): a poll or push of
  its sessions answers 410 with the close ``{"code": 1012, "reason":
  "service restart"}`` (:data:`OWNER_GONE`); a held forwarded poll notices
  within a second of that. It stopped cleanly: 410 with its 1001
  (:data:`OWNER_STOPPED`), at once. After ``worker_ttl`` its ids are unknown
  (plain 410).
* The owner does not answer in time (``forward_timeout`` beyond a poll's
  hold): 503 with ``Retry-After``. Every request of the protocol is
  idempotent, so the client's retry loses and doubles nothing.
* Redis is unreachable: requests that need it answer 503 ``backend_unavailable``
  with ``Retry-After``; sessions whose requests reach their owner directly go
  on; the subscription reconnects by itself.
* The client goes away during a forwarded poll: the forwarder tells the
  owner, which releases the held poll at once.

Broadcasts go through Redis too, to every worker (the one that broadcasts
included), each delivering to its own members: Redis numbers each broadcast
as it publishes it and delivers them in one order to every subscriber, so
every member on every worker sees the same order. A worker whose subscription
dropped may have missed broadcasts: when the number it sees next is not the
one after the last it saw, or when it resubscribes to find the counter moved
(or Redis restarted and broadcasts went out before it was back), it closes
its sessions with :data:`MISSED_BROADCAST` (1013) rather than leave a gap.
While Redis is down no broadcast can be published (``broadcast`` raises
``ServiceUnavailable``), so a restart alone closes nothing. :class:`Publisher`
broadcasts from a process that holds no sessions (a cron job, a Celery task).

``max_sessions`` and ``session_count()`` cover every worker: each worker keeps
its count in Redis (a key with a TTL, refreshed by its heartbeat, so a killed
worker's sessions stop counting when it expires). Opens racing on several
workers at the limit may pass it by their number.

``send_to`` reaches a session on any worker: the owner sends it, waiting for
room as ``Session.send`` does; a session whose owner is gone raises
``SessionClosed`` with 1012.

Thread-safety: the backend runs on its handler's loop; give each handler its
own backend.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError("RedisBackend needs redis-py: pip install 'pollsession[redis]'") from exc

from ..protocol.errors import HttpError, ServiceUnavailable, SessionClosed, UnknownSession
from ..protocol.http import HttpResponse
from ..protocol.requests import Delete, Poll
from ..protocol.wire import Closed
from ..protocol.messages import Outgoing, encode_outgoing
from ..server.backend import Backend, Forwardable, LocalSide
from ..server.handler import error_response, poll_again_response
from .frames import (
    Answer,
    Batch,
    Broadcast,
    Cancel,
    FrameError,
    Forwarded,
    SendTo,
    decode,
    decode_closed,
    encode_answer,
    encode_batch,
    encode_broadcast,
    encode_cancel,
    encode_operation,
    encode_send,
)

__all__ = ["RedisBackend", "Publisher", "OWNER_GONE", "OWNER_STOPPED", "MISSED_BROADCAST"]

logger = logging.getLogger("pollsession.redis")

OWNER_GONE = Closed(1012, "service restart")
"""The close a client learns when the worker that owned its session is gone."""

OWNER_STOPPED = Closed(1001, "server shutting down")
"""The close a client learns when the worker that owned its session shut down cleanly (as it told its clients)."""

DRAIN_GRACE = 0.5
"""Seconds a stopping worker waits for the answers of the polls it forwarded (an owner stopping too
sends its close) before it answers the rest empty."""

_STOPPED = b"stopped"  # the value of a worker's "known" key once it shut down cleanly

MISSED_BROADCAST = Closed(1013, "missed a broadcast; open a new session")
"""The close of this worker's sessions when it may have missed a broadcast (its Redis subscription dropped)."""

# Number the broadcast and publish it in one step, so the number order is the delivery order.
_BROADCAST_SCRIPT = """
local n = redis.call('INCR', KEYS[1])
local receivers = redis.call('PUBLISH', KEYS[2], '{"n":' .. n .. ',' .. string.sub(ARGV[1], 2))
return receivers
"""

# The sessions of every live worker, and forgetting the dead (whose count key expired).
_COUNT_SCRIPT = """
local total = 0
for _, worker in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if worker ~= ARGV[1] then
    local count = redis.call('GET', ARGV[2] .. worker .. ':sessions')
    if count then total = total + tonumber(count) else redis.call('SREM', KEYS[1], worker) end
  end
end
return total
"""

_WORKER_ID_LENGTH = 8
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{40}")  # the worker's 8 characters, then token_urlsafe(24)


def _broadcast_channel(name: str) -> str:
    return f"{name}:broadcast"


def _broadcast_number_key(name: str) -> str:
    """The one key of a deployment that outlives its sessions: the number of the last broadcast."""
    return f"{name}:broadcast:number"  # characters of token_urlsafe(6): 48 bits, URL-safe


class RedisBackend(Backend):
    """Forward requests between the workers of one deployment through Redis.

    ``url`` is redis-py's URL (``redis://host:6379/0``). ``name`` separates
    deployments (and targets) sharing one Redis: give every worker of one
    target the same name and a target of its own a different one.
    The handler gives the backend its ``poll_timeout`` (``poll_timeout`` here
    may be left out; given, it must be the handler's). A worker announces
    itself every ``liveness_interval`` (1 s): a worker silent for three of
    them is dead (its sessions end with 1012), and one silent for
    ``worker_ttl`` is forgotten (its session ids become unknown).
    ``max_connections`` bounds the worker's Redis connections (besides its
    subscription); a command past it waits for one to be free.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        name: str = "pollsession",
        poll_timeout: float | None = None,
        forward_timeout: float = 5.0,
        liveness_interval: float = 1.0,
        worker_ttl: float = 120.0,
        retry_after: int = 1,
        max_connections: int = 64,
    ) -> None:
        if not name or any(c in name for c in " \0"):
            raise ValueError(f"name must be a non-empty string without spaces, got {name!r}")
        for label, value in (("poll_timeout", 1.0 if poll_timeout is None else poll_timeout),
                             ("forward_timeout", forward_timeout), ("liveness_interval", liveness_interval),
                             ("worker_ttl", worker_ttl)):
            if not value > 0:
                raise ValueError(f"{label} must be a positive number of seconds, got {value!r}")
        self._url = url
        self._name = name
        self._poll_timeout = poll_timeout
        self._forward_timeout = forward_timeout
        self._liveness_interval = liveness_interval
        self._worker_ttl = worker_ttl
        self._retry_after = retry_after
        if type(max_connections) is not int or max_connections < 2:
            raise ValueError(f"max_connections must be an integer >= 2, got {max_connections!r}")
        self._max_connections = max_connections
        self.worker_id = secrets.token_urlsafe(6)
        self._redis: Any = None
        self._pubsub: Any = None
        self._broadcast_seen = 0  # the number of the last broadcast this worker saw
        self._local_count = 0
        self._count_dirty: asyncio.Event | None = None
        self._counter: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[HttpResponse]] = {}
        self._polls: dict[str, str] = {}  # forwarded polls waiting here: request id -> owner
        self._draining = False
        self._serving: dict[str, asyncio.Task[None]] = {}
        self._told: set[asyncio.Future[int]] = set()
        self._outgoing: list[tuple[str, bytes, asyncio.Future[int]]] = []  # frames for _flush to publish
        self._flushing: asyncio.Task[None] | None = None
        self._liveness: dict[str, tuple[float, asyncio.Future[bool]]] = {}
        self._watches: dict[str, list[Any]] = {}  # owner -> [its "gone" future, how many requests wait for it]
        self._watchers: set[asyncio.Task[None]] = set()
        self._state_lock: asyncio.Lock | None = None
        self._redis_run = ""  # Redis's run_id when this worker subscribed: a restart changes it
        self._subscribed_at = 0.0
        self._last_warning = 0.0

    def __repr__(self) -> str:
        return f"<RedisBackend {self._name} worker {self.worker_id}>"

    # -- names in Redis ------------------------------------------------------

    def _channel(self, worker_id: str) -> str:
        return f"{self._name}:worker:{worker_id}:inbox"

    def _alive_key(self, worker_id: str) -> str:
        """Set for three heartbeats: the worker is up (subscribed, or resubscribing)."""
        return f"{self._name}:worker:{worker_id}:alive"

    def _known_key(self, worker_id: str) -> str:
        """Set for ``worker_ttl``: the worker existed (its sessions end with 1012, not as unknown)."""
        return f"{self._name}:worker:{worker_id}:known"

    def _count_key(self, worker_id: str) -> str:
        return f"{self._name}:worker:{worker_id}:sessions"

    @property
    def _workers(self) -> str:
        return f"{self._name}:workers"

    @property
    def _broadcasts(self) -> str:
        return _broadcast_channel(self._name)

    @property
    def _broadcast_number(self) -> str:
        return _broadcast_number_key(self._name)

    # -- the seam ---------------------------------------------------------------

    def new_session_id(self) -> str:
        return self.worker_id + secrets.token_urlsafe(24)

    def is_local(self, sid: str) -> bool:
        return sid[:_WORKER_ID_LENGTH] == self.worker_id

    def bind(self, poll_timeout: float) -> None:
        if self._poll_timeout is not None and self._poll_timeout != poll_timeout:
            raise ValueError(f"RedisBackend(poll_timeout={self._poll_timeout}) differs from the handler's "
                             f"poll_timeout={poll_timeout}: leave it out, the handler gives it")
        self._poll_timeout = poll_timeout

    @property
    def _client(self) -> Any:
        if self._redis is None:
            raise ServiceUnavailable("the handler is shut down", retry_after=self._retry_after,
                                     code="shutting_down")
        return self._redis

    async def start(self, local: LocalSide) -> None:
        """Subscribe to this worker's channel and the broadcasts, announce the worker; 503 when Redis is unreachable."""
        self._local = local
        # A blocking pool: past max_connections a command waits for a free connection (at most
        # forward_timeout) instead of failing as if Redis were down.
        pool = aioredis.BlockingConnectionPool.from_url(self._url, max_connections=self._max_connections,
                                                        timeout=self._forward_timeout)
        self._redis = aioredis.Redis(connection_pool=pool)
        self._state_lock = asyncio.Lock()
        try:
            await self._announce()
            await self._subscribe()
        except (RedisError, OSError) as exc:
            await self._drop_connections()
            raise self._unreachable(exc) from None
        self._count_dirty = asyncio.Event()
        self._counter = asyncio.create_task(self._publish_count(), name=f"pollsession-redis-count-{self.worker_id}")
        self._listener = asyncio.create_task(self._listen(), name=f"pollsession-redis-{self.worker_id}")
        self._heartbeat = asyncio.create_task(self._beat(), name=f"pollsession-redis-beat-{self.worker_id}")

    async def close(self) -> None:
        """Stop listening and announcing; the worker's keys expire by themselves (its clients then learn 1012)."""
        if self._serving:  # answers to forwarded requests, being published
            await asyncio.wait(set(self._serving.values()), timeout=1.0)
        for task in (self._listener, self._heartbeat, self._counter, *self._serving.values(), *self._watchers):
            if task is not None:
                task.cancel()
        if self._told:
            await asyncio.wait(set(self._told), timeout=1.0)
        if self._flushing is not None:  # what is left unpublished now fails (its senders are gone)
            self._flushing.cancel()
        if self._redis is not None and self._state_lock is not None:
            try:  # this worker's sessions no longer count, and it is not resubscribing: it stopped
                async with self._state_lock:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        pipe.delete(self._count_key(self.worker_id), self._alive_key(self.worker_id))
                        pipe.srem(self._workers, self.worker_id)
                        pipe.set(self._known_key(self.worker_id), _STOPPED, ex=max(1, int(self._worker_ttl)))
                        await pipe.execute()
            except (RedisError, OSError):
                pass
        self._fail_waiting("the handler is shut down")
        await self._drop_connections()

    async def _drop_connections(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        client, self._redis = self._redis, None
        try:
            if pubsub is not None:
                await pubsub.aclose()
            if client is not None:
                await client.aclose()
        except (RedisError, OSError):
            pass

    async def _subscribe(self) -> None:
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self._channel(self.worker_id), self._broadcasts)
        number = await self._redis.get(self._broadcast_number)
        self._broadcast_seen = int(number or 0)
        self._redis_run = str((await self._redis.info("server")).get("run_id", ""))
        self._subscribed_at = time.monotonic()

    def _fail_waiting(self, why: str) -> None:
        """Answers to what this worker forwarded may be lost (its subscription dropped): 503 them all now."""
        for future in self._waiting.values():
            if not future.done():
                future.set_result(error_response(ServiceUnavailable(
                    f"{why}; send the request again", retry_after=self._retry_after, code="backend_unavailable")))

    # -- counting sessions across workers --------------------------------------------

    async def admit(self, limit: int, local_count: int) -> bool:
        """``max_sessions`` over every worker (opens racing on several workers may pass it by their number)."""
        return local_count + await self.count_sessions(0) < limit

    async def count_sessions(self, local_count: int) -> int:
        try:
            others = await self._client.eval(_COUNT_SCRIPT, 1, self._workers, self.worker_id,
                                            f"{self._name}:worker:")
        except (RedisError, OSError) as exc:
            raise self._unreachable(exc) from None
        return local_count + int(others)

    def sessions_changed(self, local_count: int) -> None:
        self._local_count = local_count
        if self._count_dirty is not None:
            self._count_dirty.set()  # written by _publish_count, at most one write in flight

    async def opened(self, local_count: int) -> None:
        self._local_count = local_count
        try:
            await self._write_count()
        except (RedisError, OSError) as exc:
            self._warn(f"pollsession: could not record this worker's session count in Redis ({exc})")
            self.sessions_changed(local_count)

    async def settle(self) -> None:
        if self._count_dirty is not None and self._count_dirty.is_set():
            self._count_dirty.clear()
            try:
                await self._write_count()
            except (RedisError, OSError) as exc:
                self._warn(f"pollsession: could not record this worker's session count in Redis ({exc})")
                self._count_dirty.set()

    async def _publish_count(self) -> None:
        assert self._count_dirty is not None
        while True:
            await self._count_dirty.wait()
            self._count_dirty.clear()
            try:
                await self._write_count()
            except (RedisError, OSError) as exc:
                self._warn(f"pollsession: could not record this worker's session count in Redis ({exc})")
                self._count_dirty.set()
                await asyncio.sleep(1.0)

    async def _write_count(self) -> None:
        await self._announce()

    @property
    def _alive_ttl_ms(self) -> int:
        return max(100, int(3000 * self._liveness_interval))

    # -- broadcasting -------------------------------------------------------------

    async def broadcast(self, message: Outgoing, room: str | None, exclude: str | None) -> int:
        """Publish the broadcast to every worker (this one included); return how many workers it reached."""
        try:
            receivers = await self._client.eval(_BROADCAST_SCRIPT, 2, self._broadcast_number, self._broadcasts,
                                               encode_broadcast(message, room, exclude))
        except (RedisError, OSError) as exc:
            raise self._unreachable(exc) from None
        return int(receivers)

    def _take_broadcast(self, broadcast: Broadcast) -> None:
        # A number at or below the last one seen was published between our SUBSCRIBE and our
        # reading of the counter: we are subscribed to it, it is no gap.
        if broadcast.number > self._broadcast_seen:
            if broadcast.number != self._broadcast_seen + 1:
                self._missed(f"broadcasts {self._broadcast_seen + 1} to {broadcast.number - 1}")
            self._broadcast_seen = broadcast.number
        self._local.deliver(broadcast.message, broadcast.room, broadcast.exclude)

    def _missed(self, what: str) -> None:
        closed = self._local.close_all(MISSED_BROADCAST.code, MISSED_BROADCAST.reason)
        if closed:
            logger.warning("pollsession: worker %s may have missed %s; closed its %d sessions with %d",
                           self.worker_id, what, closed, MISSED_BROADCAST.code)

    # -- forwarding (the worker that received the request) -------------------------

    async def forward(self, operation: Forwardable, path: str) -> HttpResponse:
        if self._draining and isinstance(operation, Poll) and operation.wait != 0:
            # Stopping: ask the owner without holding. One stopping too answers its close; one that
            # stays answers what it has, and the client polls again through another worker.
            operation = dataclasses.replace(operation, wait=0.0)
        if operation.sid is None or not _SESSION_ID.fullmatch(operation.sid):  # not one of ours: no Redis
            return HttpResponse(204) if isinstance(operation, Delete) else error_response(
                UnknownSession("unknown, expired or closed session"))
        owner = operation.sid[:_WORKER_ID_LENGTH]
        budget = self._forward_timeout
        if isinstance(operation, Poll):
            hold = self._poll_timeout or 0.0
            budget += hold if operation.wait is None else min(operation.wait, hold)
        reply = self._channel(self.worker_id)
        return await self._ask(owner, lambda request_id: encode_operation(request_id, reply, path, operation),
                               operation, budget)

    async def _ask(self, owner: str, frame_for: Callable[[str], bytes], operation: Forwardable | None,
                   budget: float) -> HttpResponse:
        """Publish a request to ``owner`` and wait for its answer (or learn that it is gone).

        A cancelled wait (the client went away) tells the owner to drop the request.
        """
        request_id = secrets.token_urlsafe(12)
        answer: asyncio.Future[HttpResponse] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        if isinstance(operation, Poll):
            self._polls[request_id] = owner  # answered at once if this worker stops (drain)
        try:
            try:
                receivers = await self._publish(self._channel(owner), frame_for(request_id))
            except (RedisError, OSError) as exc:
                raise self._unreachable(exc) from None
            if not receivers:
                return await self._owner_gone(owner, operation)
            return await self._wait_for(answer, owner, operation, budget)
        except asyncio.CancelledError:
            if not answer.done():
                self._tell(owner, encode_cancel(request_id))  # release the owner's held poll now
            raise
        finally:
            self._waiting.pop(request_id, None)
            self._polls.pop(request_id, None)

    async def drain(self) -> None:
        """Stopping: answer every poll forwarded from here within ``DRAIN_GRACE`` seconds, rather than
        wait up to ``poll_timeout`` for it.

        An owner that is stopping too (the whole deployment is: gunicorn's
        master, Ctrl-C on the demo) answers with its 1001 close at once, and
        that answer is waited for; a poll whose owner stays gets an empty
        answer (the client polls again, through another worker) and is
        released at its owner.
        """
        self._draining = True
        pending = [answer for request_id in self._polls
                   if (answer := self._waiting.get(request_id)) is not None and not answer.done()]
        if pending:
            await asyncio.wait(pending, timeout=DRAIN_GRACE)
        for request_id, owner in list(self._polls.items()):
            answer = self._waiting.get(request_id)
            if answer is not None and not answer.done():
                answer.set_result(poll_again_response())
                self._tell(owner, encode_cancel(request_id))

    async def _wait_for(self, answer: asyncio.Future[HttpResponse], owner: str, operation: Forwardable | None,
                        budget: float) -> HttpResponse:
        """The answer; or, when ``owner``'s watch finds it gone (not subscribed, silent for 3 beats), what
        ``_owner_gone`` says; or 503 after ``budget``. Held polls wait here: one timer each, not one a beat."""
        deadline = time.monotonic() + budget
        watch = self._watch(owner)
        gone: asyncio.Future[None] | None = watch[0]
        try:
            while not answer.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return error_response(ServiceUnavailable(
                        "the worker that owns the session did not answer in time", retry_after=self._retry_after,
                        code="owner_timeout"))
                await asyncio.wait((answer,) if gone is None else (answer, gone), timeout=left,
                                   return_when=asyncio.FIRST_COMPLETED)
                if answer.done() or gone is None or not gone.done():
                    continue
                if gone.cancelled():  # the watch was stopped (close): wait for the answer alone
                    gone = None
                    continue
                gone.result()  # the watch could not reach Redis: ServiceUnavailable, as a failed check
                return await self._owner_gone(owner, operation)
            return answer.result()
        finally:
            watch[1] -= 1

    def _watch(self, owner: str) -> list[Any]:
        """``owner``'s watch, ``[gone, waiting]``, counting one more request waiting for it: ``gone`` is set
        when the watch finds the owner gone. One watch per owner, however many requests wait for it, checking
        every ``liveness_interval`` while any does."""
        watch = self._watches.get(owner)
        if watch is None:
            gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            watch = self._watches[owner] = [gone, 0]
            task = asyncio.get_running_loop().create_task(self._watch_owner(owner, watch))
            self._watchers.add(task)
            task.add_done_callback(self._watchers.discard)
        watch[1] += 1
        return watch

    async def _watch_owner(self, owner: str, watch: list[Any]) -> None:
        gone: asyncio.Future[None] = watch[0]
        try:
            while True:
                await asyncio.sleep(self._liveness_interval)
                if watch[1] <= 0:  # nobody waits for this owner any more
                    return
                try:
                    alive = await self._owner_alive(owner)
                except ServiceUnavailable as error:
                    gone.set_exception(error)
                    gone.exception()  # retrieved: the waiters get it through their own result()
                    return
                if not alive:
                    gone.set_result(None)
                    return
        finally:
            if self._watches.get(owner) is watch:
                del self._watches[owner]  # the next request for this owner starts a new watch
            gone.cancel()  # no-op when set; else its waiters wait for their answers alone

    async def _owner_alive(self, owner: str) -> bool:
        """Whether ``owner`` is subscribed or announced itself lately; asked of Redis at most once per
        ``liveness_interval`` per owner, however many requests wait for it."""
        now = time.monotonic()
        cached = self._liveness.get(owner)
        if cached is not None and now - cached[0] < self._liveness_interval:
            return await cached[1]
        check: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._liveness[owner] = (now, check)
        try:
            (_, subscribers), = await self._client.pubsub_numsub(self._channel(owner))
            alive = bool(subscribers) or bool(await self._client.exists(self._alive_key(owner)))
        except (RedisError, OSError) as exc:
            del self._liveness[owner]
            error = self._unreachable(exc)
            check.set_exception(error)
            check.exception()  # retrieved: the waiters get it through their own await
            raise error from None
        check.set_result(alive)
        if len(self._liveness) > 1000:  # owners come and go: keep the cache small
            self._liveness = {key: value for key, value in self._liveness.items()
                              if now - value[0] < self._liveness_interval}
        return alive

    async def _owner_gone(self, owner: str, operation: Forwardable | None) -> HttpResponse:
        """Nobody listens for ``owner``: resubscribing (503), dead (its sessions ended: 1012), or unknown (410)."""
        try:
            alive, known = await self._client.mget(self._alive_key(owner), self._known_key(owner))
        except (RedisError, OSError) as exc:
            raise self._unreachable(exc) from None
        if alive or (not known and time.monotonic() - self._subscribed_at < 3 * self._liveness_interval + 1):
            # Up but resubscribing; or Redis just came back and the owner has not announced itself yet.
            return error_response(ServiceUnavailable(
                "the worker that owns the session is reconnecting to Redis", retry_after=self._retry_after,
                code="owner_unavailable"))
        if isinstance(operation, Delete):
            return HttpResponse(204)
        if not known:
            return error_response(UnknownSession("unknown, expired or closed session"))
        if known == _STOPPED:  # it shut down cleanly: its sessions were closed with 1001
            return error_response(UnknownSession("the worker that owned the session has shut down",
                                                 code="session_ended", closed=OWNER_STOPPED))
        return error_response(UnknownSession("the worker that owned the session is gone", code="session_ended",
                                             closed=OWNER_GONE))

    def _tell(self, worker: str, frame: bytes) -> None:
        """Publish ``frame`` to ``worker``, best effort (lost, the owner's poll ends at its hold)."""
        told = self._publish(self._channel(worker), frame)
        self._told.add(told)  # close() gives these a moment to go out
        told.add_done_callback(self._told_done)

    def _told_done(self, told: asyncio.Future[int]) -> None:
        self._told.discard(told)
        if not told.cancelled():
            told.exception()  # retrieved: a lost cancel is no error

    def _publish(self, channel: str, frame: bytes) -> asyncio.Future[int]:
        """Queue ``frame`` for ``channel``; the future is the number of workers that got it.

        What is queued while a publication is on its way goes out together next, in the order it was
        queued, one PUBLISH per channel (a ``Batch`` frame when a channel has several) in one round trip:
        under load, and for the answers to a broadcast's forwarded polls, many frames cost one command.
        """
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._outgoing.append((channel, frame, future))
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())
        return future

    async def _flush(self) -> None:
        """Publish what ``_publish`` queued, one round trip at a time (so frames to a worker stay in order)."""
        batch: list[tuple[str, bytes, asyncio.Future[int]]] = []
        try:
            while self._outgoing:
                batch, self._outgoing = self._outgoing, []
                by_channel: dict[str, list[tuple[bytes, asyncio.Future[int]]]] = {}
                for channel, frame, future in batch:
                    by_channel.setdefault(channel, []).append((frame, future))
                try:
                    if len(batch) == 1:
                        receivers = [await self._client.publish(batch[0][0], batch[0][1])]
                    else:
                        async with self._client.pipeline(transaction=False) as pipe:
                            for channel, items in by_channel.items():
                                pipe.publish(channel, items[0][0] if len(items) == 1 else
                                             encode_batch([frame for frame, _ in items]))
                            receivers = await pipe.execute()
                except (RedisError, OSError, ServiceUnavailable) as exc:
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for items, count in zip(by_channel.values(), receivers):
                    for _, future in items:
                        if not future.done():
                            future.set_result(int(count))
                batch = []
        finally:
            self._flushing = None
            unsent, self._outgoing = [*batch, *self._outgoing], []
            for _, _, future in unsent:  # cancelled by close(): these never go out
                if not future.done():
                    future.set_exception(ServiceUnavailable("the handler is shut down", retry_after=self._retry_after,
                                                            code="shutting_down"))

    # -- serving (the owner) ------------------------------------------------------

    async def _listen(self) -> None:
        failures = 0
        while True:
            try:
                if self._pubsub is None:
                    seen, run = self._broadcast_seen, self._redis_run
                    await self._subscribe()
                    await self._announce()  # at once: other workers must not think us dead
                    # Broadcasts went out while we were away: the counter moved, or Redis restarted (a
                    # new run, its counter from 0) and some were published before we were back.
                    restarted = self._redis_run != run
                    if self._broadcast_seen != (0 if restarted else seen):
                        self._missed("broadcasts while the subscription was down")
                message = await self._pubsub.get_message(timeout=self._liveness_interval)
                failures = 0
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                failures += 1
                self._warn(f"pollsession: Redis subscription lost ({exc}); reconnecting")
                self._fail_waiting("the answer may have been lost with this worker's Redis subscription")
                pubsub, self._pubsub = self._pubsub, None
                if pubsub is not None:
                    try:
                        await pubsub.aclose()
                    except (RedisError, OSError):
                        pass
                await asyncio.sleep(min(5.0, 0.1 * 2 ** min(failures, 6)))
                continue
            if message is None or message.get("type") != "message":
                continue
            try:
                self._dispatch(message["data"])
            except Exception:  # a bug must not stop the subscription: every request would then 503
                logger.exception("pollsession: error handling a message from Redis")

    def _dispatch(self, data: bytes) -> None:
        """Act on one message of this worker's channel or of the broadcasts."""
        try:
            frame = decode(data)
        except FrameError as exc:
            self._warn(f"pollsession: ignoring a message on {self._channel(self.worker_id)}: {exc}")
            return
        if isinstance(frame, Batch):
            for each in frame.frames:
                self._dispatch(each)
        elif isinstance(frame, Broadcast):
            self._take_broadcast(frame)
        elif isinstance(frame, Answer):
            waiting = self._waiting.get(frame.id)
            if waiting is not None and not waiting.done():
                waiting.set_result(frame.response)
        elif isinstance(frame, Cancel):
            task = self._serving.get(frame.id)
            if task is not None:
                task.cancel()
        else:
            work = self._answer(frame) if isinstance(frame, Forwarded) else self._send_here(frame)
            self._serving[frame.id] = task = asyncio.create_task(work)
            task.add_done_callback(functools.partial(self._served, frame.id))

    async def _send_here(self, request: SendTo) -> None:
        """``send_to`` from another worker: 204 sent, 404 unknown, 410 closed (with the close)."""
        try:
            await self._local.send_to(request.sid, request.message)
            response = HttpResponse(204)
        except KeyError:
            response = HttpResponse(404)
        except SessionClosed as closed:
            response = error_response(UnknownSession("the session is closed", code="session_closed",
                                                     closed=Closed(closed.code, closed.reason)))
        try:
            await self._publish(request.reply, encode_answer(request.id, response))
        except (RedisError, OSError, ServiceUnavailable) as exc:
            self._warn(f"pollsession: could not send an answer through Redis ({exc})")

    async def send_to(self, sid: str, message: Outgoing) -> None:
        """Send to another worker's session, waiting for room there (KeyError, SessionClosed as locally)."""
        if not _SESSION_ID.fullmatch(sid):
            raise KeyError(sid)
        reply = self._channel(self.worker_id)
        response = await self._ask(sid[:_WORKER_ID_LENGTH],
                                   lambda request_id: encode_send(request_id, reply, sid, message), None, float("inf"))
        if response.status == 404:
            raise KeyError(sid)
        if response.status == 410:
            closed = decode_closed(response.body)
            raise SessionClosed(closed.code, closed.reason)
        if response.status == 503:  # the answer may be lost (a dropped subscription), or Redis is down
            raise ServiceUnavailable("send_to could not be confirmed: the message may or may not have been sent",
                                     retry_after=self._retry_after, code="backend_unavailable")
        if response.status != 204:  # the owner is gone
            raise SessionClosed(OWNER_GONE.code, OWNER_GONE.reason)

    def _served(self, request_id: str, task: asyncio.Task[None]) -> None:
        if self._serving.get(request_id) is task:
            del self._serving[request_id]

    async def _answer(self, forwarded: Forwarded) -> None:
        try:
            response = await self._local.serve(forwarded.operation, forwarded.path)
        except HttpError as error:
            response = error_response(error)
        try:
            await self._publish(forwarded.reply, encode_answer(forwarded.id, response))
        except (RedisError, OSError, ServiceUnavailable) as exc:
            self._warn(f"pollsession: could not send an answer through Redis ({exc}); the client will retry")

    async def _announce(self) -> None:
        """This worker is up, and holds this many sessions: one write of every key it keeps, in order."""
        assert self._state_lock is not None
        async with self._state_lock:  # one write at a time: an older count never lands last
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.set(self._alive_key(self.worker_id), b"1", px=self._alive_ttl_ms)
                pipe.set(self._known_key(self.worker_id), b"1", ex=max(1, int(self._worker_ttl)))
                pipe.set(self._count_key(self.worker_id), self._local_count, px=self._alive_ttl_ms)
                pipe.sadd(self._workers, self.worker_id)
                pipe.expire(self._workers, max(1, int(self._worker_ttl)))
                await pipe.execute()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._liveness_interval)
            try:
                await self._announce()
            except (RedisError, OSError) as exc:
                self._warn(f"pollsession: could not refresh the worker's keys in Redis ({exc})")

    # -- errors --------------------------------------------------------------------

    def _unreachable(self, exc: BaseException) -> ServiceUnavailable:
        self._warn(f"pollsession: Redis is unreachable: {exc}")
        return ServiceUnavailable(f"the session store is unreachable ({type(exc).__name__})",
                                  retry_after=self._retry_after, code="backend_unavailable")

    def _warn(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 10.0:  # one WARNING per ten seconds at most
            self._last_warning = now
            logger.warning(text)


class Publisher:
    """Broadcast to the sessions of every worker from a process that holds none (sync; any thread).

    ::

        from pollsession.backends.redis import Publisher

        publisher = Publisher("redis://127.0.0.1:6379/0", name="chat")
        publisher.broadcast({"type": "news", "text": "deploy at 5"}, room="lobby")

    ``name`` and ``max_message_size`` must be the workers' (``RedisBackend``'s
    name, the handler's limit). The message is encoded once, numbered by
    Redis with the workers' own broadcasts, and reaches every member on every
    worker once, in the same order as everything else broadcast. Returns how
    many workers it reached; raises ``ServiceUnavailable`` when Redis is
    unreachable, and what ``Session.send`` raises for a value the protocol
    cannot carry.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, name: str = "pollsession",
                 max_message_size: int = 1 << 20) -> None:
        import redis

        self._redis = redis.Redis.from_url(url)
        self._name = name
        self._max_message_size = max_message_size

    def broadcast(self, data: Any, *, room: str | None = None, exclude: str | None = None) -> int:
        message = encode_outgoing(data, self._max_message_size)
        try:
            receivers = self._redis.eval(_BROADCAST_SCRIPT, 2, _broadcast_number_key(self._name),
                                         _broadcast_channel(self._name), encode_broadcast(message, room, exclude))
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable(f"the session store is unreachable ({type(exc).__name__})", retry_after=1,
                                     code="backend_unavailable") from None
        return int(receivers)

    def close(self) -> None:
        self._redis.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


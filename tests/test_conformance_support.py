"""Support for the wire-protocol conformance suite (``tests/test_conformance*.py``); no tests here.

The suite checks every numbered rule of ``PROTOCOL.md`` by speaking plain HTTP
(``requests``, and raw sockets where a client misbehaves) to a real server of
each adapter. Like a real client, each client thread keeps one
``requests.Session`` per server, so requests reuse keep-alive connections
(and an adapter that closes one without saying ``Connection: close`` shows). On the server runs one application, :func:`make_app`, whose
behaviour a test picks with the ``mode`` query parameter of the opening
``GET``; it records what its session saw (messages read, the close it was
told about) in an :class:`AppProbe`, so a test checks the application's side
of a rule as well as the wire.

Timing: nothing here sleeps. Tests wait on ``AppProbe.ended`` (set by the
coroutine itself), on futures of background requests, and on
:meth:`ConformanceServer.wait_held`. That last one is the suite's single
white-box peek: nothing on the wire says that a long poll is being held, and
ordering two polls of one session without knowing it would mean hoping.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import concurrent.futures
import contextlib
import itertools
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest
import requests

from pollsession import HttpHandler, MessageType, Session, SessionClosed
from tests.utils import ALL_ADAPTERS, MS, mount_handler, serve, wait_until

__all__ = [
    "AppProbe",
    "ConformanceServer",
    "SHARED_CONFIG",
    "TIMEOUT",
    "assert_error",
    "binary",
    "json_msg",
    "make_app",
    "make_server",
    "media_type",
    "raw_exchange",
    "running",
    "seconds",
    "server",
    "server_fixture",
    "text",
]

# Network timeouts only bound a broken test; no test waits for them to pass.
TIMEOUT = max(10.0, 10_000 * MS)

# The module-scoped server of each test module. poll_timeout is long: tests end
# every hold they start (a message, a newer poll, a close) and never wait it out.
SHARED_CONFIG: dict[str, Any] = dict(
    poll_timeout=5000 * MS,
    session_timeout=30.0,
    inbox_limit=8,
    outbox_limit=64,
    max_message_size=4096,
    max_body_size=16384,
)

_background = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="conformance-client")


# -- the application on the server ------------------------------------------------


@dataclass
class AppProbe:
    """What one session's coroutine saw; written on the loop, read by the test."""

    session: Session
    mode: str
    received: list[tuple[str, Any]] = field(default_factory=list)  # (type, data) in reading order
    sent: int = 0  # sends that returned (mode "burst")
    close: tuple[int, str] | None = None  # the SessionClosed the coroutine caught
    ended: threading.Event = field(default_factory=threading.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)  # mode "gated" reads once it is set


def make_app(probes: dict[str, AppProbe]) -> Callable[[Session], Any]:
    """The conformance application; ``?mode=`` of the opening GET picks what it does.

    record (default): read every message; echo: read and send each back with
    its type; greet: send "welcome", then record; identity: send the
    authentication identity as json, then record; gated: record once the gate
    opens; burst: send 0..n-1 (``?n=``), then return; return: send "bye",
    return; raise: send "boom", raise; close: send each ``?say=``, then close
    with 4001 "bye".
    """

    async def conformance_app(session: Session) -> None:
        query = session.request.query
        probe = AppProbe(session, query.get("mode", "record"))
        probes[session.id] = probe
        try:
            if probe.mode == "return":
                await session.send("bye")
                return
            if probe.mode == "raise":
                await session.send("boom")
                raise RuntimeError("conformance app raised on purpose")
            if probe.mode == "close":
                for said in session.request.query_lists.get("say", []):
                    await session.send(said)
                await session.close(4001, "bye")
                return
            if probe.mode == "burst":
                for number in range(int(query.get("n", "10"))):
                    await session.send(number)
                    probe.sent += 1
                return
            if probe.mode == "greet":
                await session.send("welcome")
            elif probe.mode == "identity":
                await session.send_json(session.identity)
            elif probe.mode == "gated":
                await probe.gate.wait()
            while True:
                message = await session.receive_message()
                probe.received.append((message.type.value, message.data))
                if probe.mode == "echo":
                    if message.type is MessageType.JSON:
                        await session.send_json(message.data)
                    else:
                        await session.send(message.data)
        except SessionClosed as closed:
            probe.close = (closed.code, closed.reason)
        finally:
            probe.ended.set()

    return conformance_app


# -- the server as the tests drive it ----------------------------------------------


class ConformanceServer:
    """One running target of one adapter, with request helpers.

    With ``workers`` (the ``*-redis`` adapters) the target runs in several
    handlers on one Redis, one per worker, each served on its own port; the
    requests go round robin over ``bases``, so most of them reach a worker
    that does not own their session and are forwarded, as behind a
    round-robin balancer with no stickiness. White-box helpers act on the
    handler that owns the session (:meth:`handler_of`).
    """

    def __init__(
        self, adapter: str, base: str, handler: HttpHandler, probes: dict[str, AppProbe], config: dict[str, Any],
        *, workers: list[HttpHandler] | None = None, bases: list[str] | None = None,
    ) -> None:
        self.adapter = adapter
        self.config = config
        self.base = base
        self.url = base + "/poll"
        self.handler = handler
        self.workers = workers or [handler]
        self.bases = bases or [base]
        self._next_base = itertools.count()
        self.probes = probes
        # Each client thread keeps one requests.Session for this server, so that
        # requests reuse keep-alive connections the way real clients do.
        self._local = threading.local()
        self._clients: list[requests.Session] = []
        self._clients_lock = threading.Lock()

    # requests ----------------------------------------------------------------

    @property
    def client(self) -> requests.Session:
        """This thread's persistent HTTP client for the server."""
        client: requests.Session | None = getattr(self._local, "client", None)
        if client is None:
            client = requests.Session()
            client.trust_env = False  # no proxy between the suite and 127.0.0.1
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def close_clients(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def request(
        self,
        method: str,
        *,
        sid: str | None = None,
        path: str = "/poll",
        params: Any = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        all_headers = dict(headers or {})
        if sid is not None:
            all_headers["Pollsession-Id"] = sid
        base = self.bases[next(self._next_base) % len(self.bases)]
        if len(self.bases) > 1:  # as behind a balancer: every worker sees the deployment's one Host
            all_headers.setdefault("Host", urlsplit(self.base).netloc)
        return self.client.request(
            method, base + path, params=params, headers=all_headers, timeout=TIMEOUT, **kwargs
        )

    def open(
        self, mode: str = "record", *, headers: dict[str, str] | None = None, **query: Any
    ) -> tuple[str, dict[str, Any]]:
        """Open a session (asserting 200); return its id and the open answer."""
        response = self.request("GET", params={"mode": mode, **query}, headers=headers)
        assert response.status_code == 200, (response.status_code, response.text)
        document: dict[str, Any] = response.json()
        return document["sid"], document

    def poll(
        self, sid: str, ack: int | str | None = None, wait: float | str | None = None, **kwargs: Any
    ) -> requests.Response:
        """``GET`` with ``ack``/``wait`` (a str is sent as is, so it may be malformed)."""
        params: dict[str, str] = {}
        if ack is not None:
            params["ack"] = str(ack)
        if wait is not None:
            params["wait"] = wait if isinstance(wait, str) else seconds(wait)
        return self.request("GET", sid=sid, params=params, **kwargs)

    def poll_ok(self, sid: str, ack: int = 0, wait: float | str | None = None) -> dict[str, Any]:
        """A poll that must answer 200; return its document."""
        response = self.poll(sid, ack, wait)
        assert response.status_code == 200, (response.status_code, response.text)
        assert media_type(response) == "application/json"
        document: dict[str, Any] = response.json()
        assert set(document) >= {"messages", "closed"}, document
        return document

    def push(self, sid: str | None, messages: list[dict[str, Any]], **kwargs: Any) -> requests.Response:
        return self.push_raw(sid, _json_bytes({"messages": messages}), **kwargs)

    def push_raw(
        self, sid: str | None, body: bytes | str, content_type: str | None = "application/json", **kwargs: Any
    ) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if content_type is not None:
            headers["Content-Type"] = content_type
        if isinstance(body, str):
            body = body.encode("utf-8")
        return self.request("POST", sid=sid, data=body, headers=headers, **kwargs)

    def push_ok(self, sid: str, messages: list[dict[str, Any]]) -> int:
        """A push that must answer 200; return its ack."""
        response = self.push(sid, messages)
        assert response.status_code == 200, (response.status_code, response.text)
        assert media_type(response) == "application/json"
        return int(response.json()["ack"])

    def delete(self, sid: str | None, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", sid=sid, **kwargs)

    def in_background(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Run a (blocking) request in a client thread; the future carries its answer."""
        return _background.submit(function, *args, **kwargs)

    # the server side -----------------------------------------------------------

    def probe(self, sid: str) -> AppProbe:
        return self.probes[sid]

    def handler_of(self, sid: str) -> HttpHandler:
        """The handler (worker) that owns the session ``sid``."""
        for worker in self.workers:
            if worker._backend.is_local(sid):
                return worker
        raise AssertionError(f"no worker owns {sid[:8]}")

    def close_all(self) -> None:
        """Shut every worker down (a deployment stopping)."""
        for worker in self.workers:
            worker.close()

    @property
    def sessions_started(self) -> int:
        """How many times the application's coroutine has been started."""
        return len(self.probes)

    def send(self, sid: str, value: Any) -> concurrent.futures.Future[None]:
        """Make the session send ``value`` (runs on the handler's loop)."""
        return self.handler_of(sid).submit(self.probe(sid).session.send(value))

    def server_close(self, sid: str, code: int, reason: str) -> None:
        self.handler_of(sid).submit(self.probe(sid).session.close(code, reason)).result(TIMEOUT)

    def open_gate(self, sid: str) -> None:
        self.handler_of(sid).loop.call_soon_threadsafe(self.probe(sid).gate.set)

    def wait_ended(self, sid: str) -> tuple[int, str] | None:
        """Wait until the session's coroutine has ended; return the close it saw."""
        probe = self.probe(sid)
        assert probe.ended.wait(TIMEOUT), f"the coroutine of {sid[:8]} did not end"
        return probe.close

    def held_poll(self, sid: str) -> object | None:
        """The poll the server holds for ``sid`` right now, or None (white-box, see module doc)."""
        handler = self.handler_of(sid)

        async def peek() -> object | None:
            channel = handler._registry.channel(sid)
            return channel.delivery.held_poll or None if channel is not None else None

        return handler.submit(peek()).result(TIMEOUT)

    def wait_held(self, sid: str, other_than: object | None = None) -> object:
        """Wait until a poll (not ``other_than``) is held for ``sid``; return it."""
        return wait_until(
            lambda: (poll := self.held_poll(sid)) is not None and poll is not other_than and poll,
            what=f"a held poll of session {sid[:8]}",
        )


@contextlib.contextmanager
def running(
    adapter: str, *, also_at: dict[str, HttpHandler | None] | None = None, **config: Any
) -> Iterator[ConformanceServer]:
    """Serve a fresh handler running the conformance app with ``config`` at ``/poll``.

    ``also_at`` maps more paths to the handler mounted there: None for this
    same handler, or another handler (which the caller closes).
    """
    config.setdefault("shutdown_timeout", 1000 * MS)
    probes: dict[str, AppProbe] = {}
    framework, multi, _ = adapter.partition("-redis")
    count = WORKERS if multi else 1
    if count > 1:
        url, name = shared_redis_url(), f"conformance-{next(_deployments)}"
        handlers = [HttpHandler(make_app(probes), backend=_redis_backend(url, name, config), **config)
                    for _ in range(count)]
    else:
        handlers = [HttpHandler(make_app(probes), **config)]

    def extra_for(handler: HttpHandler) -> Callable[[Any], None]:
        mounts = {path: other or handler for path, other in (also_at or {}).items()}

        def extra(app_or_routes: Any) -> None:
            for path, mounted in mounts.items():
                mount_handler(framework, app_or_routes, path, mounted)

        return extra

    with contextlib.ExitStack() as stack:
        bases = [stack.enter_context(serve(framework, handler, extra=extra_for(handler))) for handler in handlers]
        conformance_server = ConformanceServer(adapter, bases[0], handlers[0], probes, config,
                                               workers=handlers, bases=bases)
        try:
            yield conformance_server
        finally:
            conformance_server.close_clients()


# -- many workers on one Redis --------------------------------------------------------

WORKERS = 3
"""Workers of a ``*-redis`` deployment."""

CONFORMANCE_ADAPTERS = (*ALL_ADAPTERS, "tornado-redis", "flask-redis")
"""Every adapter, and the multi-worker deployments the conformance suite also runs against."""

_deployments = itertools.count(1)
_redis: Any = None


def shared_redis_url() -> str:
    """One real redis-server for the whole run (stopped at exit); skip, or fail under CI, without one."""
    global _redis
    from tests.redis_server import redis_problem, start_redis

    problem = redis_problem()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the multi-worker conformance runs cannot run under CI: {problem}", pytrace=False)
        pytest.skip(problem)
    if _redis is None:
        _redis = start_redis()
        atexit.register(_redis.stop)
    return str(_redis.url)


def _redis_backend(url: str, name: str, config: dict[str, Any]) -> Any:
    from pollsession.backends.redis import RedisBackend

    return RedisBackend(url, name=name, poll_timeout=config.get("poll_timeout", 25.0), liveness_interval=0.2)


def server_fixture(
    name: str, config: Callable[[], dict[str, Any]], scope: Literal["module", "class", "session"] = "module"
) -> Any:
    """A fixture ``name`` serving, per adapter, one handler made with ``config()`` for a whole ``scope``.

    Assign it to a module variable of the same name in the test module.
    """

    @pytest.fixture(name=name, scope=scope, params=CONFORMANCE_ADAPTERS)
    def fixture(request: pytest.FixtureRequest) -> Iterator[ConformanceServer]:
        with running(request.param, **config()) as srv:
            yield srv

    return fixture


# One server per adapter for a whole test module, with SHARED_CONFIG.
server = server_fixture("server", lambda: dict(SHARED_CONFIG))


@pytest.fixture(params=CONFORMANCE_ADAPTERS)
def make_server(request: pytest.FixtureRequest) -> Iterator[Callable[..., ConformanceServer]]:
    """A factory of fresh servers of one adapter, for tests that need their own config."""
    with contextlib.ExitStack() as stack:
        yield lambda **config: stack.enter_context(running(request.param, **config))


# -- small helpers ---------------------------------------------------------------------


def _json_bytes(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def seconds(value: float) -> str:
    """A duration in the syntax ``wait`` accepts."""
    return f"{value:.3f}"


def text(seq: Any, data: Any) -> dict[str, Any]:
    return {"seq": seq, "type": "text", "data": data}


def binary(seq: Any, raw: bytes) -> dict[str, Any]:
    return {"seq": seq, "type": "binary", "data": base64.b64encode(raw).decode("ascii")}


def json_msg(seq: Any, value: Any) -> dict[str, Any]:
    return {"seq": seq, "type": "json", "data": value}


def media_type(response: requests.Response) -> str:
    return response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


def assert_error(response: requests.Response, status: int, error: str | None = None) -> dict[str, Any]:
    """``status`` with the error body every refusal carries: ``{"error", "message"}``."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert media_type(response) == "application/json", response.headers
    document = response.json()
    assert isinstance(document, dict), document
    assert isinstance(document.get("error"), str) and document["error"], document
    assert isinstance(document.get("message"), str), document
    if error is not None:
        assert document["error"] == error, document
    return document


def raw_exchange(base: str, data: bytes, *, read: bool = True) -> bytes:
    """Send raw bytes to the server; return what it answers until it closes the connection.

    Send ``Connection: close`` (or a request the server refuses) so that it does.
    """
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        if not read:
            return b""
        # No half-close: Tornado takes the client's FIN for a client gone away.
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)

"""Session targets over real HTTP: a function and an equivalent ``SessionHandler`` class.

Every behaviour test runs four ways: each target kind (``async def`` or a
``SessionHandler`` subclass, built from the same ``respond`` logic) on each
adapter (Flask's threaded werkzeug server, Tornado). The client side speaks the
wire protocol by hand with ``requests`` (:class:`Peer`), so what is checked is
exactly what goes over the wire. Tests finish on conditions with deadlines:
what the server-side code saw is written into a :class:`Record` and waited on
with ``wait_until``; a held poll returns as soon as the server has something
to say, so waiting costs only the time the server takes.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from pollsession import Forbidden, HttpHandler, RequestInfo, Session, SessionHandler, Unauthorized
from tests.utils import ALL_ADAPTERS, MS, serve, wait_until

KINDS = ("function", "class")
REQUEST_TIMEOUT = 5000 * MS  # on top of any hold the request asks for


# -- the client side: the protocol by hand -------------------------------------


def to_wire(value: Any) -> dict[str, Any]:
    """``str`` as text, bytes as binary, anything else as json (like ``Session.send``)."""
    if isinstance(value, str):
        return {"type": "text", "data": value}
    if isinstance(value, bytes):
        return {"type": "binary", "data": base64.b64encode(value).decode("ascii")}
    return {"type": "json", "data": value}


def from_wire(message: dict[str, Any]) -> Any:
    if message["type"] == "binary":
        return base64.b64decode(message["data"])
    return message["data"]


class Peer:
    """One session spoken by hand over real HTTP.

    It keeps what a careful client keeps: the highest server seq received
    contiguously (sent back as ``ack`` on every poll) and the seq of its own
    last message. Since every poll acknowledges everything received so far,
    a message sent again, or a gap, fails the test at once: delivery must be
    exactly once and in order.
    """

    def __init__(self, base_url: str, http: requests.Session) -> None:
        self.url = base_url + "/poll"
        self.http = http
        self.sid = ""
        self.acked = 0
        self.sent = 0
        self.messages: list[dict[str, Any]] = []
        self.closed: dict[str, Any] | None = None

    def open(self, **kwargs: Any) -> Peer:
        response = self.http.get(self.url, timeout=REQUEST_TIMEOUT, **kwargs)
        assert response.status_code == 200, response.text
        document = response.json()
        self.sid = document["sid"]
        assert response.headers["Pollsession-Id"] == self.sid
        self._take(document)
        return self

    @property
    def _headers(self) -> dict[str, str]:
        return {"Pollsession-Id": self.sid}

    def _take(self, document: dict[str, Any]) -> None:
        for message in document["messages"]:
            assert message["seq"] == self.acked + 1, (
                f"after acknowledging seq {self.acked} the server sent seq {message['seq']}"
            )
            self.messages.append(message)
            self.acked = message["seq"]
        if document["closed"] is not None:
            self.closed = document["closed"]

    def poll(self, wait: float = 0.0) -> dict[str, Any]:
        """One poll acknowledging everything received; held for at most ``wait`` seconds."""
        response = self.request("GET", params={"ack": str(self.acked), "wait": f"{wait:.3f}"},
                                timeout=wait + REQUEST_TIMEOUT)
        assert response.status_code == 200, (response.status_code, response.text)
        document: dict[str, Any] = response.json()
        self._take(document)
        return document

    def request(self, method: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", REQUEST_TIMEOUT)
        return self.http.request(method, self.url, headers=self._headers, **kwargs)

    def send(self, *values: Any) -> None:
        """Push ``values`` in one batch; the server must take them all."""
        batch = []
        for value in values:
            self.sent += 1
            batch.append({"seq": self.sent, **to_wire(value)})
        response = self.request("POST", json={"messages": batch})
        assert response.status_code == 200, (response.status_code, response.text)
        assert response.json() == {"ack": self.sent}

    def delete(self) -> None:
        response = self.request("DELETE")
        assert response.status_code == 204, response.text

    def datas(self) -> list[Any]:
        return [from_wire(m) for m in self.messages]

    def typed(self) -> list[tuple[str, Any]]:
        return [(m["type"], from_wire(m)) for m in self.messages]

    def receive_until(self, predicate: Callable[[Peer], Any], timeout: float = 3000 * MS,
                      what: str = "messages") -> None:
        """Long-poll until ``predicate(self)`` holds; fail at the deadline or on an unexpected close."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if self.closed is not None:
                raise AssertionError(f"session closed with {self.closed} while waiting for {what}; "
                                     f"received {self.datas()!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout:.2f}s waiting for {what}; received {self.datas()!r}")
            self.poll(wait=min(remaining, 1000 * MS))

    def receive_close(self, timeout: float = 3000 * MS) -> dict[str, Any]:
        self.receive_until(lambda peer: peer.closed is not None, timeout, "the close")
        assert self.closed is not None
        return self.closed


# -- the server side: one behaviour, two target kinds ----------------------------


class Record:
    """What the server-side code saw; written on the handler's loop, read by the test."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.codes: dict[str, int | None] = {}
        self.received: list[Any] = []


def greeting(session: Session) -> dict[str, Any]:
    request = session.request
    return {
        "hello": "welcome",
        "identity": session.identity,
        "query": request.query,
        "x_app": request.headers.get("x-app"),
        "cookies": request.cookies,
        "client": request.client_address,
        "user_agent": request.user_agent,
    }


async def respond(session: Session, data: Any) -> None:
    """The behaviour both kinds share: commands as text, anything else is echoed as received."""
    if isinstance(data, str) and data.startswith("close "):
        _, code, reason = data.split(" ", 2)
        await session.close(int(code), reason)
    elif data == "raise":
        raise RuntimeError("the application failed")
    else:
        await session.send(data)


def make_target(kind: str, record: Record, *, decode: str = "auto") -> Any:
    """An echo-with-commands target of ``kind``; both kinds record the same things."""
    if kind == "function":
        assert decode == "auto", "decode is a SessionHandler feature"

        async def target(session: Session) -> None:
            record.started.append(session.id)
            await session.send(greeting(session))
            async for data in session:
                record.received.append(data)
                await respond(session, data)
            record.codes[session.id] = session.close_code

        return target

    class Target(SessionHandler):
        async def on_connect(self) -> None:
            record.started.append(self.session.id)
            await self.send(greeting(self.session))

        async def on_receive(self, data: Any) -> None:
            record.received.append(data)
            await respond(self.session, data)

        async def on_disconnect(self, code: int) -> None:
            record.codes[self.session.id] = code

    Target.decode = decode  # type: ignore[assignment]
    return Target


@contextlib.contextmanager
def running(target: Any, adapter: str, **settings: Any) -> Iterator[tuple[HttpHandler, str, requests.Session]]:
    """Serve ``target`` at ``/poll``; yield the handler, the base URL and an HTTP session."""
    handler = HttpHandler(target, shutdown_timeout=1, **settings)
    with serve(adapter, handler) as base_url, requests.Session() as http:
        yield handler, base_url, http


async def _holds_poll(handler: HttpHandler, sid: str) -> bool:
    channel = handler._registry.channel(sid)
    return channel is not None and channel.delivery.holds_poll


parametrize_adapters = pytest.mark.parametrize("adapter", ALL_ADAPTERS)
parametrize_kinds = pytest.mark.parametrize("kind", KINDS)


# -- the basic behaviour, four ways ------------------------------------------------


@parametrize_adapters
@parametrize_kinds
def test_greeting_from_on_connect_comes_first(kind: str, adapter: str) -> None:
    record = Record()
    with running(make_target(kind, record), adapter) as (_, base_url, http):
        peer = Peer(base_url, http).open()
        peer.receive_until(lambda p: p.messages, what="the greeting")
        assert peer.messages[0]["type"] == "json" and peer.messages[0]["data"]["hello"] == "welcome"
        assert record.started == [peer.sid]


@parametrize_adapters
@parametrize_kinds
def test_echo_keeps_type_and_order(kind: str, adapter: str) -> None:
    record = Record()
    values: list[Any] = ["héllo ✓", b"\x00\xff\x80 bytes", {"k": [1, 2.5, None, True, "é"]}, "", b"", 42, [], "last"]
    with running(make_target(kind, record), adapter) as (_, base_url, http):
        peer = Peer(base_url, http).open()
        peer.send(*values[:3])
        peer.send(*values[3:])
        peer.receive_until(lambda p: len(p.messages) == 1 + len(values), what="every echo")
        assert peer.typed()[1:] == [(to_wire(v)["type"], v) for v in values]
        assert peer.closed is None
        assert peer.poll()["messages"] == []


@parametrize_adapters
@parametrize_kinds
def test_server_close_with_a_code_delivers_what_was_sent_first(kind: str, adapter: str) -> None:
    record = Record()
    with running(make_target(kind, record), adapter) as (_, base_url, http):
        peer = Peer(base_url, http).open()
        peer.send("before", "close 4001 we are done")
        assert peer.receive_close() == {"code": 4001, "reason": "we are done"}
        assert peer.datas()[1:] == ["before"]
        wait_until(lambda: peer.sid in record.codes, what="the target to see its close")
        assert record.codes[peer.sid] == 4001
        # The close was told and everything is acknowledged: the session is forgotten.
        assert peer.poll() == {"messages": [], "closed": {"code": 4001, "reason": "we are done"}}
        assert peer.request("GET", params={"ack": str(peer.acked), "wait": "0"}).status_code == 410
        response = peer.request("POST", json={"messages": [{"seq": 3, "type": "text", "data": "late"}]})
        assert response.status_code == 410


@parametrize_adapters
@parametrize_kinds
def test_exception_in_the_target_closes_with_1011(kind: str, adapter: str) -> None:
    record = Record()
    with running(make_target(kind, record), adapter) as (handler, base_url, http):
        peer = Peer(base_url, http).open()
        peer.send("first", "raise", "never read")
        assert peer.receive_close() == {"code": 1011, "reason": ""}
        assert peer.datas()[1:] == ["first"]
        assert record.received == ["first", "raise"]
        # The server still serves other sessions.
        other = Peer(base_url, http).open()
        other.send("still here")
        other.receive_until(lambda p: len(p.messages) == 2, what="the echo")
        # The closed session is kept until its client acknowledges the close.
        assert handler.session_count() == 2


@parametrize_adapters
@parametrize_kinds
def test_client_delete_is_seen_as_1000_and_answers_a_held_poll(kind: str, adapter: str) -> None:
    record = Record()
    with running(make_target(kind, record), adapter) as (handler, base_url, http):
        peer = Peer(base_url, http).open()
        peer.poll()  # acknowledge the greeting, so that the next poll is held
        held: dict[str, Any] = {}

        def hold() -> None:
            with requests.Session() as own:
                response = own.get(peer.url, headers={"Pollsession-Id": peer.sid},
                                   params={"ack": str(peer.acked), "wait": f"{3000 * MS:.3f}"},
                                   timeout=3000 * MS + REQUEST_TIMEOUT)
                held.update(status=response.status_code, document=response.json())

        poller = threading.Thread(target=hold)
        poller.start()
        try:
            wait_until(lambda: handler.submit(_holds_poll(handler, peer.sid)).result(), what="the poll to be held")
            peer.delete()
        finally:
            poller.join(timeout=10)
        assert held == {"status": 200, "document": {"messages": [], "closed": {"code": 1000, "reason": ""}}}
        wait_until(lambda: peer.sid in record.codes, what="the target to see the disconnect")
        assert record.codes[peer.sid] == 1000
        assert peer.request("GET", params={"ack": str(peer.acked), "wait": "0"}).status_code == 410
        peer.delete()  # deleting again is harmless
        assert handler.session_count() == 0


@parametrize_adapters
@parametrize_kinds
def test_idle_session_expires_with_1001_but_a_polling_one_does_not(kind: str, adapter: str) -> None:
    record = Record()
    timeout = 300 * MS
    with running(make_target(kind, record), adapter, session_timeout=timeout,
                 cleanup_interval=50 * MS) as (_, base_url, http), requests.Session() as keeper_http:
        opened = time.monotonic()
        idle = Peer(base_url, http).open()
        keeper = Peer(base_url, keeper_http).open()
        # Timeline: the keeper holds polls of twice the session timeout back to
        # back (a held poll is activity for as long as it is held); the idle
        # session expires meanwhile, and the timer, not a request, notices it.
        stop = threading.Event()

        def keep_polling() -> None:
            while not stop.is_set():
                keeper.poll(wait=2 * timeout)

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            polling = pool.submit(keep_polling)
            try:
                wait_until(lambda: idle.sid in record.codes or polling.done(), timeout=3000 * MS,
                           what="the idle session to expire")
            finally:
                stop.set()
            polling.result()
        assert time.monotonic() - opened >= timeout
        assert record.codes[idle.sid] == 1001
        assert keeper.sid not in record.codes
        assert idle.request("GET", params={"ack": "1", "wait": "0"}).status_code == 410
        keeper.send("alive")
        keeper.receive_until(lambda p: p.datas()[-1] == "alive", what="the keeper's echo")


@parametrize_adapters
@parametrize_kinds
def test_target_sees_request_info_and_identity_from_the_auth_hook(kind: str, adapter: str) -> None:
    record = Record()
    seen: list[RequestInfo] = []

    def authenticate(request: RequestInfo) -> Any:
        seen.append(request)
        return {"user": request.query["user"], "role": request.headers["X-Role"]}

    with running(make_target(kind, record), adapter, authenticate=authenticate) as (_, base_url, http):
        peer = Peer(base_url, http).open(
            params={"user": "ada", "room": "r1"},
            headers={"X-App": "demo", "X-Role": "admin", "User-Agent": "peer/1.0"},
            cookies={"flavour": "oat", "theme": "dark"},
        )
        peer.receive_until(lambda p: p.messages, what="the greeting")
        assert peer.datas()[0] == {
            "hello": "welcome",
            "identity": {"user": "ada", "role": "admin"},
            "query": {"user": "ada", "room": "r1"},
            "x_app": "demo",
            "cookies": {"flavour": "oat", "theme": "dark"},
            "client": "127.0.0.1",
            "user_agent": "peer/1.0",
        }
        assert len(seen) == 1 and seen[0].path == "/poll" and seen[0].method == "GET"


def _refusing_hook(request: RequestInfo) -> Any:
    token = request.headers.get("x-token")
    if token is None:
        raise Unauthorized("send an X-Token header")
    if token == "banned":
        raise Forbidden("this token is banned")
    if token == "refuse":
        return False
    return {"user": token}


async def _refusing_hook_async(request: RequestInfo) -> Any:
    await asyncio.sleep(0)  # a real await: the hook runs on the handler's loop
    return _refusing_hook(request)


@parametrize_adapters
@parametrize_kinds
@pytest.mark.parametrize("hook", ["sync", "async"])
def test_auth_hook_refuses_with_an_error_body_and_creates_no_session(hook: str, kind: str, adapter: str) -> None:
    record = Record()
    authenticate = _refusing_hook if hook == "sync" else _refusing_hook_async
    with running(make_target(kind, record), adapter, authenticate=authenticate) as (handler, base_url, http):
        refusals = [
            ({}, 401, {"error": "unauthorized", "message": "send an X-Token header"}),
            ({"X-Token": "banned"}, 403, {"error": "forbidden", "message": "this token is banned"}),
            ({"X-Token": "refuse"}, 403, None),
        ]
        for headers, status, body in refusals:
            response = http.get(base_url + "/poll", headers=headers, timeout=REQUEST_TIMEOUT)
            assert response.status_code == status, response.text
            assert response.headers["Content-Type"].startswith("application/json")
            assert "Pollsession-Id" not in response.headers
            document = response.json()
            if body is not None:
                assert document == body
            else:
                assert document["error"] == "forbidden" and document["message"]
        assert handler.session_count() == 0 and record.started == []
        peer = Peer(base_url, http).open(headers={"X-Token": "ada"})
        peer.receive_until(lambda p: p.messages, what="the greeting")
        assert peer.datas()[0]["identity"] == {"user": "ada"}
        assert handler.session_count() == 1 and record.started == [peer.sid]


# -- "authenticate with your first message, within N seconds" --------------------

AUTH_DEADLINE = 500 * MS
TOKEN = "let-me-in"


async def auth_first(session: Session) -> None:
    try:
        token = await session.receive(timeout=AUTH_DEADLINE)
    except asyncio.TimeoutError:
        await session.close(1008, "no token in time")
        return
    if token != TOKEN:
        await session.close(1008, "bad token")
        return
    session.identity = {"token": token}
    await session.send("authenticated")
    async for data in session:
        await session.send(data)


class AuthFirst(SessionHandler):
    """The same pattern with callbacks: a deadline task armed in on_connect."""

    async def on_connect(self) -> None:
        self.authenticated = False
        self.deadline = asyncio.get_running_loop().create_task(self._close_at_deadline())

    async def _close_at_deadline(self) -> None:
        await asyncio.sleep(AUTH_DEADLINE)
        await self.close(1008, "no token in time")

    async def on_receive(self, data: Any) -> None:
        if self.authenticated:
            await self.send(data)
            return
        self.deadline.cancel()
        if data != TOKEN:
            await self.close(1008, "bad token")
            return
        self.authenticated = True
        self.session.identity = {"token": data}
        await self.send("authenticated")

    async def on_disconnect(self, code: int) -> None:
        self.deadline.cancel()


@parametrize_adapters
@parametrize_kinds
def test_first_message_must_be_a_valid_token_within_the_deadline(kind: str, adapter: str) -> None:
    target = auth_first if kind == "function" else AuthFirst
    with running(target, adapter) as (handler, base_url, http):
        # The punctual client opens first, so its deadline has passed too once
        # the silent client's has.
        punctual = Peer(base_url, http).open()
        opened = time.monotonic()
        silent = Peer(base_url, http).open()
        liar = Peer(base_url, http).open()
        punctual.send(TOKEN)
        liar.send("guess")
        punctual.receive_until(lambda p: p.datas() == ["authenticated"], what="the token to be accepted")
        assert liar.receive_close() == {"code": 1008, "reason": "bad token"}
        assert silent.receive_close(timeout=AUTH_DEADLINE + 3000 * MS) == {"code": 1008, "reason": "no token in time"}
        assert time.monotonic() - opened >= AUTH_DEADLINE
        assert silent.datas() == [] and liar.datas() == []
        # Past every deadline, the punctual client's session is open and works.
        punctual.send("ping")
        punctual.receive_until(lambda p: p.datas() == ["authenticated", "ping"], what="the echo")
        assert punctual.closed is None
        session = handler.get_session(punctual.sid)
        assert session is not None and not session.closed


# -- class decode modes -----------------------------------------------------------

DECODE_CASES: dict[str, tuple[list[Any], list[tuple[str, Any]]]] = {
    # mode: (values sent, (type, value) echoed back, which shows what on_receive got)
    "auto": (["t", b"\x00b", {"k": [1]}], [("text", "t"), ("binary", b"\x00b"), ("json", {"k": [1]})]),
    "text": (["t", "café".encode(), {"k": [1, "é"]}, 7],
             [("text", "t"), ("text", "café"), ("text", '{"k":[1,"é"]}'), ("text", "7")]),
    "bytes": (["é", b"\x00bin", [1, 2], {"a": None}],
              [("binary", "é".encode()), ("binary", b"\x00bin"), ("binary", b"[1,2]"), ("binary", b'{"a":null}')]),
    "json": (['{"a": 1}', b"[1, 2]", 7, " [true] "],
             [("json", {"a": 1}), ("json", [1, 2]), ("json", 7), ("json", [True])]),
}


@parametrize_adapters
@pytest.mark.parametrize("decode", sorted(DECODE_CASES))
def test_class_decode_modes(decode: str, adapter: str) -> None:
    record = Record()
    sent, expected = DECODE_CASES[decode]
    with running(make_target("class", record, decode=decode), adapter) as (_, base_url, http):
        peer = Peer(base_url, http).open()
        peer.send(*sent)
        peer.receive_until(lambda p: len(p.messages) == 1 + len(sent), what="every echo")
        assert peer.typed()[1:] == expected
        assert peer.closed is None


@parametrize_adapters
def test_bytes_decode_hands_any_binary_through(adapter: str) -> None:
    record = Record()
    with running(make_target("class", record, decode="bytes"), adapter) as (_, base_url, http):
        peer = Peer(base_url, http).open()
        peer.send(b"\x00\xff\xfe\x80", "after")
        peer.receive_until(lambda p: len(p.messages) == 3, what="both echoes")
        assert peer.typed()[1:] == [("binary", b"\x00\xff\xfe\x80"), ("binary", b"after")]


UNDECODABLE: dict[str, list[Any]] = {
    "text": [b"\xff\xfe not utf-8", b"\xed\xa0\x80"],  # the second is an encoded surrogate
    "json": ["not json", b"\xff", b'{"a": '],
}


@parametrize_adapters
@pytest.mark.parametrize("decode", sorted(UNDECODABLE))
def test_undecodable_message_closes_with_1007(decode: str, adapter: str) -> None:
    record = Record()
    with running(make_target("class", record, decode=decode), adapter) as (_, base_url, http):
        for bad in UNDECODABLE[decode]:
            peer = Peer(base_url, http).open()
            peer.send("[1]", bad)
            assert peer.receive_close() == {"code": 1007, "reason": f"message cannot be decoded as {decode}"}, bad
            assert peer.datas()[1:] == (["[1]"] if decode == "text" else [[1]])
            wait_until(lambda: peer.sid in record.codes, what="on_disconnect")
            assert record.codes[peer.sid] == 1007
        assert len(record.received) == len(UNDECODABLE[decode])  # only the good first messages


@parametrize_adapters
def test_json_decode_is_as_strict_as_the_json_type(adapter: str) -> None:
    record = Record()
    closes = {}
    with running(make_target("class", record, decode="json"), adapter) as (_, base_url, http):
        for bad in ["NaN", "[Infinity]", "-Infinity", "1e400", '"\\ud800"', b"[NaN]"]:
            peer = Peer(base_url, http).open()
            peer.send(bad)
            closes[repr(bad)] = peer.receive_close()
    assert record.received == []
    assert all(closed == {"code": 1007, "reason": "message cannot be decoded as json"}
               for closed in closes.values()), closes


@parametrize_adapters
def test_class_target_gets_on_disconnect_1011_when_a_callback_raises(adapter: str) -> None:
    record = Record()
    with running(make_target("class", record), adapter) as (_, base_url, http):
        peer = Peer(base_url, http).open()
        peer.send("raise")
        assert peer.receive_close() == {"code": 1011, "reason": ""}
        wait_until(lambda: peer.sid in record.codes, timeout=500 * MS, what="on_disconnect")
        assert record.codes[peer.sid] == 1011


# -- server push ---------------------------------------------------------------------

TICK = 20 * MS


def ticking_target(kind: str) -> Any:
    """Echoes, and pushes ``{"tick": n}`` every TICK from a task of its own session."""

    async def ticks(session: Session) -> None:
        for n in itertools.count():
            await session.send({"tick": n})
            await asyncio.sleep(TICK)

    if kind == "function":
        async def target(session: Session) -> None:
            ticker = asyncio.create_task(ticks(session))
            try:
                async for data in session:
                    await session.send(data)
            finally:
                ticker.cancel()

        return target

    class Ticking(SessionHandler):
        async def on_connect(self) -> None:
            self.ticker = asyncio.create_task(ticks(self.session))

        async def on_receive(self, data: Any) -> None:
            await self.send(data)

        async def on_disconnect(self, code: int) -> None:
            self.ticker.cancel()

    return Ticking


def _pushed(peer: Peer, key: str) -> list[Any]:
    return [d[key] for d in peer.datas() if isinstance(d, dict) and key in d]


@parametrize_adapters
@parametrize_kinds
def test_periodic_push_from_the_session_task(kind: str, adapter: str) -> None:
    with running(ticking_target(kind), adapter) as (_, base_url, http):
        peer = Peer(base_url, http).open()
        peer.receive_until(lambda p: len(_pushed(p, "tick")) >= 3, what="ticks")
        # While the session pushes, requests are served: a push round trip, a new session.
        peer.send("ping")
        peer.receive_until(lambda p: "ping" in p.datas(), what="the echo between ticks")
        other = Peer(base_url, http).open()
        other.receive_until(lambda p: len(_pushed(p, "tick")) >= 3, what="the other session's ticks")
        peer.receive_until(lambda p: len(_pushed(p, "tick")) >= 8, what="more ticks")
        ticks = _pushed(peer, "tick")
        assert ticks == list(range(len(ticks)))
        assert probe(base_url, http)


def probe(base_url: str, http: requests.Session) -> bool:
    response = http.get(base_url + "/poll", params={"test": "1"}, timeout=REQUEST_TIMEOUT)
    return response.status_code == 200 and response.text == "ok"


@parametrize_adapters
@parametrize_kinds
def test_background_task_started_with_submit_pushes_to_every_session(kind: str, adapter: str) -> None:
    record = Record()
    with running(make_target(kind, record), adapter) as (handler, base_url, http):
        first, second = Peer(base_url, http).open(), Peer(base_url, http).open()
        rounds: list[int] = []

        async def newsroom() -> None:
            for n in itertools.count():
                rounds.append(await handler.broadcast({"news": n}))
                await asyncio.sleep(TICK)

        running_task = handler.submit(newsroom())
        cancelled = False
        try:
            for peer in (first, second):
                peer.receive_until(lambda p: len(_pushed(p, "news")) >= 3, what="news")
            # Request handling goes on while the task runs: echo, open, probe.
            first.send("ping")
            first.receive_until(lambda p: "ping" in p.datas(), what="the echo between news")
            late = Peer(base_url, http).open()
            late.receive_until(lambda p: len(_pushed(p, "news")) >= 2, what="news for a late joiner")
            assert probe(base_url, http)
            second.receive_until(lambda p: len(_pushed(p, "news")) >= 6, what="more news")
        finally:
            cancelled = running_task.cancel()
        assert cancelled, running_task.exception()  # it ran until told to stop
        first_news, second_news = _pushed(first, "news"), _pushed(second, "news")
        assert first_news == list(range(len(first_news))) and second_news == list(range(len(second_news)))
        late_news = _pushed(late, "news")
        assert late_news == list(range(late_news[0], late_news[0] + len(late_news)))
        assert all(count >= 2 for count in rounds) and max(rounds) == 3
        assert first.closed is None and second.closed is None

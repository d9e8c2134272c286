"""Broadcast and ``send_to`` over real HTTP, on every adapter.

The rule under test (``pollsession.server.rooms``): a broadcast is appended to every
member's outbox in one step, so every member receives every broadcast exactly
once and in the same order as every other member, whichever thread (or the
loop) broadcast it; a member whose outbox is full is closed with 1008 "too slow
for a broadcast" and the others go on. Clients speak the protocol by hand
(:class:`tests.test_targets.Peer`), acknowledging everything they receive on
every poll, so a message sent twice or a gap fails at once.

Flask's werkzeug server gives each connection a thread and a held poll keeps
its thread, so the 500-session test drives its sessions from a bounded pool of
client threads (one keep-alive connection each) with short polls (``wait=0``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from pollsession import HttpHandler, Session, SessionClosed
from tests.test_targets import REQUEST_TIMEOUT, Peer
from tests.utils import ALL_ADAPTERS, MS, serve, wait_until

parametrize_adapters = pytest.mark.parametrize("adapter", ALL_ADAPTERS)


def member_target(codes: dict[str, int | None]) -> Callable[[Session], Any]:
    """Joins the room named by ``?room=``; ``"close"`` makes the server close with 4000.

    Records in ``codes`` the close code the coroutine saw when its session ended.
    """

    async def member(session: Session) -> None:
        room = session.request.query.get("room")
        if room:
            session.join(room)
        async for data in session:
            if data == "close":
                await session.close(4000, "asked to")
        codes[session.id] = session.close_code

    return member


async def _room_size(handler: HttpHandler, room: str) -> int:
    return len(handler._registry.rooms.members(room))


def room_size(handler: HttpHandler, room: str) -> int:
    return handler.submit(_room_size(handler, room)).result()


class ClientThreads:
    """A bounded pool of client threads, each with its own keep-alive ``requests.Session``."""

    def __init__(self, workers: int) -> None:
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="client")
        self.workers = workers

    def http(self) -> requests.Session:
        """This thread's HTTP session; a pooled peer must use it before each request."""
        http = getattr(self._local, "http", None)
        if http is None:
            http = self._local.http = requests.Session()
            with self._lock:
                self._sessions.append(http)
        return http

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for http in self._sessions:
            http.close()


@contextlib.contextmanager
def client_threads(workers: int) -> Iterator[ClientThreads]:
    threads = ClientThreads(workers)
    try:
        yield threads
    finally:
        threads.close()


def check_same_order(peers: list[Peer], expected: list[Any]) -> list[Any]:
    """Every peer got exactly ``expected``, once each, in one order; return that order."""
    order = peers[0].datas()
    assert sorted(map(repr, order)) == sorted(map(repr, expected))
    for peer in peers[1:]:
        assert peer.datas() == order, f"session {peer.sid[:8]} received another order"
    return order


def subsequence(order: list[Any], key: Callable[[Any], bool]) -> list[Any]:
    return [d for d in order if key(d)]


# -- (a) 500 sessions ------------------------------------------------------------------

SESSIONS = 500
LOOP_BROADCASTS = 20
BROADCAST_THREADS = 4
PER_THREAD = 5
TOTAL = LOOP_BROADCASTS + BROADCAST_THREADS * PER_THREAD


@parametrize_adapters
def test_broadcast_to_500_sessions_arrives_once_each_in_one_order(adapter: str) -> None:
    codes: dict[str, int | None] = {}
    handler = HttpHandler(member_target(codes), shutdown_timeout=2)
    with serve(adapter, handler) as base_url, client_threads(8) as clients:

        def open_peer(room: str) -> Peer:
            return Peer(base_url, clients.http()).open(params={"room": room})

        peers = list(clients.pool.map(open_peer, ["all"] * SESSIONS))
        outsider = open_peer("elsewhere")
        wait_until(lambda: room_size(handler, "all") == SESSIONS, what="every member to join")
        assert handler.session_count() == SESSIONS + 1

        # Collectors short-poll their share of the sessions while the broadcasts go out.
        deadline = time.monotonic() + 15000 * MS

        def collect(share: list[Peer]) -> None:
            pending = share
            while pending:
                assert time.monotonic() < deadline, f"{len(pending)} sessions still miss messages"
                for peer in pending:
                    peer.http = clients.http()
                    peer.poll(wait=0)
                pending = [peer for peer in pending if len(peer.messages) < TOTAL]

        collectors = [clients.pool.submit(collect, peers[i::clients.workers]) for i in range(clients.workers)]

        async def from_loop() -> list[int]:
            counts = []
            for n in range(LOOP_BROADCASTS):
                counts.append(await handler.broadcast({"loop": n}, room="all"))
                await asyncio.sleep(0)  # let requests in between broadcasts
            return counts

        start = threading.Barrier(BROADCAST_THREADS + 1)

        def from_thread(t: int) -> list[int]:
            start.wait()
            return [handler.broadcast_threadsafe({"thread": t, "n": n}, room="all").result()
                    for n in range(PER_THREAD)]

        with concurrent.futures.ThreadPoolExecutor(BROADCAST_THREADS) as broadcasters:
            threaded = [broadcasters.submit(from_thread, t) for t in range(BROADCAST_THREADS)]
            start.wait()
            looped = handler.submit(from_loop())
            counts = looped.result(timeout=10) + [c for f in threaded for c in f.result(timeout=10)]
        assert counts == [SESSIONS] * TOTAL
        for collector in collectors:
            collector.result(timeout=20)

        # Nothing more comes, not even again: one more poll of each, acknowledging everything.
        def sweep(peer: Peer) -> dict[str, Any]:
            peer.http = clients.http()
            return peer.poll(wait=0)

        assert all(document == {"messages": [], "closed": None} for document in clients.pool.map(sweep, peers))
        outsider.http = clients.http()
        assert outsider.poll(wait=0)["messages"] == []

    order = check_same_order(peers, [*({"loop": n} for n in range(LOOP_BROADCASTS)),
                                     *({"thread": t, "n": n} for t in range(BROADCAST_THREADS)
                                       for n in range(PER_THREAD))])
    assert subsequence(order, lambda d: "loop" in d) == [{"loop": n} for n in range(LOOP_BROADCASTS)]
    for t in range(BROADCAST_THREADS):
        assert subsequence(order, lambda d: d.get("thread") == t) == [{"thread": t, "n": n} for n in range(PER_THREAD)]
    assert all(peer.closed is None for peer in peers)


# -- (b) a stalled member ---------------------------------------------------------------


@parametrize_adapters
def test_a_stalled_member_is_closed_with_1008_and_the_others_get_everything(adapter: str) -> None:
    codes: dict[str, int | None] = {}
    limit, broadcasts, members = 4, 10, 4
    handler = HttpHandler(member_target(codes), outbox_limit=limit, shutdown_timeout=2)
    with serve(adapter, handler) as base_url, client_threads(3) as clients:
        stalled = Peer(base_url, clients.http()).open(params={"room": "r"})
        active = list(clients.pool.map(lambda _: Peer(base_url, clients.http()).open(params={"room": "r"}), range(3)))
        wait_until(lambda: room_size(handler, "r") == members, what="every member to join")

        def collect(peer: Peer) -> None:
            peer.http = clients.http()
            peer.receive_until(lambda p: len(p.messages) == broadcasts, timeout=10000 * MS, what="every broadcast")

        collectors = [clients.pool.submit(collect, peer) for peer in active]
        counts = []
        for n in range(broadcasts):
            counts.append(handler.broadcast_threadsafe({"n": n}, room="r").result(timeout=5))
            # The active members keep up: each has received this one before the next goes out.
            wait_until(lambda: all(len(p.messages) > n or c.done() for p, c in zip(active, collectors)),
                       what=f"broadcast {n} to reach the active members")
        for collector in collectors:
            collector.result(timeout=10)
        # The stalled member never polled: its outbox filled with the first `limit`
        # broadcasts, and the next one closed it instead of waiting for it.
        assert counts == [members] * limit + [members - 1] * (broadcasts - limit)
        assert stalled.poll(wait=0) == {
            "messages": [{"seq": n + 1, "type": "json", "data": {"n": n}} for n in range(limit)],
            "closed": {"code": 1008, "reason": "too slow for a broadcast"},
        }
        wait_until(lambda: stalled.sid in codes, what="the stalled member's coroutine to end")
        assert codes[stalled.sid] == 1008
        assert room_size(handler, "r") == members - 1
        for peer in active:
            assert peer.datas() == [{"n": n} for n in range(broadcasts)]
            assert peer.poll(wait=0) == {"messages": [], "closed": None}


# -- (c) many threads at once -------------------------------------------------------------

THREADS = 8
PER_BURST = 50
MEMBERS = 10


@parametrize_adapters
def test_threadsafe_broadcasts_from_many_threads_at_once(adapter: str) -> None:
    codes: dict[str, int | None] = {}
    # Room for every broadcast, so that slow collectors are never closed as too slow.
    handler = HttpHandler(member_target(codes), outbox_limit=THREADS * PER_BURST + 10, shutdown_timeout=2)
    with serve(adapter, handler) as base_url, client_threads(MEMBERS) as clients:
        peers = list(clients.pool.map(lambda _: Peer(base_url, clients.http()).open(params={"room": "r"}),
                                      range(MEMBERS)))
        wait_until(lambda: room_size(handler, "r") == MEMBERS, what="every member to join")

        def collect(peer: Peer) -> None:
            peer.http = clients.http()
            peer.receive_until(lambda p: len(p.messages) >= THREADS * PER_BURST, timeout=20000 * MS,
                               what="every broadcast")

        collectors = [clients.pool.submit(collect, peer) for peer in peers]
        start = threading.Barrier(THREADS)

        def burst(t: int) -> list[int]:
            start.wait()  # every thread broadcasts at once
            futures = [handler.broadcast_threadsafe({"t": t, "n": n}, room="r") for n in range(PER_BURST)]
            return [future.result(timeout=10) for future in futures]

        with concurrent.futures.ThreadPoolExecutor(THREADS) as broadcasters:
            counts = list(itertools.chain.from_iterable(broadcasters.map(burst, range(THREADS))))
        assert counts == [MEMBERS] * (THREADS * PER_BURST)
        for collector in collectors:
            collector.result(timeout=30)
        for peer in peers:
            assert peer.poll(wait=0) == {"messages": [], "closed": None}

    order = check_same_order(peers, [{"t": t, "n": n} for t in range(THREADS) for n in range(PER_BURST)])
    for t in range(THREADS):
        # One thread's futures were submitted in order, so its broadcasts keep that order.
        assert subsequence(order, lambda d: d["t"] == t) == [{"t": t, "n": n} for n in range(PER_BURST)]


# -- (d) send_to from a web framework's request handler ---------------------------------


def send_from_request_thread(handler: HttpHandler, sid: str, data: Any) -> tuple[int, dict[str, Any]]:
    """What a view does to reach one session: submit ``send_to`` to the handler's loop and wait."""
    try:
        handler.submit(handler.send_to(sid, data)).result(timeout=10)
    except KeyError:
        return 404, {"error": "no such session"}
    except SessionClosed as closed:
        return 409, {"error": "closed", "code": closed.code}
    return 200, {"sent": True, "thread": threading.current_thread().name}


def add_notify_route(adapter: str, handler: HttpHandler) -> Callable[[Any], None]:
    """``POST /notify {"sid", "data"}``: a Flask view (a werkzeug thread), a Starlette or a Tornado handler."""
    if adapter == "flask":
        def extra_flask(app: Any) -> None:
            from flask import jsonify, request

            def notify() -> Any:
                body = request.get_json()
                status, answer = send_from_request_thread(handler, body["sid"], body["data"])
                return jsonify(answer), status

            app.add_url_rule("/notify", view_func=notify, methods=["POST"])

        return extra_flask
    if adapter == "asgi":
        def extra_asgi(routes: list[Any]) -> None:
            from starlette.requests import Request
            from starlette.responses import JSONResponse
            from starlette.routing import Route

            async def notify(request: Request) -> JSONResponse:
                body = await request.json()
                try:  # the sessions run on the server's own loop: a direct await is the way there
                    await handler.send_to(body["sid"], body["data"])
                except KeyError:
                    return JSONResponse({"error": "no such session"}, 404)
                except SessionClosed as closed:
                    return JSONResponse({"error": "closed", "code": closed.code}, 409)
                return JSONResponse({"sent": True, "thread": threading.current_thread().name})

            routes.append(Route("/notify", notify, methods=["POST"]))

        return extra_asgi

    import tornado.escape
    import tornado.web

    class Notify(tornado.web.RequestHandler):
        async def post(self) -> None:
            body = tornado.escape.json_decode(self.request.body)
            if body.get("direct"):
                # send_to must run on the handler's loop, not on Tornado's: it says how to get there.
                try:
                    await handler.send_to(body["sid"], body["data"])
                except RuntimeError as error:
                    self.set_status(500)
                    self.finish({"error": str(error)})
                    return
            try:
                await asyncio.wrap_future(handler.submit(handler.send_to(body["sid"], body["data"])))
            except KeyError:
                self.set_status(404)
                self.finish({"error": "no such session"})
                return
            except SessionClosed as closed:
                self.set_status(409)
                self.finish({"error": "closed", "code": closed.code})
                return
            self.finish({"sent": True, "thread": threading.current_thread().name})

    def extra_tornado(routes: list[Any]) -> None:
        routes.append((r"/notify", Notify))

    return extra_tornado


async def _waiting_senders(handler: HttpHandler, sid: str) -> int:
    channel = handler._registry.channel(sid)
    return channel.senders_waiting() if channel is not None else -1


@parametrize_adapters
def test_send_to_by_id_from_a_request_handler(adapter: str) -> None:
    codes: dict[str, int | None] = {}
    handler = HttpHandler(member_target(codes), outbox_limit=2, shutdown_timeout=2)
    with serve(adapter, handler, extra=add_notify_route(adapter, handler)) as base_url, \
            requests.Session() as http:

        def notify(sid: str, data: Any, **extra: Any) -> requests.Response:
            return http.post(base_url + "/notify", json={"sid": sid, "data": data, **extra}, timeout=REQUEST_TIMEOUT)

        target, bystander, closer = (Peer(base_url, http).open() for _ in range(3))
        response = notify(target.sid, {"to": "target"})
        assert response.status_code == 200, response.text
        assert response.json()["thread"] != "pollsession-loop"
        target.receive_until(lambda p: p.messages, what="the message sent to it")
        assert target.datas() == [{"to": "target"}]
        assert bystander.poll(wait=0)["messages"] == []

        assert notify("no-such-session", "x").status_code == 404
        closer.send("close")
        assert closer.receive_close() == {"code": 4000, "reason": "asked to"}
        # Closed but not yet forgotten (the client has not acknowledged the close): SessionClosed.
        response = notify(closer.sid, "too late")
        assert (response.status_code, response.json()) == (409, {"error": "closed", "code": 4000})
        bystander.delete()
        assert notify(bystander.sid, "gone").status_code == 404
        if adapter == "tornado":  # with its own loop thread (on the same loop, a direct await is right)
            response = notify(target.sid, "direct", direct=True)
            assert response.status_code == 500 and "handler.submit(handler.send_to" in response.json()["error"]

        # send_to waits for room like Session.send: with the outbox full, the request
        # waits until the client acknowledges, then the message goes out.
        assert notify(target.sid, 1).status_code == 200  # outbox: {"to"}, 1
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(notify, target.sid, 2)
            wait_until(lambda: handler.submit(_waiting_senders(handler, target.sid)).result() == 1,
                       what="send_to to wait for room")
            assert not waiting.done()
            target.receive_until(lambda p: p.datas()[-1:] == [2], what="the waiting message")
            assert waiting.result(timeout=5).status_code == 200
        assert target.datas() == [{"to": "target"}, 1, 2]

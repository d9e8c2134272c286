"""A small HTTP proxy on 127.0.0.1 that breaks connections on purpose.

The client tests put it between :class:`pollsession.client.Client` and a real
server to check that nothing is lost or doubled when the network misbehaves::

    with FaultProxy(upstream_url, seed=7) as proxy:
        proxy.plan = FaultPlan(drop_response=0.1, reset_request=0.05)
        client = Client(proxy.url + "/poll")
        ...
        assert proxy.count("drop_response", "POST") > 0

Each request (one per client connection: every answer is sent with
``Connection: close``) draws one fate from a seeded :class:`random.Random`
(one per method, so the n-th POST meets the same fate in every run):

- ``reset_request``: read the request head, then reset the connection (RST)
  before forwarding anything: the server never sees it;
- ``drop_response``: forward the request, read the server's whole answer, then
  reset the client's connection without sending it: the server acted on it,
  the client cannot know;
- ``truncate_response``: like ``drop_response``, but send the first half of the
  answer before the reset;
- otherwise the answer is relayed as is.

Only requests that carry a ``Pollsession-Id`` and whose method is in
``FaultPlan.methods`` are eligible (by default: polls, POSTs and DELETEs, not
the opening GET; :meth:`FaultProxy.reset_next_opens` fails opening requests).
:meth:`FaultProxy.drop_answers_containing` drops answers by their content.
``counts`` records every fate and HTTP status, per method.

Bounded: at most ``max_connections`` connections are served at once (the rest
wait in the listen backlog) and every socket has a timeout. :meth:`stop`
closes the listener and every open socket, then joins every thread.
"""

from __future__ import annotations

import collections
import random
import selectors
import socket
import struct
import threading
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit

__all__ = ["FaultPlan", "FaultProxy"]

_HEAD_LIMIT = 64 * 1024


@dataclass(frozen=True)
class FaultPlan:
    """Probabilities of each fault for an eligible request (they must sum to at most 1)."""

    reset_request: float = 0.0
    drop_response: float = 0.0
    truncate_response: float = 0.0
    methods: frozenset[str] = field(default_factory=lambda: frozenset({"GET", "POST", "DELETE"}))

    def __post_init__(self) -> None:
        if self.reset_request + self.drop_response + self.truncate_response > 1:
            raise ValueError("fault probabilities add up to more than 1")


class FaultProxy:
    """A threaded fault-injecting HTTP/1.1 proxy; see the module docstring."""

    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        plan: FaultPlan | None = None,
        max_connections: int = 32,
        io_timeout: float = 30.0,
    ) -> None:
        self.upstream = upstream
        self.plan = plan or FaultPlan()
        self.counts: collections.Counter[str] = collections.Counter()
        self._seed = seed
        self._rngs: dict[str, random.Random] = {}
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._io_timeout = io_timeout
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._stopping = False
        self._opens_to_reset = 0
        self._drop_matching: tuple[bytes, int] = (b"", 0)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._acceptor = threading.Thread(target=self._accept_loop, name="fault-proxy-accept", daemon=True)
        self._acceptor.start()

    @property
    def upstream(self) -> str:
        """The server's base URL; assign to send later requests elsewhere (a "restarted" server)."""
        return self._upstream_url

    @upstream.setter
    def upstream(self, url: str) -> None:
        parts = urlsplit(url)
        assert parts.scheme == "http" and parts.hostname, url
        self._upstream_url = url
        self._upstream_addr = (parts.hostname, parts.port or 80)

    def reset_next_opens(self, count: int) -> None:
        """Reset the next ``count`` opening requests (``GET`` without a session id)."""
        with self._lock:
            self._opens_to_reset = count

    def drop_answers_containing(self, marker: bytes, count: int) -> None:
        """Drop (after the server acted) the next ``count`` answers whose bytes contain ``marker``."""
        with self._lock:
            self._drop_matching = (marker, count)

    def _drops_by_content(self, answer: bytes) -> bool:
        with self._lock:
            marker, left = self._drop_matching
            if left > 0 and marker in answer:
                self._drop_matching = (marker, left - 1)
                return True
            return False

    def count(self, fate: str, method: str | None = None) -> int:
        """How many requests met ``fate`` (a fault name, ``relayed`` or ``status_NNN``)."""
        with self._lock:
            if method is not None:
                return self.counts[f"{fate}:{method}"]
            return sum(n for key, n in self.counts.items() if key.split(":")[0] == fate)

    def faults(self) -> int:
        """How many faults were injected in all."""
        return sum(self.count(f) for f in ("reset_request", "drop_response", "truncate_response"))

    def stop(self) -> None:
        """Close the listener and every connection, and join every thread. Idempotent."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        self._wake_w.send(b"x")
        self._shutdown_sockets()  # frees the slots a blocked acceptor may be waiting for
        self._acceptor.join(10)
        self._shutdown_sockets()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(10)
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _shutdown_sockets(self) -> None:
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                self._slots.acquire()
                ready = [key.fileobj for key, _ in selector.select()]
                if self._wake_r in ready:
                    self._slots.release()
                    return
                try:
                    conn, _ = self._listener.accept()
                except (BlockingIOError, InterruptedError):
                    self._slots.release()
                    continue
                conn.setblocking(True)
                conn.settimeout(self._io_timeout)
                if self._stopping:
                    conn.close()
                    self._slots.release()
                    return
                thread = threading.Thread(target=self._serve, args=(conn,), name="fault-proxy-conn", daemon=True)
                with self._lock:
                    self._sockets.add(conn)
                    self._threads.add(thread)
                thread.start()

    def _serve(self, conn: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            head, body = _read_request(conn)
            if head is None:
                return
            method, has_sid = _describe(head)
            fate = self._draw(method, has_sid)
            if fate == "reset_request":
                self._record(fate, method)
                _reset(conn)
                return
            upstream = socket.create_connection(self._upstream_addr, timeout=self._io_timeout)
            with self._lock:
                self._sockets.add(upstream)
            upstream.sendall(_with_connection_close(head) + body)
            answer = _read_all(upstream)
            status = answer[9:12].decode("ascii", "replace")
            self._record(f"status_{status}", method)
            if fate == "drop_response" or self._drops_by_content(answer):
                self._record("drop_response", method)
                _reset(conn)
                return
            answer = _with_connection_close(answer)
            if fate == "truncate_response":
                self._record(fate, method)
                conn.sendall(answer[: len(answer) // 2])
                _reset(conn)
                return
            self._record("relayed", method)
            conn.sendall(answer)
        except OSError:
            self._record("io_error", None)
        finally:
            for sock in (conn, upstream):
                if sock is not None:
                    with self._lock:
                        self._sockets.discard(sock)
                    sock.close()
            with self._lock:
                self._threads.discard(threading.current_thread())
            self._slots.release()

    def _draw(self, method: str, has_sid: bool) -> str:
        plan = self.plan
        with self._lock:
            # One stream per method: the n-th POST meets the same fate in every run, however
            # the threads interleave, so a failure can be replayed with the same seed.
            rng = self._rngs.setdefault(method, random.Random(f"{self._seed}:{method}"))
            roll = rng.random()
            if not has_sid and method == "GET" and self._opens_to_reset > 0:
                self._opens_to_reset -= 1
                return "reset_request"
        if not has_sid or method not in plan.methods:
            return "relay"
        for fate, share in (
            ("reset_request", plan.reset_request),
            ("drop_response", plan.drop_response),
            ("truncate_response", plan.truncate_response),
        ):
            if roll < share:
                return fate
            roll -= share
        return "relay"

    def _record(self, fate: str, method: str | None) -> None:
        with self._lock:
            self.counts[f"{fate}:{method}"] += 1


def _read_request(conn: socket.socket) -> tuple[bytes | None, bytes]:
    """Read one request: its head (up to the blank line) and a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
        if len(data) > _HEAD_LIMIT:
            raise OSError("request head too large")
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        elif name.strip().lower() == b"transfer-encoding":
            raise OSError("chunked requests are not supported by the test proxy")
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            raise OSError("client closed in the middle of a body")
        body += chunk
    return head + b"\r\n\r\n", body


def _describe(head: bytes) -> tuple[str, bool]:
    lines = head.split(b"\r\n")
    method = lines[0].split(b" ", 1)[0].decode("ascii", "replace")
    has_sid = any(
        line.partition(b":")[0].strip().lower() == b"pollsession-id" and line.partition(b":")[2].strip()
        for line in lines[1:]
    )
    return method, has_sid


def _with_connection_close(message: bytes) -> bytes:
    """Replace any Connection/Keep-Alive header of an HTTP head with ``Connection: close``."""
    head, sep, body = message.partition(b"\r\n\r\n")
    lines = [
        line
        for line in head.split(b"\r\n")
        if line.partition(b":")[0].strip().lower() not in (b"connection", b"keep-alive")
    ]
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + sep + body


def _read_all(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _reset(sock: socket.socket) -> None:
    """Abort the connection with a TCP RST instead of an orderly FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()

"""A seeded wire fuzzer against a real server of every adapter, with a bystander session that must not notice.

Two tests per adapter, each on a fresh echo server built with the limits of
``tests/wire_fuzz.py`` (small bodies, short polls):

- ``test_wire_fuzz``: ``WORKERS`` threads, each with its own keep-alive
  ``requests.Session`` and its own ``random.Random(f"{seed}:{worker}")``,
  send ``REQUESTS`` requests in all (methods, session ids, origins, query
  strings, media types, bodies; see ``Fuzzer``). Every answer is checked by
  ``wire_fuzz.check`` (no 5xx, JSON errors, the shapes of PROTOCOL.md
  sections 3-5, CORS headers), against the statuses the spec leaves
  (``wire_fuzz.expect``), and against the history of the session it names
  (``Owned.apply``: each pushed message is echoed once, in order, unaltered).
- ``test_raw_framing_fuzz``: requests spoken byte by byte on raw sockets
  (broken chunked framing, ``Content-Length`` mismatches, header and
  request-line garbage), each case with a socket deadline. A request whose
  head is valid HTTP/1.1 reaches the library and is held to the same rules
  ("strict"); one whose head is not is the HTTP server's business, and only
  has to get an answer below 500 or a closed connection ("lenient").

Meanwhile a bystander (``pollsession.client.Client`` with no retries, so a
single 5xx or network error would end it) pushes messages and reads their
echoes, and after the fuzz a fresh session must work. Findings are collected,
not raised one by one, so that one run lists every class of failure with its
shortest reproduction and the seed (``POLLSESSION_FUZZ_SEED``; the request
count is ``POLLSESSION_FUZZ_REQUESTS``).

Nothing waits on luck: workers run a fixed number of requests, the bystander
goes on until the fuzz is done and it has sent ``BYSTANDER_MINIMUM``
messages, every network read has a deadline, and the only durations are
multiples of ``MS``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from pollsession import HttpHandler, MessageType, Session, SessionClosed
from pollsession.client import Client
from tests.utils import ALL_ADAPTERS, MS, RawConnection, serve
from tests.wire_fuzz import ALLOWED_ORIGINS, LIMITS, Answer, Expect, Fuzzer, Owned, Problem, Request, check, expect

SEED = int(os.environ.get("POLLSESSION_FUZZ_SEED", "20240611"))
# Per adapter: 7500 on each of the four keeps the 30000 requests (and the time) of 10000 on each of three.
REQUESTS = int(os.environ.get("POLLSESSION_FUZZ_REQUESTS", "7500"))
WORKERS = 4
RAW_ROUNDS = 6  # each raw case runs this many times (fresh sessions, other variants)
RAW_WORKERS = 3
BYSTANDER_MINIMUM = 100
TIMEOUT = max(10.0, 10_000 * MS)  # bounds a broken server; a working one answers in milliseconds
RAW_TIMEOUT = 5000 * MS
POLL_TIMEOUT = 200 * MS


async def echo(session: Session) -> None:
    """Send every message back with its type: the bystander's and the fuzzer's sessions."""
    while True:
        message = await session.receive_message()
        if message.type is MessageType.JSON:
            await session.send_json(message.data)
        else:
            await session.send(message.data)


def make_handler() -> HttpHandler:
    return HttpHandler(
        echo,
        poll_timeout=POLL_TIMEOUT,
        session_timeout=60_000 * MS,
        shutdown_timeout=1000 * MS,
        max_sessions=100_000,
        allowed_origins=ALLOWED_ORIGINS,
        max_body_size=LIMITS["max_body_size"],
        max_message_size=LIMITS["max_message_size"],
        inbox_limit=LIMITS["inbox_limit"],
        outbox_limit=LIMITS["outbox_limit"],
    )


# -- findings --------------------------------------------------------------------------


@dataclass
class Finding:
    kind: str
    detail: str
    label: str
    repro: str
    worker: str
    index: int


class Findings:
    """Problems of one run, grouped by kind and request class; thread-safe."""

    def __init__(self, adapter: str, seed: int) -> None:
        self.adapter = adapter
        self.seed = seed
        self._lock = threading.Lock()
        self._groups: dict[tuple[str, str], list[Finding]] = collections.defaultdict(list)
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def add(self, problem: Problem, label: str, repro: str, worker: str, index: int) -> None:
        kind, detail = problem
        key = (kind, label)
        with self._lock:
            self.counts[key] += 1
            group = self._groups[key]
            group.append(Finding(kind, detail, label, repro, worker, index))
            group.sort(key=lambda finding: (len(finding.repro), finding.worker, finding.index))
            del group[3:]  # the shortest reproductions are enough

    def __bool__(self) -> bool:
        return bool(self.counts)

    def report(self) -> str:
        lines = [f"{sum(self.counts.values())} problems on {self.adapter} with POLLSESSION_FUZZ_SEED={self.seed} "
                 f"(again: POLLSESSION_FUZZ_SEED={self.seed} pytest tests/test_fuzz.py -k '{self.adapter}]'):"]
        for (kind, label), count in sorted(self.counts.items(), key=lambda item: (item[0][0], -item[1])):
            first = self._groups[(kind, label)][0]
            lines.append(f"- {kind} x{count} [{label}] (worker {first.worker} #{first.index}): {first.detail}")
            lines.append(f"    {first.repro}")
        return "\n".join(lines)


class ErrorLog(logging.Handler):
    """Records ERROR logs of the library and of the servers: an uncaught exception is a finding."""

    NAMES = ("pollsession", "tornado.application", "tornado.general", "werkzeug")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "werkzeug" and not record.exc_info:
            return  # werkzeug's server logs its own refusals (431, a bad request line) at ERROR
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        self.records.append(f"{record.name}: {text[:300]}")


@pytest.fixture
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    loggers = [logging.getLogger(name) for name in ErrorLog.NAMES]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


# -- the bystander -----------------------------------------------------------------------


class Progress:
    """How many fuzz requests have been answered; the bystander paces itself on it."""

    def __init__(self) -> None:
        self._done = 0
        self._finished = False
        self._changed = threading.Condition()

    def step(self) -> None:
        with self._changed:
            self._done += 1
            self._changed.notify_all()

    def finish(self) -> None:
        with self._changed:
            self._finished = True
            self._changed.notify_all()

    def wait_for(self, count: int) -> bool:
        """Wait until ``count`` requests are done (True) or the fuzz has ended (False)."""
        with self._changed:
            self._changed.wait_for(lambda: self._done >= count or self._finished, timeout=TIMEOUT * 60)
            return self._done >= count and not self._finished


class Bystander:
    """A well-behaved client session that pushes messages in bursts and reads each echo, in order.

    Burst ``j`` goes once the fuzz has made ``j * every`` requests, so the
    bursts spread over the whole fuzz, whatever the machine's speed. When the
    fuzz has ended (and at least ``minimum`` messages went), it sends a last
    marker, so that any message echoed twice (or not at all) shows as a
    mismatch before the marker.
    """

    def __init__(self, url: str, minimum: int, progress: Progress, every: int) -> None:
        self.progress = progress
        self.every = every
        # No retries: one 5xx, reset or unreadable answer ends the session with 1006.
        self.client = Client(url, request_timeout=TIMEOUT, max_retries=0, retry_base_delay=100 * MS)
        self.minimum = minimum
        self.sent = 0
        self.sent_during_fuzz = 0
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="fuzz-bystander", daemon=True)
        self._thread.start()

    @staticmethod
    def message(number: int) -> Any:
        kind = number % 3
        if kind == 0:
            return f"bystander {number} \u2603"
        if kind == 1:
            return number.to_bytes(4, "big") + b"\x00\xff"
        return {"n": number, "list": [number, None, True, 0.5], "s": "\U0001d11e"}

    def _exchange(self, messages: list[Any]) -> bool:
        for value in messages:
            self.client.send(value)
        for value in messages:
            try:
                got = self.client.receive(timeout=TIMEOUT)
            except (TimeoutError, SessionClosed) as exc:
                self.error = f"waiting for the echo of {value!r}: {type(exc).__name__}: {exc}"
                return False
            if got != value or type(got) is not type(value):
                self.error = f"expected the echo {value!r}, got {got!r}"
                return False
        return True

    def _run(self) -> None:
        try:
            bursts = 0
            while True:
                during = self.progress.wait_for(bursts * self.every)
                if not during and self.sent >= self.minimum:
                    break
                burst = [self.message(self.sent + k) for k in range(1 + self.sent % 5)]
                if not self._exchange(burst):
                    return
                self.sent += len(burst)
                bursts += 1
                if during:
                    self.sent_during_fuzz = self.sent
            self._exchange(["end of the bystander's messages"])
        except Exception as exc:  # noqa: BLE001 - reported by finish()
            self.error = f"{type(exc).__name__}: {exc}"

    def finish(self, handler: HttpHandler) -> None:
        """After ``progress.finish()``: check that everything came back and the session is open on both sides."""
        self._thread.join(TIMEOUT + 10)
        assert not self._thread.is_alive(), "the bystander is stuck"
        assert self.error is None, f"bystander: {self.error}"
        assert self.client.close_code is None and not self.client.closed, (
            f"the bystander's session ended: {self.client.close_code} {self.client.close_reason!r}")
        sid = self.client.sid
        assert sid is not None
        session = handler.get_session(sid)
        assert session is not None and not session.closed, "the server closed the bystander's session"
        self.client.close()
        assert self.client.close_code == 1000


def check_fresh_session(url: str) -> None:
    """After the fuzz: a new session opens, echoes in order, and closes."""
    with Client(url, request_timeout=TIMEOUT, max_retries=0) as client:
        values = ["after the fuzz", b"\x00bytes", {"json": [1, 2.5, None]}]
        for value in values:
            client.send(value)
        assert [client.receive(timeout=TIMEOUT) for _ in values] == values
    assert client.close_code == 1000


# -- one run: server, bystander, and the checks after ---------------------------------------


@dataclass
class Run:
    adapter: str
    base: str
    handler: HttpHandler
    findings: Findings
    progress: Progress = field(default_factory=Progress)
    stats: collections.Counter[str] = field(default_factory=collections.Counter)  # "METHOD status": count
    coverage: collections.Counter[str] = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    hangs: collections.Counter[str] = field(default_factory=collections.Counter)  # raw case: hangs seen


@contextlib.contextmanager
def fuzz_run(adapter: str, error_log: ErrorLog, expected_requests: int, what: str) -> Iterator[Run]:
    """Serve a fresh echo handler with a bystander; after the block, check the bystander and a new session.

    The block sends its requests (calling ``run.progress.step()`` for each);
    findings are asserted at the end, with the server's ERROR logs among them.
    """
    handler = make_handler()
    with serve(adapter, handler) as base:
        run = Run(adapter, base, handler, Findings(adapter, SEED))
        bystander = Bystander(base + "/poll", BYSTANDER_MINIMUM, run.progress, every=max(1, expected_requests // 500))
        started = time.monotonic()
        try:
            yield run
        finally:
            run.progress.finish()
        elapsed = time.monotonic() - started
        bystander.finish(handler)
        check_fresh_session(base + "/poll")
    sent = sum(run.stats.values())
    print(f"\n[fuzz] {what} {adapter}: {sent} requests in {elapsed:.1f}s ({sent / elapsed:.0f}/s), seed {SEED}; "
          f"the bystander had {bystander.sent_during_fuzz} messages echoed during the fuzz")
    print(f"[fuzz] {what} answers: " + ", ".join(f"{key} x{n}" for key, n in sorted(run.stats.items())))
    if run.coverage:
        print(f"[fuzz] {what} coverage: " + ", ".join(f"{key}: {n}" for key, n in run.coverage.items()))
    for record in error_log.records:
        run.findings.add(("server-logged-error", record), "server log", "(see the log record)", "-", 0)
    assert sent >= expected_requests
    assert not run.findings, run.findings.report()


# -- the wire fuzz --------------------------------------------------------------------------


def prepare(http: requests.Session, base: str, request: Request) -> requests.PreparedRequest:
    url = base + request.path + ("?" + request.query if request.query else "")
    data: Any = request.body
    if request.chunked and request.body is not None:
        data = iter([request.body[: len(request.body) // 2], request.body[len(request.body) // 2:]])
    prepared = http.prepare_request(requests.Request(request.method, url, headers=request.headers, data=data))
    parts = urlsplit(prepared.url or "")
    request.wire_path, request.wire_query = parts.path, parts.query
    return prepared


def fuzz_worker(base: str, worker: int, count: int, run: Run) -> None:
    try:
        _fuzz(base, worker, count, run)
    except Exception as exc:  # a bug of the fuzzer itself: fail the test, with the traceback in the log
        logging.getLogger("pollsession.fuzz").exception("fuzz worker %d crashed", worker)
        run.findings.add(("fuzzer-crashed", f"{type(exc).__name__}: {exc}"), "fuzzer", "-", str(worker), -1)


def _fuzz(base: str, worker: int, count: int, run: Run) -> None:
    findings, stats, progress = run.findings, run.stats, run.progress
    port = urlsplit(base).port
    assert port is not None
    fuzzer = Fuzzer(random.Random(f"{findings.seed}:{worker}"), port)
    name = str(worker)
    with requests.Session() as http:
        http.trust_env = False
        for index in range(count):
            progress.step()
            request = fuzzer.draw()
            prepared = prepare(http, base, request)
            expectation = expect(request)
            try:
                response = http.send(prepared, timeout=TIMEOUT, allow_redirects=False)
            except requests.RequestException as exc:
                # An HTTP server may refuse a head that breaks HTTP syntax by closing; when the body
                # is still unread, that close is a reset which loses its bare 400.
                if not request.http_may_refuse:
                    findings.add(("no-answer", f"{type(exc).__name__}: {str(exc)[:200]}"), request.group,
                                 request.repro(), name, index)
                if request.owned is not None:
                    request.owned.modeled = False
                with run.lock:
                    stats[f"{request.method.upper()[:8]} no-answer"] += 1
                continue
            answer = Answer(response.status_code, {k.lower(): v for k, v in response.headers.items()},
                            response.content)
            if request.http_may_refuse and answer.media_type != "application/json":
                # The HTTP server's own refusal may close the connection without saying so
                # (Tornado's bare 400): start the next request on a fresh one, as a client would
                # after a protocol error, so that the close is not blamed on the next request.
                http.close()
            with run.lock:
                stats[f"{request.method.upper()[:8]} {answer.status}"] += 1
            problems = check(request, answer, expectation, port)
            if request.owned is not None and request.sid_kind == "real":
                problems += request.owned.apply(request, answer)
            for problem in problems:
                if problem[0].startswith("note-"):
                    with run.lock:
                        run.coverage[problem[0]] += 1
                else:
                    findings.add(problem, request.group, request.repro(), name, index)
            opened = (request.method.upper() == "GET" and not request.has_sid and request.wire_path == "/poll"
                      and answer.status == 200 and answer.media_type == "application/json")
            if opened:
                sid = json.loads(answer.body).get("sid")
                if isinstance(sid, str):
                    fuzzer.sessions.append(Owned(sid))
    with run.lock:
        run.coverage["sessions opened"] += len(fuzzer.sessions)
        run.coverage["messages pushed and acknowledged"] += sum(s.received for s in fuzzer.sessions)
        run.coverage["echoes verified"] += sum(s.verified for s in fuzzer.sessions)
        run.coverage["sessions still modeled at the end"] += sum(s.live for s in fuzzer.sessions)


@pytest.mark.parametrize("adapter", ALL_ADAPTERS)
def test_wire_fuzz(adapter: str, error_log: ErrorLog) -> None:
    with fuzz_run(adapter, error_log, REQUESTS, "wire") as run:
        counts = [REQUESTS // WORKERS + (worker < REQUESTS % WORKERS) for worker in range(WORKERS)]
        threads = [threading.Thread(target=fuzz_worker, name=f"fuzz-{worker}", args=(run.base, worker, count, run))
                   for worker, count in enumerate(counts)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


# -- the raw framing fuzz -------------------------------------------------------------------


@dataclass(frozen=True)
class Want:
    """One answer a strict raw case must get: what the request is to the library, the statuses left."""

    method: str = "GET"
    path: str = "/poll"
    query: str = ""
    sid: str = "none"  # what the server sees: none, garbage or real
    origin: str = "none"
    statuses: frozenset[int] | None = None


def want(method: str = "GET", *statuses: int, **fields: Any) -> Want:
    return Want(method, statuses=frozenset(statuses) if statuses else None, **fields)


PUSH_OK = want("POST", 200, sid="real")
PUSH_BAD = want("POST", 400, sid="real")
PUSH_ANY = want("POST", sid="real")
OPENS = want("GET", 200)
POLLS = want("GET", 200, sid="real", query="ack=0&wait=0")
PROBE = want("GET", 200, query="test=1")


class RawContext:
    """What a raw case builds its bytes from: the host, a fresh session of its own, a varied valid body."""

    def __init__(self, base: str, rng: random.Random) -> None:
        parts = urlsplit(base)
        self.base = base
        self.host = f"{parts.hostname}:{parts.port}"
        self.port = parts.port
        self._sid: str | None = None
        text = "".join(rng.choice(("raw", " ", "\u2603", "\U0001d11e", "\\n", "x" * 30)) for _ in range(6))
        self.valid = json.dumps({"messages": [{"seq": 1, "type": "text", "data": text}]}).encode()
        assert len(self.valid) >= 40

    def sid(self) -> str:
        if self._sid is None:
            with requests.Session() as http:
                http.trust_env = False
                response = http.get(self.base + "/poll", timeout=TIMEOUT)
            assert response.status_code == 200, response.text
            self._sid = str(response.json()["sid"])
        return self._sid

    def head(self, method: str, target: str, *lines: str | bytes, version: str = "HTTP/1.1",
             host: bool = True) -> bytes:
        out = f"{method} {target} {version}\r\n".encode("latin-1")
        if host:
            out += f"Host: {self.host}\r\n".encode()
        for line in lines:
            out += (line if isinstance(line, bytes) else line.encode("latin-1")) + b"\r\n"
        return out + b"\r\n"

    def post(self, *framing: str | bytes, sid: str | None = None, content_type: str = "application/json") -> bytes:
        return self.head("POST", "/poll", f"Pollsession-Id: {sid or self.sid()}", f"Content-Type: {content_type}",
                         *framing)

    def post_length(self, body: bytes, length: int | None = None) -> bytes:
        return self.post(f"Content-Length: {len(body) if length is None else length}") + body

    def poll(self, *lines: str | bytes, target: str = "/poll?ack=0&wait=0") -> bytes:
        return self.head("GET", target, f"Pollsession-Id: {self.sid()}", *lines)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def chunked(ctx: RawContext, body: bytes, *, te: str = "Transfer-Encoding: chunked") -> bytes:
    return ctx.post(te) + chunk(body[:20]) + chunk(body[20:]) + b"0\r\n\r\n"


@dataclass(frozen=True)
class RawCase:
    """Bytes to send; ``wants``: the answers the library must give in order ("strict"), or () ("lenient").

    ``half_close``: the request is incomplete on purpose, so the client ends
    its side after sending; a close instead of an answer is then fine.
    """

    name: str
    build: Callable[[RawContext], bytes]
    wants: tuple[Want, ...] = ()
    half_close: bool = False


TE = "Transfer-Encoding: chunked"
LIMIT = LIMITS["max_body_size"]

RAW_CASES: tuple[RawCase, ...] = (
    # Chunked bodies after a valid head: the library reads them and must answer in JSON.
    RawCase("chunked-valid", lambda c: chunked(c, c.valid), (PUSH_OK,)),
    RawCase("chunked-extension", lambda c: c.post(TE) + b"14;name=value\r\n" + c.valid[:20] + b"\r\n"
            + chunk(c.valid[20:]) + b"0\r\n\r\n", (PUSH_OK,)),
    RawCase("chunked-trailer", lambda c: c.post(TE) + chunk(c.valid) + b"0\r\nX-Trailer: 1\r\n\r\n", (PUSH_OK,)),
    RawCase("chunked-upper-hex", lambda c: c.post(TE) + b"1F\r\n" + c.valid[:31] + b"\r\n" + chunk(c.valid[31:])
            + b"0\r\n\r\n", (PUSH_OK,)),
    RawCase("chunked-leading-zeros", lambda c: c.post(TE) + b"%06x\r\n%s\r\n0\r\n\r\n" % (len(c.valid), c.valid),
            (PUSH_OK,)),
    RawCase("chunked-te-capitalized", lambda c: chunked(c, c.valid, te="Transfer-Encoding: Chunked"), (PUSH_ANY,)),
    RawCase("chunked-empty", lambda c: c.post(TE) + b"0\r\n\r\n", (PUSH_BAD,)),
    RawCase("chunked-bad-size", lambda c: c.post(TE) + b"zz\r\n" + c.valid + b"\r\n0\r\n\r\n", (PUSH_BAD,)),
    RawCase("chunked-negative-size", lambda c: c.post(TE) + b"-%x\r\n%s\r\n0\r\n\r\n" % (len(c.valid), c.valid),
            (PUSH_BAD,)),
    RawCase("chunked-0x-size", lambda c: c.post(TE) + b"0x%x\r\n%s\r\n0\r\n\r\n" % (len(c.valid), c.valid),
            (PUSH_ANY,)),
    RawCase("chunked-size-with-space", lambda c: c.post(TE) + b"%x \r\n%s\r\n0\r\n\r\n" % (len(c.valid), c.valid),
            (PUSH_ANY,)),
    RawCase("chunked-data-overrun", lambda c: c.post(TE) + b"3\r\nabcdef\r\n0\r\n\r\n", (PUSH_BAD,)),
    RawCase("chunked-missing-crlf", lambda c: c.post(TE) + b"5\r\nhello0\r\n\r\n", (PUSH_BAD,)),
    RawCase("chunked-cut", lambda c: c.post(TE) + b"%x\r\n" % len(c.valid) + c.valid[:20], (PUSH_BAD,), True),
    RawCase("chunked-no-last-chunk", lambda c: c.post(TE) + chunk(c.valid), (PUSH_BAD,), True),
    RawCase("chunked-huge-size-cut", lambda c: c.post(TE) + b"fffffff\r\n" + c.valid,
            (want("POST", 400, 413, sid="real"),), True),
    RawCase("chunked-size-2**160-cut", lambda c: c.post(TE) + b"1" + b"0" * 40 + b"\r\n" + c.valid,
            (want("POST", 400, 413, sid="real"),), True),
    RawCase("chunked-no-session", lambda c: c.post(TE, sid="garbage-sid") + b"zz\r\n\r\n",
            (want("POST", 410, sid="garbage"),)),
    RawCase("chunked-get", lambda c: c.poll(TE) + chunk(b"abc") + b"0\r\n\r\n", (POLLS,)),
    # Content-Length after a valid head.
    RawCase("length-cut", lambda c: c.post_length(c.valid, len(c.valid) + 40), (PUSH_BAD,), True),
    RawCase("length-short", lambda c: c.post_length(c.valid, 20), (PUSH_BAD,)),
    RawCase("length-zero", lambda c: c.post_length(b""), (PUSH_BAD,)),
    RawCase("length-with-ows", lambda c: c.post(f"Content-Length:   {len(c.valid)}  ") + c.valid, (PUSH_OK,)),
    RawCase("length-leading-zeros", lambda c: c.post(f"Content-Length: 00{len(c.valid)}") + c.valid, (PUSH_OK,)),
    RawCase("length-over-limit", lambda c: c.post(f"Content-Length: {LIMIT + 1}"), (want("POST", 413, sid="real"),)),
    RawCase("length-huge", lambda c: c.post("Content-Length: 99999999999999999999"),
            (want("POST", 413, sid="real"),)),
    RawCase("length-cut-delete", lambda c: c.head("DELETE", "/poll", "Pollsession-Id: garbage", "Content-Length: 100")
            + b"x" * 10, (want("DELETE", 204, sid="garbage"),), True),
    RawCase("options-with-body", lambda c: c.head("OPTIONS", "/poll", f"Content-Length: {len(c.valid)}") + c.valid,
            (want("OPTIONS", 204),)),
    RawCase("expect-continue", lambda c: c.post("Expect: 100-continue", f"Content-Length: {len(c.valid)}") + c.valid,
            (PUSH_OK,)),
    # Framing the HTTP server must refuse (RFC 9112): lenient, an answer below 500 or a close.
    RawCase("length-not-a-number", lambda c: c.post("Content-Length: abc") + c.valid, half_close=True),
    RawCase("length-negative", lambda c: c.post("Content-Length: -1") + c.valid, half_close=True),
    RawCase("length-plus", lambda c: c.post(f"Content-Length: +{len(c.valid)}") + c.valid, half_close=True),
    RawCase("length-twice-unequal", lambda c: c.post(f"Content-Length: {len(c.valid)}",
                                                     f"Content-Length: {len(c.valid) + 1}") + c.valid, half_close=True),
    RawCase("length-twice-equal", lambda c: c.post(f"Content-Length: {len(c.valid)}",
                                                   f"Content-Length: {len(c.valid)}") + c.valid, half_close=True),
    RawCase("length-list", lambda c: c.post(f"Content-Length: {len(c.valid)}, {len(c.valid)}") + c.valid,
            half_close=True),
    RawCase("length-and-chunked", lambda c: c.post(f"Content-Length: {len(c.valid)}", TE) + chunk(c.valid)
            + b"0\r\n\r\n", half_close=True),
    RawCase("te-gzip", lambda c: c.post("Transfer-Encoding: gzip") + c.valid, half_close=True),
    RawCase("te-chunked-twice", lambda c: chunked(c, c.valid, te="Transfer-Encoding: chunked, chunked"),
            half_close=True),
    RawCase("te-chunked-then-gzip", lambda c: chunked(c, c.valid, te="Transfer-Encoding: chunked, gzip"),
            half_close=True),
    RawCase("te-identity", lambda c: c.post("Transfer-Encoding: identity", f"Content-Length: {len(c.valid)}")
            + c.valid, half_close=True),
    # Header garbage (lenient) ...
    RawCase("header-without-colon", lambda c: c.head("GET", "/poll?test=1", "Garbage line"), half_close=True),
    RawCase("header-space-before-colon", lambda c: c.head("GET", "/poll", "Pollsession-Id : x"), half_close=True),
    RawCase("header-obs-fold", lambda c: c.head("GET", "/poll?test=1", "X-A: a", " folded"), half_close=True),
    RawCase("header-nul", lambda c: c.head("GET", "/poll?test=1", b"X-A: a\x00b"), half_close=True),
    RawCase("header-bare-cr", lambda c: c.head("GET", "/poll?test=1", b"X-A: a\rb"), half_close=True),
    RawCase("header-name-utf8", lambda c: c.head("GET", "/poll?test=1", b"X-\xc3\xa9: 1"), half_close=True),
    RawCase("header-huge", lambda c: c.head("GET", "/poll?test=1", "X-Big: " + "b" * 70_000), half_close=True),
    RawCase("header-many", lambda c: c.head("GET", "/poll?test=1", *(f"X-H{i}: {i}" for i in range(300))),
            half_close=True),
    RawCase("host-missing", lambda c: c.head("GET", "/poll?test=1", host=False), half_close=True),
    RawCase("host-twice", lambda c: c.head("GET", "/poll?test=1", "Host: other.example"), half_close=True),
    RawCase("host-garbage", lambda c: c.head("GET", "/poll?test=1", "Host: a b", host=False), half_close=True),
    # ... and request-line garbage (lenient).
    RawCase("line-garbage", lambda c: b"GARBAGE\r\n\r\n", half_close=True),
    RawCase("line-http09", lambda c: b"GET /poll\r\n\r\n", half_close=True),
    RawCase("line-version-9.9", lambda c: c.head("GET", "/poll?test=1", version="HTTP/9.9"), half_close=True),
    RawCase("line-version-garbage", lambda c: c.head("GET", "/poll?test=1", version="HTTX/1.1"), half_close=True),
    RawCase("line-http2-preface", lambda c: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", half_close=True),
    RawCase("line-lf-only", lambda c: f"GET /poll?test=1 HTTP/1.1\nHost: {c.host}\n\n".encode(), half_close=True),
    RawCase("line-non-ascii-target", lambda c: c.head("GET", "/poll?ack=\xff"), half_close=True),
    RawCase("line-space-in-target", lambda c: c.head("GET", "/po ll"), half_close=True),
    RawCase("line-nul-in-method", lambda c: c.head("G\x00T", "/poll?test=1"), half_close=True),
    RawCase("line-empty-first", lambda c: b"\r\n" + c.head("GET", "/poll?test=1"), half_close=True),
    RawCase("head-cut", lambda c: b"GET /poll HTTP/1.1\r\nHo", half_close=True),
    # Valid heads with odd header values: the library answers.
    RawCase("sid-utf8", lambda c: c.head("GET", "/poll?wait=0", b"Pollsession-Id: s\xc3\xafd\xe2\x9c\x93"),
            (want("GET", 410, sid="garbage"),)),
    RawCase("sid-latin1", lambda c: c.head("GET", "/poll?wait=0", b"Pollsession-Id: \xe9\xe9"),
            (want("GET", 410, sid="garbage"),)),
    RawCase("sid-twice", lambda c: c.poll("Pollsession-Id: garbage"), (want("GET", 410, sid="garbage"),)),
    RawCase("sid-twice-same", lambda c: c.poll(f"Pollsession-Id: {c.sid()}"), (want("GET", 410, sid="garbage"),)),
    RawCase("sid-blank", lambda c: c.head("GET", "/poll", "Pollsession-Id:    "), (OPENS,)),
    RawCase("sid-padded", lambda c: c.head("GET", "/poll?ack=0&wait=0", f"Pollsession-Id:   {c.sid()}   "),
            (POLLS,)),
    RawCase("sid-tabs", lambda c: c.head("GET", "/poll?ack=0&wait=0", f"Pollsession-Id:\t{c.sid()}\t"), (POLLS,)),
    RawCase("sid-header-case", lambda c: c.head("GET", "/poll?ack=0&wait=0", f"pOLLSESSION-iD: {c.sid()}"),
            (POLLS,)),
    RawCase("origin-utf8", lambda c: c.head("GET", "/poll", b"Origin: http://\xc3\xa9vil.example"),
            (want("GET", 403, origin="disallowed"),)),
    RawCase("origin-twice", lambda c: c.head("GET", "/poll", f"Origin: http://{c.host}", f"Origin: http://{c.host}"),
            (want("GET", origin="malformed"),)),
    RawCase("origin-same-other-host", lambda c: c.head("GET", "/poll", f"Host: localhost:{c.port}",
                                                       f"Origin: http://localhost:{c.port}", host=False), (OPENS,)),
    RawCase("origin-host-mismatch", lambda c: c.head("GET", "/poll", f"Host: localhost:{c.port}",
                                                     f"Origin: http://{c.host}", host=False),
            (want("GET", 403, origin="disallowed"),)),
    RawCase("content-type-twice", lambda c: c.post("Content-Type: text/plain", f"Content-Length: {len(c.valid)}")
            + c.valid, (PUSH_ANY,)),
    RawCase("upgrade-websocket", lambda c: c.head("GET", "/poll", "Upgrade: websocket", "Connection: Upgrade",
                                                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                                                  "Sec-WebSocket-Version: 13"), (want("GET"),)),
    RawCase("http10-no-host", lambda c: b"GET /poll HTTP/1.0\r\n\r\n", (OPENS,)),
    RawCase("http10-keep-alive", lambda c: c.head("GET", "/poll?test=1", "Connection: keep-alive",
                                                  version="HTTP/1.0"), (PROBE,)),
    RawCase("absolute-form", lambda c: c.head("GET", f"http://{c.host}/poll?test=1"),
            # Served, or the router's 404 (Tornado routes the path part only): no library answer to check.
            (want("GET", 200, 404, path="(absolute-form)", query="test=1"),)),
    RawCase("query-percent-garbage", lambda c: c.poll(target="/poll?ack=%%%&wait=%zz"),
            (want("GET", 400, sid="real", query="ack=%%%&wait=%zz"),)),
    RawCase("path-percent-encoded", lambda c: c.head("GET", "/%70oll?test=1"), (want("GET", 404, path="/%70oll"),)),
    RawCase("path-double-slash", lambda c: c.head("GET", "//poll?test=1"), (want("GET", 404, path="//poll"),)),
    RawCase("path-dot-segment", lambda c: c.head("GET", "/x/../poll?test=1"), (want("GET", 404, path="/x/../poll"),)),
    RawCase("method-long", lambda c: c.head("X" * 1000, "/poll"), (want("X" * 1000, 405),)),
    RawCase("method-lowercase", lambda c: c.head("get", "/poll?test=1"), (want("get", query="test=1"),)),
    RawCase("head-probe", lambda c: c.head("HEAD", "/poll?test=1"), (want("HEAD", 405, query="test=1"),)),
    RawCase("pipelined", lambda c: c.head("GET", "/poll?test=1") * 2 + c.head("GET", "/poll", "Pollsession-Id: x"),
            (PROBE, PROBE, want("GET", 410, sid="garbage"))),
    RawCase("pipelined-push-poll", lambda c: c.post_length(c.valid) + c.poll(), (PUSH_OK, POLLS)),
)
RAW_CASES_BY_NAME = {case.name: case for case in RAW_CASES}

# Strict cases that one adapter's HTTP server answers itself, before or while the library reads
# the request: lenient there (an answer below 500, or a close). Each is documented in the adapter.
_TORNADO_CHUNK_PARSER = "Tornado's HTTP/1.1 parser refuses this chunked framing with a bare 400 and closes"
SERVER_ANSWERS: dict[str, dict[str, str]] = {
    "flask": {
        "chunked-extension": "werkzeug's development server cannot read chunk extensions (the body reads as "
                             "broken: JSON 400 bad_body)",
        "chunked-trailer": "werkzeug's development server cannot read a trailer section (JSON 400 bad_body)",
        "path-double-slash": "http.server turns a leading '//' into '/' before any WSGI application",
    },
    "tornado": {name: _TORNADO_CHUNK_PARSER for name in (
        "chunked-extension", "chunked-trailer", "chunked-bad-size", "chunked-negative-size", "chunked-0x-size",
        "chunked-size-with-space", "chunked-data-overrun", "chunked-missing-crlf", "chunked-huge-size-cut",
        "chunked-size-2**160-cut", "chunked-no-session")},
}
SERVER_ANSWERS["tornado-same-loop"] = SERVER_ANSWERS["tornado"]
# uvicorn's h11 refuses this chunked framing while the adapter reads the body: its bare text 400, and a close.
SERVER_ANSWERS["asgi"] = {name: "uvicorn's h11 refuses this chunked framing with a bare 400 and closes" for name in (
    "chunked-bad-size", "chunked-negative-size", "chunked-0x-size", "chunked-data-overrun", "chunked-missing-crlf",
    "chunked-size-2**160-cut", "chunked-no-session")}


def raw_worker(run: Run, jobs: list[tuple[int, str, int]]) -> None:
    try:
        for index, name, variant in jobs:
            run.progress.step()
            run_raw_case(run, RAW_CASES_BY_NAME[name], index, variant)
    except Exception as exc:
        logging.getLogger("pollsession.fuzz").exception("raw worker crashed")
        run.findings.add(("fuzzer-crashed", f"{type(exc).__name__}: {exc}"), "fuzzer", "-", "raw", -1)


def run_raw_case(run: Run, case: RawCase, index: int, variant: int) -> None:
    if case.name in SERVER_ANSWERS.get(run.adapter, {}):
        case = dataclasses.replace(case, wants=())
    ctx = RawContext(run.base, random.Random(f"{SEED}:raw:{variant}"))
    data = case.build(ctx)
    repro = f"raw {case.name} (variant {variant}): {data[:300]!r}" + ("..." if len(data) > 300 else "")
    problems: list[Problem] = []
    with run.lock:
        if run.hangs[case.name] >= 2:
            run.stats[f"{case.name} skipped after two hangs"] += 1
            return
    answers: list[Any] = []
    with RawConnection(run.base, timeout=RAW_TIMEOUT) as connection:
        try:
            connection.send(data)
            if case.half_close:
                connection.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server closed early; what it said (if anything) is read below
        for expected in case.wants or (want(),):
            try:
                answer = connection.response(head=expected.method == "HEAD")
            except EOFError:
                break
            except TimeoutError:
                problems.append(("raw-hang", f"no answer and no close within {RAW_TIMEOUT:.1f}s"))
                with run.lock:
                    run.hangs[case.name] += 1
                break
            except (ValueError, IndexError) as exc:
                problems.append(("raw-unreadable-answer", f"{type(exc).__name__}: {exc}"))
                break
            answers.append(answer)
            if answer.closes:
                break
        if case.wants and not answers and not case.half_close and not problems:
            problems.append(("raw-closed-without-answer", "the connection closed before any answer"))
        rest = b""
        if not problems:
            try:
                if not case.half_close:
                    connection.sock.shutdown(socket.SHUT_WR)
                rest = connection.wait_closed()
            except TimeoutError:
                problems.append(("raw-not-closed-after-fin", f"still open {RAW_TIMEOUT:.1f}s after the client's FIN"))
            except OSError:
                pass
    for answer in answers:
        with run.lock:
            run.stats[f"{case.name} {answer.status}"] += 1
    if not answers:
        with run.lock:
            run.stats[f"{case.name} closed"] += 1
    for status in re.findall(rb"HTTP/1\.[01] (\d{3})", rest):
        if int(status) >= 500:
            problems.append(("status-5xx", f"{int(status)} after the expected answers: {rest[:160]!r}"))
    for expected, answer in zip(case.wants or (), answers):
        problems.extend(check(pseudo_request(case.name, expected), Answer(
            answer.status, {name: answer.header(name) or "" for name, _ in answer.headers}, answer.body),
            Expect(expected.statuses, "raw case"), ctx.port or 0))
    if not case.wants:
        problems.extend(("status-5xx", f"{a.status} {a.body[:160]!r}") for a in answers if a.status >= 500)
    for problem in problems:
        run.findings.add(problem, f"raw {case.name} ({'strict' if case.wants else 'lenient'})", repro, "raw", index)


def pseudo_request(name: str, expected: Want) -> Request:
    """The request as the library sees it, for ``check``."""
    headers: dict[str, str] = {}
    if expected.sid != "none":
        headers["Pollsession-Id"] = "x"
    return Request(expected.method, expected.path, expected.query, headers, None, False, name, expected.sid,
                   expected.origin, False, "-", wire_path=expected.path, wire_query=expected.query)


@pytest.mark.parametrize("adapter", ALL_ADAPTERS)
def test_raw_framing_fuzz(adapter: str, error_log: ErrorLog) -> None:
    rng = random.Random(f"{SEED}:raw")
    jobs: list[tuple[int, str, int]] = []
    for _ in range(RAW_ROUNDS):
        names = [case.name for case in RAW_CASES]
        rng.shuffle(names)
        jobs.extend((len(jobs), name, rng.randrange(10**6)) for name in names)
    with fuzz_run(adapter, error_log, len(jobs), "raw") as run:
        threads = [threading.Thread(target=raw_worker, name=f"raw-{n}", args=(run, jobs[n::RAW_WORKERS]))
                   for n in range(RAW_WORKERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

"""A seeded wire fuzzer for one pollsession target: requests, a model of sessions, the rules answers obey.

Used by ``tests/test_fuzz.py``; nothing here does I/O. Three parts:

- :class:`Fuzzer` draws requests from a :class:`random.Random`. Every draw
  takes the same random numbers whatever the fuzzer's state, so a seed names
  one sequence of choices; only the values the server hands out (session ids,
  the acks that fix the next ``seq``) come from its answers.
- :func:`expect` is the oracle: given a prepared request and what the fuzzer
  knows of the session it names, the statuses ``PROTOCOL.md`` leaves
  possible. It only speaks where the spec decides (section 8's order of
  checks); elsewhere it says None and only the general rules apply.
- :func:`check` holds one answer to the rules every answer obeys (no 5xx,
  JSON errors, the shapes of sections 3-5, CORS headers) and to its
  expectation; :meth:`Owned.apply` holds it to the session's history: what
  was pushed and acknowledged, so that each echo comes back once, in order,
  unaltered, and nothing unacknowledged is lost.

Problems are ``(kind, detail)`` pairs: ``kind`` names a class of failure
stably (for grouping), ``detail`` says what arrived. Kinds starting with
``note-`` are not failures, only what the checks could not look at.
"""

from __future__ import annotations

import base64
import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["LIMITS", "ALLOWED_ORIGINS", "Answer", "Expect", "Owned", "Request", "Fuzzer", "check", "expect",
           "Problem"]

# The server configuration the oracle assumes (tests/test_fuzz.py builds the handler with it).
LIMITS: dict[str, int] = dict(max_body_size=8192, max_message_size=2048, inbox_limit=4, outbox_limit=6)
ALLOWED_ORIGINS = ("https://*.allowed.example", "http://allowed.test:8080")

Problem = tuple[str, str]
Msg = tuple[int, str, Any]  # (seq, type, data as it goes on the wire, decoded for json)

_ACK = re.compile(r"0|[1-9][0-9]*")
_WAIT = re.compile(r"[0-9]+(\.[0-9]+)?")
_SID = re.compile(r"[A-Za-z0-9_-]{22,}")
_METHODS = ("GET", "POST", "DELETE", "OPTIONS")


# -- requests and answers -------------------------------------------------------------


@dataclass
class Answer:
    """One answer as the client saw it; header names lower-cased, repeats joined with ", "."""

    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def media_type(self) -> str:
        return (self.header("content-type") or "").split(";", 1)[0].strip().lower()


@dataclass
class Expect:
    """What the spec leaves possible for one request: ``statuses`` (None: anything below 500)."""

    statuses: frozenset[int] | None
    why: str = ""


@dataclass
class Request:
    """One fuzzed request, with what the fuzzer knows about it."""

    method: str
    path: str
    query: str  # as drawn; the wire form is what requests makes of it (``wire_query``)
    headers: dict[str, str]
    body: bytes | None
    chunked: bool
    label: str  # "<method> <sid kind> <origin kind> <body kind>", the class of the request
    sid_kind: str  # none, empty, garbage, deleted, real (requests cannot send a blank one: see the raw cases)
    origin_kind: str  # none, same, allowed, disallowed, malformed
    fetch_metadata: bool
    body_kind: str
    owned: Owned | None = None  # the session a "real" or "deleted" sid belongs to
    batch: list[Msg] | None = None  # a pushed batch whose content the model knows
    # The head breaks HTTP syntax (a Host), or a framework's guard (Tornado parses at most 1,000 query
    # fields, before any handler): the HTTP server may say a bare 400, or close.
    http_may_refuse: bool = False
    cause: str = ""  # the trait that most likely explains a failure (findings are grouped by it)
    wire_path: str = ""  # the path and the query as they went on the wire (set once prepared)
    wire_query: str = ""

    @property
    def sid(self) -> str | None:
        for name, value in self.headers.items():
            if name.lower() == "pollsession-id":
                return value
        return None

    @property
    def group(self) -> str:
        """What findings of this request are grouped by: its cause when it has one, else its label."""
        return f"{self.method.upper()[:8]} {self.cause}" if self.cause else self.label

    @property
    def has_sid(self) -> bool:
        """Whether the server sees a session id (an empty or blank header counts as absent)."""
        return bool((self.sid or "").strip())

    def repro(self) -> str:
        """A Python snippet that sends this request again (``BASE`` is the server's URL)."""
        headers = dict(self.headers)
        if self.sid_kind == "real" and self.sid is not None:
            padding = self.sid[len(self.sid.rstrip()):]
            headers = {k: (f"<sid of a session opened with GET /poll>{padding}" if k.lower() == "pollsession-id"
                           else v) for k, v in headers.items()}
        target = (self.wire_path or self.path) + ("?" + self.wire_query if self.wire_query else "")
        body = self.body if self.body is None or len(self.body) <= 600 else (
            f"<{len(self.body)} bytes: {self.body[:200]!r}...{self.body[-60:]!r}>")
        data = f"iter([{body!r}])  # chunked" if self.chunked else repr(body)
        return f"requests.request({self.method!r}, BASE + {target!r}, headers={headers!r}, data={data})"


@dataclass
class Owned:
    """One session this fuzzer opened, as the fuzzer knows it.

    ``delivered[i]`` is the message with client seq ``i + 1`` the server
    acknowledged; the echo application sends it back as server seq ``i + 1``.
    """

    sid: str
    delivered: list[tuple[str, Any]] = field(default_factory=list)
    acked: int = 0  # highest ack the server took from a poll answered 200
    seen: int = 0  # highest server seq seen in a poll answer
    deleted: bool = False
    closed: Any = None  # the close a poll answer reported
    modeled: bool = True  # False once something happened that the model cannot follow
    verified: int = 0  # echoes checked against what was pushed

    @property
    def received(self) -> int:
        """M of PROTOCOL.md section 5: the highest client seq the server holds."""
        return len(self.delivered)

    @property
    def live(self) -> bool:
        return self.modeled and not self.deleted and self.closed is None

    def apply(self, request: Request, answer: Answer) -> list[Problem]:
        """Update the model from an answer to a request naming this session; return what breaks the history."""
        if not self.live:
            return []
        method = request.method.upper()
        if method == "DELETE" and answer.status == 204:
            if request.sid == self.sid:
                self.deleted = True
            else:  # a padded id: deleted by the spec, maybe not by the server (the oracle cannot tell)
                self.modeled = False
            return []
        if answer.status == 410:
            # Never right for a live session (the oracle reports it); whether the server forgot
            # the session or misread its id, the model cannot follow it any further.
            self.modeled = False
            return []
        if method == "POST" and answer.status in (200, 429):
            return self._apply_push(request, answer)
        if method == "GET" and answer.status == 200 and answer.media_type == "application/json":
            return self._apply_poll(request, answer)
        if 200 <= answer.status < 300 and method not in ("OPTIONS", "DELETE"):
            self.modeled = False
        return []

    def _apply_push(self, request: Request, answer: Answer) -> list[Problem]:
        ack = _json_field(answer.body, "ack")
        if not isinstance(ack, int) or isinstance(ack, bool):
            self.modeled = False
            return []  # check() reports the shape
        if request.batch is None:
            self.modeled = False  # a body the oracle wanted refused was taken: that is reported already
            return []
        last = max([self.received] + [seq for seq, _, _ in request.batch])
        if answer.status == 200 and ack != last:
            self.modeled = False
            return [("push-ack-wrong", f"200 with ack {ack}, expected {last} (held {self.received} before)")]
        if not self.received <= ack <= last:
            self.modeled = False
            return [("push-ack-out-of-range", f"{answer.status} with ack {ack}, expected {self.received}..{last}")]
        for seq, type_, data in request.batch:
            if self.received < seq <= ack:
                self.delivered.append((type_, data))
        return []

    def _apply_poll(self, request: Request, answer: Answer) -> list[Problem]:
        try:
            return self._check_poll_answer(request, answer)
        except TooDeep:
            self.modeled = False
            return [NOTE_TOO_DEEP]

    def _check_poll_answer(self, request: Request, answer: Answer) -> list[Problem]:
        ack = _poll_ack(request.wire_query)
        try:
            document = loads(answer.body)
            messages = document["messages"]
            closed = document["closed"]
            seqs = [message["seq"] for message in messages]
        except (ValueError, KeyError, TypeError):
            self.modeled = False
            return []  # check() reports the shape
        if ack is None:
            self.modeled = False
            return []  # the oracle reports a 200 for an invalid ack
        problems: list[Problem] = []
        effective = max(self.acked, ack)
        if seqs and seqs[0] != effective + 1:
            problems.append(("poll-wrong-first-seq", f"first seq {seqs[0]} after ack {effective}"))
        if self.seen > effective and (not seqs or seqs[-1] < self.seen):
            problems.append(("poll-lost-unacked", f"seqs {seqs[:1]}..{seqs[-1:]} after ack {effective}, "
                             f"but seq {self.seen} was sent and not acknowledged"))
        for message in messages:
            seq = message["seq"]
            if not isinstance(seq, int) or not 1 <= seq <= self.received:
                problems.append(("echo-unknown-seq", f"seq {seq!r}, only {self.received} messages pushed"))
                continue
            type_, data = self.delivered[seq - 1]
            if message.get("type") != type_ or not _same_json(message.get("data"), data):
                problems.append(("echo-altered", f"seq {seq}: got {message.get('type')!r} "
                                 f"{message.get('data')!r:.80}, pushed {type_!r} {data!r:.80}"))
            else:
                self.verified += 1
        if closed is not None:
            problems.append(("owned-session-closed", f"the echo session closed: {closed!r}"))
            self.closed = closed
        if problems:
            self.modeled = False
            return problems
        self.acked = effective
        if seqs:
            self.seen = max(self.seen, seqs[-1])
        return []


def _size(type_: str, data: Any) -> int:
    """A message's size as PROTOCOL.md section 2 counts it."""
    if type_ == "text":
        return len(data.encode("utf-8"))
    if type_ == "binary":
        return len(base64.b64decode(data))
    return len(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def _same_json(a: Any, b: Any) -> bool:
    """Equal as JSON (so ``true`` is not ``1``)."""
    try:
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    except RecursionError:
        raise TooDeep() from None


class TooDeep(Exception):
    """An answer nested too deep for this (test) process to decode: not the server's fault."""


def loads(body: bytes) -> Any:
    """``json.loads`` that tells a recursion limit of the test's own thread apart (:class:`TooDeep`)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise TooDeep() from None


NOTE_TOO_DEEP: Problem = ("note-too-deep-to-check", "an answer nested deeper than the test client decodes")


def _json_field(body: bytes, name: str) -> Any:
    try:
        document = loads(body)
    except (ValueError, TooDeep):
        return None
    return document.get(name) if isinstance(document, dict) else None


def _poll_ack(wire_query: str) -> int | None:
    """The ack a poll with this query carries as the server reads it, or None if it is not valid."""
    pairs = parse_qsl(wire_query, keep_blank_values=True)
    acks = [value for key, value in pairs if key == "ack"]
    waits = [value for key, value in pairs if key == "wait"]
    if len(acks) > 1 or len(waits) > 1 or (waits and not _WAIT.fullmatch(waits[0])):
        return None
    if not acks:
        return 0
    if not _ACK.fullmatch(acks[0]) or len(acks[0]) > 9:
        return None
    return int(acks[0])


# -- the oracle -----------------------------------------------------------------------------


def is_probe(request: Request) -> bool:
    return request.method.upper() == "GET" and ("test", "1") in parse_qsl(request.wire_query, keep_blank_values=True)


def expect(request: Request) -> Expect:
    """The statuses PROTOCOL.md leaves for ``request`` (section 8: probe, origin, method, session id, ...)."""
    if request.wire_path != "/poll":
        # Nothing of the library answers there; besides 404, Tornado's router says 405 to methods it
        # does not know and 400 to a form body it cannot parse. Only a 5xx would matter.
        return Expect(frozenset(range(400, 500)), "not the mounted path: the framework's 4xx")
    method = request.method
    if request.fetch_metadata:
        return Expect(None, "Fetch Metadata is outside PROTOCOL.md")
    if "Host" in request.headers and request.origin_kind != "none":
        return Expect(None, "an odd Host decides what is same-origin")
    if method == "GET" and is_probe(request):
        return Expect(frozenset({200}), "the ?test=1 probe")
    if request.origin_kind == "disallowed":
        return Expect(frozenset({403}), "disallowed origin")
    if request.origin_kind == "malformed":
        return Expect(None, "a malformed Origin")
    if method not in _METHODS:
        if method.upper() in _METHODS:
            return Expect(None, "a method in another case")
        return Expect(frozenset({405}), "method not allowed")
    if method == "OPTIONS":
        return Expect(frozenset({204}), "preflight")
    kind = request.sid_kind
    if method == "DELETE":
        return Expect(frozenset({204}), "DELETE answers 204 for any id")
    if kind in ("none", "empty"):
        return Expect(frozenset({200}) if method == "GET" else frozenset({403}), "no session id")
    if kind in ("garbage", "deleted"):
        return Expect(frozenset({410}), "unknown or forgotten session")
    owned = request.owned
    if owned is None or not owned.live:
        return Expect(None, "a session the model lost")
    if method == "GET":
        return _expect_poll(request, owned)
    return _expect_push(request, owned)


def _expect_poll(request: Request, owned: Owned) -> Expect:
    pairs = parse_qsl(request.wire_query, keep_blank_values=True)
    acks = [value for key, value in pairs if key == "ack"]
    waits = [value for key, value in pairs if key == "wait"]
    if len(acks) > 1 or len(waits) > 1:
        return Expect(frozenset({400}), "ack or wait repeated")
    if waits and not _WAIT.fullmatch(waits[0]):
        return Expect(frozenset({400}), "wait syntax")
    if not acks:
        return Expect(frozenset({200}), "a poll without ack")
    text = acks[0]
    if not _ACK.fullmatch(text):
        return Expect(frozenset({400}), "ack syntax")
    if len(text) > 9 or int(text) > owned.received:
        return Expect(frozenset({400}), "ack beyond anything the session can have sent")
    if int(text) <= owned.seen:
        return Expect(frozenset({200}), "a poll with an ack of a message received")
    return Expect(frozenset({200, 400}), "an ack the echo may or may not have reached")


_BODY_STATUSES = {
    "valid": frozenset({200, 429}),
    "overlap": frozenset({200, 429}),
    "retry": frozenset({200}),
    "empty-batch": frozenset({200}),
    "exact-body": frozenset({200, 429}),
    "exact-message": frozenset({200, 429}),
    "loose": frozenset({200, 400, 429}),
    "deep-edge": frozenset({200, 400, 429}),
    "too-big-message": frozenset({413}),
    "oversized": frozenset({413}),
}


def _expect_push(request: Request, owned: Owned) -> Expect:
    content_type = request.headers.get("Content-Type")
    if content_type is None or content_type.split(";", 1)[0].strip().lower() != "application/json":
        return Expect(frozenset({415}), "media type")
    if len(request.body or b"") > LIMITS["max_body_size"]:
        return Expect(frozenset({413}), "body size")
    return Expect(_BODY_STATUSES.get(request.body_kind, frozenset({400})), f"body {request.body_kind}")


# -- the rules every answer obeys -----------------------------------------------------------


def check(request: Request, answer: Answer, expectation: Expect, port: int) -> list[Problem]:
    """Problems with ``answer`` to ``request``: the general rules, then ``expectation``."""
    problems: list[Problem] = []
    status = answer.status
    if status >= 500:
        problems.append(("status-5xx", f"{status} {answer.media_type} {answer.body[:160]!r}"))
    if expectation.statuses is not None and status not in expectation.statuses:
        problems.append(("unexpected-status", f"{status}, expected {sorted(expectation.statuses)} "
                         f"({expectation.why}): {answer.body[:160]!r}"))
    if request.wire_path != "/poll":
        return problems  # the router's answer: only the status matters
    if request.http_may_refuse and status == 400 and answer.media_type != "application/json":
        return [problem for problem in problems if problem[0] != "unexpected-status"]
    method = request.method.upper()
    if method == "HEAD":
        if answer.body:
            problems.append(("head-with-body", f"{len(answer.body)} bytes"))
        if status >= 300 and answer.media_type != "application/json":
            problems.append(("error-not-json", f"HEAD {status} with Content-Type {answer.header('content-type')!r}"))
    elif status == 204:
        if answer.body:
            problems.append(("204-with-body", repr(answer.body[:80])))
    elif 200 <= status < 300:
        problems.extend(_check_success(request, answer, method))
    else:
        problems.extend(_check_error(answer))
    if status == 405 and not answer.header("allow"):
        problems.append(("405-without-allow", "no Allow header"))
    if request.origin_kind == "allowed" and not request.fetch_metadata:
        problems.extend(_check_cors(request, answer))
    return problems


def _check_success(request: Request, answer: Answer, method: str) -> list[Problem]:
    if answer.media_type == "text/plain":
        if answer.status == 200 and answer.body == b"ok" and is_probe(request):
            return []
        return [("unexpected-text-answer", f"{answer.status} {answer.body[:80]!r}")]
    if answer.media_type != "application/json":
        return [("success-not-json", f"{answer.status} Content-Type {answer.header('content-type')!r}")]
    try:
        document = loads(answer.body)
    except ValueError:
        return [("success-bad-json", repr(answer.body[:120]))]
    except TooDeep:
        return [NOTE_TOO_DEEP]
    if answer.status != 200 or not isinstance(document, dict):
        return [("success-shape", f"{answer.status} {answer.body[:120]!r}")]
    if method == "GET" and not request.has_sid:
        return _check_open(document, answer)
    if method == "GET":
        return _check_poll(document, "poll")
    if method == "POST":
        ack = document.get("ack")
        if set(document) != {"ack"} or not isinstance(ack, int) or isinstance(ack, bool) or ack < 0:
            return [("push-shape", repr(answer.body[:120]))]
        return []
    return [("success-for-method", f"{request.method} answered {answer.status} {answer.body[:80]!r}")]


def _check_open(document: dict[str, Any], answer: Answer) -> list[Problem]:
    problems: list[Problem] = []
    sid = document.get("sid")
    if document.get("version") != 1 or not isinstance(sid, str) or not _SID.fullmatch(sid):
        problems.append(("open-shape", f"version {document.get('version')!r}, sid {sid!r}"))
    if answer.header("pollsession-id") != sid:
        problems.append(("open-sid-header", f"header {answer.header('pollsession-id')!r}, body {sid!r}"))
    for name in ("inbox_limit", "max_message_size", "max_body_size"):
        if document.get(name) != LIMITS[name] or isinstance(document.get(name), bool):
            problems.append(("open-limits", f"{name} {document.get(name)!r}, configured {LIMITS[name]}"))
    for name in ("poll_timeout", "session_timeout"):
        if not isinstance(document.get(name), (int, float)) or isinstance(document.get(name), bool):
            problems.append(("open-limits", f"{name} {document.get(name)!r}"))
    return problems + _check_poll(document, "open")


def _check_poll(document: dict[str, Any], what: str) -> list[Problem]:
    messages, closed = document.get("messages"), document.get("closed", ...)
    if not isinstance(messages, list) or closed is ...:
        return [(f"{what}-shape", f"messages {messages!r:.80}, closed {closed!r:.80}")]
    problems: list[Problem] = []
    if closed is not None and not (isinstance(closed, dict) and _is_int(closed.get("code"))
                                   and isinstance(closed.get("reason"), str)):
        problems.append((f"{what}-closed-shape", repr(closed)))
    previous = None
    for message in messages:
        problem = _message_problem(message)
        if problem:
            problems.append((f"{what}-message-shape", problem))
            continue
        if previous is not None and message["seq"] != previous + 1:
            problems.append((f"{what}-seqs-not-consecutive", f"{previous} then {message['seq']}"))
        previous = message["seq"]
    return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _message_problem(message: Any) -> str | None:
    if not isinstance(message, dict) or set(message) != {"seq", "type", "data"}:
        return f"not {{seq, type, data}}: {message!r:.80}"
    if not _is_int(message["seq"]) or message["seq"] < 1:
        return f"seq {message['seq']!r}"
    type_, data = message["type"], message["data"]
    if type_ == "text" and isinstance(data, str):
        return None
    if type_ == "binary" and isinstance(data, str):
        try:
            if base64.b64encode(base64.b64decode(data, validate=True)).decode() == data:
                return None
        except ValueError:
            pass
        return f"binary data not canonical base64: {data!r:.60}"
    if type_ == "json":
        return None
    return f"type {type_!r} with data {data!r:.60}"


def _check_error(answer: Answer) -> list[Problem]:
    if answer.media_type != "application/json":
        return [("error-not-json", f"{answer.status} Content-Type {answer.header('content-type')!r} "
                 f"{answer.body[:120]!r}")]
    try:
        document = loads(answer.body)
    except ValueError:
        return [("error-bad-json", f"{answer.status} {answer.body[:120]!r}")]
    except TooDeep:
        return [NOTE_TOO_DEEP]
    if not (isinstance(document, dict) and isinstance(document.get("error"), str) and document["error"]
            and isinstance(document.get("message"), str)):
        return [("error-shape", f"{answer.status} {answer.body[:160]!r}")]
    problems: list[Problem] = []
    if answer.status == 429 and (not _is_int(document.get("ack")) or not answer.header("retry-after")):
        problems.append(("429-shape", f"ack {document.get('ack')!r}, Retry-After {answer.header('retry-after')!r}"))
    if answer.status == 410 and "closed" in document:
        closed = document["closed"]
        if not (isinstance(closed, dict) and _is_int(closed.get("code")) and isinstance(closed.get("reason"), str)):
            problems.append(("410-closed-shape", repr(closed)))
    return problems


def _check_cors(request: Request, answer: Answer) -> list[Problem]:
    origin = request.headers["Origin"]
    problems: list[Problem] = []
    if answer.header("access-control-allow-origin") != origin:
        problems.append(("cors-missing", f"{answer.status}: Access-Control-Allow-Origin "
                         f"{answer.header('access-control-allow-origin')!r} for {origin!r}"))
    if "origin" not in (answer.header("vary") or "").lower():
        problems.append(("cors-missing", f"{answer.status}: Vary {answer.header('vary')!r}"))
    if "pollsession-id" not in (answer.header("access-control-expose-headers") or "").lower():
        problems.append(("cors-missing", f"{answer.status}: no Access-Control-Expose-Headers"))
    if request.method == "OPTIONS" and answer.status == 204:
        for name in ("access-control-allow-methods", "access-control-allow-headers", "access-control-max-age"):
            if not answer.header(name):
                problems.append(("preflight-headers", f"no {name}"))
    return problems


# -- the generator ----------------------------------------------------------------------------

_OTHER_PATHS = ("/", "/pol", "/pollx", "/poll/", "/poll/x", "/%70oll", "/POLL", "/poll%2f", "/nope", "/poll/../poll")
_GARBAGE_METHODS = ("PUT", "PATCH", "HEAD", "TRACE", "FOO", "PROPFIND", "M-SEARCH", "get", "Post", "dElEtE",
                    "options", "X" * 40, "GETS", "CONNECT")
_GARBAGE_SIDS = ("x", "0", "null", "undefined", "a" * 43, "A" * 2000, "../../etc/passwd", "<script>", "sid;rm",
                 "caf\xe9", "\u00ff" * 8, "Zm9vYmFy==", "-", "_" * 32, "1 2 3", "%00", "a\tb")
_DISALLOWED = ("https://evil.example", "http://127.0.0.1:1", "https://127.0.0.1:{port}", "http://localhost:{port}",
               "http://allowed.test", "http://allowed.test:8081", "https://allowed.example",
               "https://a.allowed.example:8443", "http://a.allowed.example", "null")
_ALLOWED = ("https://app.allowed.example", "HTTPS://App.Allowed.Example", "https://x.y.allowed.example",
            "http://allowed.test:8080")
_MALFORMED = ("http://", "file://", "127.0.0.1", "http://127.0.0.1:{port}/poll", "http://[::1", "*", "x y",
              "http://127.0.0.1:99999", "https://evil.example/.allowed.example", "http://a b",
              "http://127.0.0.1:{port}, http://127.0.0.1:{port}", "http://\xe9vil.example", "ftp://allowed.test:8080",
              "HTTP://127.0.0.1:{port}")
_MANY_ARGS = "&".join(["a=1"] * 1500)  # a valid query; parsers cap the number of fields (Tornado: 1000, a bare 400)
_QUERY_PARTS: dict[str, tuple[str, ...]] = {
    "ack-ok": ("ack={ack}",) * 3 + ("ack=0",),
    "ack-bad": tuple("ack=" + value for value in (
        "-1", "01", "1.0", "", "abc", " 1", "1e3", "0x1", "9" * 20, "9" * 5000, "\u0661", "%FF", "%zz", "%31", "+1",
        "1%00", "\uff11", "1,2", "[1]")),
    "wait-ok": tuple("wait=" + value for value in ("0",) * 8 + ("0.0", "0.000", "0.005", "00")),
    "wait-bad": tuple("wait=" + value for value in (
        "-1", ".5", "1.", "nan", "inf", "1e3", "", "0,1", "0x1", "\u0660", "%30", "0 ")),
    "probe": ("test=1", "test=0", "test=", "TEST=1", "test=1&test=1"),
    "other": ("mode=x", "=", "&", "a", "\xfc=\xfc", "%", "%%", "%zz=1", "x=%E2%82", "a[]=1", _MANY_ARGS,
              "k" * 300 + "=v", "ack", "wait", "%61ck=0", "w%61it=0", "x=" + "\u2603" * 20, "#frag"),
}
# Host values, and whether they are a valid host (RFC 9110 / RFC 3986 syntax, and a DNS name: labels of at
# most 63 characters, 253 in all); an HTTP server may refuse the others. Werkzeug's router refuses a name
# that is not a DNS name (IDNA encoding) with its HTML 400, before any route, for every route of the app.
_HOSTS = (("empty", "", True), ("ipv6-unclosed", "[::1", False), ("two-colons", "a:b:c", False),
          ("port-99999", "127.0.0.1:99999", True), ("localhost", "localhost", True),
          ("port-dot", "127.0.0.1:{port}.", False), ("300-chars", "x" * 300, False),
          ("label-64", "a." + "b" * 64 + ".example", False), ("non-ascii", "caf\xe9.example", False),
          ("list", "127.0.0.1:{port}, evil.example", False), ("other-name", "evil.example:{port}", True),
          ("ipv6", "[::1]:{port}", True), ("upper-case", "LOCALHOST:{port}", True))
_CONTENT_TYPES = ("application/json",) * 90 + (
    "application/json; charset=utf-8", "Application/JSON", "application/json;charset=latin-1",
    "application/json ; x=y", None, "", "text/plain", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=zz", "application/jsonx", "application/json, text/plain", "json", "*/*",
    "application/ld+json", ";application/json", "text/json")
_TEXT_PIECES = ("a", "hello", "\xe9", "\u2603", "\U0001d11e", "\u2028", "\x00", "\n", '"', "\\", "</script>",
                "\ufeff", "\uffff", "\U0010ffff", " ", "\u0000\u001f", "\U0001f600")
_BAD_BASE64 = ("YQ", "YQ=", "YQ===", "Y Q==", "YQ==\n", "====", "YR==", "-_-_", "YWJj\r\n", "!!!!", "YW Jj", "Y",
               "YWJjZA", "YWJjZA==YQ==", "\u00e9\u00e9\u00e9\u00e9")
_BAD_SEQS = ("0", "-1", "1.0", "1e0", "true", "false", "null", '"1"', "[1]", "{}", "1.5", "-0", "1E400",
             "NaN", "Infinity", "9" * 5000, "1" + "0" * 400)


def _one(field: str, seq: str = "1", type_: str = '"text"') -> bytes:
    """A batch of one message whose ``data`` (or other) field is the JSON text given."""
    return ('{"messages":[{"seq":%s,"type":%s%s}]}' % (seq, type_, field)).encode()


def _json_data(text: str) -> bytes:
    return _one(',"data":' + text, type_='"json"')


# Bodies PROTOCOL.md refuses with 400 whatever the session holds (their shape or values are wrong).
_BAD_BODIES: dict[str, tuple[bytes, ...]] = {
    "bad-seq": tuple(_one(',"data":"x"', seq=seq) for seq in _BAD_SEQS) + tuple(
        json.dumps({"messages": [{"seq": seq, "type": "text", "data": "x"} for seq in pattern]}).encode()
        for pattern in ((1, 3), (2, 1), (1, 1), (1, 2, 4))),  # inside a batch: a gap, a step back, a repeat
    "bad-type": tuple(_one(',"data":"x"', type_=t) for t in ('"TEXT"', '"bytes"', '""', "null", "1", '"json "',
                                                          '["text"]')) + (b'{"messages":[{"seq":1,"data":"x"}]}',),
    "bad-data": (_one(""), _one(',"data":1'), _one(',"data":null'), _one(',"data":["a"]'),
                 _one(',"data":1', type_='"binary"'), _one(',"data":null', type_='"binary"'),
                 _one("", type_='"binary"'), _one("", type_='"json"')),
    "bad-base64": tuple(_one(',"data":' + json.dumps(data), type_='"binary"') for data in _BAD_BASE64),
    "surrogate": (_one(',"data":"\\ud800"'), _one(',"data":"a\\udfffb"'), _one(',"data":"\\udc00\\ud800"'),
                  _json_data('{"\\ud800":1}'), _json_data('["ok","\\udbff"]'),
                  _one(',"data":"x"', type_='"text\\ud800"'), b'{"messages\\ud800":[]}'),
    "nan": tuple(_json_data(text) for text in ("NaN", "Infinity", "-Infinity", "[NaN]", '{"a":Infinity}', "nan",
                                               "inf")),
    "huge-number": tuple(_json_data(text) for text in ("1e400", "-1e400", "1" + "0" * 400, "9" * 5000, "[1e309]",
                                                       "-" + "9" * 4400)),
    "deep": (b"[" * 3500 + b"]" * 3500, _json_data("[" * 3000 + "]" * 3000), _json_data("[" * 2000 + "]" * 2000)),
    "not-utf8": tuple(b'{"messages":[{"seq":1,"type":"text","data":"%s"}]}' % raw for raw in (
        b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"caf\xe9", b"\xf4\x90\x80\x80")) + (
        '{"messages":[]}'.encode("utf-16"), b"\xff\xfe{}"),
    "wrong-top": tuple(text.encode() for text in (
        "[]", '"x"', "1", "null", "true", '{"messages":{}}', '{"messages":null}', '{"msgs":[]}', "{}",
        '{"messages":[1]}', '{"messages":[[1,"text","x"]]}', '{"messages":[null]}', '{"messages":"[]"}',
        '{"messages":[{}]}')),
    "empty": (b"", b" ", b"\r\n", b"\x00"),
}


class Fuzzer:
    """Draws requests for one worker; ``sessions`` is what the worker opened (it updates them)."""

    def __init__(self, rng: random.Random, port: int) -> None:
        self.rng = rng
        self.port = port
        self.sessions: list[Owned] = []

    # ---- small draws

    def _pick(self, items: Iterable[Any]) -> Any:
        items = list(items)
        return items[self.rng.randrange(len(items))]

    def _weighted(self, table: tuple[tuple[str, int], ...]) -> str:
        roll = self.rng.randrange(sum(weight for _, weight in table))
        for name, weight in table:
            if roll < weight:
                return name
            roll -= weight
        raise AssertionError("unreachable")

    def _text(self) -> str:
        return "".join(self._pick(_TEXT_PIECES) for _ in range(self.rng.randrange(7)))

    def _json_value(self, depth: int = 0) -> Any:
        kind = self.rng.randrange(12 if depth < 3 else 8)
        if kind == 0:
            return None
        if kind == 1:
            return self.rng.random() < 0.5
        if kind == 2:
            return self._pick((0, -1, 7, 2**31, 2**53 + 1, -(2**63), 2**64, 10**20))
        if kind == 3:
            return self._pick((0.5, -0.0, 1e-7, 1.5e300, 5e-324, 3.141592653589793, -2.5e-300))
        if kind in (4, 5, 6):
            return self._text()
        if kind == 7:
            return self.rng.randrange(-1000, 1000)
        if kind in (8, 9):
            return [self._json_value(depth + 1) for _ in range(self.rng.randrange(5))]
        return {self._text(): self._json_value(depth + 1) for _ in range(self.rng.randrange(5))}

    def _message_data(self) -> tuple[str, Any]:
        kind = self.rng.randrange(3)
        if kind == 0:
            return "text", self._text()
        if kind == 1:
            raw = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(150)))
            return "binary", base64.b64encode(raw).decode("ascii")
        return "json", self._json_value()

    def _dump(self, document: Any) -> bytes:
        ascii_only = self.rng.random() < 0.5
        compact = self.rng.random() < 0.5
        return json.dumps(document, ensure_ascii=ascii_only,
                          separators=(",", ":") if compact else (", ", ": ")).encode("utf-8")

    @staticmethod
    def _batch_body(batch: list[Msg]) -> dict[str, Any]:
        return {"messages": [{"seq": seq, "type": type_, "data": data} for seq, type_, data in batch]}

    # ---- the request

    def draw(self) -> Request:
        """The next request; the same random draws whatever the state."""
        rng = self.rng
        other_path = rng.random() < 0.03
        path = self._pick(_OTHER_PATHS) if other_path else "/poll"
        method = self._weighted((("GET", 40), ("POST", 36), ("DELETE", 5), ("OPTIONS", 4), ("*", 15)))
        garbage_method = self._pick(_GARBAGE_METHODS)
        if method == "*":
            method = garbage_method
        sid_kind = self._weighted((("real", 60), ("none", 14), ("empty", 3), ("garbage", 15),
                                   ("deleted", 8)))
        pick = rng.random()
        header_name = self._pick(("Pollsession-Id",) * 6 + ("pollsession-id", "POLLSESSION-ID"))
        garbage_sid = self._pick(_GARBAGE_SIDS)
        # Trailing whitespace is not part of a field value (RFC 9110 section 5.5): still the session's id.
        padding = self._pick(("",) * 19 + (" ", "\t", "  \t"))
        origin_kind = self._weighted((("none", 70), ("same", 7), ("allowed", 9), ("disallowed", 7),
                                      ("malformed", 7)))
        origin_index = rng.randrange(1000)
        fetch_metadata = rng.random() < 0.03
        odd_host = rng.random() < 0.03
        host_name, host, host_valid = self._pick(_HOSTS)
        fetch_pair = self._pick((("cross-site", "no-cors"), ("same-site", "navigate"), ("cross-site", "cors"),
                                 ("same-origin", "cors"), ("none", "navigate"), ("CROSS-SITE", "websocket")))
        query = self._query()
        content_type = self._pick(_CONTENT_TYPES)
        chunked = rng.random() < 0.06
        body_kind, body, batch = self._body_draw()
        extra_body = rng.random() < 0.1

        owned = None
        live = [session for session in self.sessions if session.live][-6:]
        deleted = [session for session in self.sessions if session.deleted][-20:]
        if sid_kind == "real":
            if live:
                owned = live[int(pick * len(live))]
            else:
                sid_kind = "none"
        elif sid_kind == "deleted":
            if deleted:
                owned = deleted[int(pick * len(deleted))]
            else:
                sid_kind = "garbage"
        headers: dict[str, str] = {}
        if sid_kind == "empty":
            headers[header_name] = ""
        elif sid_kind == "garbage":
            headers[header_name] = garbage_sid
        elif owned is not None:
            headers[header_name] = owned.sid + (padding if sid_kind == "real" else "")
        if origin_kind != "none":
            table = {"same": ("http://127.0.0.1:{port}",), "allowed": _ALLOWED, "disallowed": _DISALLOWED,
                     "malformed": _MALFORMED}[origin_kind]
            headers["Origin"] = table[origin_index % len(table)].format(port=self.port)
        if fetch_metadata:
            headers["Sec-Fetch-Site"], headers["Sec-Fetch-Mode"] = fetch_pair
        if odd_host:
            headers["Host"] = host.format(port=self.port)
        if method.upper() == "POST" or extra_body:
            if content_type is not None:
                headers["Content-Type"] = content_type
            if batch is not None:  # numbered after the session's M, or from 1 for any other id
                body, batch = self._seqs_for(body_kind, batch, owned if sid_kind == "real" and owned else Owned(""))
        else:
            body, batch, body_kind = None, None, "-"
        if body is None:
            chunked = False
        if sid_kind != "real":
            batch = None
        query = query.replace("{ack}", str(owned.seen if sid_kind == "real" and owned is not None else 0))
        label = f"{method} sid:{sid_kind}{'+ows' if padding and sid_kind == 'real' else ''} " \
                f"origin:{origin_kind} body:{body_kind}" + (
            f" host:{host_name}" if odd_host else "") + (" query:1500-args" if _MANY_ARGS in query else "")
        # What most likely explains a failure of this request, for grouping findings.
        traits = ("query:1500-args" if _MANY_ARGS in query else "", f"host:{host_name}" if odd_host else "",
                  "sid+ows" if padding and sid_kind == "real" else "")
        cause = " ".join(trait for trait in traits if trait)
        return Request(method, path, query, headers, body, chunked, label, sid_kind, origin_kind, fetch_metadata,
                       body_kind, owned, batch, http_may_refuse=(odd_host and not host_valid) or _MANY_ARGS in query, cause=cause)

    def _query(self) -> str:
        """Up to three parameters; most polls get ``wait=0`` too, so that few of them are held."""
        rng = self.rng
        hold = rng.random() < 0.03
        parts: list[str] = []
        for _ in range(self._pick((0, 1, 1, 2, 2, 3))):
            kind = self._weighted((("ack-ok", 30), ("ack-bad", 12), ("wait-ok", 30), ("wait-bad", 8),
                                   ("probe", 2), ("other", 10)))
            choice = rng.randrange(10**6)
            values = _QUERY_PARTS[kind]
            parts.append(values[choice % len(values)])  # "ack={ack}" is given a valid ack by draw()
        held = ("", "wait=99999", "wait=" + "9" * 400, "wait=0.05")[rng.randrange(4)]
        if not any(part.startswith("wait=") for part in parts):
            where = rng.randrange(len(parts) + 1)
            if not hold:
                parts.insert(where, "wait=0")
            elif held:
                parts.insert(where, held)
        return "&".join(parts)

    def _body_draw(self) -> tuple[str, bytes | None, list[Msg] | None]:
        """A body kind, and its body with seqs from 1 (``_seqs_for`` renumbers a valid batch)."""
        kind = self._weighted((
            ("valid", 30), ("gap", 4), ("overlap", 5), ("retry", 4), ("empty-batch", 3), ("exact-body", 2),
            ("exact-message", 2), ("loose", 4), ("bad-seq", 10), ("bad-type", 4), ("bad-data", 4),
            ("bad-base64", 4), ("surrogate", 4), ("nan", 3), ("huge-number", 3), ("deep", 3), ("deep-edge", 3), ("truncated", 4),
            ("trailing", 2), ("not-utf8", 4), ("wrong-top", 4), ("empty", 2), ("too-big-message", 3),
            ("oversized", 3),
        ))
        rng = self.rng
        count = 1 + rng.randrange(5)
        datas = [self._message_data() for _ in range(count)]
        # Keep drawn messages well inside max_message_size: a valid batch must be valid.
        datas = [(t, d) if _size(t, d) <= LIMITS["max_message_size"] // 2 else ("text", "x") for t, d in datas]
        variant = rng.randrange(10**6)
        cut = rng.random()
        batch: list[Msg] = [(seq, type_, data) for seq, (type_, data) in enumerate(datas, 1)]
        valid = self._dump(self._batch_body(batch))
        if kind in ("valid", "overlap", "retry", "empty-batch", "exact-body", "exact-message", "loose",
                    "too-big-message", "oversized", "gap", "deep-edge"):
            return kind, None, batch  # numbered and encoded once the session is known
        if kind == "truncated":
            return kind, valid[: max(0, int(len(valid) * cut) - 1)], None
        if kind == "trailing":
            return kind, valid + (b"x", b"\x00", b"}", b",", b"[]", b"\xff")[variant % 6], None
        bodies = _BAD_BODIES[kind]
        return kind, bodies[variant % len(bodies)], None

    def _seqs_for(self, kind: str, batch: list[Msg], owned: Owned) -> tuple[bytes, list[Msg] | None]:
        """Number a drawn batch for ``owned`` (the next seq is ``M + 1``) and encode it."""
        m = owned.received
        datas = [(type_, data) for _, type_, data in batch]
        limit = LIMITS["max_message_size"]
        if kind == "overlap":  # a retried batch that also carries new messages
            old = min(m, len(datas) // 2)
            numbered = [(m - old + 1 + i, t, d) for i, (t, d) in enumerate(datas)]
        elif kind == "retry":
            numbered = [(seq, t, d) for seq, (t, d) in zip(range(m - len(datas) + 1, m + 1), datas) if seq >= 1]
        elif kind == "empty-batch":
            numbered = []
        elif kind == "deep-edge":  # nested just under the recursion limit: taken or refused, never a 5xx
            depth = (900, 930, 950, 965, 975)[len(datas) - 1]  # 2 bytes a level: under max_message_size
            value: Any = []
            for _ in range(depth - 1):
                value = [value]
            text = "[" * depth + "]" * depth
            body = b'{"messages":[{"seq":%d,"type":"json","data":%s}]}' % (m + 1, text.encode())
            return body, [(m + 1, "json", value)]
        elif kind == "gap":  # the first new seq is not M + 1
            start = (m + 2, m + 1 + 10**30, 2**63, m + 3)[len(datas) % 4]
            numbered = [(start + i, t, d) for i, (t, d) in enumerate(datas)]
        elif kind == "exact-message":
            exact = "\u2603" * (limit // 3) + "a" * (limit % 3)  # exactly max_message_size UTF-8 bytes
            numbered = [(m + 1, "text", exact)]
        elif kind == "too-big-message":
            over = ("text", "\u2603" * (limit // 3) + "a" * (limit % 3 + 1)) if len(datas) % 2 else (
                "binary", base64.b64encode(b"\x00" * (limit + 1)).decode())
            numbered = [(m + 1 + i, t, d) for i, (t, d) in enumerate(datas[:1] + [over])]
        else:
            numbered = [(m + 1 + i, t, d) for i, (t, d) in enumerate(datas)]
        body = self._dump(self._batch_body(numbered))
        if kind == "exact-body":  # padded with whitespace to exactly max_body_size
            body = body[:-1] + b" " * (LIMITS["max_body_size"] - len(body)) + b"}"
        elif kind == "oversized":
            body = body[:-1] + b" " * (LIMITS["max_body_size"] - len(body) + 1 + len(datas) * 7) + b"}"
        elif kind == "loose":
            extra = (b',"extra":1}', b"}\n\n", b"}" + b" " * 50)[len(datas) % 3]
            body = (b"\xef\xbb\xbf" if len(datas) == 4 else b"") + body[:-1] + extra
        return body, numbered

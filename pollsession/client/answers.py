"""What the Python client does with each server answer, as plain functions without I/O.

:func:`classify_answer` is the one place that turns an HTTP answer into what
the client does next (:class:`Outcome`: ok, retry, throttled or close), by
``docs/protocol.md`` section 13, held to the shared vectors
(``tests/vectors/client``) exactly as the browser client is. Answers are read
into the typed values of :mod:`pollsession.protocol.wire`
(:class:`~pollsession.protocol.wire.OpenAnswer`,
:class:`~pollsession.protocol.wire.PollAnswer`, ...), the same types the
server writes, with the server's own strict JSON rules.

The one clock read here is the wall clock a ``Retry-After`` HTTP date is
compared with (``now``, injectable): a date is wall-clock time by definition.
"""

from __future__ import annotations

import enum
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..protocol.errors import (
    BadRequest,
    HttpError,
    InboxFull,
    ProtocolError,
    ServiceUnavailable,
    UnknownSession,
    error_for_status,
)
from ..protocol.messages import decode_data, parse_json
from ..protocol.wire import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    Closed,
    Delivered,
    ErrorBody,
    Limits,
    MessageType,
    OpenAnswer,
    PollAnswer,
    PushAnswer,
)

__all__ = [
    "PROTOCOL_ERROR",
    "MESSAGE_TOO_BIG",
    "ABNORMAL_CLOSURE",
    "decode_message",
    "parse_open_answer",
    "parse_poll_answer",
    "parse_post_answer",
    "parse_error_body",
    "parse_gone_answer",
    "parse_retry_after",
    "format_seconds",
    "http_error",
    "RequestKind",
    "OutcomeKind",
    "Outcome",
    "classify_answer",
]

ABNORMAL_CLOSURE = 1006
"""WebSocket's "closed abnormally": the session ended without a close from the server."""

PROTOCOL_ERROR = 1002
"""WebSocket's "protocol error": the server speaks another protocol version."""

MESSAGE_TOO_BIG = 1009
"""WebSocket's "message too big": the server refused a request as too large (413)."""


def decode_message(message: Any) -> Delivered:
    """Check one incoming wire message and return it decoded.

    Raises :class:`ProtocolError` if the message does not have the shape of
    the protocol (the same rules the server applies to what it receives:
    an integer seq >= 1, a known type, valid data, canonical base64).
    """
    if not isinstance(message, dict):
        raise ProtocolError(f"expected a message object, got {type(message).__name__}")
    seq = _whole(message.get("seq"))
    if seq is None or seq < 1:
        raise ProtocolError(f"expected an integer seq >= 1, got {message.get('seq')!r:.40}")
    if "data" not in message:
        raise ProtocolError(f"message {seq} has no data")
    try:
        type_ = MessageType(message.get("type"))
        return Delivered(seq, type_, decode_data(type_, message["data"], 0).data)
    except (ValueError, BadRequest) as exc:
        raise ProtocolError(f"message {seq} is malformed: {exc}") from None


# --------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------


def _load_object(body: bytes | None) -> dict[str, Any]:
    """The body as a JSON object, strictly (UTF-8, no NaN, no lone surrogate), or ProtocolError."""
    if body is None:
        raise ProtocolError("the answer has no body")
    try:
        value = parse_json(body)
    except BadRequest:
        raise ProtocolError(f"answer is not valid JSON: {body[:80]!r}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _whole(value: Any) -> int | None:
    """An integer of an answer, or None: JSON has one kind of number, so ``1.0`` is ``1``.

    The browser client cannot tell them apart (``JSON.parse``), so neither does
    this one: a whole number written with a fraction counts, up to 2**53.
    """
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer() and abs(value) <= 2 ** 53:
        return int(value)
    return None


def _closed(value: Any) -> Closed | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError(f"expected closed to be null or an object, got {value!r:.80}")
    code, reason = _whole(value.get("code")), value.get("reason", "")
    if code is None or not isinstance(reason, str):
        raise ProtocolError(f"expected closed to hold an integer code and a string reason, got {value!r:.80}")
    return Closed(code, reason)


def _poll_answer(obj: dict[str, Any], *, messages_required: bool) -> PollAnswer:
    messages = obj.get("messages") if messages_required or "messages" in obj else []
    if not isinstance(messages, list):
        raise ProtocolError(f"expected messages to be a list, got {messages!r:.80}")
    return PollAnswer(tuple(decode_message(m) for m in messages), _closed(obj.get("closed")))


def _number(obj: dict[str, Any], key: str, default: float) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ProtocolError(f"expected {key} to be a non-negative number, got {value!r:.40}")
    return value


def _version_error(obj: dict[str, Any]) -> str | None:
    """Why the open answer's ``version`` is not ours, or None (absent counts as version 1)."""
    if "version" not in obj:
        return None
    version = obj["version"]
    if isinstance(version, bool) or not isinstance(version, (int, float)) or version != PROTOCOL_VERSION:
        return f"the server speaks protocol version {version!r:.40}, this client version {PROTOCOL_VERSION}"
    return None


def _open_answer(obj: dict[str, Any], header_sid: str | None) -> OpenAnswer:
    sid = obj.get("sid") or header_sid
    if not isinstance(sid, str) or not sid:
        raise ProtocolError("the opening answer carries no session id")
    defaults = DEFAULT_LIMITS
    limits = Limits(
        poll_timeout=_number(obj, "poll_timeout", defaults.poll_timeout),
        session_timeout=_number(obj, "session_timeout", defaults.session_timeout),
        inbox_limit=max(1, int(_number(obj, "inbox_limit", defaults.inbox_limit))),
        max_message_size=int(_number(obj, "max_message_size", defaults.max_message_size)),
        max_body_size=int(_number(obj, "max_body_size", defaults.max_body_size)),
    )
    return OpenAnswer(sid, limits, _poll_answer(obj, messages_required=False))


def parse_open_answer(body: bytes, header_sid: str | None = None) -> OpenAnswer:
    """Parse the ``200`` answer to the opening ``GET``: the session id, the target's limits, a first poll answer.

    A limit the answer leaves out is :data:`~pollsession.protocol.wire.DEFAULT_LIMITS`'s;
    ``header_sid`` (the ``Pollsession-Id`` header) stands in for a missing
    ``sid``. Raises :class:`ProtocolError` for anything else, including a
    ``version`` other than 1.
    """
    obj = _load_object(body)
    problem = _version_error(obj)
    if problem is not None:
        raise ProtocolError(problem)
    return _open_answer(obj, header_sid)


def parse_poll_answer(body: bytes) -> PollAnswer:
    """Parse a ``200`` poll answer ``{"messages": [...], "closed": ...}``, or raise :class:`ProtocolError`."""
    return _poll_answer(_load_object(body), messages_required=True)


def parse_post_answer(body: bytes) -> PushAnswer:
    """Parse the ``200`` answer to a ``POST``, ``{"ack": n}``, or raise :class:`ProtocolError`."""
    raw = _load_object(body).get("ack")
    ack = _whole(raw)
    if ack is None or ack < 0:
        raise ProtocolError(f"expected an integer ack >= 0, got {raw!r:.40}")
    return PushAnswer(ack)


def parse_error_body(body: bytes | None) -> ErrorBody | None:
    """Read a refusal's body (docs/protocol.md section 10), leniently; None if it is not a JSON object.

    A member of the wrong type is left out (``error``/``message`` as ``""``,
    ``ack``/``closed`` as None): a refusal is often written by a proxy, and
    only the members a decision needs (a 429's ``ack``, a 410's ``closed``)
    are required by :func:`classify_answer`.
    """
    try:  # as leniently as JSON.parse in the browser: a lone surrogate in a message is no reason to drop the close
        obj = json.loads(body) if body else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    error, message, ack = obj.get("error"), obj.get("message"), _whole(obj.get("ack"))
    try:
        closed = _closed(obj.get("closed"))
    except ProtocolError:
        closed = None
    return ErrorBody(
        error if isinstance(error, str) else "",
        message if isinstance(message, str) else "",
        ack if ack is not None and ack >= 0 else None,
        closed,
    )


def parse_gone_answer(body: bytes | None) -> Closed | None:
    """The close a ``410`` answer reports for a session that ended recently, if any.

    The server remembers how a forgotten session ended for a while, so a
    client whose answer carrying the close was lost still learns it.
    """
    error = parse_error_body(body)
    return None if error is None else error.closed


_DELAY = re.compile(r"[0-9]+(\.[0-9]+)?")


_DAY = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY = "(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = f"(?P<month>{'|'.join(_MONTHS)})"
_TIME = r"(?P<hour>\d{2}):(?P<minute>\d{2}):(?P<second>\d{2})"
# The three forms of an HTTP date (RFC 9110 section 5.6.7), exactly as the browser client reads them.
_HTTP_DATES = (
    re.compile(rf"{_DAY}, (?P<day>\d{{2}}) {_MONTH} (?P<year>\d{{4}}) {_TIME} GMT"),  # IMF-fixdate
    re.compile(rf"{_LONG_DAY}, (?P<day>\d{{2}})-{_MONTH}-(?P<year>\d{{2}}) {_TIME} GMT"),  # RFC 850
    re.compile(rf"{_DAY} {_MONTH} (?P<day>[ \d]\d) {_TIME} (?P<year>\d{{4}})"),  # asctime
)


def _http_date(text: str) -> float | None:
    """Epoch seconds of an HTTP date in one of its three forms, else None."""
    for form in _HTTP_DATES:
        match = form.fullmatch(text)
        if match is None:
            continue
        year = int(match["year"])
        if len(match["year"]) == 2:  # RFC 850: 00-49 are 2000-2049, 50-99 are 1950-1999 (as browsers read it)
            year += 2000 if year < 50 else 1900
        try:
            date = datetime(year, _MONTHS.index(match["month"]) + 1, int(match["day"]), int(match["hour"]),
                            int(match["minute"]), int(match["second"]), tzinfo=timezone.utc)
        except ValueError:
            return None
        return date.timestamp()
    return None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, or None when absent or not understood.

    Both forms of RFC 9110 section 10.2.3 are understood: delay-seconds
    (decimals tolerated) and an HTTP date in one of its three forms, which
    gives ``max(0, date - now)`` with ``now`` the wall clock in epoch seconds
    (``time.time()`` unless given). Anything else is None, as in the browser client.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELAY.fullmatch(text):
        return float(text)
    date = _http_date(text)
    if date is None:
        return None
    return max(0.0, date - (time.time() if now is None else now))


def format_seconds(value: float) -> str:
    """Format a duration as the protocol's ``[0-9]+(\\.[0-9]+)?`` (millisecond precision)."""
    text = f"{max(0.0, value):.3f}".rstrip("0").rstrip(".")
    return text or "0"


def http_error(status: int, body: bytes | None, retry_after: str | None = None, reason: str = "") -> HttpError:
    """Turn a refusal into the matching :class:`pollsession.HttpError` subclass (what :meth:`Client.open` raises).

    The server's short code and message are kept when the body has them
    (docs/protocol.md section 10); ``reason`` (the HTTP reason phrase) stands
    in for a missing message. A status without a subclass gives a plain
    :class:`HttpError` carrying that status.
    """
    document = parse_error_body(body)
    code = document.error if document is not None and document.error else None
    message = document.message if document is not None and document.message else reason or f"HTTP {status}"
    after = parse_retry_after(retry_after)
    seconds = 1 if after is None else math.ceil(after)
    if status == 429:
        ack = document.ack if document is not None and document.ack is not None else 0
        return InboxFull(message, ack=ack, retry_after=seconds)
    if status == 503:
        return ServiceUnavailable(message, retry_after=seconds, code=code)
    if status == 410:
        return UnknownSession(message, code=code, closed=document.closed if document is not None else None)
    return error_for_status(status, message, code)


# --------------------------------------------------------------------------
# What to do with an answer
# --------------------------------------------------------------------------


class RequestKind(str, enum.Enum):
    """The four requests a client makes (docs/protocol.md sections 5 to 8)."""

    OPEN = "open"  # GET without a session id
    POLL = "poll"  # GET with one (the final poll included)
    PUSH = "push"  # POST of a batch
    DELETE = "delete"

    @property
    def method(self) -> str:
        """The HTTP method of the request."""
        return {"open": "GET", "poll": "GET", "push": "POST", "delete": "DELETE"}[self.value]


class OutcomeKind(str, enum.Enum):
    """What the client does next (see :func:`classify_answer`)."""

    OK = "ok"  # use the answer
    RETRY = "retry"  # transient: the same request again after max(after, the backoff's delay)
    THROTTLED = "throttled"  # 429: keep what ack covers, send the rest after max(after, 429 backoff)
    CLOSE = "close"  # the session ends with code and reason


@dataclass(frozen=True, slots=True)
class Outcome:
    """One answer, decided. Which fields are set depends on :attr:`kind`:

    * ``OK``: ``messages`` and ``closed`` (open and poll); ``sid`` and
      ``limits`` (open); ``ack`` (push); nothing more for a delete.
    * ``RETRY``: ``after``, the ``Retry-After`` delay when there was one the
      client understood (else None: the backoff alone decides); ``reason``
      says what went wrong, for the log and the 1006 once retries run out.
    * ``THROTTLED``: ``ack`` (how far the server took the batch) and ``after``.
    * ``CLOSE``: ``code`` and ``reason``.
    """

    kind: OutcomeKind
    messages: tuple[Delivered, ...] = ()
    closed: Closed | None = None
    sid: str | None = None
    limits: Limits | None = None
    ack: int | None = None
    after: float | None = None
    code: int | None = None
    reason: str = ""


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def _retry(reason: str, after: float | None = None) -> Outcome:
    return Outcome(OutcomeKind.RETRY, after=after, reason=reason)


def _close(code: int, reason: str) -> Outcome:
    return Outcome(OutcomeKind.CLOSE, code=code, reason=reason)


def _refusal_text(status: int, error: ErrorBody | None) -> str:
    if error is None or not (error.error or error.message):
        return f"HTTP {status}"
    return f"{status} {error.error}: {error.message}" if error.error else f"{status}: {error.message}"


def _success(kind: RequestKind, headers: Mapping[str, str], body: bytes | None, sent: int) -> Outcome:
    """A 2xx answer: its values, or ProtocolError (malformed), or a close for a foreign version."""
    if kind is RequestKind.DELETE:
        return Outcome(OutcomeKind.OK)
    if kind is RequestKind.PUSH:
        ack = parse_post_answer(body if body is not None else b"").ack
        if ack > sent:
            raise ProtocolError(f"the server acknowledged seq {ack}, but only {sent} were sent")
        return Outcome(OutcomeKind.OK, ack=ack)
    if kind is RequestKind.POLL:
        poll = parse_poll_answer(body if body is not None else b"")
        return Outcome(OutcomeKind.OK, messages=poll.messages, closed=poll.closed)
    obj = _load_object(body)
    problem = _version_error(obj)
    if problem is not None:
        return _close(PROTOCOL_ERROR, problem)
    opened = _open_answer(obj, _header(headers, "Pollsession-Id") or None)
    return Outcome(OutcomeKind.OK, messages=opened.poll.messages, closed=opened.poll.closed,
                   sid=opened.sid, limits=opened.limits)


def classify_answer(
    request: RequestKind | str,
    status: int,
    headers: Mapping[str, str],
    body: bytes | str | None,
    *,
    sent: int = 0,
    now: float | None = None,
) -> Outcome:
    """Decide what the client does with one HTTP answer (docs/protocol.md section 13).

    ``request`` is a :class:`RequestKind` (or its value); ``body`` the raw
    body (None: none). ``sent`` is, for a push, the highest seq the batch
    carried: an ``ack`` above it is a malformed answer. ``now`` is the wall
    clock in epoch seconds for a ``Retry-After`` date (``time.time()`` unless
    given). In order:

    * 2xx: the answer's values (:attr:`OutcomeKind.OK`); a malformed one
      (not JSON, wrong shape, a bad message, an ack above ``sent``) is
      retried like a network failure, with ``after`` None; an open answer
      whose ``version`` is present and not 1 closes with 1002.
    * 429: throttled, with the body's ``ack`` (without an integer ``ack``, or
      above ``sent``, it is malformed: retry) and ``Retry-After``.
    * 410: close with the body's ``closed`` when it has a valid one, else 1006.
    * 413: close with 1009 and the server's message.
    * 5xx: retry, with ``Retry-After``.
    * anything else (1xx, 3xx, the other 4xx): close with 1006.

    The caller waits ``max(after, backoff delay)`` before a retry (giving up
    with 1006 once the backoff does) and acts on a close at once.
    """
    kind = RequestKind(request)
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    if 200 <= status < 300:
        try:
            return _success(kind, headers, raw, sent)
        except ProtocolError as exc:
            return _retry(f"unreadable {kind.value} answer ({status}): {exc}")
    error = parse_error_body(raw)
    if status == 429:
        if error is None or error.ack is None:
            return _retry(f"unreadable {kind.value} answer (429 without an integer ack)")
        if kind is RequestKind.PUSH and error.ack > sent:
            return _retry(f"unreadable push answer (429 acknowledges seq {error.ack}, but only {sent} were sent)")
        return Outcome(OutcomeKind.THROTTLED, ack=error.ack,
                       after=parse_retry_after(_header(headers, "Retry-After"), now=now),
                       reason=f"the inbox is full at ack {error.ack}")
    if status == 410:
        if error is not None and error.closed is not None:
            return _close(error.closed.code, error.closed.reason)
        return _close(ABNORMAL_CLOSURE, f"the server no longer knows this session ({_refusal_text(status, error)})")
    if status == 413:
        message = error.message if error is not None and error.message else "the request is too large (HTTP 413)"
        return _close(MESSAGE_TOO_BIG, message)
    if status >= 500:
        return _retry(f"{kind.value} answered {_refusal_text(status, error)}",
                      parse_retry_after(_header(headers, "Retry-After"), now=now))
    return _close(ABNORMAL_CLOSURE, f"the server refused the {kind.value}: {_refusal_text(status, error)}")

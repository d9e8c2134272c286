"""The one exception tree of pollsession.

Every error the library raises descends from :class:`PollsessionError`::

    PollsessionError
    ├── SessionClosed            the session ended; carries the close code and reason
    ├── MessageTooLarge          the application tried to send more than max_message_size
    ├── ProtocolError            (client side) the server answered something that is not the protocol
    └── HttpError                a request is refused; carries the HTTP status
        ├── BadRequest           400  the peer sent something malformed
        ├── Unauthorized         401  an authentication hook refused the opening request
        ├── Forbidden            403  origin refused, POST without a session, or a hook refused
        ├── MethodNotAllowed     405
        ├── UnknownSession       410  unknown, expired, forgotten or closed session
        ├── PayloadTooLarge      413
        ├── UnsupportedMediaType 415
        ├── InboxFull            429  the session's inbox is full; carries the ack
        └── ServiceUnavailable   503  too many sessions, or the handler is shut down

:class:`HttpError` subclasses render themselves: each knows its status, its
short error code, its extra headers (:meth:`HttpError.headers`) and its body
(:meth:`HttpError.body`, a ``wire.ErrorBody``); ``error_response`` only puts
those into a response. The ``message`` is safe to show to the client; details
belong in the log.
Applications raise :class:`Unauthorized` or :class:`Forbidden` from their
authentication hook to refuse a session.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .wire import Closed, ErrorBody

__all__ = [
    "PollsessionError",
    "SessionClosed",
    "MessageTooLarge",
    "ProtocolError",
    "HttpError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "MethodNotAllowed",
    "UnknownSession",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "InboxFull",
    "ServiceUnavailable",
]


class PollsessionError(Exception):
    """Base class of every exception raised by pollsession."""


class SessionClosed(PollsessionError):
    """The session has ended; no more messages can be sent or received.

    ``code`` follows WebSocket close codes: 1000 normal (the peer closed),
    1001 going away (expired, or the server shut down), 1008 policy violation,
    1011 the server's coroutine raised; 4000-4999 are the application's.
    The Python client also uses 1006 when the session ended without a close
    (the server answered 410, or the retry budget ran out).
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"session closed with code {self.code}" + (f": {self.reason}" if self.reason else "")


class MessageTooLarge(PollsessionError, ValueError):
    """A message is larger than the configured ``max_message_size``."""

    def __init__(self, size: int, limit: int, limit_name: str = "max_message_size") -> None:
        super().__init__(size, limit, limit_name)
        self.size = size
        self.limit = limit
        self.limit_name = limit_name

    def __str__(self) -> str:
        return f"message of {self.size} bytes exceeds {self.limit_name} of {self.limit} bytes"


class ProtocolError(PollsessionError):
    """The server answered something this client cannot understand (client side).

    Raised by the Python client's answer parsers. The client treats it like a
    failed request (retry with backoff): a broken proxy or a truncated answer
    looks exactly like this.
    """


class HttpError(PollsessionError):
    """A refused request: ``status`` and ``code`` go on the wire with ``message``.

    """

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def headers(self) -> list[tuple[str, str]]:
        """The headers this refusal adds to the JSON ones (``Retry-After``, ``Allow``)."""
        return []

    def is_routine(self) -> bool:
        """Whether this refusal is part of normal traffic (servers log it below WARNING)."""
        return False

    def body(self) -> ErrorBody:
        """The refusal's JSON body."""
        return ErrorBody(self.code, self.message)


class BadRequest(HttpError):
    status = 400
    code = "bad_request"


class Unauthorized(HttpError):
    """Raise from an authentication hook to refuse a session with 401."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str = "authentication required", *, code: str | None = None) -> None:
        super().__init__(message, code=code)


class Forbidden(HttpError):
    """Raise from an authentication hook to refuse a session with 403."""

    status = 403
    code = "forbidden"

    def __init__(self, message: str = "forbidden", *, code: str | None = None) -> None:
        super().__init__(message, code=code)


ALLOW = "GET, POST, DELETE, OPTIONS"
"""The methods a target answers (the ``Allow`` header of 405 and of a bare ``OPTIONS``)."""


class MethodNotAllowed(HttpError):
    status = 405
    code = "method_not_allowed"

    def headers(self) -> list[tuple[str, str]]:
        return [("Allow", ALLOW)]


class UnknownSession(HttpError):
    """410. ``closed`` is the close of a session that ended recently, so that a
    client whose last answers were lost still learns how it ended."""

    status = 410
    code = "unknown_session"

    def __init__(self, message: str, *, code: str | None = None,
                 closed: Closed | Mapping[str, Any] | None = None) -> None:
        super().__init__(message, code=code)
        if closed is not None and not isinstance(closed, Closed):  # the mapping {"code", "reason"} it used to take
            closed = Closed(int(closed["code"]), str(closed.get("reason", "")))
        self.closed: Closed | None = closed

    def is_routine(self) -> bool:
        """A 410 that tells a known session its close (a closed tab's last poll): nothing went wrong."""
        return self.closed is not None

    def body(self) -> ErrorBody:
        return ErrorBody(self.code, self.message, closed=self.closed)


class PayloadTooLarge(HttpError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(HttpError):
    status = 415
    code = "unsupported_media_type"


class InboxFull(HttpError):
    """Part of a batch did not fit; ``ack`` says how much the server holds."""

    status = 429
    code = "inbox_full"

    def __init__(self, message: str, *, ack: int, retry_after: int) -> None:
        super().__init__(message)
        self.ack = ack
        self.retry_after = retry_after

    def headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after))]

    def body(self) -> ErrorBody:
        return ErrorBody(self.code, self.message, ack=self.ack)


class ServiceUnavailable(HttpError):
    status = 503
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after

    def headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after))]


_BY_STATUS: dict[int, type[HttpError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    405: MethodNotAllowed,
    410: UnknownSession,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


def error_for_status(status: int, message: str, code: str | None = None) -> HttpError:
    """The refusal of a status without extra fields (400-415), rebuilt from its status, message and code.

    A status without a subclass gives a plain :class:`HttpError` carrying it.
    (429 and 503 carry more than a message: build :class:`InboxFull` and
    :class:`ServiceUnavailable` directly.)
    """
    cls = _BY_STATUS.get(status)
    if cls is not None:
        return cls(message, code=code)
    error = HttpError(message, code=code)
    error.status = status
    return error


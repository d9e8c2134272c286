"""The request/response surface between the core and a web framework.

An adapter implements :class:`HttpContext` over its framework's request and
writes the :class:`HttpResponse` value the core returns; it holds no protocol
logic. :class:`RequestInfo` is the framework-neutral snapshot of the opening
request that a session keeps (headers, query, cookies, client address).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie

from .errors import PayloadTooLarge

__all__ = ["HttpContext", "HttpResponse", "Headers", "RequestInfo", "buffered_body", "declared_length"]


class HttpContext(abc.ABC):
    """What the core needs to know about one HTTP request.

    Implement every method; each is called at most a few times per request,
    from the thread that called the handler. ``body(limit)`` is called at
    most once, only for requests that carry one the core will read.
    """

    @abc.abstractmethod
    def method(self) -> str:
        """The request method, upper-case (``"GET"``)."""

    @abc.abstractmethod
    def path(self) -> str:
        """The URL path the request was sent to, without the query string."""

    @abc.abstractmethod
    def scheme(self) -> str:
        """``"http"`` or ``"https"``, as the request arrived (after any trusted proxy fix-up)."""

    @abc.abstractmethod
    def header(self, name: str) -> str | None:
        """One request header by case-insensitive name, or None when absent."""

    @abc.abstractmethod
    def headers(self) -> Iterable[tuple[str, str]]:
        """Every request header as ``(name, value)`` pairs, repeats included."""

    @abc.abstractmethod
    def query_items(self) -> Iterable[tuple[str, str]]:
        """Every query parameter as ``(name, value)`` pairs, in order, repeats included."""

    @abc.abstractmethod
    def body(self, limit: int) -> bytes:
        """The request body, reading at most ``limit + 1`` bytes of it.

        Return the whole body when it is ``limit`` bytes or fewer; otherwise
        return more than ``limit`` bytes (``limit + 1`` is enough) and read
        no further: the core answers 413 when more than ``limit`` came back,
        so the rest is never needed. Whatever the framing (``Content-Length``
        or chunked), never hold more than about ``limit`` bytes in memory.

        Raise :class:`~pollsession.BadRequest` (the core answers 400 with the
        protocol's JSON error) when the body's framing is broken or the body
        is cut off (fewer bytes than ``Content-Length`` before the end of
        the stream); never let the framework's own exception escape. An
        adapter that has not read a body it knows to be larger than
        ``limit`` raises :class:`~pollsession.PayloadTooLarge`.

        After an answer made without reading the whole body, the adapter
        must make sure the connection is not reused with the rest of the
        body still in it: close it (and say ``Connection: close``), or let
        the server discard the rest.
        """

    @abc.abstractmethod
    def client_address(self) -> str | None:
        """The peer's IP address, if known."""


def declared_length(value: str | None) -> int | None:
    """The body length a plain ``Content-Length`` value declares, or None (absent, or not plain digits).

    More than 18 digits reads as 10**18: past any limit, and short of
    ``int()``'s digit limit (4,300), so a hostile header costs nothing.
    """
    value = (value or "").strip()
    if not (value.isascii() and value.isdigit()):
        return None
    return int(value) if len(value) <= 18 else 10**18


def buffered_body(body: bytes, limit: int, *, too_large: bool) -> bytes:
    """``HttpContext.body(limit)`` for an adapter that has read ``body`` and kept at most ``limit + 1`` bytes.

    ``too_large``: the adapter knows the body is larger than ``limit`` and
    left it unread (its ``Content-Length`` said so); then, whatever was read,
    the answer is :class:`~pollsession.PayloadTooLarge`.
    """
    if too_large and len(body) <= limit:
        raise PayloadTooLarge(f"request body declares more than max_body_size of {limit} bytes",
                              code="body_too_large")
    return body[: limit + 1]


@dataclass(slots=True)
class HttpResponse:
    """A response value: the adapter writes status, headers and body as given.

    ``routine`` marks a 4xx that is part of normal operation: a client told
    the close of a session that ended (its unload ``DELETE`` raced its last
    poll, say). Adapters log it as they log a success, not as a refusal.
    """

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    routine: bool = False


class Headers(Mapping[str, str]):
    """Read-only, case-insensitive headers; repeated headers join with ``", "``."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in items:
            self._values.setdefault(name.lower(), []).append(value)

    def __getitem__(self, name: str) -> str:
        return ", ".join(self._values[name.lower()])

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def get_all(self, name: str) -> list[str]:
        """Every value of a header, in the order received."""
        return list(self._values.get(name.lower(), ()))

    def __repr__(self) -> str:
        return f"Headers({self._values!r})"


@dataclass(frozen=True)
class RequestInfo:
    """What the request that opened a session carried.

    ``query`` maps each parameter to its first value; ``query_lists`` keeps
    every value. ``cookies`` maps names to values.
    """

    method: str
    path: str
    scheme: str
    headers: Headers
    query_lists: Mapping[str, list[str]]
    client_address: str | None

    @classmethod
    def from_context(cls, context: HttpContext) -> RequestInfo:
        query: dict[str, list[str]] = {}
        for name, value in context.query_items():
            query.setdefault(name, []).append(value)
        return cls(
            method=context.method(),
            path=context.path(),
            scheme=context.scheme(),
            headers=Headers(context.headers()),
            query_lists=query,
            client_address=context.client_address(),
        )

    @property
    def query(self) -> dict[str, str]:
        return {name: values[0] for name, values in self.query_lists.items()}

    @property
    def cookies(self) -> dict[str, str]:
        jar: SimpleCookie = SimpleCookie()
        for header in self.headers.get_all("cookie"):
            try:
                jar.load(header)
            except CookieError:
                continue
        return {name: morsel.value for name, morsel in jar.items()}

    @property
    def origin(self) -> str | None:
        return self.headers.get("origin") or None

    @property
    def user_agent(self) -> str | None:
        return self.headers.get("user-agent")

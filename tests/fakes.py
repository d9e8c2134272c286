"""Fakes for testing the core without sockets: a request context and a clock."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from typing import Any

from pollsession import HttpContext, HttpHandler, HttpResponse

__all__ = ["FakeContext", "FakeClock", "call", "body_of"]


class FakeContext(HttpContext):
    """A request given as plain values."""

    def __init__(
        self,
        method: str = "GET",
        *,
        path: str = "/poll",
        query: Iterable[tuple[str, str]] = (),
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        scheme: str = "http",
        client: str | None = "127.0.0.1",
    ) -> None:
        self._method = method
        self._path = path
        self._query = list(query)
        self._headers = {"Host": "testserver", **(headers or {})}
        self._body = body
        self._scheme = scheme
        self._client = client

    def method(self) -> str:
        return self._method

    def path(self) -> str:
        return self._path

    def scheme(self) -> str:
        return self._scheme

    def header(self, name: str) -> str | None:
        for key, value in self._headers.items():
            if key.lower() == name.lower():
                return value
        return None

    def headers(self) -> Iterable[tuple[str, str]]:
        return list(self._headers.items())

    def query_items(self) -> Iterable[tuple[str, str]]:
        return list(self._query)

    def body(self, limit: int) -> bytes:
        return self._body[: limit + 1]

    def client_address(self) -> str | None:
        return self._client


class FakeClock:
    """A monotonic clock that moves only when told to; safe to read from any thread."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


def body_of(response: HttpResponse) -> Any:
    return json.loads(response.body) if response.body else None


def call(handler: HttpHandler, method: str = "GET", sid: str | None = None, *, query: Iterable[tuple[str, str]] = (),
         messages: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None,
         path: str = "/poll") -> HttpResponse:
    """One request through the handler, the way an adapter makes it."""
    all_headers = dict(headers or {})
    if sid is not None:
        all_headers["Pollsession-Id"] = sid
    body = b""
    if messages is not None:
        body = json.dumps({"messages": messages}).encode()
        all_headers.setdefault("Content-Type", "application/json")
    return handler.handle_request(FakeContext(method, path=path, query=query, headers=all_headers, body=body))

"""Mount a pollsession target in a Tornado app (``pollsession.adapters.tornado``).

Usage::

    from pollsession.adapters.tornado import route
    app = tornado.web.Application([route(r"/poll", handler)])

Threading model
---------------

Requests are read on Tornado's IOLoop and handed to the pollsession loop
thread with one ``call_soon_threadsafe`` each way; a held long poll is an
awaiting coroutine and ties up no thread, so one process holds thousands of
polls. When a client goes away, Tornado calls ``on_connection_close`` and the
held poll is released at once. A synchronous ``authenticate`` hook runs on
Tornado's IOLoop, so keep it quick (or make it ``async``: it then runs on the
pollsession loop).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

import tornado.web
from tornado.httputil import HTTPServerRequest

from pollsession import HttpContext, HttpHandler, HttpResponse, client_script_path

__all__ = ["TornadoContext", "SessionRequestHandler", "ClientScriptHandler", "route", "client_script_route"]


class TornadoContext(HttpContext):
    """An :class:`~pollsession.HttpContext` over a Tornado request."""

    def __init__(self, tornado_request: HTTPServerRequest) -> None:
        self._request = tornado_request

    def method(self) -> str:
        return self._request.method or "GET"

    def path(self) -> str:
        return self._request.path

    def scheme(self) -> str:
        return self._request.protocol

    def header(self, name: str) -> str | None:
        return self._request.headers.get(name)

    def headers(self) -> Iterable[tuple[str, str]]:
        return list(self._request.headers.get_all())

    def query_items(self) -> Iterable[tuple[str, str]]:
        return parse_qsl(self._request.query, keep_blank_values=True)

    def body(self) -> bytes:
        return self._request.body

    def client_address(self) -> str | None:
        return self._request.remote_ip


class _EveryMethod(tuple[str, ...]):
    """A SUPPORTED_METHODS that lets every method through to the core, which answers 405 itself."""

    def __contains__(self, method: object) -> bool:
        return True


@tornado.web.stream_request_body
class SessionRequestHandler(tornado.web.RequestHandler):
    """Serves one :class:`~pollsession.HttpHandler`; give it ``{"handler": handler}``.

    The body is streamed in and kept raw (up to one byte past
    ``max_body_size``, enough for the core to answer 413), so that Tornado
    never parses it as a form: what a body means is the core's business.
    """

    SUPPORTED_METHODS = _EveryMethod(("GET", "POST", "DELETE", "OPTIONS"))

    def initialize(self, handler: HttpHandler) -> None:
        self._handler = handler
        self._body = bytearray()
        self._body_cap = handler.settings.max_body_size + 1
        self._answering: asyncio.Future[HttpResponse] | None = None

    async def prepare(self) -> None:
        # Only the four methods have handler methods; any other is answered
        # now, so that Tornado never looks for a method to call.
        if self.request.method not in ("GET", "POST", "DELETE", "OPTIONS"):
            await self._serve()

    def data_received(self, chunk: bytes) -> None:
        room = self._body_cap - len(self._body)
        if room > 0:
            self._body += chunk[:room]

    async def _serve(self) -> None:
        self.request.body = bytes(self._body)
        self._answering = asyncio.ensure_future(self._handler.handle_request_async(TornadoContext(self.request)))
        try:
            answer = await self._answering
        except asyncio.CancelledError:
            return  # the client went away; there is nobody to answer
        finally:
            self._answering = None
        self.clear_header("Content-Type")  # the core's answer says whether it has one
        self.set_status(answer.status)
        for name, value in answer.headers:
            self.add_header(name, value)
        self.finish(answer.body or None)

    def on_connection_close(self) -> None:
        if self._answering is not None:
            self._answering.cancel()

    # Protocol rules decide: no Tornado XSRF check (sessions never open by POST),
    # no ETag/304 on poll answers.
    def check_xsrf_cookie(self) -> None:
        return None

    def compute_etag(self) -> str | None:
        return None

    get = post = delete = options = _serve


class ClientScriptHandler(tornado.web.RequestHandler):
    """Serves the browser client, ``pollsession.js``."""

    _script: bytes | None = None

    def get(self) -> None:
        if ClientScriptHandler._script is None:
            ClientScriptHandler._script = client_script_path().read_bytes()
        self.set_header("Content-Type", "text/javascript; charset=utf-8")
        self.set_header("Cache-Control", "max-age=3600")
        self.finish(ClientScriptHandler._script)


def route(pattern: str, handler: HttpHandler) -> tuple[str, type[SessionRequestHandler], dict[str, Any]]:
    """A Tornado route serving ``handler`` at ``pattern``."""
    return (pattern, SessionRequestHandler, {"handler": handler})


def client_script_route(pattern: str = r"/pollsession\.js") -> tuple[str, type[ClientScriptHandler]]:
    """A Tornado route serving the browser client at ``pattern``."""
    return (pattern, ClientScriptHandler)

"""In a real Chromium, a page on another site cannot open a session through tags.

Browsers send ``<img>``, ``<script>`` and ``<iframe>`` requests without an
``Origin`` header and with the user's cookies, so by the protocol's rule alone
they would look same-origin. The Fetch Metadata the browser adds
(``Sec-Fetch-Site: cross-site`` with a mode other than ``cors``) is what makes
the server refuse them (docs/security.md, "Cross-site requests").

Timeline of the attack test: the endpoint is served at
``http://127.0.0.1:P1/poll`` and the attacker's page from a second server at
``http://localhost:P2/`` (another site: a different host, not a subdomain); a
cookie for 127.0.0.1 is in the browser first. The page loads, its three tags
fire requests at the endpoint, the endpoint records each request it answers;
once all three have arrived (and the page's load event has fired), no session
exists and the authentication hook was never called. The control test opens
a session with the real browser client from a same-origin page, and its hook
sees the cookie.

The cookie is SameSite=None (and Secure, which Chromium accepts on
127.0.0.1) so that nothing but the browser's third-party cookie policy keeps
it off the tags' requests. Debian's Chromium 156 blocks third-party cookies
in these contexts, so the tags' requests arrive without it; the test does not
count on either: the server must refuse them whether the cookie rides along
or not (an older browser, or a user who allows third-party cookies, sends it).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pollsession import HttpContext, HttpHandler, HttpResponse, RequestInfo, Session, SessionClosed
from tests.browser_pages import add_browser_routes
from tests.utils import MS, serve, wait_until

TIMEOUT = 10_000 * MS  # seconds; the longest any single wait may take

pytestmark = pytest.mark.parametrize("adapter", ["flask", "tornado"])

COOKIE = {"name": "auth", "value": "victim-credential", "domain": "127.0.0.1", "path": "/",
          # SameSite=None (which needs Secure; Chromium treats 127.0.0.1 as a
          # secure context) so that the cookie rides along on cross-site tags.
          "sameSite": "None", "secure": True}


@dataclass(frozen=True)
class Seen:
    """One request the endpoint answered, as the test server saw it."""

    method: str
    headers: dict[str, str]
    status: int
    error: str | None


class RecordingHandler(HttpHandler):
    """An ``HttpHandler`` that records every request it answers, with the answer's status."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[Seen] = []
        self._seen_lock = threading.Lock()

    def _record(self, context: HttpContext, response: HttpResponse) -> None:
        error = None
        if response.status >= 400 and response.body:
            error = json.loads(response.body).get("error")
        seen = Seen(context.method(), {k.lower(): v for k, v in context.headers()}, response.status, error)
        with self._seen_lock:
            self.seen.append(seen)

    def handle_request(self, context: HttpContext) -> HttpResponse:
        response = super().handle_request(context)
        self._record(context, response)
        return response

    async def handle_request_async(self, context: HttpContext) -> HttpResponse:
        response = await super().handle_request_async(context)
        self._record(context, response)
        return response

    def requests(self) -> list[Seen]:
        with self._seen_lock:
            return list(self.seen)


class Hook:
    """An authentication hook that records every call and accepts."""

    def __init__(self) -> None:
        self.calls: list[RequestInfo] = []

    def __call__(self, request: RequestInfo) -> str:
        self.calls.append(request)
        return "user"


async def echo(session: Session) -> None:
    while True:
        try:
            await session.send(await session.receive())
        except SessionClosed:
            return


def attacker_html(target: str) -> bytes:
    return f"""<!doctype html>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>another site</title>
<img src="{target}">
<script src="{target}"></script>
<iframe src="{target}"></iframe>
""".encode()


@contextlib.contextmanager
def attacker_site(target: str) -> Iterator[str]:
    """A second server serving the attacker's page; yield its URL on ``localhost``."""
    page = attacker_html(target)

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT * 1000)
    context.add_cookies([COOKIE])
    try:
        yield context
    finally:
        context.close()


def test_tags_on_another_site_open_no_session(adapter: str, context: Any) -> None:
    hook = Hook()
    handler = RecordingHandler(echo, authenticate=hook)
    with serve(adapter, handler) as base, attacker_site(f"{base}/poll") as attacker:
        page = context.new_page()
        page.goto(attacker, wait_until="load")
        # Every tag's request reaches the endpoint (the load event does not
        # promise that the server has recorded them all).
        wait_until(lambda: len(handler.requests()) >= 3, TIMEOUT, "the three tag requests to reach the endpoint")
        seen = handler.requests()
        assert sorted(s.headers.get("sec-fetch-dest", "") for s in seen) == ["iframe", "image", "script"]
        for request in seen:
            assert request.method == "GET"
            assert request.headers.get("sec-fetch-site") == "cross-site", request.headers
            assert request.headers.get("sec-fetch-mode") in ("no-cors", "navigate"), request.headers
            assert "origin" not in request.headers, request.headers  # same-origin by Origin alone
            assert (request.status, request.error) == (403, "cross_site_request")
        assert handler.session_count() == 0
        assert hook.calls == []


def test_a_same_origin_page_still_opens_a_session(adapter: str, context: Any) -> None:
    hook = Hook()
    handler = RecordingHandler(echo, authenticate=hook)
    with serve(adapter, handler, extra=add_browser_routes(adapter)) as base:
        page = context.new_page()
        page.goto(f"{base}/harness.html", wait_until="load")
        index = page.evaluate("(url) => startSession(url)", f"{base}/poll")
        page.wait_for_function("(i) => session(i).readyState === 1", arg=index, polling=20,
                               timeout=TIMEOUT * 1000)
        page.evaluate("(i) => session(i).send('ping')", index)
        page.wait_for_function("(i) => messages(i).length >= 1", arg=index, polling=20, timeout=TIMEOUT * 1000)
        assert page.evaluate("(i) => messages(i)", index) == [{"kind": "text", "value": "ping"}]
        assert handler.session_count() == 1
        assert len(hook.calls) == 1
        assert hook.calls[0].cookies.get("auth") == "victim-credential"
        opens = [s for s in handler.requests() if s.method == "GET" and "pollsession-id" not in s.headers]
        assert len(opens) == 1
        assert opens[0].status == 200
        assert opens[0].headers.get("sec-fetch-site") == "same-origin"

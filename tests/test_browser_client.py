"""The browser client, pollsession.js, in a real headless Chromium, against every adapter.

Each test serves the page (``tests/pages``) and the client scripts from a test
server (``tests.browser_pages``), starts sessions through the page's harness,
and waits on the events the harness records. Failures in the network are made
with Playwright's request routing: a response is fetched from the real server
and then thrown away, so the server believes it was delivered.

The last test runs ``examples/asgi_fastapi.py`` under uvicorn as a
subprocess, behind the fault-injecting proxy (``tests/fault_proxy.py``), with
the page served from the proxy's origin.

Chromium is Debian's ``/usr/bin/chromium``. When it (or Playwright) is missing
the tests skip, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from pollsession import HttpHandler, Session, SessionClosed
from tests.browser_pages import PAGES, add_browser_routes
from tests.fault_proxy import FaultPlan, FaultProxy
from tests.test_examples import running
from tests.utils import ADAPTERS, MS, serve, wait_until

TIMEOUT = 10_000 * MS  # seconds; the longest any single wait may take


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    """Each test that takes ``adapter`` runs once per in-process adapter."""
    return str(request.param)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT * 1000)
    page_errors: list[Any] = []
    page.on("pageerror", lambda error: page_errors.append(error))
    try:
        yield page
    finally:
        page.unroute_all(behavior="ignoreErrors")
        context.close()
    assert not page_errors, f"uncaught errors in the page: {page_errors}"


@contextlib.contextmanager
def serving(adapter: str, app: Any, **settings: Any) -> Iterator[str]:
    """Serve ``app`` at /poll plus the test pages and scripts; yield the base URL."""
    handler = HttpHandler(app, **settings)
    with serve(adapter, handler, extra=add_browser_routes(adapter)) as base_url:
        yield base_url


def wait_js(page: Any, expression: str, arg: Any = None) -> Any:
    """Wait until the JavaScript function ``expression(arg)`` returns a truthy value."""
    return page.wait_for_function(expression, arg=arg, polling=20, timeout=TIMEOUT * 1000).json_value()


def messages(page: Any, index: int) -> list[dict[str, Any]]:
    return page.evaluate("(i) => messages(i)", index)


def close_event(page: Any, index: int) -> dict[str, Any]:
    return wait_js(page, "(i) => closeEvent(i)", index)


def status_of(base_url: str, sid: str) -> int:
    """The status a poll for ``sid`` gets now (410 once the server forgot it)."""
    request = urllib.request.Request(f"{base_url}/poll?ack=0&wait=0", headers={"Pollsession-Id": sid})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


class EchoApp:
    """Greets, then echoes; a few texts are commands. Logs what each session sees."""

    def __init__(self) -> None:
        self.log: dict[str, list[Any]] = {}
        self.test_headers: dict[str, str | None] = {}

    def __call__(self, session: Session) -> Any:
        return self.run(session)

    async def run(self, session: Session) -> None:
        log = self.log.setdefault(session.id, [])
        self.test_headers[session.id] = session.request.headers.get("x-test-token")
        await session.send("welcome")
        while True:
            try:
                data = await session.receive()
            except SessionClosed as closed:
                log.append(("closed", closed.code))
                return
            log.append(data)
            if data == "close-4001":
                await session.close(4001, "bye")
                return
            if data == "raise":
                raise RuntimeError("raised on purpose by the browser test")
            if data == "burst":
                for i in range(5):
                    await session.send({"burst": i})
            else:
                await session.send(data)

    def received(self) -> list[Any]:
        """Everything the only session received (the test opened exactly one)."""
        assert len(self.log) == 1, f"expected one session, got {len(self.log)}"
        return next(iter(self.log.values()))


# Every message type, sent before the session is open (so queued), in one batch.
SEND_EVERY_TYPE = """(url) => {
    const i = startSession(url, {retryBaseDelay: 0.05});
    const s = session(i);
    const all = new Uint8Array(256).map((_, n) => n);
    const backing = new Uint8Array([1, 2, 3, 4, 5, 6, 7]);
    s.send("hello");
    s.send("héllo ✓ 𝄞");
    s.send("");
    s.send(all);
    s.send(new Uint8Array([1, 2, 3]).buffer);
    s.send(new DataView(backing.buffer, 4, 2));
    s.send(new Blob([new Uint8Array([250, 251])]));
    s.send({a: [1, 2.5, null, true, "x"], "ü": "𝄞"});
    // What the protocol cannot carry is refused, and queues nothing (no seq is used up).
    const refused = ["a\\ud800b", {s: "\\udfff"}, {["\\ud800"]: 1}, [NaN], {x: Infinity}].map((bad) => {
        try { s.send(bad); return "sent"; } catch (e) { return e.name; }
    });
    s.send(42);
    s.send(null);
    s.send([]);
    backing.fill(0);  // the client copied the data at send()
    return {index: i, state: s.readyState, buffered: s.bufferedAmount, refused};
}"""

EXPECTED_ECHOES = [
    {"kind": "text", "value": "welcome"},
    {"kind": "text", "value": "hello"},
    {"kind": "text", "value": "héllo ✓ 𝄞"},
    {"kind": "text", "value": ""},
    {"kind": "arraybuffer", "bytes": list(range(256))},
    {"kind": "arraybuffer", "bytes": [1, 2, 3]},
    {"kind": "arraybuffer", "bytes": [5, 6]},
    {"kind": "arraybuffer", "bytes": [250, 251]},
    {"kind": "json", "value": {"a": [1, 2.5, None, True, "x"], "ü": "𝄞"}},
    {"kind": "json", "value": 42},
    {"kind": "json", "value": None},
    {"kind": "json", "value": []},
]

EXPECTED_RECEIVED = [
    "hello", "héllo ✓ 𝄞", "", bytes(range(256)), b"\x01\x02\x03", b"\x05\x06", b"\xfa\xfb",
    {"a": [1, 2.5, None, True, "x"], "ü": "𝄞"}, 42, None, [],
]  # fmt: skip


def test_classic_script_opens_and_echoes_every_type_in_order(adapter: str, page: Any) -> None:
    app = EchoApp()
    with serving(adapter, app) as base:
        page.goto(f"{base}/harness.html")
        api = page.evaluate("""() => ({
            global: typeof window.PollSession,
            statics: [PollSession.CONNECTING, PollSession.OPEN, PollSession.CLOSING, PollSession.CLOSED],
            isEventTarget: PollSession.prototype instanceof EventTarget,
        })""")
        assert api == {"global": "function", "statics": [0, 1, 2, 3], "isEventTarget": True}
        # Importing the module entry as well keeps the one class the script defined.
        assert page.evaluate("async () => (await import('/pollsession.mjs')).PollSession === window.PollSession")

        started = page.evaluate(SEND_EVERY_TYPE, f"{base}/poll")
        index = started["index"]
        assert started["state"] == 0  # CONNECTING, and the sends were queued
        assert started["refused"] == ["TypeError"] * 5  # lone surrogates (text, json value, key), NaN, Infinity
        assert started["buffered"] == 5 + 15 + 0 + 256 + 3 + 2 + 2 + 39 + 2 + 4 + 2  # UTF-8 bytes

        wait_js(page, "([i, n]) => messages(i).length >= n && runs[i].pendingBlobs === 0",
                [index, len(EXPECTED_ECHOES)])
        events = page.evaluate("(i) => events(i)", index)
        assert events[0] == {"type": "open", "readyState": 1}
        assert all(event["isMessageEvent"] for event in events[1:])
        assert messages(page, index) == EXPECTED_ECHOES
        assert app.received() == EXPECTED_RECEIVED
        assert [type(x) for x in app.received()] == [type(x) for x in EXPECTED_RECEIVED]
        assert wait_js(page, "(i) => session(i).bufferedAmount === 0", index)
        on_instance = page.evaluate("(i) => [session(i).OPEN, session(i).readyState, session(i).url]", index)
        assert on_instance == [1, 1, f"{base}/poll"]

        page.evaluate("(i) => session(i).close()", index)
        closed = close_event(page, index)
        assert closed == {"type": "close", "code": 1000, "reason": "", "wasClean": True,
                          "isCloseEvent": True, "readyState": 3}
        wait_until(lambda: app.received()[-1:] == [("closed", 1000)], TIMEOUT, "the server to see the close")


def test_es_module_import_and_blob_binary_type(adapter: str, page: Any) -> None:
    app = EchoApp()
    poll_urls: list[str] = []
    page.on("request", lambda request: poll_urls.append(request.url) if "/poll?" in request.url else None)
    with serving(adapter, app) as base:
        page.goto(f"{base}/module.html")
        check = wait_js(page, "() => window.moduleCheck")
        assert check == {"exported": "function", "sameAsDefault": True, "sameAsGlobal": True}

        index = page.evaluate("""(url) => {
            const i = startSession(url, {binaryType: "blob", pollTimeout: 0.5});
            session(i).onopen = () => {
                session(i).send(new Uint8Array(256).map((_, n) => n));
                session(i).send("after");
            };
            return i;
        }""", f"{base}/poll")
        wait_js(page, "(i) => messages(i).length >= 3 && runs[i].pendingBlobs === 0", index)
        assert messages(page, index) == [
            {"kind": "text", "value": "welcome"},
            {"kind": "blob", "bytes": list(range(256))},
            {"kind": "text", "value": "after"},
        ]
        assert any("wait=0.5" in url for url in poll_urls), poll_urls
        page.evaluate("(i) => session(i).close(4000, 'module done')", index)
        assert close_event(page, index)["code"] == 4000


def test_lost_responses_lose_and_duplicate_nothing(adapter: str, page: Any) -> None:
    # Timeline: the first poll gets a 502 from "a proxy" (retried); the first
    # POST reaches the server but its answer is lost (the batch is sent again
    # and the server drops the repeats); the poll answer carrying the burst is
    # lost after the server sent it (the next poll, same ack, gets it again).
    app = EchoApp()
    state = {"poll_502": False, "lost_post": False, "lost_poll": False}

    def on_poll(route: Any) -> None:
        if not state["poll_502"]:
            state["poll_502"] = True
            route.fulfill(status=502, body="bad gateway")
            return
        response = route.fetch()
        answer = response.json() if response.status == 200 else {}
        if not state["lost_poll"] and any(m.get("data") == {"burst": 0} for m in answer.get("messages", [])):
            state["lost_poll"] = True
            route.abort("connectionreset")
            return
        route.fulfill(response=response)

    def on_push(route: Any) -> None:
        if route.request.method == "POST" and not state["lost_post"]:
            route.fetch()
            state["lost_post"] = True
            route.abort("connectionreset")
            return
        route.fallback()

    with serving(adapter, app, poll_timeout=1.0) as base:
        page.goto(f"{base}/harness.html")
        page.route(lambda url: "/poll?" in url, on_poll)
        page.route(lambda url: url.endswith("/poll"), on_push)
        index = page.evaluate("""(url) => {
            const i = startSession(url, {retryBaseDelay: 0.05, retryMaxDelay: 0.2});
            session(i).send("one");
            session(i).send("burst");
            return i;
        }""", f"{base}/poll")
        wait_js(page, "(i) => messages(i).length >= 7", index)
        assert messages(page, index) == [
            {"kind": "text", "value": "welcome"},
            {"kind": "text", "value": "one"},
            *({"kind": "json", "value": {"burst": i}} for i in range(5)),
        ]
        assert state == {"poll_502": True, "lost_post": True, "lost_poll": True}
        assert app.received() == ["one", "burst"]
        assert page.evaluate("(i) => [session(i).readyState, countOf(i, 'error')]", index) == [1, 0]


def test_close_codes_and_events(adapter: str, page: Any) -> None:
    app = EchoApp()
    with serving(adapter, app) as base:
        page.goto(f"{base}/harness.html")
        ids = page.evaluate("""(url) => [0, 1, 2, 3].map(() => startSession(url))""", f"{base}/poll")
        wait_js(page, "(ids) => ids.every((i) => session(i).readyState === 1)", ids)
        sids = page.evaluate("(ids) => ids.map((i) => session(i).sessionId)", ids)
        client_default, client_custom, server_close, server_raise = ids

        page.evaluate("(i) => session(i).close()", client_default)
        page.evaluate("(i) => session(i).close(4002, 'done')", client_custom)
        page.evaluate("(i) => session(i).send('close-4001')", server_close)
        page.evaluate("(i) => session(i).send('raise')", server_raise)

        def closed(index: int) -> dict[str, Any]:
            event = close_event(page, index)
            del event["type"], event["isCloseEvent"], event["readyState"]
            return event

        assert closed(client_default) == {"code": 1000, "reason": "", "wasClean": True}
        assert closed(client_custom) == {"code": 4002, "reason": "done", "wasClean": True}
        assert closed(server_close) == {"code": 4001, "reason": "bye", "wasClean": True}
        raised = closed(server_raise)
        assert (raised["code"], raised["wasClean"]) == (1011, True)
        assert page.evaluate("(ids) => ids.map((i) => countOf(i, 'error'))", ids) == [0, 0, 0, 0]

        # The server saw the client's closes as 1000, and has forgotten every
        # session: after a DELETE, or after the client's last poll.
        for sid in sids[:2]:
            wait_until(lambda sid=sid: app.log[sid][-1:] == [("closed", 1000)], TIMEOUT, "the server to see 1000")
        for sid in sids:
            assert status_of(base, sid) == 410


def test_gone_session_closes_with_1006(adapter: str, page: Any) -> None:
    # Every poll is sent with an id the server does not know: it answers 410.
    def unknown_id(route: Any) -> None:
        route.continue_(headers={**route.request.headers, "pollsession-id": "not-a-session-the-server-knows"})

    with serving(adapter, EchoApp()) as base:
        page.goto(f"{base}/harness.html")
        page.route(lambda url: "/poll?" in url, unknown_id)
        index = page.evaluate("(url) => startSession(url, {retryBaseDelay: 0.05})", f"{base}/poll")
        closed = close_event(page, index)
        assert (closed["code"], closed["wasClean"], closed["readyState"]) == (1006, False, 3)
        assert "gone" in closed["reason"] and "410" in closed["reason"]
        kinds = page.evaluate("(i) => events(i).map((e) => e.type)", index)
        assert kinds[0] == "open" and kinds[-2:] == ["error", "close"]


def test_full_inbox_is_retried_without_loss(adapter: str, page: Any) -> None:
    # The session reads its first message, then stalls; with an inbox of 2 the
    # next POST is answered 429 (taking what fits) and the client sends the
    # rest again after Retry-After (0 here, so after its own backoff).
    received: list[Any] = []

    async def slow_reader(session: Session) -> None:
        import asyncio

        async for data in session:
            received.append(data)
            if len(received) == 1:
                await asyncio.sleep(300 * MS)
            await session.send(data)

    statuses: list[int] = []
    page.on("response", lambda response: statuses.append(response.status) if response.request.method == "POST" else None)
    with serving(adapter, slow_reader, inbox_limit=2, retry_after=0) as base:
        page.goto(f"{base}/harness.html")
        index = page.evaluate("""(url) => {
            const i = startSession(url, {retryBaseDelay: 0.05, retryMaxDelay: 0.2});
            for (let n = 0; n < 10; n++) session(i).send({n});
            return i;
        }""", f"{base}/poll")
        wait_js(page, "(i) => messages(i).length >= 10", index)
        assert messages(page, index) == [{"kind": "json", "value": {"n": n}} for n in range(10)]
        assert received == [{"n": n} for n in range(10)]
        assert 429 in statuses, statuses
        assert wait_js(page, "(i) => session(i).bufferedAmount === 0", index)


def test_pagehide_deletes_the_session(adapter: str, page: Any) -> None:
    app = EchoApp()
    with serving(adapter, app) as base:
        page.goto(f"{base}/harness.html")
        index = page.evaluate("(url) => startSession(url, {headers: {'X-Test-Token': 'abc'}})", f"{base}/poll")
        wait_js(page, "(i) => session(i).readyState === 1", index)
        wait_until(lambda: list(app.test_headers.values()) == ["abc"], TIMEOUT, "the session to see the header")
        page.goto("about:blank")
        wait_until(lambda: app.received()[-1:] == [("closed", 1000)], TIMEOUT, "the DELETE sent on pagehide")


def test_cross_origin_allowed_with_credentials(adapter: str, page: Any) -> None:
    async def who(session: Session) -> None:
        await session.send({"cookie": session.request.cookies.get("token"), "origin": session.request.origin})
        async for data in session:
            await session.send(data)

    with serving(adapter, EchoApp()) as page_base:
        with serving(adapter, who, allowed_origins=[page_base], allow_credentials=True) as poll_base:
            assert page_base != poll_base  # same host, another port: another origin
            page.context.add_cookies([{"name": "token", "value": "t1", "url": poll_base}])
            page.goto(f"{page_base}/harness.html")
            ids = page.evaluate("""(url) => ["include", "same-origin"].map((credentials) => {
                const i = startSession(url, {credentials});
                session(i).send("text");
                session(i).send(new Uint8Array([0, 255]));
                return i;
            })""", f"{poll_base}/poll")
            with_cookie, without_cookie = ids
            for index in ids:
                wait_js(page, "(i) => messages(i).length >= 3", index)
            assert messages(page, with_cookie)[0] == {"kind": "json", "value": {"cookie": "t1", "origin": page_base}}
            assert messages(page, without_cookie)[0] == {"kind": "json", "value": {"cookie": None, "origin": page_base}}
            for index in ids:
                assert messages(page, index)[1:] == [
                    {"kind": "text", "value": "text"},
                    {"kind": "arraybuffer", "bytes": [0, 255]},
                ]
            sids = page.evaluate("(ids) => ids.map((i) => session(i).sessionId)", ids)
            page.evaluate("(ids) => ids.forEach((i) => session(i).close())", ids)
            for index in ids:
                closed = close_event(page, index)
                assert (closed["code"], closed["wasClean"]) == (1000, True)
            for sid in sids:
                assert status_of(poll_base, sid) == 410  # the cross-origin DELETE went through


def test_cross_origin_refused_opens_no_session(adapter: str, page: Any) -> None:
    started: list[str] = []

    async def app(session: Session) -> None:
        started.append(session.id)

    with serving(adapter, EchoApp()) as page_base, serving(adapter, app) as poll_base:
        page.goto(f"{page_base}/harness.html")
        index = page.evaluate(
            "(url) => startSession(url, {maxRetries: 1, retryBaseDelay: 0.05})", f"{poll_base}/poll")
        closed = close_event(page, index)
        assert (closed["code"], closed["wasClean"], closed["readyState"]) == (1006, False, 3)
        assert page.evaluate("(i) => events(i).map((e) => e.type)", index) == ["error", "close"]
        assert started == []


def test_limits_batching_and_close_while_connecting(adapter: str, page: Any) -> None:
    app = EchoApp()
    post_sizes: list[int] = []
    page.on("request", lambda r: post_sizes.append(len(r.post_data_buffer or b"")) if r.method == "POST" else None)
    with serving(adapter, app, max_message_size=100, max_body_size=1000) as base:
        page.goto(f"{base}/harness.html")
        early, too_big_queued, batched, early_state = page.evaluate("""(url) => {
            const early = startSession(url);
            session(early).close(4005, "early");
            const tooBig = startSession(url);
            session(tooBig).send("x".repeat(101));
            return [early, tooBig, startSession(url), [session(early).readyState, closeEvent(early)]];
        }""", f"{base}/poll")

        # close() while connecting: the session is opened, deleted, and closed cleanly.
        assert early_state == [2, None]  # CLOSING, no event yet
        assert close_event(page, early)["code"] == 4005
        assert page.evaluate("(i) => events(i).map((e) => [e.type, e.reason, e.wasClean])", early) == [
            ["close", "early", True]]
        # A message queued before open that exceeds max_message_size fails the session.
        closed = close_event(page, too_big_queued)
        assert (closed["code"], closed["wasClean"]) == (1009, False)
        assert page.evaluate("(i) => events(i).map((e) => e.type)", too_big_queued) == ["error", "close"]
        wait_until(lambda: sorted(log[-1:] == [("closed", 1000)] for log in app.log.values()) == [False, True, True],
                   TIMEOUT, "both failed sessions to be deleted on the server")

        # Once the limits are known, send() refuses a message too large at once,
        # and batches stay within max_body_size.
        wait_js(page, "(i) => session(i).readyState === 1", batched)
        error = page.evaluate("""(i) => {
            let error = null;
            try { session(i).send("x".repeat(101)); } catch (e) { error = e.name; }
            for (let n = 0; n < 30; n++) session(i).send(String(n).padStart(90, "-"));
            return error;
        }""", batched)
        assert error == "RangeError"
        wait_js(page, "(i) => messages(i).length >= 31", batched)
        assert [m["value"] for m in messages(page, batched)] == ["welcome", *(str(n).rjust(90, "-") for n in range(30))]
        assert len(post_sizes) >= 3 and max(post_sizes) <= 1000, post_sizes


# What the route answers in place of the server, per session (named by its X-Case
# header) and request: (status, body); a bad 200 answer only the first `times` times.
BAD_POLL_ANSWERS = ["not json", '{"messages": [{"seq": 2, "type": "text", "data": "\\ud800"}], "closed": null}']
REFUSALS = {
    ("v2", "open"): (200, '{"version": 2, "sid": "x", "messages": [], "closed": null}'),
    ("413", "push"): (413, '{"error": "body_too_large", "message": "too big here"}'),
    ("400", "push"): (400, '{"error": "bad_seq", "message": "no"}'),
    ("410", "poll"): (410, '{"error": "session_ended", "message": "ended", '
                           '"closed": {"code": 4003, "reason": "gone away"}}'),
    ("malformed-always", "poll"): (200, '{"messages": [{"seq": 2, "type": "binary", "data": "AAF="}], "closed": null}'),
    ("ack-above", "push"): (200, '{"ack": 99}'),
}


def test_refusals_and_malformed_answers_end_to_end(adapter: str, page: Any) -> None:
    # Timeline per session: "v2" gets a version 2 open answer (1002 at once);
    # "413" and "400" have their first POST refused (1009 with the server's
    # message, 1006); "410" has its first poll answered 410 with the close;
    # "malformed" gets two malformed poll answers, retried like network errors,
    # then the real ones; "malformed-always" only malformed ones, and
    # "ack-above" POST answers acknowledging more than was sent (1006 once the
    # single retry is spent).
    bad_polls = {"count": 0}

    def answer(route: Any) -> None:
        request = route.request
        case = request.headers.get("x-case")
        query = urllib.parse.urlsplit(request.url).query
        kind = {"POST": "push", "DELETE": "delete"}.get(request.method, "poll" if query else "open")
        if case == "malformed" and kind == "poll" and bad_polls["count"] < len(BAD_POLL_ANSWERS):
            route.fetch()  # the server sent its answer; the client sees a broken one
            bad_polls["count"] += 1
            route.fulfill(status=200, content_type="application/json", body=BAD_POLL_ANSWERS[bad_polls["count"] - 1])
        elif (case, kind) in REFUSALS:
            status, body = REFUSALS[case, kind]
            route.fulfill(status=status, content_type="application/json", body=body)
        else:
            route.fallback()

    app = EchoApp()
    with serving(adapter, app, poll_timeout=1.0) as base:
        page.goto(f"{base}/harness.html")
        page.route(lambda url: urllib.parse.urlsplit(url).path == "/poll", answer)
        ids = page.evaluate("""([url, cases]) => cases.map((name) => {
            const maxRetries = name === "malformed-always" || name === "ack-above" ? 1 : 8;
            const i = startSession(url, {headers: {"X-Case": name}, maxRetries,
                                         retryBaseDelay: 0.05, retryMaxDelay: 0.2});
            session(i).send("ping");
            return i;
        })""", [f"{base}/poll", ["v2", "413", "400", "410", "malformed", "malformed-always", "ack-above"]])
        v2, too_large, refused, gone, malformed, always, ack_above = ids

        def closed(index: int) -> tuple[int, str, bool, int]:
            event = close_event(page, index)
            return event["code"], event["reason"], event["wasClean"], page.evaluate("(i) => countOf(i, 'error')", index)

        code, _, clean, errors = closed(v2)
        assert (code, clean, errors) == (1002, False, 1)
        assert page.evaluate("(i) => events(i).map((e) => e.type)", v2) == ["error", "close"]
        assert closed(too_large) == (1009, "too big here", False, 1)
        code, _, clean, errors = closed(refused)
        assert (code, clean, errors) == (1006, False, 1)
        assert closed(gone) == (4003, "gone away", True, 0)
        code, reason, clean, errors = closed(always)
        assert (code, clean, errors) == (1006, False, 1) and "polling failed" in reason and "2 times" in reason, reason
        code, reason, clean, errors = closed(ack_above)
        assert (code, clean, errors) == (1006, False, 1) and "sending failed" in reason and "2 times" in reason, reason

        wait_js(page, "(i) => messages(i).length >= 2", malformed)
        assert messages(page, malformed) == [{"kind": "text", "value": "welcome"}, {"kind": "text", "value": "ping"}]
        assert bad_polls["count"] == len(BAD_POLL_ANSWERS)
        assert page.evaluate("(i) => [session(i).readyState, countOf(i, 'error')]", malformed) == [1, 0]
        page.evaluate("(i) => session(i).close()", malformed)
        assert close_event(page, malformed)["code"] == 1000


def test_gives_up_after_max_retries(adapter: str, page: Any) -> None:
    with serving(adapter, EchoApp()) as base:
        page.goto(f"{base}/harness.html")
        # Nothing listens on port 9 of the loopback: every attempt is a network error.
        index = page.evaluate(
            "() => startSession('http://127.0.0.1:9/poll', {maxRetries: 2, retryBaseDelay: 0.02})")
        closed = close_event(page, index)
        assert (closed["code"], closed["wasClean"]) == (1006, False)
        assert "3 attempts" in closed["reason"]


def test_closing_a_busy_tab_gets_no_refusal(adapter: str, page: Any, caplog: pytest.LogCaptureFixture) -> None:
    # The session sends all the time, so the page always has a poll on its way; before,
    # the poll that followed the pagehide DELETE got a 410, which Tornado's access log
    # writes as a WARNING (werkzeug's, at INFO, shows the status too).
    ended: list[int | None] = []

    async def chatty(session: Session) -> None:
        count = 0
        while not session.closed:
            count += 1
            try:
                await session.send(count)
            except SessionClosed:
                break
            await asyncio.sleep(1 * MS)
        ended.append(session.close_code)

    with caplog.at_level(logging.INFO, logger="tornado.access"), caplog.at_level(logging.INFO, logger="werkzeug"):
        with serving(adapter, chatty) as base:
            for tab in range(1, TABS + 1):
                busy = page.context.new_page()
                busy.goto(f"{base}/harness.html")
                index = busy.evaluate("(url) => startSession(url)", f"{base}/poll")
                wait_js(busy, "(i) => messages(i).length >= 20", index)
                busy.close()  # the tab closes: pagehide sends the DELETE
                wait_until(lambda: len(ended) == tab, TIMEOUT, "the DELETE sent on pagehide")
        # Nothing above INFO: werkzeug's access log is all INFO; Tornado's writes a 4xx as a WARNING.
        refusals = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
        told = [record.getMessage() for record in caplog.records
                if record.name == "tornado.access" and record.getMessage().startswith("410 ")]
    assert ended == [1000] * TABS
    assert not refusals, refusals
    print(f"{adapter}: {len(told)} of {TABS} closed tabs had a poll answered 410 after their DELETE (logged at INFO)")


TABS = 5


# -- the FastAPI example under uvicorn, behind the fault-injecting proxy -------------------

PROXY_FAULTS = FaultPlan(reset_request=0.05, drop_response=0.1, truncate_response=0.05)
EXCHANGED = 300  # messages each way: enough for every kind of fault to meet polls and POSTs many times
IN_FLIGHT = 4

# The browser sends IN_FLIGHT messages, then one more for each echo, so that
# POSTs and polls interleave all along instead of one batch going out at once.
PING_PONG = """([url, count, window]) => {
    const i = startSession(url, {retryBaseDelay: 0.01, retryMaxDelay: 0.05, maxRetries: 20});
    const s = session(i);
    let sent = 0;
    const next = () => { if (sent < count) s.send({n: sent++}); };
    s.addEventListener("message", next);
    for (let k = 0; k < window; k++) next();
    return i;
}"""


def serve_file(path: Path) -> Any:
    """A Playwright route handler answering with ``path`` (content type from its suffix)."""
    return lambda route: route.fulfill(path=str(path))


def test_fastapi_example_behind_a_faulty_proxy_exchanges_exactly_once_in_order(page: Any, tmp_path: Path) -> None:
    # The example echoes: a message lost on the way in or out is missing from
    # the echoes, one delivered twice (either way) shows up twice, and any
    # reordering shows: the echoes must be exactly 0..EXCHANGED-1.
    with running(["examples/asgi_fastapi.py"], tmp_path) as server, \
            FaultProxy(server.url, seed=23, plan=PROXY_FAULTS) as proxy:
        # The page, from the proxy's origin (the example serves only the client script).
        for name in ("harness.html", "harness.js"):
            page.route(f"{proxy.url}/{name}", serve_file(PAGES / name))
        page.goto(f"{proxy.url}/harness.html")
        index = page.evaluate(PING_PONG, [f"{proxy.url}/poll/", EXCHANGED, IN_FLIGHT])
        wait_js(page, "([i, n]) => messages(i).length >= n", [index, EXCHANGED])
        expected = [{"kind": "json", "value": {"n": n}} for n in range(EXCHANGED)]
        assert messages(page, index) == expected
        assert page.evaluate("(i) => [session(i).readyState, countOf(i, 'error')]", index) == [1, 0]

        faults = {fate: {method: proxy.count(fate, method) for method in ("GET", "POST")}
                  for fate in ("reset_request", "drop_response", "truncate_response")}
        # Answers dropped after the server acted, both ways (a POST sent again, a poll asked again),
        # and each kind of fault at all. Fates come from a seeded stream per method (the n-th POST
        # meets the same fate in every run): about 90 GETs and 80 POSTs meet some 30 faults.
        requests_made = {method: proxy.count("status_200", method) + proxy.count("reset_request", method)
                         for method in ("GET", "POST")}
        assert faults["drop_response"]["GET"] > 0 and faults["drop_response"]["POST"] > 0, faults
        assert all(sum(by_method.values()) > 0 for by_method in faults.values()), faults

        proxy.plan = FaultPlan()  # a clean close: its DELETE goes through
        sid = page.evaluate("(i) => session(i).sessionId", index)
        page.evaluate("(i) => session(i).close()", index)
        closed = close_event(page, index)
        assert (closed["code"], closed["wasClean"]) == (1000, True)
        assert messages(page, index) == expected  # nothing more arrived before the close
        gone = requests.get(f"{server.url}/poll/", params={"ack": "0", "wait": "0"},
                            headers={"Pollsession-Id": sid}, timeout=TIMEOUT)
        assert gone.status_code == 410  # the server forgot the session
    print(f"asgi_fastapi behind the proxy: {EXCHANGED} each way in {requests_made} requests, "
          f"faults {faults}, {proxy.faults()} in all")

"""Every adapter answers at the same URLs and reads repeated headers the same way.

A session target answers only at its path spelled as mounted: another
spelling of it (merged slashes, needless percent-escapes) is another URL,
where nothing is mounted (404), on every adapter. A header sent twice
reads as both values joined (RFC 9110), so a doubled ``Pollsession-Id`` names
no session (410) and a doubled ``Origin`` is no allowed origin (403).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from pollsession import HttpHandler, Session
from tests.utils import ALL_ADAPTERS, RawConnection, mount_handler, serve

ODD_PATH = "/x/a:b@c,d;e=f"  # characters a client may leave unescaped in a path


async def idle(session: Session) -> None:
    await session.wait_closed()


_flask_bases: set[str] = set()


@pytest.fixture(scope="module", params=ALL_ADAPTERS)
def base(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = HttpHandler(idle, shutdown_timeout=1)
    adapter = request.param

    def extra(app_or_routes: Any) -> None:
        if adapter == "flask":
            from pollsession.adapters.flask import mount

            mount(app_or_routes, ODD_PATH, handler)
        elif adapter == "asgi":
            mount_handler(adapter, app_or_routes, ODD_PATH, handler)
        else:
            import re

            from pollsession.adapters.tornado import route

            app_or_routes.append(route(re.escape(ODD_PATH), handler))

    with serve(adapter, handler, extra=extra) as url:
        if adapter == "flask":
            _flask_bases.add(url)
        yield url


def get(base: str, target: str, headers: str = "") -> int:
    with RawConnection(base) as connection:
        connection.send(f"GET {target} HTTP/1.1\r\nHost: {connection.host}\r\n{headers}Connection: close\r\n\r\n"
                        .encode())
        return connection.response().status


@pytest.mark.parametrize("target", ["/poll", ODD_PATH])
def test_the_target_answers_at_its_path(base: str, target: str) -> None:
    assert get(base, target + "?test=1") == 200


@pytest.mark.parametrize("target", ["//poll", "/%70oll", "/%70%6f%6c%6c", "/poll/", "//poll/", "/./poll", "/x/../poll",
                                    "/x/a%3Ab@c,d;e=f"])
def test_another_spelling_of_the_path_is_not_the_target(base: str, target: str) -> None:
    if target.startswith("//") and base in _flask_bases:
        pytest.skip("http.server, under werkzeug's development server, rewrites a leading '//' to '/' "
                    "before any WSGI application sees the request; see the WSGI-level test below")
    assert get(base, target + "?test=1") == 404


@pytest.mark.parametrize("raw, status", [
    ("/poll?test=1", 200), ("//poll?test=1", 404), ("/%70oll?test=1", 404), ("http://h/poll?test=1", 200),
    ("http://h//poll?test=1", 404), (None, 200),
])
@pytest.mark.parametrize("variable", ["RAW_URI", "REQUEST_URI"])
def test_flask_compares_the_raw_path_a_wsgi_server_passes(raw: str | None, status: int, variable: str) -> None:
    # gunicorn passes RAW_URI, uWSGI and mod_wsgi REQUEST_URI, as the client wrote the target.
    from flask import Flask

    from pollsession.adapters.flask import mount

    app = Flask("routing-test")
    with HttpHandler(idle, shutdown_timeout=1) as handler:
        mount(app, "/poll", handler)
        overrides = {"RAW_URI": "", "REQUEST_URI": ""}  # werkzeug's test client sets both
        if raw is not None:
            overrides[variable] = raw
        response = app.test_client().get("/poll?test=1", environ_overrides=overrides)
        assert response.status_code == status, response.data[:200]


@pytest.mark.parametrize("root, raw, status", [
    ("", b"/poll", 200), ("", b"/%70oll", 404), ("", b"/pol%6C", 404), ("", None, 200),
    ("/app", b"/app/poll", 200), ("/app", b"/%61pp/poll", 404),
    ("/app", b"/poll", 200), ("/app", b"/%70oll", 404),  # a server whose raw_path leaves root_path out
])
def test_asgi_compares_the_raw_path_the_server_passes(root: str, raw: bytes | None, status: int) -> None:
    # uvicorn passes the path percent-decoded, and the client's spelling of it as raw_path.
    import asyncio

    from pollsession.adapters.asgi import PollSessionApp

    async def run() -> int:
        handler = HttpHandler(idle, shutdown_timeout=1, use_running_loop=True)
        app = PollSessionApp(handler, close_on_signals=False)
        scope: dict[str, Any] = {"type": "http", "method": "GET", "root_path": root, "path": root + "/poll",
                                 "query_string": b"test=1", "headers": [], "scheme": "http"}
        if raw is not None:
            scope["raw_path"] = raw
        requests_in = [{"type": "http.request", "body": b"", "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if requests_in:
                return requests_in.pop()
            await asyncio.Event().wait()  # the client stays: no http.disconnect
            raise AssertionError("unreachable")

        async def send(message: Any) -> None:
            sent.append(message)

        try:
            await asyncio.wait_for(app(scope, receive, send), 10)
        finally:
            await handler.aclose()
        assert [message["type"] for message in sent] == ["http.response.start", "http.response.body"]
        return int(sent[0]["status"])

    assert asyncio.run(run()) == status


def open_session(base: str) -> str:
    with requests.Session() as client:
        client.trust_env = False
        return str(client.get(base + "/poll", timeout=10).json()["sid"])


def test_a_repeated_session_id_names_no_session(base: str) -> None:
    sid = open_session(base)
    assert get(base, "/poll?wait=0", f"Pollsession-Id: {sid}\r\n") == 200
    assert get(base, "/poll?wait=0", f"Pollsession-Id: {sid}\r\nPollsession-Id: {sid}\r\n") == 410


@pytest.mark.parametrize("order", ["allowed-first", "allowed-last"])
def test_a_repeated_origin_is_not_an_allowed_origin(base: str, order: str) -> None:
    sid = open_session(base)
    port = base.rsplit(":", 1)[1]
    same, evil = f"Origin: http://127.0.0.1:{port}\r\n", "Origin: http://evil.test\r\n"
    assert get(base, "/poll?wait=0", f"Pollsession-Id: {sid}\r\n{same}") == 200
    origins = same + evil if order == "allowed-first" else evil + same
    assert get(base, "/poll?wait=0", f"Pollsession-Id: {sid}\r\n{origins}") == 403


# -- what Tornado itself refuses inside the handler is the protocol's JSON too --------------


@pytest.mark.parametrize("adapter", [adapter for adapter in ALL_ADAPTERS if adapter.startswith("tornado")])
def test_tornados_cross_origin_protection_leaves_origins_to_the_core(adapter: str) -> None:
    import tornado

    if tornado.version_info < (6, 6):
        pytest.skip("cross_origin_protection is a Tornado 6.6 setting")
    handler = HttpHandler(idle, shutdown_timeout=1, allowed_origins=["http://allowed.test"])
    with serve(adapter, handler, tornado_settings={"cross_origin_protection": True}) as url:
        sid = open_session(url)
        push = (f"POST /poll HTTP/1.1\r\nHost: {{host}}\r\nPollsession-Id: {sid}\r\n"
                "Content-Type: application/json\r\nContent-Length: 15\r\n{extra}Connection: close\r\n\r\n"
                '{{"messages":[]}}')
        with RawConnection(url) as connection:  # an allowed origin: the core says yes, Tornado does not object
            connection.send(push.format(host=connection.host, extra="Origin: http://allowed.test\r\n"
                                        "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: cors\r\n").encode())
            response = connection.response()
            assert response.status == 200 and response.json() == {"ack": 0}
        with RawConnection(url) as connection:  # no Origin, cross-site: Tornado's own 403, as JSON
            connection.send(push.format(host=connection.host, extra="Sec-Fetch-Site: cross-site\r\n").encode())
            response = connection.response()
            assert response.status == 403, response.body
            assert response.header("content-type") == "application/json"
            assert response.json()["error"] == "forbidden"

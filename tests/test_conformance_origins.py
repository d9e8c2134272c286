"""Conformance with PROTOCOL.md, section 7: origins, CORS and cross-site requests.

See ``test_conformance.py`` for the layout of the suite. Two servers per
adapter: ``origin_server`` with ``allowed_origins`` patterns (credentials off,
the default), and ``callable_server`` with ``check_origin`` and credentials on.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import requests

from tests.test_conformance_support import (
    SHARED_CONFIG,
    ConformanceServer,
    assert_error,
    server_fixture,
    text,
)
from tests.utils import wait_until

PATTERNS = ["https://*.example.com", "http://h?st.test", "http://[ab].test", "http://[!ab]z.test", "HTTP://UPPER.TEST"]
origin_server = server_fixture("origin_server", lambda: dict(SHARED_CONFIG, allowed_origins=PATTERNS))


class _CheckOrigin:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, origin: str) -> bool:
        with self._lock:
            self.seen.append(origin)
        return origin.lower().endswith(".cb.test")


callable_server = server_fixture(
    "callable_server",
    lambda: dict(SHARED_CONFIG, allowed_origins=["https://listed.test"], check_origin=_CheckOrigin(),
                 allow_credentials=True),
)

__all__ = ["callable_server", "origin_server"]  # fixtures, for pytest

ALLOWED = "https://A.Example.com"  # mixed case: it must be echoed exactly as sent
REFUSED = "https://refused.test"


def _tokens(value: str | None) -> set[str]:
    return {token.strip().lower() for token in (value or "").split(",") if token.strip()}


def assert_cors(response: requests.Response, origin: str, *, credentials: bool = False) -> None:
    headers = response.headers
    assert headers.get("Access-Control-Allow-Origin") == origin, dict(headers)
    assert "origin" in _tokens(headers.get("Vary")), dict(headers)
    assert "pollsession-id" in _tokens(headers.get("Access-Control-Expose-Headers")), dict(headers)
    if credentials:
        assert headers.get("Access-Control-Allow-Credentials") == "true", dict(headers)
    else:
        assert "Access-Control-Allow-Credentials" not in headers, dict(headers)


def assert_no_cors(response: requests.Response) -> None:
    assert "Access-Control-Allow-Origin" not in response.headers, dict(response.headers)


def _port(srv: ConformanceServer) -> str:
    return srv.base.rsplit(":", 1)[1]


# -- same origin ------------------------------------------------------------------------------------

SAME_ORIGIN = {
    "no-origin": {},
    "empty-origin": {"Origin": ""},
    "own-origin": {"Origin": "http://127.0.0.1:{port}"},
    "own-origin-upper": {"Origin": "HTTP://127.0.0.1:{port}"},
    "default-port-in-origin": {"Host": "app.test", "Origin": "http://app.test:80"},
    "default-port-in-host": {"Host": "app.test:80", "Origin": "http://app.test"},
    "host-case": {"Host": "App.Test", "Origin": "http://app.TEST"},
}


@pytest.mark.parametrize("headers", SAME_ORIGIN.values(), ids=SAME_ORIGIN.keys())
def test_same_origin_requests_pass(origin_server: ConformanceServer, headers: dict[str, str]) -> None:
    headers = {name: value.format(port=_port(origin_server)) for name, value in headers.items()}
    response = origin_server.request("GET", headers=headers)
    assert response.status_code == 200, response.text
    assert_no_cors(response)


CROSS_ORIGIN = {
    "other-scheme": {"Host": "app.test", "Origin": "https://app.test"},
    "other-scheme-same-port": {"Host": "app.test", "Origin": "https://app.test:80"},
    "other-port": {"Host": "app.test", "Origin": "http://app.test:8080"},
    "port-only-in-host": {"Host": "app.test:8080", "Origin": "http://app.test"},
    "other-host": {"Host": "app.test", "Origin": "http://other.test"},
    "null": {"Origin": "null"},
    "no-port": {"Origin": "http://127.0.0.1"},
    "localhost": {"Origin": "http://localhost:{port}"},
    "subdomain-of-allowed-with-port": {"Origin": "https://a.example.com:8443"},
}


@pytest.mark.parametrize("headers", CROSS_ORIGIN.values(), ids=CROSS_ORIGIN.keys())
def test_a_disallowed_cross_origin_open_is_403_and_creates_nothing(
    origin_server: ConformanceServer, headers: dict[str, str]
) -> None:
    headers = {name: value.format(port=_port(origin_server)) for name, value in headers.items()}
    before = origin_server.sessions_started
    response = origin_server.request("GET", headers=headers)
    assert_error(response, 403)
    assert_no_cors(response)
    assert origin_server.sessions_started == before


# -- allowed cross origin -------------------------------------------------------------------------------


def test_an_allowed_origin_gets_cors_headers_on_every_answer(origin_server: ConformanceServer) -> None:
    cross = {"Origin": ALLOWED}
    response = origin_server.request("GET", headers=cross, params={"mode": "echo"})
    assert response.status_code == 200
    assert_cors(response, ALLOWED)
    sid = response.json()["sid"]
    response = origin_server.push(sid, [text(1, "hi")], headers=cross)
    assert response.status_code == 200 and response.json() == {"ack": 1}
    assert_cors(response, ALLOWED)
    response = origin_server.poll(sid, 0, headers=cross)
    assert response.status_code == 200 and response.json()["messages"][0]["data"] == "hi"
    assert_cors(response, ALLOWED)
    response = origin_server.delete(sid, headers=cross)
    assert response.status_code == 204
    assert_cors(response, ALLOWED)


ERRORS = {
    "410-unknown": lambda srv, sid, h: (srv.poll("no-such-session", 0, headers=h), 410),
    "403-post-without-id": lambda srv, sid, h: (srv.push(None, [], headers=h), 403),
    "405-put": lambda srv, sid, h: (srv.request("PUT", sid=sid, headers=h), 405),
    "415-text-plain": lambda srv, sid, h: (srv.push_raw(sid, b"{}", content_type="text/plain", headers=h), 415),
    "400-bad-json": lambda srv, sid, h: (srv.push_raw(sid, b"{", headers=h), 400),
    "400-bad-ack": lambda srv, sid, h: (srv.poll(sid, "01", headers=h), 400),
    "413-body": lambda srv, sid, h: (srv.push_raw(sid, b" " * (SHARED_CONFIG["max_body_size"] + 1), headers=h), 413),
    "429-inbox": lambda srv, sid, h: (srv.push(sid, [text(n, "x") for n in range(1, 10)], headers=h), 429),
}


@pytest.mark.parametrize("make_error", ERRORS.values(), ids=ERRORS.keys())
def test_an_allowed_origin_gets_cors_headers_on_errors(origin_server: ConformanceServer, make_error: Any) -> None:
    sid, _ = origin_server.open("gated")  # never reads: 9 messages overflow its inbox of 8
    response, status = make_error(origin_server, sid, {"Origin": ALLOWED})
    assert_error(response, status)
    assert_cors(response, ALLOWED)
    origin_server.open_gate(sid)


MATCHES = {
    "https://a.example.com": True,
    "https://a.b.example.com": True,
    "HTTPS://A.EXAMPLE.COM": True,
    "http://a.example.com": False,  # the pattern's scheme
    "https://a.example.com:8443": False,  # the pattern's port
    "https://example.com": False,
    "https://a.example.com.evil.test": False,
    "http://host.test": True,
    "http://hast.test": True,
    "http://hoost.test": False,
    "http://a.test": True,
    "http://c.test": False,
    "http://cz.test": True,
    "http://az.test": False,
    "http://upper.test": True,  # the pattern is lower-cased too
}


@pytest.mark.parametrize("origin, allowed", MATCHES.items(), ids=MATCHES.keys())
def test_patterns_match_the_whole_origin_ignoring_case(
    origin_server: ConformanceServer, origin: str, allowed: bool
) -> None:
    response = origin_server.request(
        "OPTIONS",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type,pollsession-id"},
    )
    if allowed:
        assert response.status_code == 204, response.text
        assert_cors(response, origin)
    else:
        assert_error(response, 403)
        assert_no_cors(response)


def test_an_allowed_preflight_answers_204_with_the_cors_headers(origin_server: ConformanceServer) -> None:
    response = origin_server.request(
        "OPTIONS", headers={"Origin": ALLOWED, "Access-Control-Request-Method": "DELETE"}
    )
    assert response.status_code == 204
    assert_cors(response, ALLOWED)
    assert _tokens(response.headers.get("Access-Control-Allow-Methods")) == {"get", "post", "delete"}
    assert _tokens(response.headers.get("Access-Control-Allow-Headers")) == {"content-type", "pollsession-id"}
    assert int(response.headers["Access-Control-Max-Age"]) >= 0


# -- refused cross origin -------------------------------------------------------------------------------


def test_a_disallowed_origin_has_no_effect(origin_server: ConformanceServer) -> None:
    sid, _ = origin_server.open("greet")
    refused = {"Origin": REFUSED}
    answers = [
        origin_server.push(sid, [text(1, "evil")], headers=refused),
        origin_server.poll(sid, 1, wait=0, headers=refused),  # would acknowledge the greeting
        origin_server.delete(sid, headers=refused),
        origin_server.poll("no-such-session", 0, headers=refused),  # 403 comes before 410
        origin_server.request("PUT", sid=sid, headers=refused),  # 403 comes before 405
        origin_server.push_raw(sid, b"{", content_type="text/plain", headers=refused),
        origin_server.request("OPTIONS", headers=refused),
    ]
    for response in answers:
        assert_error(response, 403)
        assert_no_cors(response)
    # Same origin again: the greeting is unacknowledged, the session alive, seq 1 still expected.
    assert origin_server.poll_ok(sid, 0, wait=0)["messages"][0]["data"] == "welcome"
    assert origin_server.push_ok(sid, [text(1, "good")]) == 1
    probe = origin_server.probe(sid)
    wait_until(lambda: probe.received, what="the app to read")
    assert probe.received == [("text", "good")] and not probe.ended.is_set()


def test_the_probe_answers_a_disallowed_origin(origin_server: ConformanceServer) -> None:
    response = origin_server.request("GET", params={"test": "1"}, headers={"Origin": REFUSED})
    assert (response.status_code, response.text) == (200, "ok")  # the probe comes before the origin check


# -- check_origin and credentials ---------------------------------------------------------------------


def test_check_origin_replaces_the_list_and_sees_the_origin_as_sent(callable_server: ConformanceServer) -> None:
    check = callable_server.config["check_origin"]
    response = callable_server.request("GET", headers={"Origin": "https://X.Cb.test"})
    assert response.status_code == 200
    assert_cors(response, "https://X.Cb.test", credentials=True)
    assert "https://X.Cb.test" in check.seen
    assert_error(callable_server.request("GET", headers={"Origin": "https://listed.test"}), 403)
    assert "https://listed.test" in check.seen


def test_credentials_are_allowed_on_every_cross_origin_answer_when_configured(
    callable_server: ConformanceServer,
) -> None:
    origin = {"Origin": "https://app.cb.test"}
    preflight = callable_server.request("OPTIONS", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204
    assert_cors(preflight, origin["Origin"], credentials=True)
    error = callable_server.poll("no-such-session", 0, headers=origin)
    assert_error(error, 410)
    assert_cors(error, origin["Origin"], credentials=True)
    same_origin = callable_server.request("GET")
    assert same_origin.status_code == 200
    assert_no_cors(same_origin)

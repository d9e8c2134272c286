"""The origin policy: plain calls."""

from __future__ import annotations

import pytest

from pollsession.protocol.origins import OriginPolicy


@pytest.mark.parametrize(("origin", "scheme", "host", "same"), [
    ("", "http", "a.test", True),
    ("http://a.test", "http", "a.test", True),
    ("http://A.TEST", "http", "a.test:80", True),
    ("https://a.test:443", "https", "a.test", True),
    ("http://a.test:8080", "http", "a.test:8080", True),
    ("https://a.test", "http", "a.test", False),
    ("http://a.test:8080", "http", "a.test", False),
    ("http://b.test", "http", "a.test", False),
    ("null", "http", "a.test", False),
    ("http://a.test", "http", None, False),
])
def test_same_origin(origin: str, scheme: str, host: str | None, same: bool) -> None:
    assert OriginPolicy.is_same_origin(origin, scheme, host) is same


def test_patterns_match_the_whole_origin_ignoring_case() -> None:
    policy = OriginPolicy(["https://*.example.com", "http://localhost:[0-9][0-9][0-9][0-9]"])
    assert policy.is_allowed_origin("https://a.example.com")
    assert policy.is_allowed_origin("HTTPS://A.Example.COM")
    assert not policy.is_allowed_origin("http://a.example.com")
    assert not policy.is_allowed_origin("https://a.example.com:8443")
    assert not policy.is_allowed_origin("https://example.com")
    assert policy.is_allowed_origin("http://localhost:5173")
    assert not policy.is_allowed_origin("http://localhost:80")


@pytest.mark.parametrize("origin", [
    "https://evil.test/.example.com", "https://evil.test?.example.com", "https://evil.test#.example.com",
    "https://user@a.example.com", "https://a.example.com/", "https://a.example.com path",
])
def test_only_well_formed_origins_can_match(origin: str) -> None:
    assert not OriginPolicy(["https://*.example.com", "*"]).is_allowed_origin(origin)


def test_null_origin_matches_only_when_listed() -> None:
    assert OriginPolicy(["null"]).is_allowed_origin("null")
    assert not OriginPolicy(["https://*"]).is_allowed_origin("null")


def test_callable_replaces_the_list() -> None:
    policy = OriginPolicy(["*"], check_origin=lambda origin: origin.endswith(".trusted"))
    assert policy.is_allowed_origin("https://x.trusted")
    assert not policy.is_allowed_origin("https://x.other")


def test_headers_echo_the_origin_as_sent() -> None:
    policy = OriginPolicy(["*"], allow_credentials=True, max_age=42)
    headers = dict(policy.cors_headers("https://Mixed.Case", preflight=True))
    assert headers["Access-Control-Allow-Origin"] == "https://Mixed.Case"
    assert headers["Vary"] == "Origin"
    assert headers["Access-Control-Expose-Headers"] == "Pollsession-Id"
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Access-Control-Allow-Methods"] == "GET, POST, DELETE"
    assert headers["Access-Control-Allow-Headers"] == "Content-Type, Pollsession-Id"
    assert headers["Access-Control-Max-Age"] == "42"
    assert "Access-Control-Allow-Credentials" not in dict(OriginPolicy(["*"]).cors_headers("https://x"))

"""Origin policy (CORS): a pure object with its headers computed once.

A request is same-origin when it has no (or an empty) ``Origin`` header, or
when the origin's scheme, host and port equal the request's own scheme and
``Host`` header. Any other origin must match one of the shell-style
``allowed_origins`` patterns (case-insensitively, whole origin), or satisfy the
``check_origin`` callable, which then replaces the list.

Requests a browser sends without ``Origin`` (an ``<img>``, a ``<script>``, a
link followed) count as same-origin by that rule, yet they carry the
victim's cookies. Browsers label every request with Fetch Metadata
(``Sec-Fetch-Site``, ``Sec-Fetch-Mode``): a request the browser marks as
coming from another site is allowed only as a CORS request (mode ``cors``)
from an allowed origin; anything else from another site (``no-cors``,
``navigate``, ``websocket``, ...) is refused (:meth:`OriginPolicy.is_cross_site_refused`).
Clients that send no Fetch Metadata (older browsers, scripts) are judged by
``Origin`` alone.

``allowed_hosts`` (off by default) names the host names the server answers
to, against DNS rebinding: an attacker's name pointed at the server makes
``Origin: http://evil.test`` with ``Host: evil.test`` look same-origin.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

__all__ = ["OriginPolicy", "HostPolicy", "PREFLIGHT_METHODS", "PREFLIGHT_HEADERS"]

PREFLIGHT_METHODS = "GET, POST, DELETE"
PREFLIGHT_HEADERS = "Content-Type, Pollsession-Id"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SERIALIZED_ORIGIN = re.compile(r"null|[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s\\]+")
_HOST = re.compile(r"[^/?#@\s\\]+")
_OTHER_SITE = frozenset({"cross-site", "same-site"})


def _host_port(netloc: str, scheme: str) -> tuple[str, int | None] | None:
    """Split ``host[:port]`` with the scheme's default port filled in."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    if parts.hostname is None:
        return None
    return parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS.get(scheme)


def _same_origin(origin: str, scheme: str, host: str) -> bool:
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    scheme = scheme.lower()
    if parts.scheme.lower() != scheme or parts.path or parts.query or parts.fragment:
        return False
    mine = _host_port(parts.netloc, scheme)
    return mine is not None and mine == _host_port(host, scheme)


# Parsing both with urlsplit is most of what the policy costs a request. The cache is bounded
# in entries and, through the length cap, in bytes (at most about 512 x 200 bytes of keys).
_CACHED_LENGTH = 200
_same_origin_cached = functools.lru_cache(maxsize=512)(_same_origin)


class OriginPolicy:
    """Decides whether an origin may use the endpoint, and which headers it gets."""

    def __init__(
        self,
        allowed_origins: Iterable[str] = (),
        check_origin: Callable[[str], bool] | None = None,
        *,
        allow_credentials: bool = False,
        max_age: int = 600,
    ) -> None:
        if isinstance(allowed_origins, str):
            raise TypeError("allowed_origins must be a list of patterns, not a single string")
        self._patterns = tuple(pattern.lower() for pattern in allowed_origins)
        self._check_origin = check_origin
        self._common_headers: tuple[tuple[str, str], ...] = (
            ("Vary", "Origin"),
            ("Access-Control-Expose-Headers", "Pollsession-Id"),
        ) + ((("Access-Control-Allow-Credentials", "true"),) if allow_credentials else ())
        self._preflight_headers: tuple[tuple[str, str], ...] = (
            ("Access-Control-Allow-Methods", PREFLIGHT_METHODS),
            ("Access-Control-Allow-Headers", PREFLIGHT_HEADERS),
            ("Access-Control-Max-Age", str(max_age)),
        )

    @staticmethod
    def is_same_origin(origin: str, scheme: str, host: str | None) -> bool:
        """Whether ``origin`` is the request's own (``scheme`` and ``Host``); no origin counts as same."""
        if not origin:
            return True
        if host is None:
            return False
        if len(origin) + len(host) <= _CACHED_LENGTH:
            return _same_origin_cached(origin, scheme, host)  # a browser sends the same pair every time
        return _same_origin(origin, scheme, host)

    def is_allowed_origin(self, origin: str) -> bool:
        """Whether a cross-origin request from ``origin`` is allowed.

        Patterns only see well-formed origins (``scheme://host[:port]``, or
        ``null``): a ``*`` matches ``/`` too, so ``https://*.example.com``
        would otherwise let ``https://evil.test/.example.com`` in.
        """
        if self._check_origin is not None:
            return bool(self._check_origin(origin))
        if not _SERIALIZED_ORIGIN.fullmatch(origin):
            return False
        lowered = origin.lower()
        return any(fnmatch.fnmatchcase(lowered, pattern) for pattern in self._patterns)

    @staticmethod
    def is_cross_site_refused(fetch_site: str | None, fetch_mode: str | None, cross_origin: bool) -> bool:
        """Whether Fetch Metadata marks this as a request from another site that is not CORS.

        ``cross_origin`` says whether the ``Origin`` header names another
        origin (which the caller has found allowed). A browser sends
        ``Sec-Fetch-Site: cross-site`` (or ``same-site``, from a sibling
        subdomain) with an ``<img>``, a ``<script>`` or a navigation, and no
        ``Origin``: such a request could open a session with the user's
        cookies, so it is refused unless it is a CORS request from an
        allowed origin. Without Fetch Metadata nothing is refused here.
        """
        if fetch_site is None or fetch_site.strip().lower() not in _OTHER_SITE:
            return False
        return not (cross_origin and (fetch_mode or "").strip().lower() == "cors")

    def cors_headers(self, origin: str, *, preflight: bool = False) -> list[tuple[str, str]]:
        """Headers for every answer to an allowed cross-origin request."""
        headers = [("Access-Control-Allow-Origin", origin), *self._common_headers]
        if preflight:
            headers.extend(self._preflight_headers)
        return headers


class HostPolicy:
    """The host names a target answers to (``allowed_hosts``), against DNS rebinding.

    Patterns are shell-style and matched, ignoring case, against the host
    name of the ``Host`` header without its port: ``"example.com"``,
    ``"*.example.com"``, ``"127.0.0.1"``, ``"[::1]"``. With no patterns every
    host is allowed (the default).
    """

    def __init__(self, allowed_hosts: Iterable[str] | None = None) -> None:
        if isinstance(allowed_hosts, str):
            raise TypeError("allowed_hosts must be a list of patterns, not a single string")
        self._patterns = tuple(pattern.lower() for pattern in allowed_hosts) if allowed_hosts is not None else None

    @property
    def active(self) -> bool:
        return self._patterns is not None

    def is_allowed_host(self, host: str | None) -> bool:
        """Whether a request with this ``Host`` header may be served."""
        if self._patterns is None:
            return True
        if not host or not _HOST.fullmatch(host):
            return False
        try:
            parts = urlsplit(f"http://{host.strip()}")
            name = parts.hostname
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            return False
        if not name:
            return False
        if ":" in name:  # an IPv6 address: match it as written in a Host header
            name = f"[{name}]"
        name = name.lower()
        # Exact names first: "[::1]" would otherwise be read as a character class.
        return any(name == pattern or fnmatch.fnmatchcase(name, pattern) for pattern in self._patterns)

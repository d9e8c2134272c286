"""Origin policy (CORS): a pure object with its headers computed once.

A request is same-origin when it has no (or an empty) ``Origin`` header, or
when the origin's scheme, host and port equal the request's own scheme and
``Host`` header. Any other origin must match one of the shell-style
``allowed_origins`` patterns (case-insensitively, whole origin), or satisfy the
``check_origin`` callable, which then replaces the list.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

__all__ = ["OriginPolicy", "PREFLIGHT_METHODS", "PREFLIGHT_HEADERS"]

PREFLIGHT_METHODS = "GET, POST, DELETE"
PREFLIGHT_HEADERS = "Content-Type, Pollsession-Id"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SERIALIZED_ORIGIN = re.compile(r"null|[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s\\]+")


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
        if not origin:
            return True
        if host is None:
            return False
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        scheme = scheme.lower()
        if parts.scheme.lower() != scheme or parts.path or parts.query or parts.fragment:
            return False
        mine = _host_port(parts.netloc, scheme)
        return mine is not None and mine == _host_port(host, scheme)

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

    def cors_headers(self, origin: str, *, preflight: bool = False) -> list[tuple[str, str]]:
        """Headers for every answer to an allowed cross-origin request."""
        headers = [("Access-Control-Allow-Origin", origin), *self._common_headers]
        if preflight:
            headers.extend(self._preflight_headers)
        return headers

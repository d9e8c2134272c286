"""From an HTTP request to one protocol operation, with no session state.

The protocol fixes the order of checks: the ``?test=1`` probe, origin,
method, session id, ``Content-Type``, body size, body shape, message size,
inbox. The handler answers the probe and checks the origin; the checks from
the method to the body shape that need no session run here, in the
framework's thread. Because an unknown session (410) must win over a
malformed body or query, errors found after the session id are not raised
here: they travel inside the operation (``error``) and the registry raises
them once it knows the session exists. Gaps, message sizes and the inbox
need the session's state, so the session checks them (``Delivery.accept``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .config import Settings
from .errors import ALLOW, BadRequest, Forbidden, HttpError, MethodNotAllowed, PayloadTooLarge, UnsupportedMediaType
from .http import HttpContext, declared_length
from .messages import Packed, parse_batch

__all__ = ["Preflight", "Open", "Poll", "Push", "Delete", "Operation", "parse_operation", "is_probe", "ALLOW",
           "SESSION_HEADER"]

SESSION_HEADER = "Pollsession-Id"
_ACK = re.compile(r"0|[1-9][0-9]*")
_WAIT = re.compile(r"[0-9]+(\.[0-9]+)?")


@dataclass(frozen=True, slots=True)
class Preflight:
    """``OPTIONS``: a CORS preflight (or a plain OPTIONS)."""


@dataclass(frozen=True, slots=True)
class Open:
    """``GET`` without a session id."""


@dataclass(frozen=True, slots=True)
class Poll:
    sid: str
    ack: int
    wait: float | None
    error: HttpError | None = None


@dataclass(frozen=True, slots=True)
class Push:
    sid: str
    batch: list[tuple[int, Packed]]
    error: HttpError | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    sid: str | None


Operation = Preflight | Open | Poll | Push | Delete


def _single(items: Iterable[tuple[str, str]], name: str) -> str | None:
    values = [value for key, value in items if key == name]
    if len(values) > 1:
        raise BadRequest(f"query parameter {name!r} given {len(values)} times; give it at most once")
    return values[0] if values else None


def _parse_poll_query(items: list[tuple[str, str]]) -> tuple[int, float | None]:
    ack_text = _single(items, "ack")
    wait_text = _single(items, "wait")
    ack = 0
    if ack_text is not None:
        if not _ACK.fullmatch(ack_text):
            raise BadRequest(f"ack must be a decimal integer without leading zeros, got {ack_text[:40]!r}",
                             code="bad_ack")
        if len(ack_text) > 19:  # past any sequence number a session can reach (and int()'s digit limit)
            raise BadRequest(f"ack {ack_text[:20]}... is beyond the last message sent", code="bad_ack")
        ack = int(ack_text)
    wait = None
    if wait_text is not None:
        if not _WAIT.fullmatch(wait_text):
            raise BadRequest(f"wait must be a non-negative decimal number of seconds, got {wait_text[:40]!r}",
                             code="bad_wait")
        wait = float(wait_text)
    return ack, wait


def _parse_push(context: HttpContext, settings: Settings) -> list[tuple[int, Packed]]:
    content_type = context.header("Content-Type") or ""
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise UnsupportedMediaType(
            f"a POST must have Content-Type application/json, got {content_type[:60]!r}"
        )
    declared = declared_length(context.header("Content-Length"))
    if declared is not None and declared > settings.max_body_size:
        raise PayloadTooLarge(f"request body of {(context.header('Content-Length') or '').strip()[:20]} bytes "
                              f"exceeds max_body_size of {settings.max_body_size}", code="body_too_large")
    body = context.body(settings.max_body_size)
    if len(body) > settings.max_body_size:
        raise PayloadTooLarge(f"request body of {len(body)} bytes exceeds max_body_size of "
                              f"{settings.max_body_size}", code="body_too_large")
    return parse_batch(body)


def parse_operation(context: HttpContext, method: str, settings: Settings) -> Operation:
    """The operation a request asks for; raises HttpError for a refusal that needs no session.

    The origin has been checked already; this continues from the method.
    """
    if method == "OPTIONS":
        return Preflight()
    if method not in ("GET", "POST", "DELETE"):
        raise MethodNotAllowed(f"method {method[:20]} is not allowed; use GET, POST, DELETE or OPTIONS")
    sid = context.header(SESSION_HEADER) or None
    if method == "GET":
        if sid is None:
            return Open()
        try:
            ack, wait = _parse_poll_query(list(context.query_items()))
        except HttpError as exc:
            return Poll(sid, 0, None, exc)
        return Poll(sid, ack, wait)
    if method == "DELETE":
        return Delete(sid)
    if sid is None:
        raise Forbidden("a POST must carry a Pollsession-Id: sessions are opened only by GET",
                        code="session_required")
    try:
        return Push(sid, _parse_push(context, settings))
    except HttpError as exc:
        return Push(sid, [], exc)


def is_probe(method: str, context: HttpContext) -> bool:
    """``GET ?test=1``: the liveness probe, answered before any other check."""
    return method == "GET" and any(key == "test" and value == "1" for key, value in context.query_items())

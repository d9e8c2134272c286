"""pollsession: a WebSocket-like session over plain HTTP long-polling.

Write one ``async def`` per session, wrap it in an :class:`HttpHandler`, and
mount the handler in Flask (``pollsession.adapters.flask``) or Tornado
(``pollsession.adapters.tornado``). The wire protocol is described in
``docs/protocol.md``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .protocol.errors import (
    BadRequest,
    Forbidden,
    HttpError,
    InboxFull,
    MessageTooLarge,
    MethodNotAllowed,
    PayloadTooLarge,
    PollsessionError,
    ProtocolError,
    ServiceUnavailable,
    SessionClosed,
    Unauthorized,
    UnknownSession,
    UnsupportedMediaType,
)
from .protocol.http import Headers, HttpContext, HttpResponse, RequestInfo, buffered_body, declared_length
from .protocol.messages import Message, MessageType
from .server.handler import AuthHook, HttpHandler, error_response
from .server.session import Session
from .server.session_handler import Decode, SessionHandler

if TYPE_CHECKING:
    from .client.aio import AsyncClient

__all__ = [
    "AsyncClient",
    "AuthHook",
    "BadRequest",
    "Forbidden",
    "Headers",
    "HttpContext",
    "HttpError",
    "HttpHandler",
    "HttpResponse",
    "InboxFull",
    "Message",
    "MessageTooLarge",
    "MessageType",
    "MethodNotAllowed",
    "PayloadTooLarge",
    "PollsessionError",
    "ProtocolError",
    "RequestInfo",
    "ServiceUnavailable",
    "Session",
    "SessionHandler",
    "Decode",
    "SessionClosed",
    "Unauthorized",
    "UnknownSession",
    "UnsupportedMediaType",
    "buffered_body",
    "client_script_path",
    "declared_length",
    "error_response",
    "__version__",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import :class:`AsyncClient` on first use, so that ``import pollsession`` does not import httpx."""
    if name == "AsyncClient":
        from .client.aio import AsyncClient  # without httpx: ImportError naming pip install 'pollsession[async]'

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def client_script_path() -> Path:
    """Where the browser client, ``pollsession.js``, is installed."""
    return Path(str(resources.files(__name__).joinpath("static", "pollsession.js")))

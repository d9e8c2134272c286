"""The Python clients of pollsession.

* :class:`Client` (``sync``): a session from a threaded Python program, on :mod:`requests`.
* :class:`AsyncClient` (``aio``): a session from an asyncio program, on :mod:`httpx`
  (``pip install 'pollsession[async]'``); imported only when first used, so
  that programs without httpx can use everything else.
* ``core`` and ``state``: the clients' reliability rules as plain objects (the
  session's phases, what to send again, what to drop, how to read each answer,
  how long to back off), shared by both clients and held to
  ``tests/vectors/client`` like the browser client.

``from pollsession.client import Client`` (or ``AsyncClient``) is the public import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .sync import ABNORMAL_CLOSURE, Client

if TYPE_CHECKING:
    from .aio import AsyncClient

__all__ = ["Client", "AsyncClient", "ABNORMAL_CLOSURE"]


def __getattr__(name: str) -> Any:
    """Import :class:`AsyncClient` (and so httpx) on first use only."""
    if name == "AsyncClient":
        from .aio import AsyncClient  # raises ImportError naming pip install 'pollsession[async]' without httpx

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

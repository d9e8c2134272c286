"""The protocol of docs/protocol.md as plain objects: no asyncio, no sockets, no clock.

Everything a reader needs to know about what pollsession says on the wire and
what it keeps lives here, testable with plain calls:

* ``errors``: the one exception tree; each refusal knows its status, code, headers and body.
* ``messages``: what a valid message is, and its wire form (encoded once).
* ``wire``: the typed answers (open, poll, push, ``closed``, error body), built
  and serialized in one place, and parsed back by the Python client.
* ``boxes``: a session's outbox and inbox, bounded in messages and bytes.
* ``delivery``: one session's protocol state (seq and ack, resend, dedup, gaps,
  the close and its lifecycle, what an answer carries), driven by method calls.
* ``requests``: a request checked and parsed into an operation, before any session is known.
* ``http``: the abstract request (``HttpContext``) and response the adapters translate.
* ``origins``, ``limits``, ``expiry``, ``config``: origin and host policy,
  per-client limits, the expiry order, and the settings a handler runs with.

The asyncio layer is :mod:`pollsession.server`; the Python client is
:mod:`pollsession.client`.
"""

__all__: list[str] = []

"""Mount a pollsession target in a Flask app (``pollsession.adapters.flask``).

Usage::

    from pollsession.adapters.flask import mount
    mount(app, "/poll", handler)          # app or Blueprint

Threading model
---------------

Flask serves each request in a worker thread; a held long poll blocks its
worker on a future until the session's loop answers (no busy waiting, no
sleeps), for at most ``poll_timeout`` seconds. Each open session therefore
ties up one worker thread while its poll is held: run a threaded server
(Flask's development server is threaded by default; with gunicorn use the
``gthread`` worker with ``--threads`` above the number of concurrent
sessions you expect, e.g. ``gunicorn -k gthread --threads 100``) and a
single process (sessions live in the process that opened them). For many
thousands of concurrent sessions, prefer the Tornado adapter.

Request bodies
--------------

A body is read in bounded pieces, at most ``max_body_size + 1`` bytes
whatever its framing, and a body whose framing is broken or that is cut off
answers the protocol's JSON 400 (the framework's own errors never reach the
client). Reading stops as soon as the body is known to be too large, so the
rest of it stays on the connection: a WSGI application cannot close its
connection, the server must. Werkzeug's development server says
``Connection: close`` on every answer and discards what is left; gunicorn
discards the rest of the body before it reads the next request of a
keep-alive connection. Werkzeug's development server parses chunked bodies
poorly (it is not meant for the internet): read with ``read()``, a chunk cut
short by the end of the stream comes back padded with bytes that never
arrived; the adapter reads into a fixed buffer instead, where the same cut
raises, and answers 400. It cannot read chunk extensions or a trailer
section either (both valid HTTP/1.1): such a body answers the JSON 400
``bad_body`` there, and is read as sent under gunicorn. And its router
refuses a ``Host`` that is not a DNS name (a label over 63 characters) with
werkzeug's HTML 400, for every route of the app, before any view runs.

Connections and timeouts
------------------------

Idle and slow connections are the WSGI server's business; each one holds a
file descriptor, and with a threaded server a thread while its request is
read. With gunicorn, ``--keep-alive`` (seconds an idle keep-alive connection
is kept open; 2 by default, keep it short) bounds idle connections, and
``--timeout`` (a worker that stops reporting for this many seconds is killed
and restarted; a sync worker reports nothing while it holds a poll, so keep
it above ``poll_timeout``) bounds a stuck worker; for example
``gunicorn -k gthread --threads 100 --keep-alive 5 --timeout 60``.
Werkzeug's development server has no header or body timeout at all: a
client that connects and sends nothing holds its thread for ever. If it
must face clients you do not control, pass ``make_server`` (or
``run_simple``) ``request_handler=`` a subclass of
``werkzeug.serving.WSGIRequestHandler`` with ``timeout = 30`` (seconds of
silence before the connection is dropped). Either way, raise the process's
file-descriptor limit above the number of concurrent clients
(``ulimit -n``): each client holds one connection for its poll and
sometimes one for a POST.

Paths and headers
-----------------

A target answers only at its path as mounted: ``//poll`` or ``/%70oll``
(another spelling of ``/poll``) answer 404, as on Tornado, so that one
session target is never reached through two URLs. The raw path is taken
from ``RAW_URI`` or ``REQUEST_URI`` (werkzeug, gunicorn, uWSGI, mod_wsgi
set one); under a server that sets neither, only the rule's own matching
applies. (Werkzeug's development server, through Python's ``http.server``,
turns a leading ``//`` into ``/`` before the application sees it.)

A header sent more than once reads as its values joined, as on Tornado
(RFC 9110), so a doubled ``Pollsession-Id`` or ``Origin`` matches nothing.
WSGI servers join the lines of a repeated header into one environ value
themselves, except that werkzeug's development server keeps only the last
``Content-Type`` or ``Content-Length``; no WSGI application can see the
others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import IO
from urllib.parse import quote

try:
    from flask import Blueprint, Flask, Request, Response, request, send_file
    from flask.sansio.app import App
    from werkzeug.exceptions import HTTPException, NotFound, RequestEntityTooLarge
    from werkzeug.routing import Rule
except ModuleNotFoundError as missing:
    raise ModuleNotFoundError(
        f"pollsession.adapters.flask needs Flask ({missing}); install it with: pip install 'pollsession[flask]'",
        name=missing.name,
    ) from missing

from pollsession import BadRequest, HttpContext, HttpHandler, PayloadTooLarge, client_script_path

__all__ = ["FlaskContext", "make_view", "mount", "mount_client_script"]

logger = logging.getLogger("pollsession")
_READ_SIZE = 64 * 1024
# What a client may leave unescaped in a path (RFC 3986 pchar and "/"); the rest is %XX.
_PATH_SAFE = "/:@!$&'()*+,;=~"


class FlaskContext(HttpContext):
    """An :class:`~pollsession.HttpContext` over a Flask/werkzeug request."""

    def __init__(self, flask_request: Request) -> None:
        self._request = flask_request

    def method(self) -> str:
        return self._request.method

    def path(self) -> str:
        return self._request.path

    def scheme(self) -> str:
        return self._request.scheme

    def header(self, name: str) -> str | None:
        # A field value has no leading or trailing whitespace (RFC 9110, 5.5), as on Tornado.
        values = [value.strip(" \t") for value in self._request.headers.getlist(name)]
        return ", ".join(values) if values else None

    def headers(self) -> Iterable[tuple[str, str]]:
        return [(name, value.strip(" \t")) for name, value in self._request.headers.items()]

    def query_items(self) -> Iterable[tuple[str, str]]:
        return list(self._request.args.items(multi=True))

    def body(self, limit: int) -> bytes:
        try:
            body = _read_at_most(self._request.stream, limit + 1)
        except RequestEntityTooLarge:  # the app's MAX_CONTENT_LENGTH, below max_body_size
            raise PayloadTooLarge(f"request body exceeds this server's limit of "
                                  f"{self._request.max_content_length} bytes", code="body_too_large") from None
        except HTTPException:  # werkzeug's ClientDisconnected: fewer bytes than Content-Length
            raise BadRequest("the request body was cut off before its end", code="bad_body") from None
        except Exception as error:
            # What the server's input stream raises for broken chunked framing or a
            # connection that ended: OSError (werkzeug), InvalidChunkSize, NoMoreData (gunicorn), ...
            logger.debug("pollsession: reading a request body failed: %r", error)
            raise BadRequest("the request body's framing is broken or the body was cut off",
                             code="bad_body") from None
        declared = self._request.content_length
        if len(body) <= limit and declared is not None and len(body) < declared:  # a short body ended quietly
            raise BadRequest(f"the request body was cut off after {len(body)} of its {declared} bytes",
                             code="bad_body")
        return body

    def client_address(self) -> str | None:
        return self._request.remote_addr


def _read_at_most(stream: IO[bytes], size: int) -> bytes:
    """Up to ``size`` bytes of ``stream``, in reads of at most 64 KiB.

    Into a fixed memoryview where the stream has ``readinto``: werkzeug's
    development-server dechunker then raises (ValueError) on a chunk cut
    short by the end of the stream, where its ``read`` returns the length it
    was asked for, padded with bytes it never received (stale memory).
    """
    body = bytearray()
    readinto = getattr(stream, "readinto", None)
    view = memoryview(bytearray(min(_READ_SIZE, size))) if readinto is not None else None
    while len(body) < size:
        want = min(_READ_SIZE, size - len(body))
        if readinto is not None and view is not None:
            count = readinto(view[:want])
            if not count:
                break
            body += view[:count]
        else:
            data = stream.read(want)
            if not data:
                break
            body += data
    return bytes(body)


def _raw_path(environ: Mapping[str, object]) -> str | None:
    """The request target's path exactly as the client wrote it, when the server tells it."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not isinstance(raw, str) or not raw:
        return None
    target = raw.split("?", 1)[0].split("#", 1)[0]
    if not target.startswith("/"):  # absolute form: scheme://authority/path
        _, sep, rest = target.partition("://")
        if not sep:
            return None
        slash = rest.find("/")
        target = rest[slash:] if slash >= 0 else "/"
    return target


def _is_mounted_spelling(flask_request: Request) -> bool:
    """Whether the raw path is the canonical spelling of the path the rule matched."""
    raw = _raw_path(flask_request.environ)
    if raw is None:
        return True
    return raw == quote(flask_request.root_path + flask_request.path, safe=_PATH_SAFE)


def make_view(handler: HttpHandler) -> Callable[[], Response]:
    """A Flask view function serving ``handler``; :func:`mount` registers it for every method."""

    def pollsession_view() -> Response:
        if not _is_mounted_spelling(request):
            raise NotFound()  # as for any URL nothing is mounted at
        answer = handler.handle_request(FlaskContext(request))
        response = Response(answer.body, status=answer.status, headers=answer.headers)
        if not any(name.lower() == "content-type" for name, _ in answer.headers):
            del response.headers["Content-Type"]  # werkzeug adds a default; the core's answer has none
        return response

    return pollsession_view


def mount(app: Flask | Blueprint, rule: str, handler: HttpHandler, *, endpoint: str | None = None) -> None:
    """Serve ``handler`` at URL ``rule`` of a Flask app or blueprint.

    The route accepts every method (a werkzeug rule without a method list),
    so that the core answers 405 itself, the same way on every adapter. It
    answers only at ``rule`` spelled as mounted (no merged slashes, no
    needless percent-escapes; see the module docstring).
    """
    name = endpoint or f"pollsession:{rule}"
    view = make_view(handler)
    if isinstance(app, Flask):
        _add_any_method_rule(app, rule, name, view)
    else:
        app.record(lambda state: _add_any_method_rule(state.app, (state.url_prefix or "") + rule, name, view))


def _add_any_method_rule(app: App, rule: str, endpoint: str, view: Callable[[], Response]) -> None:
    if endpoint in app.view_functions:
        raise ValueError(f"endpoint {endpoint!r} is already mounted; pass endpoint= to mount it twice")
    app.url_map.add(Rule(rule, endpoint=endpoint, merge_slashes=False))
    # werkzeug routes a request carrying "Upgrade: websocket" only to websocket
    # rules (else an HTML 400); to the core it is a GET like any other, as on Tornado.
    app.url_map.add(Rule(rule, endpoint=endpoint, merge_slashes=False, websocket=True))
    app.view_functions[endpoint] = view


def mount_client_script(app: Flask | Blueprint, rule: str = "/pollsession.js", *, endpoint: str | None = None) -> None:
    """Serve the browser client, ``pollsession.js``, at URL ``rule``."""

    def pollsession_script() -> Response:
        return send_file(client_script_path(), mimetype="text/javascript", max_age=3600)

    app.add_url_rule(rule, endpoint=endpoint or f"pollsession-script:{rule}", view_func=pollsession_script)

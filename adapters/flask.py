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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flask import Blueprint, Flask, Request, Response, request, send_file

from pollsession import HttpContext, HttpHandler, client_script_path

__all__ = ["FlaskContext", "make_view", "mount", "mount_client_script", "METHODS"]

# Every method reaches the core, which answers 405 itself, identically on every adapter.
METHODS = ["GET", "POST", "DELETE", "OPTIONS", "PUT", "PATCH", "HEAD"]


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
        return self._request.headers.get(name)

    def headers(self) -> Iterable[tuple[str, str]]:
        return list(self._request.headers.items())

    def query_items(self) -> Iterable[tuple[str, str]]:
        return list(self._request.args.items(multi=True))

    def body(self) -> bytes:
        return self._request.get_data(cache=False)

    def client_address(self) -> str | None:
        return self._request.remote_addr


def make_view(handler: HttpHandler) -> Callable[[], Response]:
    """A Flask view function serving ``handler``; register it for :data:`METHODS`."""

    def pollsession_view() -> Response:
        answer = handler.handle_request(FlaskContext(request))
        return Response(answer.body, status=answer.status, headers=answer.headers)

    return pollsession_view


def mount(app: Flask | Blueprint, rule: str, handler: HttpHandler, *, endpoint: str | None = None) -> None:
    """Serve ``handler`` at URL ``rule`` of a Flask app or blueprint."""
    app.add_url_rule(
        rule,
        endpoint=endpoint or f"pollsession:{rule}",
        view_func=make_view(handler),
        methods=METHODS,
        provide_automatic_options=False,
    )


def mount_client_script(app: Flask | Blueprint, rule: str = "/pollsession.js", *, endpoint: str | None = None) -> None:
    """Serve the browser client, ``pollsession.js``, at URL ``rule``."""

    def pollsession_script() -> Response:
        return send_file(client_script_path(), mimetype="text/javascript", max_age=3600)

    app.add_url_rule(rule, endpoint=endpoint or f"pollsession-script:{rule}", view_func=pollsession_script)

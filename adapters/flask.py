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
from flask.sansio.app import App
from werkzeug.routing import Rule

from pollsession import HttpContext, HttpHandler, client_script_path

__all__ = ["FlaskContext", "make_view", "mount", "mount_client_script"]


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
    """A Flask view function serving ``handler``; :func:`mount` registers it for every method."""

    def pollsession_view() -> Response:
        answer = handler.handle_request(FlaskContext(request))
        response = Response(answer.body, status=answer.status, headers=answer.headers)
        if not any(name.lower() == "content-type" for name, _ in answer.headers):
            del response.headers["Content-Type"]  # werkzeug adds a default; the core's answer has none
        return response

    return pollsession_view


def mount(app: Flask | Blueprint, rule: str, handler: HttpHandler, *, endpoint: str | None = None) -> None:
    """Serve ``handler`` at URL ``rule`` of a Flask app or blueprint.

    The route accepts every method (a werkzeug rule without a method list),
    so that the core answers 405 itself, the same way on every adapter.
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
    app.url_map.add(Rule(rule, endpoint=endpoint))
    app.view_functions[endpoint] = view


def mount_client_script(app: Flask | Blueprint, rule: str = "/pollsession.js", *, endpoint: str | None = None) -> None:
    """Serve the browser client, ``pollsession.js``, at URL ``rule``."""

    def pollsession_script() -> Response:
        return send_file(client_script_path(), mimetype="text/javascript", max_age=3600)

    app.add_url_rule(rule, endpoint=endpoint or f"pollsession-script:{rule}", view_func=pollsession_script)

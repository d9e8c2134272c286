"""Routes that the browser tests add to a test server: pages and client scripts.

``add_browser_routes(adapter)`` returns an ``extra`` callable for
``tests.utils.serve``: it serves the pages of ``tests/pages/`` and the browser
client, ``/pollsession.js`` through the adapter's own helper
(``mount_client_script`` or ``client_script_route``) and ``/pollsession.mjs``
(the ES-module entry, which must sit beside it) from the package.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pollsession

__all__ = ["PAGES", "add_browser_routes"]

PAGES = Path(__file__).parent / "pages"

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
}


def _files() -> dict[str, Path]:
    files = {f"/{path.name}": path for path in sorted(PAGES.iterdir()) if path.suffix in _CONTENT_TYPES}
    files["/pollsession.mjs"] = pollsession.client_script_path().with_name("pollsession.mjs")
    return files


def add_browser_routes(adapter: str) -> Callable[[Any], None]:
    """An ``extra`` for ``serve(adapter, ...)`` adding the test pages and scripts."""
    if adapter == "flask":
        return _add_flask
    if adapter.startswith("tornado"):
        return _add_tornado
    raise ValueError(f"unknown adapter {adapter!r}")


def _add_flask(app: Any) -> None:
    from flask import Response

    from pollsession.adapters.flask import mount_client_script

    mount_client_script(app, "/pollsession.js")
    for url, path in _files().items():
        content_type = _CONTENT_TYPES[path.suffix]

        def view(path: Path = path, content_type: str = content_type) -> Response:
            return Response(path.read_bytes(), content_type=content_type, headers={"Cache-Control": "no-store"})

        app.add_url_rule(url, endpoint=f"browser-test-file{url}", view_func=view)


def _add_tornado(routes: list[Any]) -> None:
    import tornado.web

    from pollsession.adapters.tornado import client_script_route

    class FileHandler(tornado.web.RequestHandler):
        def initialize(self, path: Path) -> None:
            self.file_path = path

        def get(self) -> None:
            self.set_header("Content-Type", _CONTENT_TYPES[self.file_path.suffix])
            self.set_header("Cache-Control", "no-store")
            self.write(self.file_path.read_bytes())

    routes.append(client_script_route(r"/pollsession.js"))
    for url, path in _files().items():
        routes.append((url, FileHandler, {"path": path}))

"""Echo as a bare ASGI app: three paths dispatched by a few lines of plain ASGI, served by uvicorn.

    PORT=8000 .venv/bin/python examples/asgi_bare.py
    # or: uvicorn examples.asgi_bare:app --port 8000
    # behind a proxy that strips a prefix: uvicorn examples.asgi_bare:app --root-path /echo

Clients connect to ``/poll``, the page is at ``/`` and the browser client at
``/pollsession.js``. The lifespan goes to the ``PollSessionApp`` too: it
watches Ctrl-C from startup (closing every session with 1001 at once) and
closes the handler at shutdown.
"""

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

from pollsession import HttpHandler, Session
from pollsession.adapters.asgi import ClientScriptApp, PollSessionApp

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# Relative URLs: behind a proxy that serves this app under a prefix, the page finds both.
PAGE = b"""<!doctype html><meta charset="utf-8"><title>echo</title>
<input id="text" placeholder="type and press Enter" autofocus><pre id="log"></pre>
<script src="pollsession.js"></script>
<script>
  const session = new PollSession(new URL("poll", location.href).href);
  const log = (line) => document.getElementById("log").append(line + "\\n");
  session.onmessage = (event) => log("echo: " + event.data);
  session.onclose = (event) => log("closed " + event.code);
  document.getElementById("text").onkeydown = (event) => {
    if (event.key === "Enter") { session.send(event.target.value); event.target.value = ""; }
  };
</script>"""


async def echo(session: Session) -> None:
    async for message in session:
        await session.send(message)


handler = HttpHandler(echo, use_running_loop=True)  # the sessions run on uvicorn's loop
poll, script = PollSessionApp(handler), ClientScriptApp()


async def page(scope: Scope, receive: Receive, send: Send) -> None:
    found = scope["path"] in ("/", "/index.html")
    await send({"type": "http.response.start", "status": 200 if found else 404,
                "headers": [(b"content-type", b"text/html; charset=utf-8" if found else b"text/plain")]})
    await send({"type": "http.response.body", "body": PAGE if found else b"not found"})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    # uvicorn puts --root-path in front of "path" as well (ASGI 3): route on what follows it.
    path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
    if scope["type"] != "http" or path == "/poll":  # the lifespan too: it closes the handler
        await poll(scope, receive, send)
    elif path == "/pollsession.js":
        await script(scope, receive, send)
    else:
        await page({**scope, "path": path}, receive, send)


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")), log_level="warning")

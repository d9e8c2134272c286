"""Echo in a Starlette app, routed beside its own endpoints, served by uvicorn.

    PORT=8000 .venv/bin/python examples/asgi_starlette.py
    # or: uvicorn examples.asgi_starlette:app --port 8000

``Route("/poll", PollSessionApp(handler))`` answers at ``/poll`` exactly, like
the Flask and Tornado examples (``Mount("/poll", ...)``, as in
``asgi_fastapi.py``, answers at ``/poll/`` and redirects ``/poll`` there). The
browser client is at ``/pollsession.js``. Ctrl-C closes every session with
1001 at once: uvicorn would otherwise wait for each held poll to end first.
"""

import os

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pollsession import HttpHandler, Session
from pollsession.adapters.asgi import ClientScriptApp, PollSessionApp


async def echo(session: Session) -> None:
    async for message in session:
        await session.send(message)


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": "world"})  # the app's own endpoints go on as before


handler = HttpHandler(echo, use_running_loop=True)  # the sessions run on uvicorn's loop
app = Starlette(routes=[
    Route("/poll", PollSessionApp(handler)),  # an ASGI app, not an endpoint: every method reaches it
    Route("/pollsession.js", ClientScriptApp()),
    Route("/hello", hello),
])


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")), log_level="warning")

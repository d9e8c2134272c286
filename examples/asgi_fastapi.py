"""Echo, mounted in a FastAPI app next to its own routes, served by uvicorn.

    PORT=8000 .venv/bin/python examples/asgi_fastapi.py
    # or: uvicorn examples.asgi_fastapi:app --port 8000

Clients connect to ``/poll/`` (Starlette's ``mount`` redirects ``/poll`` there);
the browser client is at ``/pollsession.js``. Ctrl-C closes every session with
1001 at once: uvicorn would otherwise wait for each held poll to end first.
"""

import os

import uvicorn
from fastapi import FastAPI

from pollsession import HttpHandler, Session
from pollsession.adapters.asgi import ClientScriptApp, PollSessionApp


async def echo(session: Session) -> None:
    async for message in session:
        await session.send(message)


handler = HttpHandler(echo, use_running_loop=True)  # the sessions run on uvicorn's loop
app = FastAPI()
app.mount("/poll", PollSessionApp(handler))
app.mount("/pollsession.js", ClientScriptApp())


@app.get("/hello")
def hello() -> dict[str, str]:
    return {"hello": "world"}  # the app's own routes go on as before


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")), log_level="warning")

"""A chat with rooms over pollsession, in Tornado.

A session joins the room named in the URL that opened it, and hears that
room only: ``/poll?room=kitchen&name=ada``. Messages go out as JSON:
``{"event": "join" | "message" | "leave", "name": ..., "text": ...}``.

Run:  .venv/bin/python examples/tornado_chat.py       (PORT=9000 ... for another port)
Then open http://127.0.0.1:8000/?room=kitchen&name=ada in one tab and
http://127.0.0.1:8000/?room=kitchen&name=bob in another.
"""

import asyncio
import os
import signal

import tornado.web

from pollsession import HttpHandler, Session
from pollsession.adapters.tornado import client_script_route, route, server_options


async def chat(session: Session) -> None:
    room = session.request.query.get("room", "lobby")  # the query of the opening request
    name = session.request.query.get("name", "anonymous")
    session.join(room)  # broadcasts to the room now reach this session
    await handler.broadcast({"event": "join", "name": name}, room=room)
    async for text in session:
        await handler.broadcast({"event": "message", "name": name, "text": text}, room=room)
    # The session has closed and left its rooms; tell the others.
    await handler.broadcast({"event": "leave", "name": name}, room=room)


# The sessions run on Tornado's own loop (no thread of their own): cheaper,
# and at shutdown every held poll is answered before aclose() returns.
handler = HttpHandler(chat, use_running_loop=True)

PAGE = """<!doctype html><meta charset="utf-8"><title>chat</title>
<input id="text" placeholder="type and press Enter" autofocus><pre id="log"></pre>
<script src="/pollsession.js"></script>
<script>
  const session = new PollSession("/poll" + location.search);  // ?room=...&name=...
  const log = (line) => document.getElementById("log").append(line + "\\n");
  session.onmessage = ({data}) => log(data.event === "message" ? `${data.name}: ${data.text}` : `* ${data.name} ${data.event}s`);
  session.onclose = (event) => log("closed " + event.code);
  document.getElementById("text").onkeydown = (event) => {
    if (event.key === "Enter") { session.send(event.target.value); event.target.value = ""; }
  };
</script>"""


class PageHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.finish(PAGE)


async def main() -> None:
    port = int(os.environ.get("PORT", "8000"))
    app = tornado.web.Application([
        (r"/", PageHandler),
        route(r"/poll", handler),  # the session endpoint
        client_script_route(r"/pollsession\.js"),  # the browser client
    ])
    server = app.listen(port, "127.0.0.1", **server_options(handler))  # idle and body timeouts
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, or a process manager's stop
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    print(f"tornado_chat: listening on http://127.0.0.1:{port}/?room=lobby&name=you", flush=True)
    await stop.wait()
    # Close while Tornado still accepts and runs: held polls, and polls arriving
    # meanwhile, get the 1001 close at once. Then stop, and drop idle connections.
    await handler.aclose()
    server.stop()
    await server.close_all_connections()


if __name__ == "__main__":
    asyncio.run(main())

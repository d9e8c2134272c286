"""Echo over pollsession, in Flask: every message a client sends comes back.

Run:  .venv/bin/python examples/flask_echo.py         (PORT=9000 ... for another port)
Then open http://127.0.0.1:8000/ and type, or use the Python client:

    from pollsession.client import Client
    with Client("http://127.0.0.1:8000/poll") as client:
        client.send("hello")
        print(client.receive())             # -> hello
"""

import os
import signal
import threading

from flask import Flask
from werkzeug.serving import make_server

from pollsession import HttpHandler, Session
from pollsession.adapters.flask import mount, mount_client_script


async def echo(session: Session) -> None:
    # One coroutine per session, on pollsession's own event loop.
    async for data in session:  # str, bytes, or a decoded JSON value; ends when the session closes
        await session.send(data)  # sent back with the same type


handler = HttpHandler(echo)
app = Flask(__name__)
mount(app, "/poll", handler)  # the session endpoint
mount_client_script(app, "/pollsession.js")  # the browser client


@app.get("/")
def index() -> str:
    return """<!doctype html><meta charset="utf-8"><title>echo</title>
<input id="text" placeholder="type and press Enter" autofocus><pre id="log"></pre>
<script src="/pollsession.js"></script>
<script>
  const session = new PollSession("/poll");
  const log = (line) => document.getElementById("log").append(line + "\\n");
  session.onmessage = (event) => log("echo: " + event.data);
  session.onclose = (event) => log("closed " + event.code);
  document.getElementById("text").onkeydown = (event) => {
    if (event.key === "Enter") { session.send(event.target.value); event.target.value = ""; }
  };
</script>"""


def stop(signum: int, frame: object) -> None:
    # On Ctrl-C or SIGTERM. From a thread of its own, so that serve_forever()
    # goes on answering meanwhile: close() answers every held poll (and every
    # poll that arrives meanwhile) with the 1001 close, then shutdown() makes
    # serve_forever() return.
    threading.Thread(target=lambda: (handler.close(), server.shutdown())).start()


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8000"))
    # Any threaded WSGI server works: each held long poll occupies one worker thread.
    server = make_server("127.0.0.1", port, app, threaded=True)
    server.daemon_threads = False  # so that server_close() waits until the last answers are written
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(f"flask_echo: listening on http://127.0.0.1:{port}/", flush=True)
    server.serve_forever()
    server.server_close()

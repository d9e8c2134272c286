"""Push to every open session from an ordinary Flask view.

Sessions here only listen. ``POST /announce`` with ``{"text": "..."}`` sends
``{"announcement": "..."}`` to all of them, from the view's own thread, with
``handler.broadcast_threadsafe`` (the handler's loop does the sending).

Run:  .venv/bin/python examples/flask_broadcast.py    (PORT=9000 ... for another port)
Then open http://127.0.0.1:8000/ in a few tabs, and announce:

    curl -X POST http://127.0.0.1:8000/announce -H 'Content-Type: application/json' -d '{"text": "hello"}'
"""

import os
import signal
import threading

from flask import Flask, request
from werkzeug.serving import make_server

from pollsession import HttpHandler, Session
from pollsession.adapters.flask import mount, mount_client_script


async def listen(session: Session) -> None:
    async for _ in session:  # ignore what clients send; keep the session until it closes
        pass


handler = HttpHandler(listen)
app = Flask(__name__)
mount(app, "/poll", handler)
mount_client_script(app, "/pollsession.js")


@app.post("/announce")
def announce() -> tuple[dict[str, object], int]:
    # A real app would check who is asking. Requiring JSON already keeps
    # cross-site HTML forms out: they cannot send application/json.
    body = request.get_json(silent=True)
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text:
        return {"error": 'expected a JSON body {"text": "..."}'}, 400
    future = handler.broadcast_threadsafe({"announcement": text})  # safe from any thread
    delivered = future.result(timeout=5)  # how many sessions got it
    return {"delivered": delivered}, 200


@app.get("/")
def index() -> str:
    return """<!doctype html><meta charset="utf-8"><title>announcements</title>
<h1>Announcements</h1><ul id="list"></ul>
<script src="/pollsession.js"></script>
<script>
  const session = new PollSession("/poll");
  session.onmessage = ({data}) => {
    const item = document.createElement("li");
    item.textContent = data.announcement;
    document.getElementById("list").append(item);
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
    server = make_server("127.0.0.1", port, app, threaded=True)
    server.daemon_threads = False  # so that server_close() waits until the last answers are written
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(f"flask_broadcast: listening on http://127.0.0.1:{port}/", flush=True)
    server.serve_forever()
    server.server_close()

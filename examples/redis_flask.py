"""Echo and a broadcast, in Flask under gunicorn: many workers, one Redis, no sticky sessions.

Run:  gunicorn -c examples/redis_gunicorn.conf.py      (PORT=8000, REDIS_URL=redis://127.0.0.1:6379/0)

Every message a client sends comes back to it, except ``{"broadcast": text}``,
which goes to every session of every worker as ``{"broadcast": text}``. Any
worker answers any request: a request for another worker's session is
forwarded to it through Redis, so a plain round-robin balancer in front
(the README's nginx block) needs no sticky sessions.

Each gunicorn worker must have its own handler and its own ``RedisBackend``
(a backend names its worker, and owns that worker's sessions): the config's
``post_worker_init`` calls :func:`start_worker` in every worker, after the
fork, never in the master.
"""

import os

from flask import Flask

from pollsession import HttpHandler, Session
from pollsession.adapters.flask import mount
from pollsession.backends.redis import RedisBackend

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
NAME = os.environ.get("POLLSESSION_NAME", "redis-flask")  # the same in every worker of this app
POLL_TIMEOUT = float(os.environ.get("POLL_TIMEOUT", "25"))
MAX_HELD_POLLS = 6  # a few below gunicorn's --threads 8: opens and POSTs still find a thread

app = Flask(__name__)
handler: HttpHandler  # this worker's, set by start_worker()


async def echo(session: Session) -> None:
    async for message in session:
        if isinstance(message, dict) and set(message) == {"broadcast"}:
            await handler.broadcast(message)  # to every session of every worker
        else:
            await session.send(message)


def start_worker() -> HttpHandler:
    """Build this worker's handler and backend and mount it at /poll; call it once per worker, after the fork."""
    global handler
    backend = RedisBackend(REDIS_URL, name=NAME, poll_timeout=POLL_TIMEOUT)  # poll_timeout: the handler's
    handler = HttpHandler(echo, backend=backend, poll_timeout=POLL_TIMEOUT, max_held_polls=MAX_HELD_POLLS)
    mount(app, "/poll", handler)
    print(f"redis_flask: worker {backend.worker_id} in process {os.getpid()}", flush=True)
    return handler

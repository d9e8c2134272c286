# examples/redis_gunicorn.conf.py: gunicorn -c examples/redis_gunicorn.conf.py
import os
import signal

chdir = os.path.dirname(os.path.abspath(__file__))  # where redis_flask.py is
wsgi_app = "redis_flask:app"
bind = "127.0.0.1:" + os.environ.get("PORT", "8000")
workers = 3  # any worker answers any request: RedisBackend forwards it to the session's owner
worker_class = "gthread"
threads = 8  # more than max_held_polls (6 in redis_flask.py): POSTs and opens need threads too


def post_worker_init(worker):
    """In every worker, after the fork: its own handler and backend, closed first on every stop signal."""
    from redis_flask import start_worker

    handler = start_worker()
    graceful_stop = worker.handle_exit

    def close_then_stop(signum, frame):
        handler.close()  # held polls, here and forwarded from other workers, get 1001 at once
        graceful_stop(signum, frame)

    for signum in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT):
        signal.signal(signum, close_then_stop)

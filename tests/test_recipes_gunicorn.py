"""The README's gunicorn recipe: its stop hooks, and ``max_held_polls`` against thread exhaustion.

Both tests run gunicorn as a subprocess (``python -m gunicorn``) from a
temporary directory on a free port, with ``tests.test_examples.running``.

* The README's ``flask_app.py`` and ``gunicorn.conf.py``, as written: a
  SIGTERM (a process manager's stop) or SIGINT (Ctrl-C) to the master must
  close every session with 1001 at once and let gunicorn exit with status 0,
  instead of gunicorn waiting its whole ``graceful_timeout`` (30 s) for the
  held polls.
* The sizing the README describes: one ``gthread`` worker with 8 threads and
  12 clients. With ``max_held_polls`` a few below the threads, every client
  opens and echoes at once; without a bound, held polls took every thread and
  each echo waited out a whole ``poll_timeout`` (25 s).
"""

from __future__ import annotations

import re
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import gunicorn  # noqa: F401  # a test dependency: missing, this file must fail, not skip
import pytest

from pollsession.client import Client
from tests.test_examples import TIMEOUT, free_port, running
from tests.test_readme import code_block
from tests.test_recipes import CLIENTS, assert_clients_see_1001, echo_once, open_clients, readme_page, settle
from tests.utils import MS

# From the signal to the last client's SessionClosed(1001). Under gunicorn the
# signal goes to the master, which sends the worker its own (SIGTERM, or SIGQUIT
# for SIGINT); the README's hook closes the handler on either, which answers the
# held polls at once, and then stops the worker gracefully, so that polls on
# their way are still answered. Measured: 10-50 ms after either signal (with
# gunicorn's own quick exit on SIGQUIT instead, 430-670 ms and one client in
# about ten missed its close). The same deadline as the other recipes: far below
# what a client sees without the hook (nothing for the 30 s graceful_timeout, then 1006).
GUNICORN_CLOSE_DEADLINE = 1000 * MS
# From the signal to gunicorn's exit (status 0). Measured: 2.2-2.5 s (gthread
# keeps idle kept-alive connections, the clients' here, up to 2 s so that a
# request already on its way gets an answer). Far below the 30 s graceful_timeout
# that held polls would cost.
GUNICORN_EXIT_DEADLINE = 5000 * MS

README_CONF_FIRST_LINE = "# gunicorn.conf.py: gunicorn -c gunicorn.conf.py flask_app:app"


def readme_gunicorn_files(directory: Path, port: int) -> None:
    """The README's flask_app.py, gunicorn.conf.py and index.html in ``directory``, on ``port``."""
    app = code_block("# flask_app.py")
    conf = code_block(README_CONF_FIRST_LINE)
    assert "8000" in app
    assert 'bind = "127.0.0.1:8000"' in conf, conf
    (directory / "flask_app.py").write_text(app.replace("8000", str(port)))
    (directory / "gunicorn.conf.py").write_text(conf.replace("8000", str(port)))
    (directory / "index.html").write_text(readme_page())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda signum: signum.name)
def test_sigterm_closes_every_session_with_1001_at_once(signum: signal.Signals, tmp_path: Path) -> None:
    port = free_port()
    readme_gunicorn_files(tmp_path, port)
    args = ["-m", "gunicorn", "-c", "gunicorn.conf.py", "flask_app:app"]
    with running(args, tmp_path / "logs", port=port, cwd=tmp_path) as server:
        clients = open_clients(f"{server.url}/poll", CLIENTS)
        try:
            for client in clients:
                echo_once(client)  # reads the greeting, then one echo: its next poll is held
            settle(clients, server.url)
            signalled = time.monotonic()
            server.process.send_signal(signum)
            last_close = assert_clients_see_1001(clients, signalled, GUNICORN_CLOSE_DEADLINE)
            status = server.process.wait(GUNICORN_EXIT_DEADLINE)
            exited = time.monotonic() - signalled
        finally:
            for client in clients:
                client.close()
    errors = server.errors()
    assert status == 0, errors
    assert "Traceback" not in errors, errors
    assert exited < GUNICORN_EXIT_DEADLINE, exited
    print(f"gunicorn {signum.name}: last client closed after {last_close * 1000:.0f} ms, "
          f"exited after {exited * 1000:.0f} ms")


# -- max_held_polls under gunicorn -gthread ------------------------------------------

THREADS = 8
SIZING_CLIENTS = 12
ROUNDS = 5  # echo round trips per client
BOUND = THREADS - 2  # max_held_polls a few below the threads, as the README says
POLL_TIMEOUT = 25.0  # HttpHandler's default: without a bound, what each echo waited
ECHO_DEADLINE = 5000 * MS  # each round trip: a fifth of the poll timeout it waited without a bound
# The whole run: 12 opens, then 60 echoes. Measured: 0.4-1.1 s; less than one
# poll_timeout, which a single starved echo took without the bound.
RUN_DEADLINE = 20_000 * MS

SIZING_APP = """
import logging

from flask import Flask

from pollsession import HttpHandler
from pollsession.adapters.flask import mount

# gunicorn configures only its own loggers ("gunicorn.error" to stderr); give
# pollsession's warnings a handler of their own, on stderr too.
_stderr = logging.StreamHandler()
_stderr.setFormatter(logging.Formatter("%(levelname)s %(message)s"))  # messages start "pollsession: "
logging.getLogger("pollsession").addHandler(_stderr)


async def echo(session):
    await session.send({{"hello": session.request.client_address}})
    async for message in session:
        await session.send(message)


handler = HttpHandler(echo, max_held_polls={max_held_polls})
app = Flask(__name__)
mount(app, "/poll", handler)
"""


@dataclass
class Run:
    """What ``drive`` saw: one entry per client."""

    opened: list[bool] = field(default_factory=list)
    latencies: list[list[float]] = field(default_factory=list)  # seconds, per round trip
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def all_latencies(self) -> list[float]:
        return [latency for latencies in self.latencies for latency in latencies]


def drive(url: str, clients: int, rounds: int, deadline: float, *, request_timeout: float = TIMEOUT,
          max_retries: int = 8) -> Run:
    """The issue's scenario: ``clients`` clients open one after the other, then all echo ``rounds`` times at once.

    Each client opens while the ones before it sit idle in a long poll (each
    holding a thread if nothing bounds them) and reads its greeting; then
    every client that opened echoes on its own thread. Echoes stop at
    ``deadline`` (monotonic); a client that could not open, or whose echo did
    not come back, is recorded as such.
    """
    run = Run(opened=[False] * clients, latencies=[[] for _ in range(clients)], errors=[""] * clients)
    start = time.monotonic()
    opened: dict[int, Client] = {}
    try:
        for index in range(clients):
            try:
                client = Client(url, request_timeout=request_timeout, max_retries=max_retries)
            except Exception as error:  # noqa: BLE001  # recorded, and asserted on by the caller
                run.errors[index] = f"open: {type(error).__name__}: {error}"
                continue
            opened[index] = client
            run.opened[index] = True
            try:
                greeting = client.receive(timeout=max(0.0, deadline - time.monotonic()))
                assert isinstance(greeting, dict) and "hello" in greeting, greeting
            except Exception as error:  # noqa: BLE001
                run.errors[index] = f"greeting: {type(error).__name__}: {error}"
                del opened[index]
                client.close(timeout=2.0)

        def echo(index: int, client: Client) -> None:
            try:
                for round_ in range(rounds):
                    text = f"ping {index} {round_}"
                    sent = time.monotonic()
                    client.send(text)
                    answer = client.receive(timeout=max(0.0, deadline - time.monotonic()))
                    assert answer == text, (answer, text)
                    run.latencies[index].append(time.monotonic() - sent)
            except Exception as error:  # noqa: BLE001
                run.errors[index] = f"echo {len(run.latencies[index])}: {type(error).__name__}: {error}"

        threads = [threading.Thread(target=echo, args=item, name=f"sizing-client-{item[0]}")
                   for item in opened.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()) + 1.0)  # receive ends at the deadline
        assert not any(thread.is_alive() for thread in threads), "a client's echo outlived its deadline"
        run.elapsed = time.monotonic() - start
    finally:
        for client in opened.values():
            client.close(timeout=2.0)
    return run


def sizing_server(tmp_path: Path, max_held_polls: int, port: int):  # type: ignore[no-untyped-def]
    """``running`` gunicorn -k gthread --threads 8 (one worker) serving the echo app at /poll."""
    (tmp_path / "sizing_app.py").write_text(SIZING_APP.format(max_held_polls=max_held_polls))
    args = ["-m", "gunicorn", "-k", "gthread", "--workers", "1", "--threads", str(THREADS),
            "--graceful-timeout", "5", "--no-control-socket", "-b", f"127.0.0.1:{port}", "sizing_app:app"]
    return running(args, tmp_path / "logs", port=port, cwd=tmp_path)


def test_held_polls_leave_threads_for_opens_and_posts(tmp_path: Path) -> None:
    port = free_port()
    with sizing_server(tmp_path, BOUND, port) as server:
        run = drive(f"{server.url}/poll", SIZING_CLIENTS, ROUNDS, time.monotonic() + RUN_DEADLINE)
        errors = server.errors()
    assert run.opened == [True] * SIZING_CLIENTS, run.errors
    assert run.errors == [""] * SIZING_CLIENTS, run.errors
    assert [len(latencies) for latencies in run.latencies] == [ROUNDS] * SIZING_CLIENTS
    slowest = max(run.all_latencies)
    assert slowest < ECHO_DEADLINE, f"an echo took {slowest:.2f}s (poll_timeout is {POLL_TIMEOUT:.0f}s)"
    assert run.elapsed < RUN_DEADLINE, run.elapsed
    # 12 clients, 8 threads, at most 6 held polls: the bound was reached, and said so once.
    warnings = [line for line in errors.splitlines() if "max_held_polls" in line]
    assert len(warnings) == 1, errors
    assert re.match(rf"WARNING pollsession: {BOUND} framework threads are holding long polls", warnings[0]), warnings
    assert "Traceback" not in errors, errors
    print(f"gthread --threads {THREADS}, {SIZING_CLIENTS} clients, max_held_polls={BOUND}: "
          f"{len(run.all_latencies)} echoes, p50 {statistics.median(run.all_latencies) * 1000:.0f} ms, "
          f"max {slowest * 1000:.0f} ms, whole run {run.elapsed:.2f} s")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-s", "-p", "no:cacheprovider"]))

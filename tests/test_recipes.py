"""Every recipe stops cleanly: the README's snippets, the examples and the demo.

Each test starts one program as a subprocess on a free port, opens a few
``pollsession.client.Client`` sessions and makes each one echo (or join), so
that each holds a long poll, then sends the signal a person or a process
manager sends (Ctrl-C's SIGINT; SIGTERM too where the program handles it).
Every client must then see ``SessionClosed`` with code 1001 within
``CLOSE_DEADLINE``: the shutdown answers the held polls. (Without it a client
learns nothing until its retries run out, and ends with 1006 several seconds
later.) The program must exit with status 0 and write no traceback.

Gunicorn has its own file, ``tests/test_recipes_gunicorn.py``.
"""

from __future__ import annotations

import contextlib
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from pollsession import SessionClosed
from pollsession.client import Client
from tests.test_examples import ROOT, TIMEOUT, Server, free_port, running
from tests.test_readme import README, code_block
from tests.utils import MS

__all__ = ["CLOSE_DEADLINE", "CLIENTS", "assert_clients_see_1001", "echo_once", "open_clients"]

CLOSE_DEADLINE = 1000 * MS  # from the signal to the last client's SessionClosed(1001)
CLIENTS = 4


# -- what a client does before the signal: get its next poll held ------------------


def echo_once(client: Client) -> None:
    """One message there and back (after a greeting, if any)."""
    client.send("ping")
    while client.receive(timeout=TIMEOUT) != "ping":
        pass


def wait_for(client: Client, predicate: Callable[[Any], bool], what: str) -> None:
    """Read ``client``'s messages until one matches ``predicate``."""
    deadline = time.monotonic() + TIMEOUT
    while not predicate(client.receive(timeout=max(0.0, deadline - time.monotonic()))):
        pass


def chat_join(clients: list[Client], base_url: str) -> None:
    """examples/tornado_chat.py: every member has heard the last one join (no broadcast left in flight)."""
    for index, client in enumerate(clients):
        # Its own join, then the join of each member after it.
        for _ in range(len(clients) - index):
            wait_for(client, lambda message: message.get("event") == "join", "a join")


def demo_join(clients: list[Client], base_url: str) -> None:
    """The demo: every client joins, and every member has heard the last one join."""
    for index, client in enumerate(clients):
        client.send(f"member{index}")
        wait_for(client, lambda message: message.get("type") == "welcome", "the welcome")
    everyone = sorted(f"member{index}" for index in range(len(clients)))
    for client in clients:
        wait_for(client, lambda message: message.get("type") == "join" and message["members"] == everyone,
                 "the last member's join")


def announce(clients: list[Client], base_url: str) -> None:
    """examples/flask_broadcast.py: one announcement reaches every client."""
    response = requests.post(f"{base_url}/announce", json={"text": "ready"}, timeout=TIMEOUT)
    assert response.json() == {"delivered": len(clients)}
    for client in clients:
        assert client.receive(timeout=TIMEOUT) == {"announcement": "ready"}


def each(greet: Callable[[Client], None]) -> Callable[[list[Client], str], None]:
    def greet_each(clients: list[Client], base_url: str) -> None:
        for client in clients:
            greet(client)

    return greet_each


def open_clients(url: str, count: int = CLIENTS) -> list[Client]:
    """``count`` open clients of ``url``."""
    clients: list[Client] = []
    try:
        for _ in range(count):
            clients.append(Client(url, request_timeout=TIMEOUT))
    except BaseException:
        for client in clients:
            client.close()
        raise
    return clients


def assert_clients_see_1001(clients: list[Client], since: float, deadline: float = CLOSE_DEADLINE) -> float:
    """Every client's ``receive`` raises SessionClosed(1001) by ``since + deadline``; the last one's delay."""
    last = 0.0
    for index, client in enumerate(clients):
        try:
            while True:  # messages sent before the close (a clock tick, say) come first
                client.receive(timeout=max(0.0, since + deadline - time.monotonic()))
        except TimeoutError:
            raise AssertionError(f"client {index} saw no close within {deadline:.2f}s of the signal") from None
        except SessionClosed as closed:
            assert closed.code == 1001, f"client {index} saw {closed}, not 1001"
        last = max(last, time.monotonic() - since)
    return last


# -- the recipes -------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How to start one program: ``prepare(tmp_path, port)`` gives its arguments and working directory."""

    name: str
    prepare: Callable[[Path, int], tuple[list[str], Path]]
    greet: Callable[[list[Client], str], None]
    query: str = ""
    signals: tuple[signal.Signals, ...] = (signal.SIGINT,)


def readme_page() -> str:
    """The page of the README's "In the browser" section."""
    match = re.search(r"```html\n(<!-- index\.html -->\n.*?)```", README, flags=re.S)
    assert match, "README has no html block starting with <!-- index.html -->"
    return match.group(1)


def readme_snippet(first_line: str) -> Callable[[Path, int], tuple[list[str], Path]]:
    """A README snippet saved as app.py, beside the README's page, listening on ``port``."""

    def prepare(directory: Path, port: int) -> tuple[list[str], Path]:
        source = code_block(first_line)
        assert "8000" in source
        (directory / "app.py").write_text(source.replace("8000", str(port)))
        (directory / "index.html").write_text(readme_page())
        return ["app.py"], directory

    return prepare


def example(path: str) -> Callable[[Path, int], tuple[list[str], Path]]:
    return lambda directory, port: ([path], ROOT)


def demo(adapter: str) -> Callable[[Path, int], tuple[list[str], Path]]:
    return lambda directory, port: (["-m", "pollsession", "demo", "--adapter", adapter, "--port", str(port)], ROOT)


BOTH = (signal.SIGINT, signal.SIGTERM)
RECIPES = [
    Recipe("readme-flask", readme_snippet("# flask_app.py"), each(echo_once), signals=BOTH),
    Recipe("readme-tornado", readme_snippet("# tornado_app.py"), each(echo_once), signals=BOTH),
    Recipe("flask_echo", example("examples/flask_echo.py"), each(echo_once), signals=BOTH),
    Recipe("flask_broadcast", example("examples/flask_broadcast.py"), announce, signals=BOTH),
    Recipe("tornado_chat", example("examples/tornado_chat.py"), chat_join, "?room=kitchen&name=ann", signals=BOTH),
    Recipe("demo-flask", demo("flask"), demo_join, "?room=lobby", signals=BOTH),
    Recipe("demo-tornado", demo("tornado"), demo_join, "?room=lobby", signals=BOTH),
    # uvicorn re-raises a SIGTERM it caught once it has shut down (the exit status is then -15): SIGINT only.
    Recipe("asgi_fastapi", example("examples/asgi_fastapi.py"), each(echo_once), "/"),  # a mount: at /poll/
    Recipe("asgi_starlette", example("examples/asgi_starlette.py"), each(echo_once)),
    Recipe("asgi_bare", example("examples/asgi_bare.py"), each(echo_once)),
]


def waiting_for_an_answer(client: Client) -> bool:
    """Whether ``client``'s poller has sent its poll and is blocked reading the answer.

    The poller thread is named after the client (pollsession/client/sync.py);
    while it waits, the innermost Python frame of its stack is the socket
    file's ``readinto`` (http.client reading the status line), which is only
    called once the whole request has been written.
    """
    name = f"pollsession-poller-{id(client):x}"
    thread = next((thread for thread in threading.enumerate() if thread.name == name), None)
    frame = None if thread is None or thread.ident is None else sys._current_frames().get(thread.ident)
    return frame is not None and frame.f_code.co_name == "readinto" and frame.f_code.co_filename.endswith("socket.py")


def settle(clients: list[Client], base_url: str) -> None:
    """Wait until every client's next poll has been sent, then one more round trip to the server.

    Each client sends its next poll the moment it has read an answer, but the
    last one's may still be on its way when the greeting returns; a poll sent
    after the signal finds the server gone and ends in 1006, not 1001. The
    round trip after gives the server the time of one request to read them.
    """
    deadline = time.monotonic() + TIMEOUT
    for index, client in enumerate(clients):
        while not waiting_for_an_answer(client):
            assert time.monotonic() < deadline, f"client {index} sent no poll within {TIMEOUT}s"
            time.sleep(MS)
    assert requests.get(f"{base_url}/poll", params={"test": "1"}, timeout=TIMEOUT).text == "ok"


@contextlib.contextmanager
def started(recipe: Recipe, tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    args, cwd = recipe.prepare(tmp_path, port)
    with running(args, tmp_path / "logs", port=port, cwd=cwd) as server:
        yield server


@pytest.mark.parametrize(
    ("recipe", "signum"),
    [(recipe, signum) for recipe in RECIPES for signum in recipe.signals],
    ids=lambda value: value.name if isinstance(value, (Recipe, signal.Signals)) else str(value),
)
def test_a_signal_closes_every_session_with_1001_at_once(recipe: Recipe, signum: signal.Signals,
                                                         tmp_path: Path) -> None:
    with started(recipe, tmp_path) as server:
        clients = open_clients(f"{server.url}/poll{recipe.query}")
        try:
            recipe.greet(clients, server.url)
            settle(clients, server.url)
            signalled = time.monotonic()
            server.process.send_signal(signum)
            last_close = assert_clients_see_1001(clients, signalled)
            assert server.process.wait(TIMEOUT) == 0, server.errors()
            exited = time.monotonic() - signalled
        finally:
            for client in clients:
                client.close()
    errors = server.errors()
    assert "Traceback" not in errors, errors
    print(f"{recipe.name} {signum.name}: last client closed after {last_close * 1000:.0f} ms, "
          f"exited after {exited * 1000:.0f} ms")

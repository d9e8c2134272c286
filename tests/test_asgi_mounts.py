"""ASGI apps under a prefix: ``uvicorn --root-path`` and Starlette mounts, over real HTTP.

A proxy that serves an app under ``/prefix`` and strips it before passing a
request on is what ``uvicorn --root-path /prefix`` is for: uvicorn gets
``/poll`` and puts ``/prefix`` in front of it (in ``root_path`` and, per
ASGI, in ``path``). Each test runs uvicorn's command line as a subprocess.

A session belongs to the mount it was opened at (adapters/asgi.py, "Paths"):
its id, sent to another mount (another handler, or the same handler mounted
twice), is answered 410, and the session goes on at its own mount.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import requests

from pollsession.client import Client
from tests.test_examples import TIMEOUT, WireSession, free_port, running
from tests.test_recipes import assert_clients_see_1001, echo_once, open_clients, settle

# Five mounts of four handlers; each session's first message is the path it was opened at.
MOUNTS_APP = '''
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from pollsession import HttpHandler, Session
from pollsession.adapters.asgi import PollSessionApp


async def where(session: Session) -> None:
    await session.send(session.request.path)
    async for message in session:
        await session.send(message)


def app_of_its_own() -> PollSessionApp:
    return PollSessionApp(HttpHandler(where, use_running_loop=True))


shared = app_of_its_own()
app = Starlette(routes=[
    Route("/poll", app_of_its_own()),
    Route("/other", app_of_its_own()),
    Mount("/left", shared),
    Mount("/right", shared),
    Mount("/nested", app=Starlette(routes=[Route("/poll", app_of_its_own())])),
])
'''
MOUNTS = ["/poll", "/other", "/left/", "/right/", "/nested/poll"]


def uvicorn_command(app: str, port: int, *options: str) -> list[str]:
    return ["-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *options]


def poll_status(url: str, session: WireSession) -> int:
    """The status of a poll for ``session`` at ``url`` that returns at once (acknowledging what it received)."""
    response = requests.get(url, params={"ack": str(len(session.received)), "wait": "0"},
                            headers={"Pollsession-Id": session.sid}, timeout=TIMEOUT)
    return response.status_code


def test_bare_example_under_root_path_answers_what_the_proxy_passes_on(tmp_path: Path) -> None:
    port = free_port()
    with running(uvicorn_command("examples.asgi_bare:app", port, "--root-path", "/echo"), tmp_path,
                 port=port) as server:
        page = requests.get(f"{server.url}/", timeout=TIMEOUT)
        assert page.status_code == 200 and "new PollSession" in page.text
        script = requests.get(f"{server.url}/pollsession.js", timeout=TIMEOUT)
        assert script.status_code == 200 and "PollSession" in script.text
        with Client(f"{server.url}/poll", request_timeout=TIMEOUT) as client:
            client.send("behind a proxy")
            assert client.receive(timeout=TIMEOUT) == "behind a proxy"
        # What the proxy never passes on: the prefix itself (uvicorn would make it /echo/echo/poll).
        assert requests.get(f"{server.url}/echo/poll", timeout=TIMEOUT).status_code == 404


def test_a_session_belongs_to_its_mount_under_root_path(tmp_path: Path) -> None:
    (tmp_path / "mounts_app.py").write_text(MOUNTS_APP)
    port = free_port()
    with running(uvicorn_command("mounts_app:app", port, "--root-path", "/prefix"), tmp_path / "logs",
                 port=port, cwd=tmp_path) as server:
        sessions = {mount: WireSession(f"{server.url}{mount}") for mount in MOUNTS}
        for mount, session in sessions.items():
            # The full path: uvicorn's root path, then Starlette's mounts.
            session.receive_until(lambda received: received, f"the greeting at {mount}")
            assert session.received == [f"/prefix{mount}"]
            session.send(f"at {mount}")
            session.receive_until(lambda received: len(received) >= 2, f"the echo at {mount}")
            assert session.received == [f"/prefix{mount}", f"at {mount}"]

        for mount, session in sessions.items():
            for elsewhere in MOUNTS:
                if elsewhere != mount:  # /left/ and /right/ included: one handler, two mounts
                    status = poll_status(f"{server.url}{elsewhere}", session)
                    assert status == 410, f"{mount}'s session polled at {elsewhere}: {status}"
        for mount, session in sessions.items():
            assert poll_status(f"{server.url}{mount}", session) == 200, f"{mount}'s session at its own mount"

        # Every mounted app chained itself onto uvicorn's SIGINT at its first request.
        clients = [client for mount in MOUNTS for client in open_clients(f"{server.url}{mount}", 1)]
        try:
            for mount, client in zip(MOUNTS, clients):
                assert client.receive(timeout=TIMEOUT) == f"/prefix{mount}"
                echo_once(client)
            settle(clients, server.url)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGINT)
            assert_clients_see_1001(clients, signalled)
            assert server.process.wait(TIMEOUT) == 0, server.errors()
        finally:
            for client in clients:
                client.close()
    assert "Traceback" not in server.errors(), server.errors()

"""The examples in ``examples/`` run as written, driven over real HTTP.

Each test starts one example as a subprocess (``python examples/X.py``) on a
free port given in ``PORT``, waits until its ``?test=1`` probe answers, talks
the wire protocol to it by hand with ``requests`` (``WireSession``), and
terminates it. ``tests/test_demo.py`` uses the same helpers.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from pollsession.client import AsyncClient, Client
from tests.test_readme import code_block
from tests.utils import MS, wait_until

__all__ = ["ROOT", "TIMEOUT", "Server", "WireSession", "free_port", "running"]

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 10_000 * MS  # seconds; the longest any single wait may take


def free_port() -> int:
    """A port nobody listens on now (the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stdout.read_text()

    def errors(self) -> str:
        return self.stderr.read_text()


def _answers_probe(url: str) -> bool:
    try:
        response = requests.get(f"{url}/poll?test=1", timeout=TIMEOUT)
    except requests.ConnectionError:
        return False
    return response.status_code == 200 and response.text == "ok"


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and a Python started
    # that way never raises KeyboardInterrupt: give the child a terminal's Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def running(args: Sequence[str], logs: Path, *, port: int | None = None, cwd: Path = ROOT,
            program: Sequence[str] = (sys.executable,)) -> Iterator[Server]:
    """Run ``python *args`` from ``cwd`` (the repository root) with ``PORT`` set; yield it once its probe answers.

    ``program`` replaces ``python`` (a ``gunicorn`` command, say). The process
    is terminated (SIGTERM) when the block ends, if it still runs.
    """
    port = port or free_port()
    logs.mkdir(parents=True, exist_ok=True)
    stdout, stderr = logs / "stdout.txt", logs / "stderr.txt"
    env = {**os.environ, "PORT": str(port), "PYTHONUNBUFFERED": "1"}
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen([*program, *args], cwd=cwd, env=env, stdout=out, stderr=err,
                                   preexec_fn=_default_sigint)
    server = Server(f"http://127.0.0.1:{port}", process, stdout, stderr)
    try:
        wait_until(lambda: process.poll() is not None or _answers_probe(server.url), TIMEOUT,
                   f"{' '.join(args)} to answer its probe on port {port}")
        assert process.poll() is None, f"{' '.join(args)} exited with {process.returncode}:\n{server.errors()}"
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _to_wire(seq: int, value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"seq": seq, "type": "text", "data": value}
    if isinstance(value, bytes):
        return {"seq": seq, "type": "binary", "data": base64.b64encode(value).decode("ascii")}
    return {"seq": seq, "type": "json", "data": value}


def _from_wire(message: dict[str, Any]) -> Any:
    if message["type"] == "binary":
        return base64.b64decode(message["data"])
    return message["data"]


class WireSession:
    """One session driven by hand over HTTP, as docs/protocol.md describes.

    ``received`` holds every message's data in order, ``arrivals`` the
    monotonic time each one arrived, ``closed`` the server's close once seen.
    """

    def __init__(self, url: str, params: dict[str, str] | None = None) -> None:
        self.url = url
        response = requests.get(url, params=params, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        answer = response.json()
        self.sid: str = answer["sid"]
        assert response.headers["Pollsession-Id"] == self.sid
        self.received: list[Any] = []
        self.arrivals: list[float] = []
        self.closed: dict[str, Any] | None = None
        self._ack = 0
        self._seq = 0
        self._take(answer)

    def _take(self, answer: dict[str, Any]) -> None:
        for message in answer["messages"]:
            if message["seq"] == self._ack + 1:
                self._ack = message["seq"]
                self.received.append(_from_wire(message))
                self.arrivals.append(time.monotonic())
        if answer["closed"] is not None:
            self.closed = answer["closed"]

    @property
    def _headers(self) -> dict[str, str]:
        return {"Pollsession-Id": self.sid}

    def send(self, *values: Any) -> None:
        """Push ``values`` in one batch: str as text, bytes as binary, anything else as json."""
        batch = [_to_wire(self._seq + i, value) for i, value in enumerate(values, 1)]
        response = requests.post(self.url, json={"messages": batch}, headers=self._headers, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        self._seq += len(values)
        assert response.json() == {"ack": self._seq}

    def poll(self, wait: float = 500 * MS) -> int:
        """One long poll acknowledging what was received; its status."""
        response = requests.get(self.url, params={"ack": str(self._ack), "wait": f"{wait:.3f}"},
                                headers=self._headers, timeout=wait + TIMEOUT)
        if response.status_code == 200:
            self._take(response.json())
        return response.status_code

    def receive_until(self, predicate: Callable[[list[Any]], Any], what: str, timeout: float = TIMEOUT) -> Any:
        """Poll until ``predicate(received)`` is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate(self.received)
            if value:
                return value
            assert self.closed is None, f"the session closed {self.closed} while waiting for {what}"
            assert time.monotonic() < deadline, f"timed out after {timeout:.2f}s waiting for {what}: {self.received}"
            assert self.poll() == 200

    def wait_closed(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Poll until the server says the session closed; return its ``{"code", "reason"}``."""
        deadline = time.monotonic() + timeout
        while self.closed is None:
            assert time.monotonic() < deadline, f"timed out after {timeout:.2f}s waiting for the session to close"
            assert self.poll() == 200
        return self.closed

    def delete(self) -> int:
        return requests.delete(self.url, headers=self._headers, timeout=TIMEOUT).status_code


# -- the examples ------------------------------------------------------------


def test_flask_echo_echoes_every_type(tmp_path: Path) -> None:
    with running(["examples/flask_echo.py"], tmp_path) as server:
        assert f"listening on {server.url}/" in server.output()
        page = requests.get(f"{server.url}/", timeout=TIMEOUT)
        assert page.status_code == 200 and "new PollSession" in page.text
        script = requests.get(f"{server.url}/pollsession.js", timeout=TIMEOUT)
        assert script.status_code == 200 and "PollSession" in script.text

        session = WireSession(f"{server.url}/poll")
        session.send("héllo", b"\x00\xff", {"a": [1, None]})
        session.receive_until(lambda received: len(received) >= 3, "three echoes")
        assert session.received == ["héllo", b"\x00\xff", {"a": [1, None]}]

        assert session.delete() == 204
        assert session.poll() == 410  # the server forgot the session


def test_tornado_chat_broadcasts_within_a_room_only(tmp_path: Path) -> None:
    with running(["examples/tornado_chat.py"], tmp_path) as server:
        assert f"listening on {server.url}/" in server.output()
        assert requests.get(f"{server.url}/", timeout=TIMEOUT).status_code == 200

        ann = WireSession(f"{server.url}/poll", {"room": "kitchen", "name": "ann"})
        bob = WireSession(f"{server.url}/poll", {"room": "kitchen", "name": "bob"})
        cat = WireSession(f"{server.url}/poll", {"room": "garden", "name": "cat"})
        ann.receive_until(lambda received: {"event": "join", "name": "bob"} in received, "bob's join")

        ann.send("hi all")
        said = {"event": "message", "name": "ann", "text": "hi all"}
        bob.receive_until(lambda received: said in received, "ann's message")
        ann.receive_until(lambda received: said in received, "ann's own message")

        # Everything broadcast to the kitchen before cat speaks would reach cat
        # first: once cat hears itself, its room has shown all it will show.
        cat.send("anyone?")
        cat.receive_until(lambda received: {"event": "message", "name": "cat", "text": "anyone?"} in received,
                          "cat's own message")
        assert cat.received == [{"event": "join", "name": "cat"},
                                {"event": "message", "name": "cat", "text": "anyone?"}]

        assert bob.delete() == 204
        ann.receive_until(lambda received: {"event": "leave", "name": "bob"} in received, "bob's leave")


def test_flask_broadcast_announces_to_every_session_from_a_view(tmp_path: Path) -> None:
    with running(["examples/flask_broadcast.py"], tmp_path) as server:
        assert f"listening on {server.url}/" in server.output()
        first = WireSession(f"{server.url}/poll")
        second = WireSession(f"{server.url}/poll")

        response = requests.post(f"{server.url}/announce", json={"text": "tea is ready"}, timeout=TIMEOUT)
        assert response.status_code == 200
        assert response.json() == {"delivered": 2}
        for session in (first, second):
            session.receive_until(lambda received: received == [{"announcement": "tea is ready"}],
                                  "the announcement")

        refused = requests.post(f"{server.url}/announce", data="text=hi", timeout=TIMEOUT,
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert refused.status_code == 400

        assert first.delete() == 204
        response = requests.post(f"{server.url}/announce", json={"text": "second"}, timeout=TIMEOUT)
        assert response.json() == {"delivered": 1}


def _echo_then_ctrl_c_closes_with_1001_at_once(server: Server, poll_url: str) -> None:
    """The ASGI examples: an AsyncClient echo at ``poll_url``, then SIGINT answers a held poll with 1001 at once."""

    async def echo_all() -> list[object]:
        async with AsyncClient(poll_url) as client:
            for value in ("héllo", b"\x00\xff", {"a": [1, None]}):
                await client.send(value)
            return [await client.receive(timeout=TIMEOUT) for _ in range(3)]

    assert asyncio.run(echo_all()) == ["héllo", b"\x00\xff", {"a": [1, None]}]

    session = WireSession(poll_url)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(requests.get, poll_url, params={"ack": "0", "wait": "20"},
                           headers={"Pollsession-Id": session.sid}, timeout=TIMEOUT)
        wait_until(lambda: held.running(), TIMEOUT, "the poll to be sent")
        started = time.monotonic()
        server.process.send_signal(signal.SIGINT)
        answer = held.result()
    # The held poll is answered with the close at once, not after its 20 s hold.
    assert answer.status_code == 200 and answer.json()["closed"] == {"code": 1001,
                                                                     "reason": "server shutting down"}
    assert time.monotonic() - started < 5
    assert server.process.wait(TIMEOUT) == 0, server.errors()


def test_asgi_fastapi_echoes_beside_its_routes_and_ctrl_c_closes_with_1001_at_once(tmp_path: Path) -> None:
    with running(["examples/asgi_fastapi.py"], tmp_path) as server:
        assert requests.get(f"{server.url}/hello", timeout=TIMEOUT).json() == {"hello": "world"}
        script = requests.get(f"{server.url}/pollsession.js", timeout=TIMEOUT)
        assert script.status_code == 200 and "PollSession" in script.text
        _echo_then_ctrl_c_closes_with_1001_at_once(server, f"{server.url}/poll/")
    assert "Traceback" not in server.errors()


def test_asgi_starlette_routes_poll_exactly_and_ctrl_c_closes_with_1001_at_once(tmp_path: Path) -> None:
    with running(["examples/asgi_starlette.py"], tmp_path) as server:
        assert requests.get(f"{server.url}/hello", timeout=TIMEOUT).json() == {"hello": "world"}
        script = requests.get(f"{server.url}/pollsession.js", timeout=TIMEOUT)
        assert script.status_code == 200 and "PollSession" in script.text
        # A Route, not a Mount: /poll itself answers, no redirect to /poll/.
        opened = requests.get(f"{server.url}/poll", allow_redirects=False, timeout=TIMEOUT)
        assert opened.status_code == 200 and opened.json()["sid"], opened.text
        with Client(f"{server.url}/poll", request_timeout=TIMEOUT) as client:
            client.send("sync")
            assert client.receive(timeout=TIMEOUT) == "sync"
        _echo_then_ctrl_c_closes_with_1001_at_once(server, f"{server.url}/poll")
    assert "Traceback" not in server.errors()


BARE_COMMANDS = {
    "python": ["examples/asgi_bare.py"],
    "uvicorn-cli": ["-m", "uvicorn", "examples.asgi_bare:app", "--host", "127.0.0.1", "--log-level", "warning"],
}


@pytest.mark.parametrize("command", BARE_COMMANDS)
def test_asgi_bare_serves_page_script_and_poll_and_ctrl_c_closes_with_1001_at_once(command: str,
                                                                                  tmp_path: Path) -> None:
    port = free_port()
    args = BARE_COMMANDS[command] + (["--port", str(port)] if command == "uvicorn-cli" else [])
    with running(args, tmp_path, port=port) as server:
        page = requests.get(f"{server.url}/", timeout=TIMEOUT)
        assert page.status_code == 200 and "new PollSession" in page.text
        assert page.headers["content-type"].startswith("text/html")
        script = requests.get(f"{server.url}/pollsession.js", timeout=TIMEOUT)
        assert script.status_code == 200 and "PollSession" in script.text
        assert requests.get(f"{server.url}/elsewhere", timeout=TIMEOUT).status_code == 404
        with Client(f"{server.url}/poll", request_timeout=TIMEOUT) as client:
            client.send({"sync": True})
            assert client.receive(timeout=TIMEOUT) == {"sync": True}
        _echo_then_ctrl_c_closes_with_1001_at_once(server, f"{server.url}/poll")
    assert "Traceback" not in server.errors()


def test_readme_asgi_snippets_are_the_examples_lines() -> None:
    # The README's ASGI section shows parts of the examples: every line it shows is in the file.
    for first_line, example in (("app = Starlette(routes=[", "asgi_starlette.py"),
                                ("poll, script = PollSessionApp(handler), ClientScriptApp()", "asgi_bare.py")):
        source = {line.strip() for line in (ROOT / "examples" / example).read_text().splitlines()}
        shown = [line.strip() for line in code_block(first_line).splitlines()]
        # The example's signatures carry type hints the README leaves out.
        missing = [line for line in shown if line and not line.startswith(("...", "async def ")) and line not in source]
        assert not missing, f"README lines not in examples/{example}: {missing}"

"""The Flask adapter under gunicorn: a keep-alive WSGI server with its own body reader.

Werkzeug's development server closes every connection; gunicorn keeps them
open and parses chunked bodies itself, so it shows what the adapter must do
for any WSGI server: turn the server's own body errors into the protocol's
JSON 400, notice a body that ends short of its ``Content-Length``, and never
leave a refused body's bytes to be read as the next request. One gunicorn
process (``-k gthread``) per module, started in a subprocess; the tests wait
for its "Listening at" line and its probe with deadlines.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.test_adapter_bodies import LIMIT, PIECE, assert_json_error, open_session, post_head
from tests.utils import MS, RawConnection, wait_until

pytest.importorskip("gunicorn")

APP = f"""
from flask import Flask

from pollsession import HttpHandler
from pollsession.adapters.flask import mount


async def record(session):
    async for _ in session:
        pass


handler = HttpHandler(record, max_body_size={LIMIT}, max_message_size=4096)
app = Flask(__name__)
mount(app, "/poll", handler)
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder: Path = tmp_path_factory.mktemp("gunicorn-app")
    (folder / "gunicorn_app.py").write_text(APP)
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", "8", "--keep-alive", "30",
         "-b", "127.0.0.1:0", "--chdir", str(folder), "gunicorn_app:app"],
        stderr=subprocess.PIPE, text=True,
    )
    listening: list[str] = []
    ready = threading.Event()

    def read_log() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            if not listening and (match := re.search(r"Listening at: (http://\S+)", line)):
                listening.append(match.group(1))
                ready.set()
        ready.set()  # the process ended

    threading.Thread(target=read_log, name="gunicorn-log", daemon=True).start()
    try:
        assert ready.wait(20_000 * MS) and listening, "gunicorn did not start"
        url = listening[0]

        def answers() -> bool:
            try:
                return requests.get(url + "/poll", params={"test": "1"}, timeout=1).text == "ok"
            except requests.ConnectionError:
                return False

        wait_until(answers, timeout=20_000 * MS, what="gunicorn to answer")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_refused_body_is_never_read_as_the_next_request(base: str) -> None:
    sid = open_session(base)
    with RawConnection(base) as connection:
        smuggled = f"GET /poll?test=1 HTTP/1.1\r\nHost: {connection.host}\r\n\r\n".encode()
        length = LIMIT + 1 + len(smuggled)
        connection.send(post_head(connection, sid, f"Content-Length: {length}") + (PIECE + smuggled)[:length])
        assert_json_error(connection.response(), 413)
        # The connection stays open (gunicorn discarded the rest of the body): the next
        # answer is to this request, not to the one hidden in the body.
        connection.send(f"GET /nothing-here HTTP/1.1\r\nHost: {connection.host}\r\n\r\n".encode())
        assert connection.response().status == 404


@pytest.mark.parametrize("body", [b"zz\r\nhello\r\n0\r\n\r\n", b"5\r\nhelloXX0\r\n\r\n"], ids=["size", "crlf"])
def test_gunicorns_chunked_errors_are_json_400s(base: str, body: bytes) -> None:
    sid = open_session(base)
    with RawConnection(base) as connection:
        connection.send(post_head(connection, sid, "Transfer-Encoding: chunked") + body)
        assert_json_error(connection.response(), 400)  # a 500 HTML page before


def test_an_absurd_chunk_then_the_end_is_a_json_400(base: str) -> None:
    sid = open_session(base)
    with RawConnection(base) as connection:
        connection.send(post_head(connection, sid, "Transfer-Encoding: chunked") + b"ffffffffffffffffff\r\nab")
        connection.sock.shutdown(socket.SHUT_WR)
        assert_json_error(connection.response(), 400, 413)


def test_a_body_short_of_its_content_length_is_a_json_400(base: str) -> None:
    sid = open_session(base)
    with RawConnection(base) as connection:
        connection.send(post_head(connection, sid, "Content-Length: 200") + b'{"messages": [{"seq": 1, ')
        connection.sock.shutdown(socket.SHUT_WR)
        # gunicorn ends a short body quietly; parsing the fragment would have said "bad JSON".
        document = assert_json_error(connection.response(), 400)
        assert document["error"] == "bad_body", document


@pytest.mark.parametrize("target", ["//poll", "/%70oll"])
def test_another_spelling_of_the_path_is_404(base: str, target: str) -> None:
    with RawConnection(base) as connection:
        connection.send(f"GET {target}?test=1 HTTP/1.1\r\nHost: {connection.host}\r\n\r\n".encode())
        assert connection.response().status == 404

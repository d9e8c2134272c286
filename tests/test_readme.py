"""The README's examples run as written, and its test command is the one CI runs."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.utils import MS, wait_until

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def code_block(first_line: str) -> str:
    for block in re.findall(r"```python\n(.*?)```", README, flags=re.S):
        if block.startswith(first_line + "\n"):
            return str(block)
    raise AssertionError(f"README has no python block starting with {first_line!r}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(params=["# flask_app.py", "# tornado_app.py"])
def example_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    source = code_block(request.param)
    assert "8000" in source
    script = tmp_path / "app.py"
    script.write_text(source.replace("8000", str(port)))
    process = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/poll"

    def ready() -> bool:
        assert process.poll() is None, "the example exited"
        try:
            return requests.get(url, params={"test": "1"}, timeout=1).text == "ok"
        except requests.ConnectionError:
            return False

    try:
        wait_until(ready, timeout=20000 * MS, what="the example to listen")
        yield url
    finally:
        process.terminate()
        process.wait(10)


def test_readme_example_echoes(example_url: str) -> None:
    opened = requests.get(example_url, timeout=5)
    assert opened.status_code == 200
    sid = opened.json()["sid"]
    headers = {"Pollsession-Id": sid}
    first = len(opened.json()["messages"])
    pushed = requests.post(example_url, json={"messages": [{"seq": 1, "type": "text", "data": "hi"}]},
                           headers=headers, timeout=5)
    assert pushed.json() == {"ack": 1}
    answer = requests.get(example_url, params={"ack": str(first)}, headers=headers, timeout=10).json()
    assert answer["messages"] == [{"seq": first + 1, "type": "text", "data": "hi"}]
    assert requests.get(example_url.replace("/poll", "/pollsession.js"), timeout=5).status_code == 200
    assert requests.delete(example_url, headers=headers, timeout=5).status_code == 204


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    command = ci[-1].strip()
    assert command == ".venv/bin/python -m pytest -q"
    assert f"`{command}`" in README

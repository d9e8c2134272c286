"""The shared server vectors (``tests/vectors/server``) against ``HttpHandler``, with no sockets.

Each case builds a handler with the case's options and one of four targets,
sends its requests in order through an in-memory ``HttpContext`` (as an
adapter would) and compares each answer's status, the body keys the case
names and the headers it names. See ``tests/vectors/README.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pollsession import HttpHandler, Session
from tests.fakes import FakeContext

VECTORS = Path(__file__).parent / "vectors" / "server"


async def echo(session: Session) -> None:
    async for message in session:
        await session.send(message)


async def silent(session: Session) -> None:
    await session.wait_closed()


async def greet(session: Session) -> None:
    await session.send("hello")
    await echo(session)


async def close_after_first(session: Session) -> None:
    await session.receive()
    await session.close(4000, "bye")


TARGETS = {"echo": echo, "silent": silent, "greet": greet, "close": close_after_first}


def _cases() -> list[Any]:
    cases = []
    for path in sorted(VECTORS.glob("*.json")):
        for case in json.loads(path.read_text(encoding="utf-8"))["cases"]:
            cases.append(pytest.param(case, id=f"{path.stem}:{case['name']}"))
    return cases


def _fill(text: str, sid: str | None) -> str:
    return text.replace("$sid", sid) if sid is not None and "$sid" in text else text


def _run(case: dict[str, Any]) -> list[str]:
    """Every mismatch of the case, described; empty when it passes."""
    problems: list[str] = []
    sid: str | None = None
    handler = HttpHandler(TARGETS[case["target"]], shutdown_timeout=1, **case.get("options", {}))
    try:
        for number, step in enumerate(case["steps"], 1):
            request, expect = step["request"], step["expect"]
            query = _fill(request.get("query", ""), sid)
            pairs = [tuple(item.split("=", 1)) if "=" in item else (item, "") for item in query.split("&") if item]
            headers = {name: _fill(value, sid) for name, value in request.get("headers", {}).items()}
            body = _fill(request.get("body", ""), sid).encode("utf-8", "surrogatepass")
            response = handler.handle_request(FakeContext(request.get("method", "GET"), query=pairs,
                                                          headers=headers, body=body))
            where = f"step {number} ({request.get('method', 'GET')} {query})"
            if response.status != expect["status"]:
                problems.append(f"{where}: status {response.status}, expected {expect['status']}: {response.body[:200]!r}")
                continue
            document = json.loads(response.body) if response.body else None
            if isinstance(document, dict) and isinstance(document.get("sid"), str):
                sid = document["sid"]
            for key, value in expect.get("body", {}).items():
                if not isinstance(document, dict) or key not in document or document[key] != value:
                    got = document.get(key, "<absent>") if isinstance(document, dict) else document
                    problems.append(f"{where}: body[{key!r}] is {got!r}, expected {value!r}")
            for key in expect.get("present", []):
                if not isinstance(document, dict) or key not in document:
                    problems.append(f"{where}: body has no {key!r}")
            answered = {name.lower(): value for name, value in response.headers}
            for name, value in expect.get("headers", {}).items():
                if answered.get(name.lower()) != value:
                    problems.append(f"{where}: header {name} is {answered.get(name.lower())!r}, expected {value!r}")
    finally:
        handler.close()
    return problems


def test_there_are_server_vectors() -> None:
    assert len(_cases()) >= 20


@pytest.mark.parametrize("case", _cases())
def test_server_vector(case: dict[str, Any]) -> None:
    assert case["target"] in TARGETS, f"unknown target {case['target']!r}"
    problems = _run(case)
    assert not problems, f"{case['name']}: " + "; ".join(problems)

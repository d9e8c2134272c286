"""The shared client vectors (``tests/vectors/client/*.json``) against the Python client's rules.

One pytest case per vector, with the id ``file:name``. Every kind the README
defines runs through the very functions the threaded ``Client`` decides with:
``answer`` through :func:`classify_answer`, ``encode`` through
:func:`encode_message` (what ``Client.send`` calls before queueing),
``inbound`` through :func:`classify_answer` and :class:`Inbound`, ``backoff``
through :class:`Backoff` with ``Client``'s own defaults. A kind this runner
does not know fails; so does a key of ``expect`` it does not know.
"""

from __future__ import annotations

import base64
import inspect
import json
from pathlib import Path
from typing import Any

import pytest

from pollsession.protocol import wire

from pollsession.client import Client
from pollsession.client.answers import Outcome, classify_answer
from pollsession.client.state import Backoff, Inbound, encode_message
from pollsession.protocol.wire import Delivered, MessageType, PollAnswer

VECTORS = Path(__file__).resolve().parent / "vectors" / "client"
DEFAULT_NOW = 1700000000
TOLERANCE = 1e-9


def load_cases() -> list[Any]:
    params: list[Any] = []
    for path in sorted(VECTORS.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        names: set[str] = set()
        for case in document["cases"]:
            name = case["name"]
            assert name not in names, f"{path.name}: the case name {name!r} is used twice"
            names.add(name)
            params.append(pytest.param(case, id=f"{path.name}:{name}"))
    return params


CASES = load_cases()


def test_there_are_vectors() -> None:
    assert CASES, f"no client vectors found in {VECTORS}"


# -- answer ----------------------------------------------------------------------


def describe(outcome: Outcome, expect: dict[str, Any]) -> dict[str, Any]:
    """The outcome in the vectors' terms, restricted to the keys ``expect`` gives."""
    actual: dict[str, Any] = {}
    for key in expect:
        if key == "outcome":
            actual[key] = outcome.kind.value
        elif key == "messages":
            actual[key] = [[m.seq, m.type.value, m.wire_data()] for m in outcome.messages]
        elif key == "closed":
            actual[key] = None if outcome.closed is None else outcome.closed.document()
        elif key == "config":
            config: dict[str, Any] = {"sid": outcome.sid}
            if outcome.limits is not None:
                config.update(outcome.limits.document())
            actual[key] = {name: config.get(name) for name in expect["config"]}
        elif key in ("ack", "after", "code", "reason"):
            actual[key] = getattr(outcome, key)
        else:
            pytest.fail(f"expect has a key this runner does not know: {key!r}")
    return actual


def same(actual: dict[str, Any], expected: dict[str, Any]) -> bool:
    for key, value in expected.items():
        got = actual[key]
        if key == "after" and isinstance(value, (int, float)) and isinstance(got, (int, float)):
            if abs(got - value) > TOLERANCE:
                return False
        elif got != value:
            return False
    return True


def run_answer(case: dict[str, Any]) -> None:
    outcome = classify_answer(
        case["request"], case["status"], case.get("headers") or {}, case.get("body"),
        sent=case.get("sent", 0), now=case.get("now", DEFAULT_NOW),
    )
    expect = case["expect"]
    actual = describe(outcome, expect)
    assert same(actual, expect), (
        f"{case['request']} answered {case['status']} {case.get('headers') or {}} {case.get('body')!r:.300}\n"
        f"expected {expect}\ngot      {actual}\n(the client's reason: {outcome.reason!r})"
    )


# -- encode ----------------------------------------------------------------------


def run_encode(case: dict[str, Any]) -> None:
    value: Any = base64.b64decode(case["bytes"], validate=True) if "bytes" in case else case["value"]
    expect = case["expect"]
    if "error" in expect:
        assert expect == {"error": "invalid"}, f"unknown expectation {expect}"
        # Client.send encodes before it queues: refused here means nothing was queued.
        with pytest.raises(ValueError):
            encode_message(value)
        return
    unknown = set(expect) - {"type", "data", "size"}
    assert not unknown, f"expect has keys this runner does not know: {sorted(unknown)}"
    encoded = encode_message(value)
    wire = json.loads(b"{" + encoded.fragment + b"}")
    actual = {"type": encoded.type, "data": wire["data"], "size": encoded.size}
    actual = {key: actual[key] for key in expect}
    assert actual == expect, f"send({value!r:.200})\nexpected {expect}\ngot      {actual}"


# -- inbound ---------------------------------------------------------------------


def run_inbound(case: dict[str, Any]) -> None:
    inbound = Inbound()
    delivered: list[Any] = []
    for seqs in case["answers"]:
        # The answer goes through the parser too, as a poll answer the server would write.
        body = PollAnswer(tuple(Delivered(seq, MessageType.JSON, seq) for seq in seqs)).encode()
        outcome = classify_answer("poll", 200, {}, body)
        assert outcome.kind.value == "ok", outcome.reason
        delivered += inbound.accept(outcome.messages)
    expect = case["expect"]
    unknown = set(expect) - {"delivered", "ack"}
    assert not unknown, f"expect has keys this runner does not know: {sorted(unknown)}"
    actual = {"delivered": delivered, "ack": inbound.ack}
    actual = {key: actual[key] for key in expect}
    assert actual == expect, f"answers {case['answers']}\nexpected {expect}\ngot      {actual}"


# -- backoff ---------------------------------------------------------------------

_OPTIONS = {"retry_base_delay": "base", "retry_max_delay": "max_delay", "max_retries": "max_retries"}


def client_default(option: str) -> Any:
    return inspect.signature(Client).parameters[option].default


def run_backoff(case: dict[str, Any]) -> None:
    options = case.get("options") or {}
    unknown = set(options) - set(_OPTIONS)
    assert not unknown, f"options this runner does not know: {sorted(unknown)}"
    settings = {_OPTIONS[name]: options.get(name, client_default(name)) for name in _OPTIONS}
    backoff = Backoff(**settings, random=lambda: case["random"])
    expect = case["expect"]
    assert set(expect) == {"delays", "then"}, f"unknown expectation {expect}"
    delays = [backoff.failure() for _ in expect["delays"]]
    assert all(d is not None and abs(d - e) <= TOLERANCE for d, e in zip(delays, expect["delays"])), (
        f"with {settings} and random() = {case['random']}\nexpected delays {expect['delays']}\ngot             {delays}"
    )
    while backoff.failures < settings["max_retries"]:
        assert backoff.failure() is not None, f"gave up after {backoff.failures} failures, before max_retries"
    assert expect["then"] is None, f"unknown expectation then={expect['then']!r}"
    assert backoff.failure() is None, f"did not give up after max_retries={settings['max_retries']} failures"


# -- defaults --------------------------------------------------------------------


def run_defaults(case: dict[str, Any]) -> None:
    actual = {
        "retry_base_delay": client_default("retry_base_delay"),
        "retry_max_delay": client_default("retry_max_delay"),
        "max_retries": client_default("max_retries"),
        "poll_margin": wire.POLL_MARGIN,
        "request_timeout": client_default("request_timeout"),
        "limits": wire.DEFAULT_LIMITS.document(),
    }
    assert actual == case["expect"], f"the Python client's defaults {actual}\ndiffer from {case['expect']}"


RUNNERS = {"answer": run_answer, "encode": run_encode, "inbound": run_inbound, "backoff": run_backoff,
           "defaults": run_defaults}


@pytest.mark.parametrize("case", CASES)
def test_vector(case: dict[str, Any]) -> None:
    kind = case.get("kind")
    runner = RUNNERS.get(kind)  # type: ignore[arg-type]
    if runner is None:
        pytest.fail(f"unknown vector kind {kind!r}: the runner must know every kind (tests/vectors/README.md)")
    runner(case)

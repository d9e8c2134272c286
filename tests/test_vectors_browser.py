"""The shared client vectors (``tests/vectors/client``) against the browser client, in Chromium.

One page (``tests/pages/vectors.html``, served with the client script by a
test server) runs every case through ``PollSession.protocol``, the same
functions the client's request loops decide by, and hands back the results;
each case is then compared here, one test per case. The format is in
``tests/vectors/README.md``; a case of a kind this runner does not know fails.

Chromium is Debian's ``/usr/bin/chromium``. When it (or Playwright) is missing
the tests skip, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from pollsession import HttpHandler, Session
from tests.browser_pages import add_browser_routes
from tests.utils import MS, serve

VECTORS = Path(__file__).parent / "vectors" / "client"
TIMEOUT = 10_000 * MS  # seconds
TOLERANCE = 1e-9  # for delays

# What each outcome of an "answer" case may carry; "reason" is text for a
# person (compared only where the case fixes it), "clean" says the close is
# the server's own (a 410 with its closed object).
OUTCOME_KEYS = {
    "ok": {"outcome", "messages", "closed", "config", "ack"},
    "retry": {"outcome", "after", "reason"},
    "throttled": {"outcome", "ack", "after", "reason"},
    "close": {"outcome", "code", "reason", "clean"},
}


def _files() -> dict[str, str]:
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(VECTORS.glob("*.json"))}


def _cases() -> list[Any]:
    params = []
    for name, text in _files().items():
        for case in json.loads(text)["cases"]:
            params.append(pytest.param(name, case, id=f"{Path(name).stem}:{case['name']}"))
    return params


async def _idle(session: Session) -> None:
    await session.wait_closed()


@pytest.fixture(scope="module")
def results(browser: Any) -> dict[str, dict[str, Any]]:
    """Every case's result, computed once in the page: ``{file: {case name: result}}``."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT * 1000)
        errors: list[Any] = []
        page.on("pageerror", lambda error: errors.append(error))
        with serve("flask", HttpHandler(_idle), extra=add_browser_routes("flask")) as base:
            page.goto(f"{base}/vectors.html")
            page.wait_for_function("() => typeof window.runVectors === 'function' && !!window.PollSession",
                                   timeout=TIMEOUT * 1000)
            text = page.evaluate("(files) => runVectors(files)", _files())
        assert not errors, f"uncaught errors in the vectors page: {errors}"
        return json.loads(text)  # type: ignore[no-any-return]
    finally:
        context.close()


def same(expected: Any, actual: Any) -> bool:
    """JSON equality that tells true from 1 and a list from a string (1 and 1.0 are the same number)."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return expected == actual
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(same(e, a) for e, a in zip(expected, actual))
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(same(expected[k], actual[k]) for k in expected)
    return type(expected) is type(actual) and expected == actual


def close_enough(expected: float | None, actual: Any) -> bool:
    if expected is None or actual is None:
        return expected is None and actual is None
    return isinstance(actual, (int, float)) and not isinstance(actual, bool) and math.isclose(
        actual, expected, rel_tol=0, abs_tol=TOLERANCE)


def _answer_problems(expect: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    problems = []
    outcome = actual.get("outcome")
    if outcome != expect["outcome"]:
        return [f"outcome {outcome!r}, expected {expect['outcome']!r}"]
    extra = set(actual) - OUTCOME_KEYS[outcome]
    if extra:
        problems.append(f"unexpected keys {sorted(extra)}")
    for key, want in expect.items():
        if key == "outcome":
            continue
        if key not in actual:
            problems.append(f"{key} missing")
        elif key == "after":
            if not close_enough(want, actual[key]):
                problems.append(f"after {actual[key]!r}, expected {want!r}")
        elif key == "config":
            got = actual["config"] or {}
            for name, value in want.items():
                if name not in got or not same(value, got[name]):
                    problems.append(f"config.{name} {got.get(name, '<missing>')!r}, expected {value!r}")
        elif not same(want, actual[key]):
            problems.append(f"{key} {actual[key]!r}, expected {want!r}")
    return problems


def _problems(case: dict[str, Any], actual: Any) -> list[str]:
    """Every way ``actual`` differs from the case's expectation; empty when it passes."""
    kind, expect = case["kind"], case["expect"]
    if not isinstance(actual, dict):
        return [f"no result object: {actual!r}"]
    if "threw" in actual:
        return [f"the page threw {actual['threw']}"]
    if "unknownKind" in actual:
        return [f"unknown case kind {kind!r}: the runner knows answer, encode, inbound, backoff, defaults"]
    if kind == "answer":
        return _answer_problems(expect, actual)
    if kind == "encode":
        if "error" in expect or "error" in actual:
            return [] if same(expect, actual) else [f"got {actual!r}, expected {expect!r}"]
        return [f"{key} {actual.get(key)!r}, expected {expect[key]!r}"
                for key in ("type", "data", "size") if key not in actual or not same(expect[key], actual[key])]
    if kind in ("inbound", "defaults"):
        return [] if same(expect, actual) else [f"got {actual!r}, expected {expect!r}"]
    if kind == "backoff":
        delays, want = actual.get("delays", []), expect["delays"]
        if len(delays) != len(want) or not all(close_enough(w, d) for w, d in zip(want, delays)):
            return [f"delays {delays!r}, expected {want!r}"]
        return [] if actual.get("then", "<missing>") is None else [f"then {actual.get('then')!r}, expected None"]
    return [f"unknown case kind {kind!r}"]


def test_every_case_name_is_unique() -> None:
    seen: dict[str, str] = {}
    for name, text in _files().items():
        for case in json.loads(text)["cases"]:
            key = f"{name}:{case['name']}"
            assert key not in seen, f"duplicate case {key}"
            seen[key] = name
    assert seen, f"no client vectors in {VECTORS}"


@pytest.mark.parametrize(("file", "case"), _cases())
def test_vector(results: dict[str, dict[str, Any]], file: str, case: dict[str, Any]) -> None:
    actual = results.get(file, {}).get(case["name"], "<no result>")
    problems = _problems(case, actual)
    shown = {"case": case, "result": actual}
    assert not problems, f"{file} case {case['name']!r}:\n  " + "\n  ".join(
        [*problems, *(f"{what}: {json.dumps(value, ensure_ascii=False)[:600]}" for what, value in shown.items())])

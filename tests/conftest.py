"""Fixtures shared by several test files: headless Chromium."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

# Debian's package; elsewhere, whatever "chromium" is on PATH.
CHROMIUM = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which("chromium")
# What Chromium needs on these machines: root (no sandbox), no GPU, and no
# background traffic to a network it cannot reach.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _browser_problem() -> str | None:
    if CHROMIUM is None:
        return "Chromium is not installed at /usr/bin/chromium nor on PATH (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium; under CI a missing browser fails the tests instead of skipping them.

    Module-scoped: Playwright's sync API keeps an event loop running in the
    main thread while it is open, which would break tests that call asyncio.run.
    """
    problem = _browser_problem()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests cannot run under CI: {problem}", pytrace=False)
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright gives the browser a fresh temporary --user-data-dir.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[Any]:
    """A real redis-server on a free port, persistence off; under CI a missing one fails the tests."""
    from tests.redis_server import redis_problem, start_redis

    problem = redis_problem()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"Redis tests cannot run under CI: {problem}", pytrace=False)
        pytest.skip(problem)
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()

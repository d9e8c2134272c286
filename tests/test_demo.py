"""``python -m pollsession demo``, end to end: its CLI, its pages in headless Chromium, its rules over HTTP.

Each adapter's demo runs once per module as a subprocess with a short
nickname deadline and a fast clock. Browser tests type into the page like a
person would and wait on what the page shows; protocol-level rules (the
clock, the nickname deadline) are checked with hand-driven sessions
(``WireSession``).

Chromium is Debian's ``/usr/bin/chromium``. When it (or Playwright) is missing
the browser tests skip, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.test_examples import TIMEOUT, Server, WireSession, free_port, running
from tests.utils import MS

ADAPTERS = ("flask", "tornado")  # the demo's --adapter choices

NICK_TIMEOUT = 1000 * MS
CLOCK_INTERVAL = 200 * MS


def demo_args(adapter: str, port: int, *, clock_interval: float = CLOCK_INTERVAL,
              nick_timeout: float = NICK_TIMEOUT) -> list[str]:
    return ["-m", "pollsession", "demo", "--adapter", adapter, "--port", str(port),
            "--nick-timeout", f"{nick_timeout:.3f}", "--clock-interval", f"{clock_interval:.3f}"]


@pytest.fixture(scope="module", params=ADAPTERS)
def demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    logs = tmp_path_factory.mktemp(f"demo-{request.param}")
    with running(demo_args(request.param, port), logs, port=port) as server:
        yield server


@pytest.fixture(scope="module", params=ADAPTERS)
def page_demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The demo for the browser tests: a page opens its session as it loads, and a person (or
    a loaded test machine) may take longer than ``NICK_TIMEOUT`` to type a nickname."""
    port = free_port()
    logs = tmp_path_factory.mktemp(f"page-demo-{request.param}")
    with running(demo_args(request.param, port, nick_timeout=60.0), logs, port=port) as server:
        yield server


class ChatPage:
    """One person in one browser context, on one room's page."""

    def __init__(self, browser: Any, url: str) -> None:
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT * 1000)
        self.errors: list[Any] = []
        self.page.on("pageerror", lambda error: self.errors.append(error))
        self.page.goto(url)

    def join(self, nick: str) -> None:
        self.page.fill("#nick", nick)
        self.page.click("#join")
        self.page.wait_for_selector("#send-form:not([hidden])")
        assert self.page.inner_text("#me") == nick

    def say(self, text: str) -> None:
        self.page.fill("#text", text)
        self.page.press("#text", "Enter")

    def wait_for_line(self, kind: str, text: str) -> str:
        """Wait until a message (``kind`` "message" or "notice") containing ``text`` shows; its text."""
        return str(self.page.locator(f"#messages li.{kind}", has_text=text).first.inner_text())

    def lines(self) -> list[str]:
        return [str(line) for line in self.page.locator("#messages li").all_inner_texts()]

    def close(self) -> None:
        self.context.close()
        assert not self.errors, f"uncaught errors in the page: {self.errors}"


# -- the command line ------------------------------------------------------------


def test_without_a_command_it_prints_help_and_exits_2() -> None:
    result = subprocess.run([sys.executable, "-m", "pollsession"], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    assert "usage: python -m pollsession" in result.stderr and "demo" in result.stderr


def test_demo_help_lists_its_options() -> None:
    result = subprocess.run([sys.executable, "-m", "pollsession", "demo", "--help"], capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 0
    for option in ("--adapter", "--host", "--port", "--nick-timeout", "--clock-interval"):
        assert option in result.stdout


def test_version_prints_the_version() -> None:
    from pollsession import __version__

    result = subprocess.run([sys.executable, "-m", "pollsession", "--version"], capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0 and result.stdout.strip() == f"pollsession {__version__}"


@pytest.mark.parametrize(("adapter", "other"), [("tornado", "flask"), ("flask", "tornado")])
def test_a_missing_framework_names_the_extra_and_the_other_adapter(adapter: str, other: str) -> None:
    # As if the framework were not installed: None in sys.modules fails its import.
    code = (f"import sys; sys.modules[{adapter!r}] = None\n"
            f"from pollsession.__main__ import main\nsys.exit(main(['demo', '--adapter', {adapter!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 1, result.stderr
    assert f"pip install 'pollsession[{adapter}]'" in result.stderr
    assert f"--adapter {other}" in result.stderr
    assert "Traceback" not in result.stderr


def test_listening_on_every_interface_prints_a_url_that_opens(tmp_path: Any) -> None:
    port = free_port()
    with running([*demo_args("tornado", port), "--host", "0.0.0.0"], tmp_path, port=port) as server:
        lines = server.output().splitlines()
        assert lines[0] == f"pollsession demo (tornado): open http://127.0.0.1:{port}/ in two browser tabs " \
                           "(Ctrl-C to stop)"
        assert "0.0.0.0" not in lines[0] and f"http://<this machine's address>:{port}/" in lines[1]
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=TIMEOUT).status_code == 200


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_ctrl_c_stops_the_demo_cleanly(adapter: str, tmp_path: Any) -> None:
    port = free_port()
    with running(demo_args(adapter, port), tmp_path, port=port) as server:
        session = WireSession(f"{server.url}/poll", {"room": "lobby"})
        session.send("ann")  # a member, so that closing has a session to close
        session.receive_until(lambda received: any(m.get("type") == "join" for m in received), "ann's join")
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(TIMEOUT) == 0, server.errors()
    assert server.output().splitlines() == [
        f"pollsession demo ({adapter}): open {server.url}/ in two browser tabs (Ctrl-C to stop)",
        "pollsession demo: stopped",
    ]
    assert "Traceback" not in server.errors()


# -- the demo over HTTP ------------------------------------------------------------


def test_it_prints_the_url_and_serves_its_pages(demo: Server) -> None:
    assert f"open {demo.url}/ in two browser tabs" in demo.output()
    redirect = requests.get(f"{demo.url}/", allow_redirects=False, timeout=TIMEOUT)
    assert redirect.status_code == 302 and redirect.headers["Location"].endswith("/room/lobby")
    page = requests.get(f"{demo.url}/", timeout=TIMEOUT)
    assert page.url == f"{demo.url}/room/lobby"
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert '<script src="/pollsession.js">' in page.text
    script = requests.get(f"{demo.url}/pollsession.js", timeout=TIMEOUT)
    assert script.status_code == 200 and "class PollSession" in script.text
    assert requests.get(f"{demo.url}/room/no%20spaces", timeout=TIMEOUT).status_code == 404


def test_the_clock_reaches_a_member_that_outlives_the_nickname_deadline(demo: Server) -> None:
    session = WireSession(f"{demo.url}/poll", {"room": "clocks"})
    deadline = time.monotonic() + NICK_TIMEOUT
    session.send("tick")
    # A clock message that arrives after the deadline shows both: the clock
    # ticks, and a member who gave a nickname in time is not closed.
    session.receive_until(
        lambda received: any(isinstance(m, dict) and m.get("type") == "clock" and at > deadline
                             for m, at in zip(received, session.arrivals)),
        "a clock message after the nickname deadline",
        timeout=NICK_TIMEOUT + TIMEOUT,
    )
    # The clock may beat the hello to a new session, never the join to a member.
    (hello,) = [m for m in session.received if m["type"] == "hello"]
    assert hello["room"] == "clocks" and re.fullmatch(r"\d\d:\d\d:\d\d", hello["time"])
    assert [m for m in session.received if m["type"] != "clock"] == [
        hello, {"type": "welcome", "nick": "tick", "members": ["tick"]},
        {"type": "join", "nick": "tick", "members": ["tick"]}]
    assert session.closed is None
    assert session.delete() == 204


def test_a_session_that_sends_no_nickname_is_closed_with_1008(demo: Server) -> None:
    opened = time.monotonic()
    session = WireSession(f"{demo.url}/poll", {"room": "lobby"})
    assert session.wait_closed(NICK_TIMEOUT + TIMEOUT) == {"code": 1008, "reason": "nickname required"}
    assert time.monotonic() - opened >= NICK_TIMEOUT * 0.99
    (hello,) = [m for m in session.received if m["type"] == "hello"]
    assert hello["nick_timeout"] == pytest.approx(NICK_TIMEOUT, abs=0.001)
    assert all(m["type"] in ("hello", "clock") for m in session.received)


def test_members_hear_each_other_and_leaves(demo: Server) -> None:
    ann = WireSession(f"{demo.url}/poll", {"room": "porch"})
    bob = WireSession(f"{demo.url}/poll", {"room": "porch"})
    ann.send("ann")
    ann.receive_until(lambda received: {"type": "join", "nick": "ann", "members": ["ann"]} in received, "ann's join")
    bob.send("bob", "  hello   ")
    said = {"type": "message", "nick": "bob", "text": "hello"}
    ann.receive_until(lambda received: said in received, "bob's message")
    assert {"type": "join", "nick": "bob", "members": ["ann", "bob"]} in ann.received
    assert bob.delete() == 204
    ann.receive_until(lambda received: {"type": "leave", "nick": "bob", "members": ["ann"]} in received,
                      "bob's leave")
    assert ann.delete() == 204


def test_a_nickname_taken_in_the_room_is_refused_and_another_accepted(demo: Server) -> None:
    ann = WireSession(f"{demo.url}/poll", {"room": "names"})
    ann.send("Ann")
    ann.receive_until(lambda received: any(m.get("type") == "welcome" for m in received), "ann's welcome")
    twin = WireSession(f"{demo.url}/poll", {"room": "names"})
    twin.send("  ann ")  # the same nickname, ignoring case and surrounding whitespace
    twin.receive_until(lambda received: any(m.get("type") == "nick_taken" for m in received), "the refusal")
    assert not any(m.get("type") in ("welcome", "join") for m in twin.received)
    twin.send("ann2")
    twin.receive_until(lambda received: {"type": "welcome", "nick": "ann2", "members": ["Ann", "ann2"]} in received,
                       "the second nickname's welcome")
    assert twin.closed is None
    elsewhere = WireSession(f"{demo.url}/poll", {"room": "other-names"})
    elsewhere.send("Ann")  # another room: free
    elsewhere.receive_until(lambda received: any(m.get("type") == "welcome" for m in received), "welcome elsewhere")
    for session in (ann, twin, elsewhere):
        assert session.delete() == 204


def test_a_bad_room_name_is_refused_with_1008(demo: Server) -> None:
    session = WireSession(f"{demo.url}/poll", {"room": "no spaces"})
    assert session.wait_closed() == {"code": 1008, "reason": "bad room name"}


# -- the demo in a browser -----------------------------------------------------------


def test_two_pages_in_a_room_chat_and_another_room_hears_nothing(page_demo: Server, browser: Any) -> None:
    demo = page_demo
    ann = ChatPage(browser, f"{demo.url}/room/tea")
    bob = ChatPage(browser, f"{demo.url}/room/tea")
    cat = ChatPage(browser, f"{demo.url}/room/coffee")
    try:
        assert ann.page.inner_text("#room") == "#tea" and cat.page.inner_text("#room") == "#coffee"
        for person, nick in ((ann, "ann"), (bob, "bob"), (cat, "cat")):
            person.join(nick)
        ann.wait_for_line("notice", "bob joined")
        bob.page.wait_for_selector("#members:has-text('ann, bob')")
        ann.page.wait_for_function(
            "() => /^\\d\\d:\\d\\d:\\d\\d$/.test(document.querySelector('#clock').textContent)", polling=20)

        ann.say("hello from ann")
        assert "ann" in bob.wait_for_line("message", "hello from ann")
        ann.wait_for_line("message", "hello from ann")
        bob.say("hi ann")
        ann.wait_for_line("message", "hi ann")

        # What the tea room heard went out before cat speaks; once cat sees its
        # own line, anything from the tea room would already be on its page.
        cat.say("quiet here")
        cat.wait_for_line("message", "quiet here")
        lines = cat.lines()
        assert not any("ann" in line or "bob" in line for line in lines), lines
    finally:
        for person in (ann, bob, cat):
            person.close()


def test_the_page_shows_the_clock_before_joining_and_who_you_are_after(page_demo: Server, browser: Any) -> None:
    demo = page_demo
    ann = ChatPage(browser, f"{demo.url}/room/looks")
    twin = ChatPage(browser, f"{demo.url}/room/looks")
    try:
        # The session opens with the page: the clock shows before anyone joins.
        ann.page.wait_for_function(
            "() => /^\\d\\d:\\d\\d:\\d\\d$/.test(document.querySelector('#clock').textContent)", polling=20)
        assert ann.page.is_visible("#hint")
        ann.join("ann")
        assert ann.page.locator("#hint").count() == 0  # the hint goes once you have joined
        ann.page.wait_for_selector("#members:has-text('ann (you)')")
        ann.wait_for_line("notice", "you joined")
        # The same nickname again: refused with a message, the form stays, another one works.
        twin.page.fill("#nick", "ann")
        twin.page.click("#join")
        twin.page.wait_for_selector("#nick-error:not([hidden])")
        assert "already taken" in twin.page.inner_text("#nick-error")
        assert twin.page.is_visible("#nick-form") and twin.page.is_hidden("#send-form")
        twin.join("bob")
        ann.wait_for_line("notice", "bob joined")
        ann.say("mine")
        line = ann.page.locator("#messages li.message.mine", has_text="mine").first
        assert line.locator(".nick").inner_text() == "ann"
    finally:
        for person in (ann, twin):
            person.close()

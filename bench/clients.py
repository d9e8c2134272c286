"""Asyncio clients of every benchmarked system, over one measurement core.

:class:`BenchClient` is the core: it owns timing and recording, and every
benchmark (echo, fan-out, throughput, held polls) is written against it
alone. A subclass only speaks its protocol, in three coroutines:

* ``open()``: start a session (and take what its answer carries);
* ``pull()``: one poll request; return the texts it delivered;
* ``push(text)``: send one text; return the texts its answer carried (only
  PyWebIO answers a POST with messages).

Every delivered text goes through :meth:`BenchClient.deliver`, which stamps
it with ``time.perf_counter_ns()`` once the answer is decoded, so the point
where a message counts as received is the same for every system, and so is
the client's own overhead (one aiohttp session, stdlib ``json``).

Protocols spoken (read from each package's source):

* pollsession: the protocol in ``docs/protocol.md``; long polls with the
  default hold, ``ack`` of the last contiguous seq, one text per ``POST``.
* python-engineio: Engine.IO v4 polling, ``GET ?EIO=4&transport=polling``
  opens (answer ``0{...sid...}``), then ``&sid=`` on every request; a payload
  is packets joined by ``\\x1e``; ``4`` message, ``2`` ping (answered by a
  ``POST 3``, as the JS client does), ``6`` noop, ``1`` close.
* PyWebIO's HTTP backend: it short-polls. Its browser client (``pywebio.min.js``,
  ``HttpSession``) sends ``GET ?app=index&ack=N`` at once and then every
  ``pull_interval_ms`` (1000 ms) on a ``setInterval`` -- whether or not the
  previous pull has answered -- with the header ``webio-session-id``
  (``NEW-<id>`` until the first answer); events go as ``POST ?ack=N&seq=S``
  with a JSON list of events, and the server holds that POST 100 ms
  (``WAIT_MS_ON_POST``) before answering it with the pending commands. The
  client here does exactly that. Answers carry ``{"commands": [[...], ...],
  "seq": first_batch_id, "ack": last_event_id}``; a message is an ``output``
  command of a text, sent by the session through ``put_text``, and a text is
  sent by posting a ``callback`` event to the callback the session announced
  in its first output (``cb:<id>``).
* raw: ``GET /raw`` opens (``{"sid"}``); ``GET /raw?sid=`` answers the JSON list
  of pending texts or holds; ``POST /raw?sid=`` carries one text.
"""

from __future__ import annotations

import abc
import asyncio
import json
import time
from collections.abc import Callable
from typing import Any, ClassVar

import aiohttp

__all__ = ["BenchClient", "PollsessionClient", "PollsessionRunningLoopClient", "EngineioClient", "PywebioClient", "RawClient", "CLIENTS",
           "ProtocolFailure"]

Watch = Callable[[str, int], bool]


class ProtocolFailure(RuntimeError):
    """The server answered something the protocol does not allow (or closed the session)."""


class BenchClient(abc.ABC):
    """One session of one system, with the shared timing and recording.

    ``watch``, when set, sees every delivered text first with its receive
    time (ns) and returns True when it consumed it; other texts queue up for
    :meth:`echo`. ``long_polling`` says whether a pull is held by the server
    (False for PyWebIO, which short-polls).
    """

    system: ClassVar[str]
    long_polling: ClassVar[bool] = True

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base
        self.watch: Watch | None = None
        self.received = 0
        self.errors = 0
        self.in_flight = False  # a pull is outstanding (held, for a long poll)
        self._inbox: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self._poller: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- the protocol ------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Start a session; texts its answer carries are delivered."""

    @abc.abstractmethod
    async def pull(self) -> list[str]:
        """One poll request; the texts it delivered, in order, each once."""

    @abc.abstractmethod
    async def push(self, text: str) -> list[str]:
        """Send one text; the texts that came back on the answer, if any."""

    # -- the shared core -------------------------------------------------------------

    def deliver(self, texts: list[str]) -> None:
        if not texts:
            return
        now = time.perf_counter_ns()
        for text in texts:
            self.received += 1
            watch = self.watch
            if watch is None or not watch(text, now):
                self._inbox.put_nowait((text, now))

    def start(self) -> None:
        """Keep polling in the background, as the system's own client does."""
        self._poller = asyncio.create_task(self._poll_forever())

    async def _pull_and_deliver(self) -> None:
        self.in_flight = True
        try:
            self.deliver(await self.pull())
        finally:
            self.in_flight = False

    async def _pull_guarded(self) -> bool:
        """One pull; a failure is counted, not raised. False when it failed."""
        try:
            await self._pull_and_deliver()
        except asyncio.CancelledError:
            raise
        except Exception:
            self.errors += 1
            return False
        return True

    async def _poll_forever(self) -> None:
        while True:
            if not await self._pull_guarded():
                await asyncio.sleep(0.05)

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send(self, text: str) -> None:
        self.deliver(await self.push(text))

    async def echo(self, text: str) -> int:
        """Send ``text`` and return the ns until its echo was delivered."""
        started = time.perf_counter_ns()
        await self.send(text)
        while True:
            got, at = await self._inbox.get()
            if got == text:
                return at - started

    async def stop(self) -> None:
        """Stop polling (the connection's close tells the server)."""
        tasks = [*self._tasks, *([self._poller] if self._poller else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._poller = None


async def _read(response: aiohttp.ClientResponse, *expected: int) -> bytes:
    body = await response.read()
    if response.status not in expected:
        raise ProtocolFailure(f"{response.method} {response.url.path}: HTTP {response.status} {body[:200]!r}")
    return body


class PollsessionClient(BenchClient):
    system = "pollsession"

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        super().__init__(http, base)
        self.url = base + "/poll"
        self.sid = ""
        self.last = 0  # highest server seq received
        self.sent = 0  # highest client seq sent
        self.headers: dict[str, str] = {}

    def _take(self, answer: dict[str, Any]) -> list[str]:
        texts = []
        for message in answer["messages"]:
            if message["seq"] > self.last:
                self.last = message["seq"]
                texts.append(message["data"])
        if answer["closed"] is not None:
            raise ProtocolFailure(f"session closed: {answer['closed']}")
        return texts

    async def open(self) -> None:
        async with self.http.get(self.url) as response:
            answer = json.loads(await _read(response, 200))
        self.sid = answer["sid"]
        self.headers = {"Pollsession-Id": self.sid}
        self.deliver(self._take(answer))

    async def pull(self) -> list[str]:
        async with self.http.get(f"{self.url}?ack={self.last}", headers=self.headers) as response:
            return self._take(json.loads(await _read(response, 200)))

    async def push(self, text: str) -> list[str]:
        self.sent += 1
        body = json.dumps({"messages": [{"seq": self.sent, "type": "text", "data": text}]})
        headers = {**self.headers, "Content-Type": "application/json"}
        async with self.http.post(self.url, data=body, headers=headers) as response:
            await _read(response, 200)
        return []


class PollsessionRunningLoopClient(PollsessionClient):
    """The same protocol, against the server built with ``use_running_loop=True``."""

    system = "pollsession-rl"


class EngineioClient(BenchClient):
    system = "engineio"

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        super().__init__(http, base)
        self.url = base + "/engine.io/?EIO=4&transport=polling"

    def _take(self, payload: str) -> list[str]:
        texts = []
        for packet in payload.split("\x1e"):
            kind, data = packet[:1], packet[1:]
            if kind == "4":
                texts.append(data)
            elif kind == "2":
                self.spawn(self._post("3"))  # pong
            elif kind == "1":
                raise ProtocolFailure("session closed by the server")
            elif kind not in ("6", "0"):
                raise ProtocolFailure(f"unexpected packet {packet[:40]!r}")
        return texts

    async def open(self) -> None:
        async with self.http.get(self.url) as response:
            payload = (await _read(response, 200)).decode()
        if not payload.startswith("0"):
            raise ProtocolFailure(f"unexpected open answer {payload[:80]!r}")
        self.url += "&sid=" + json.loads(payload[1:])["sid"]

    async def pull(self) -> list[str]:
        async with self.http.get(self.url) as response:
            return self._take((await _read(response, 200)).decode())

    async def _post(self, payload: str) -> None:
        headers = {"Content-Type": "text/plain;charset=UTF-8"}
        async with self.http.post(self.url, data=payload.encode(), headers=headers) as response:
            await _read(response, 200)

    async def push(self, text: str) -> list[str]:
        await self._post("4" + text)
        return []


class PywebioClient(BenchClient):
    system = "pywebio"
    long_polling = False
    pull_interval = 1.0  # pywebio.min.js HttpSession default pull_interval_ms = 1000

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        super().__init__(http, base)
        self.url = base + "/pywebio?app=index"
        self.session_id = "NEW-" + _random_id()
        self.executed = -1  # _executed_command_msg_id
        self.event_seq = 0  # ReliableSender.seq
        self.callback_id = ""
        self._ready: asyncio.Future[None] | None = None

    def _take(self, body: bytes) -> list[str]:
        answer = json.loads(body)
        if self.session_id.startswith("NEW-"):
            self.session_id = self.session_id[4:]
        if answer["ack"] >= self.event_seq:
            self.event_seq = answer["ack"] + 1
        commands, first = answer["commands"], answer["seq"]
        skip = self.executed - first + 1
        if len(commands) <= skip:
            return []
        self.executed = first + len(commands) - 1
        texts = []
        for batch in commands[skip:]:
            for command in batch:
                if command.get("command") == "close_session":
                    raise ProtocolFailure("session closed by the server")
                if command.get("command") != "output" or command["spec"].get("type") != "text":
                    continue
                content = command["spec"]["content"]
                if not self.callback_id and content.startswith("cb:"):
                    self.callback_id = content[3:]
                    if self._ready is not None and not self._ready.done():
                        self._ready.set_result(None)
                    continue
                texts.append(content)
        return texts

    async def open(self) -> None:
        self._ready = asyncio.get_running_loop().create_future()
        self.start()  # the JS client pulls at once, then every pull_interval
        await asyncio.wait_for(self._ready, 30)

    def start(self) -> None:
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        loop = asyncio.get_running_loop()
        tick = loop.time()
        while True:
            self.spawn(self._pull_guarded())
            tick += self.pull_interval
            await asyncio.sleep(max(0.0, tick - loop.time()))

    async def pull(self) -> list[str]:
        headers = {"webio-session-id": self.session_id, "Content-Type": "application/json; charset=utf-8"}
        async with self.http.get(f"{self.url}&ack={self.executed}", headers=headers) as response:
            return self._take(await _read(response, 200))

    async def push(self, text: str) -> list[str]:
        event = [{"event": "callback", "task_id": self.callback_id, "data": text}]
        headers = {"webio-session-id": self.session_id, "Content-Type": "application/json; charset=utf-8"}
        url = f"{self.url}&ack={self.executed}&seq={self.event_seq}"
        async with self.http.post(url, data=json.dumps(event), headers=headers) as response:
            return self._take(await _read(response, 200))


class RawClient(BenchClient):
    system = "raw"

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        super().__init__(http, base)
        self.url = base + "/raw"

    async def open(self) -> None:
        async with self.http.get(self.url) as response:
            self.url += "?sid=" + json.loads(await _read(response, 200))["sid"]

    async def pull(self) -> list[str]:
        async with self.http.get(self.url) as response:
            texts: list[str] = json.loads(await _read(response, 200))
            return texts

    async def push(self, text: str) -> list[str]:
        async with self.http.post(self.url, data=text.encode(), headers={"Content-Type": "text/plain"}) as response:
            await _read(response, 200)
        return []


def _random_id() -> str:
    import secrets

    return secrets.token_urlsafe(18)


CLIENTS: dict[str, type[BenchClient]] = {
    cls.system: cls for cls in (PollsessionClient, PollsessionRunningLoopClient, EngineioClient, PywebioClient,
                                RawClient)
}

#!/usr/bin/env python3
"""Memory of full and idle sessions against docs/security.md's formula: ``python bench/memory.py``.

Each configuration runs in a fresh interpreter (so that its RSS holds nothing
else), drives an ``HttpHandler`` through plain calls (no HTTP, no sockets),
and reads ``VmRSS`` from ``/proc/self/status`` after ``gc.collect()``: once
after the imports and one warm-up session, and again after N sessions.

* **full**: every session's coroutine never reads and sends until ``send``
  waits; the client pushes batches until the inbox answers 429. Messages are
  the densest there are: JSON ``[{"":{}},...]`` (about 30 times its wire size
  as Python objects, were it kept decoded) or, for the outbox, text of control
  characters (each escaped as ``\\u00XX``: the largest fragment, ``F`` in the
  formula). The figure is the RSS growth per session, against the formula, as
  a ratio; "trimmed" is the same after ``malloc_trim(0)`` (glibc gives back
  the free heap that the pushes' transient decoded JSON left behind).
* **idle**: sessions opened and never used (the coroutine awaits
  ``wait_closed``); bytes per session.

Options: ``--only NAME`` runs one configuration; ``--scale X`` multiplies every N.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KIB = 1024
MIB = 1024 * 1024

PUBLIC = {"max_message_size": 64 * KIB, "max_body_size": 256 * KIB, "inbox_limit": 16, "outbox_limit": 256}
DEFAULTS: dict[str, int] = {}

# name: (HttpHandler options, N sessions, what fills the outbox; None for idle sessions)
CONFIGS: dict[str, tuple[dict[str, int], int, str | None]] = {
    "defaults, dense JSON": (DEFAULTS, 5, "json"),
    "defaults, escaped text": (DEFAULTS, 5, "text"),
    "public endpoint, dense JSON": (PUBLIC, 200, "json"),
    "public endpoint, escaped text": (PUBLIC, 200, "text"),
    "defaults, idle": (DEFAULTS, 2000, None),
    "public endpoint, idle": (PUBLIC, 2000, None),
}


def formula(options: dict[str, int]) -> int:
    """docs/security.md, "Worst case per session", in bytes."""
    message = options.get("max_message_size", 1 << 20)
    body = options.get("max_body_size", 4 << 20)
    fragment = 6 * message + 64
    outbox = max(options.get("max_outbox_bytes", body), fragment) + 150 * options.get("outbox_limit", 1024)
    inbox = max(options.get("max_inbox_bytes", body), message) + 120 * options.get("inbox_limit", 64)
    waiting = fragment  # one send waiting for room (an echo target)
    return 30 * KIB + outbox + waiting + inbox


def child(options: dict[str, Any], sessions: int, fill: str | None) -> dict[str, Any]:
    """The measurement, in this (fresh) interpreter."""
    import asyncio
    import ctypes
    import gc

    sys.path.insert(0, str(ROOT))
    from pollsession import HttpContext, HttpHandler, SessionClosed

    class Context(HttpContext):
        def __init__(self, method: str, headers: dict[str, str], body: bytes = b"") -> None:
            self._method, self._headers, self._body = method, {"Host": "bench", **headers}, body

        def method(self) -> str:
            return self._method

        def path(self) -> str:
            return "/poll"

        def scheme(self) -> str:
            return "http"

        def header(self, name: str) -> str | None:
            return next((v for k, v in self._headers.items() if k.lower() == name.lower()), None)

        def headers(self) -> Iterable[tuple[str, str]]:
            return list(self._headers.items())

        def query_items(self) -> Iterable[tuple[str, str]]:
            return []

        def body(self, limit: int) -> bytes:
            return self._body[: limit + 1]

        def client_address(self) -> str | None:
            return "127.0.0.1"

    message_size = options.get("max_message_size", 1 << 20)
    box_bytes = options.get("max_body_size", 4 << 20)

    def dense(size: int) -> list[Any]:
        return [{"": {}}] * ((size - 1) // 8)  # 8 bytes per element, compact

    if fill == "text":
        outgoing: Any = "\x01" * message_size  # a 6x fragment: one fills the outbox's bytes
    else:
        outgoing = dense(min(message_size, box_bytes // 4 - 21))  # "type":"json","data": is 21 bytes
    per_push = 4
    incoming = json.dumps(dense(min(message_size, box_bytes // per_push - 200)), separators=(",", ":"))
    full: set[str] = set()

    async def target(session: Any) -> None:
        try:
            if fill is None:
                await session.wait_closed()
                return
            while True:
                sending = asyncio.ensure_future(session.send(outgoing))
                await asyncio.sleep(0)  # a send with room completes in its first step
                if not sending.done():
                    full.add(session.id)
                await sending
        except SessionClosed:
            return

    handler = HttpHandler(target, max_sessions=sessions + 10, session_timeout=3600.0, **options)

    def open_one() -> str:
        response = handler.handle_request(Context("GET", {}))
        assert response.status == 200, response.status
        return str(json.loads(response.body)["sid"])

    def fill_inbox(sid: str) -> None:
        seq = 1
        for _ in range(1000):
            items = ",".join('{"seq":%d,"type":"json","data":%s}' % (seq + i, incoming) for i in range(per_push))
            body = ('{"messages":[%s]}' % items).encode()
            response = handler.handle_request(
                Context("POST", {"Pollsession-Id": sid, "Content-Type": "application/json"}, body))
            if response.status == 429:
                return
            assert response.status == 200, (response.status, response.body[:200])
            seq = json.loads(response.body)["ack"] + 1
        raise RuntimeError("the inbox never answered 429")

    def count_full() -> int:
        async def count() -> int:
            return len(full)
        return handler.submit(count()).result()

    def wait_full(n: int) -> None:
        import time

        deadline = time.monotonic() + 120
        while count_full() < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {count_full()} of {n} outboxes filled")
            time.sleep(0.005)

    def rss() -> int:
        gc.collect()
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * KIB
        raise RuntimeError("no VmRSS")

    libc = ctypes.CDLL(None)

    def trimmed_rss() -> int:
        gc.collect()
        libc.malloc_trim(0)
        return rss()

    def session_bytes(sids: list[str]) -> tuple[int, int]:
        async def held() -> tuple[int, int]:
            found = [session for sid in sids if (session := handler.get_session(sid)) is not None]
            return sum(s._outbox.nbytes for s in found), sum(s._inbox.nbytes for s in found)
        return handler.submit(held()).result()

    warm = open_one()
    if fill is not None:
        fill_inbox(warm)
        wait_full(1)
    before, before_trimmed = rss(), trimmed_rss()
    sids = [open_one() for _ in range(sessions)]
    if fill is not None:
        for sid in sids:
            fill_inbox(sid)
        wait_full(sessions + 1)
    after = rss()
    after_trimmed = trimmed_rss()
    outbox, inbox = session_bytes(sids)
    handler.close()
    return {"growth": after - before, "growth_trimmed": after_trimmed - before_trimmed,
            "outbox": outbox, "inbox": inbox}


def run(name: str, scale: float) -> dict[str, Any]:
    options, sessions, fill = CONFIGS[name]
    sessions = max(1, round(sessions * scale))
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps([options, sessions, fill])],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: the measuring process failed:\n{done.stderr[-3000:]}")
    return {"name": name, "sessions": sessions, "fill": fill, "options": options,
            **json.loads(done.stdout.strip().splitlines()[-1])}


def describe(result: dict[str, Any]) -> str:
    n = result["sessions"]
    per = result["growth"] / n
    if result["fill"] is None:
        return f"| {result['name']} | {n} | {per / KIB:.1f} KiB per idle session | | | |"
    bound = formula(result["options"])
    queued = (result["outbox"] + result["inbox"]) / n
    return (f"| {result['name']} | {n} | {per / KIB:,.0f} KiB | {bound / KIB:,.0f} KiB | "
            f"**{per / bound:.2f}** ({result['growth_trimmed'] / n / bound:.2f} trimmed) | {queued / KIB:,.0f} KiB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", choices=list(CONFIGS), help="run one configuration")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every N (default 1)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        options, sessions, fill = json.loads(args.child)
        print(json.dumps(child(options, sessions, fill)))
        return
    print("| configuration | N | RSS per session | formula | ratio | queued per session |")
    print("|---|---|---|---|---|---|")
    for name in [args.only] if args.only else CONFIGS:
        print(describe(run(name, args.scale)), flush=True)


if __name__ == "__main__":
    main()

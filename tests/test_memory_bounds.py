"""What full sessions cost in memory stays within docs/security.md's formula.

The measurement runs in a fresh interpreter (``subprocess``), so that its RSS
holds nothing of the test run. There, a handler with small limits is driven
through ``tests.fakes`` (no HTTP): every session's coroutine never reads and
sends the densest JSON there is (``[{"":{}}, ...]``, about 30 times its wire
size as Python objects) until ``send`` waits, and the test pushes batches of
the same JSON until the inbox answers 429. Both boxes are then as full as
their byte bounds let them be. RSS (``VmRSS`` after ``gc.collect()``) is read
after the imports and one warm-up session, and again after N more sessions;
the growth must be within 3x the formula for N sessions (the formula is an
upper bound; allocator slack and the in-flight copies of a push are the
margin). Were the boxes to hold decoded JSON, the growth would be about 30x
the bytes held, and the test would fail by an order of magnitude.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.utils import MS

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60_000 * MS  # seconds, for the whole measuring process
SESSIONS = 50
KIB = 1024

LIMITS = {"max_message_size": 64 * KIB, "max_body_size": 256 * KIB, "inbox_limit": 16, "outbox_limit": 64}


def formula(*, max_message_size: int, max_body_size: int, inbox_limit: int, outbox_limit: int,
            max_inbox_bytes: int | None = None, max_outbox_bytes: int | None = None) -> int:
    """docs/security.md, "Worst case per session", in bytes."""
    largest_fragment = 6 * max_message_size + 64
    outbox = max(max_outbox_bytes or max_body_size, largest_fragment) + 150 * outbox_limit
    inbox = max(max_inbox_bytes or max_body_size, max_message_size) + 120 * inbox_limit
    waiting = largest_fragment  # one send waiting for room (an echo target)
    return 30 * KIB + outbox + waiting + inbox


# Runs in the fresh interpreter; prints one JSON line with what it measured.
MEASURE = textwrap.dedent("""
    import asyncio, gc, json, sys

    from pollsession import HttpHandler, SessionClosed
    from tests.fakes import FakeContext, body_of, call
    from tests.utils import MS, wait_until

    limits = json.loads(sys.argv[1])
    sessions = int(sys.argv[2])
    budget = limits["max_body_size"]  # the default byte bound of both boxes

    def dense(size):
        # [{"":{}},{"":{}},...]: 8 bytes per element on the wire, compact.
        return [{"": {}}] * ((size - 1) // 8)

    # Outgoing: "type":"json","data": is 21 bytes; four fragments fill the outbox's bytes.
    OUTGOING = dense(budget // 4 - 21)
    # Incoming: four messages fill the inbox's bytes, and one body carries them.
    INCOMING = json.dumps(dense(budget // 4 - 200), separators=(",", ":"))
    full = set()

    async def target(session):
        try:
            while True:
                sending = asyncio.ensure_future(session.send(OUTGOING))
                await asyncio.sleep(0)  # a send with room completes in its first step
                if not sending.done():
                    full.add(session.id)  # send waits: the outbox is full
                    await sending
                sending.result()
        except SessionClosed:
            return

    def full_count():
        async def count():
            return len(full)
        return handler.submit(count()).result()

    def push(sid, first, count):
        items = ",".join('{"seq":%d,"type":"json","data":%s}' % (first + i, INCOMING) for i in range(count))
        body = ('{"messages":[%s]}' % items).encode()
        assert len(body) <= limits["max_body_size"], len(body)
        headers = {"Pollsession-Id": sid, "Content-Type": "application/json"}
        return handler.handle_request(FakeContext("POST", headers=headers, body=body))

    def fill(sid):
        seq, pushes = 1, 0
        while True:
            pushes += 1
            assert pushes <= 20, "the inbox never answered 429"
            response = push(sid, seq, 4)
            if response.status == 429:
                return body_of(response)["ack"]
            assert response.status == 200, (response.status, response.body[:200])
            seq = body_of(response)["ack"] + 1

    def open_sessions(n):
        sids = []
        for _ in range(n):
            response = call(handler)
            assert response.status == 200, response.status
            sids.append(body_of(response)["sid"])
            del response
        return sids

    def rss():
        gc.collect()
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc/self/status")

    handler = HttpHandler(target, max_sessions=sessions + 10, session_timeout=3600.0, **limits)
    acks = [fill(sid) for sid in open_sessions(1)]  # warm-up: the loop thread, the code paths
    wait_until(lambda: full_count() == 1, 10_000 * MS, "the warm-up session's outbox to fill")
    before = rss()
    sids = open_sessions(sessions)
    acks += [fill(sid) for sid in sids]
    wait_until(lambda: full_count() == sessions + 1, 10_000 * MS, "every outbox to fill")
    after = rss()

    async def held():
        found = [handler._registry.channel(sid).delivery for sid in sids]
        return (sum(d.outbox_bytes for d in found), sum(d.inbox_bytes for d in found),
                [d.unacknowledged for d in found])

    outbox_bytes, inbox_bytes, outbox_counts = handler.submit(held()).result()
    print(json.dumps({"before": before, "after": after, "acks": acks, "outbox_bytes": outbox_bytes,
                      "inbox_bytes": inbox_bytes, "outbox_counts": sorted(set(outbox_counts))}))
    handler.close()
""")


def test_full_sessions_stay_within_the_documented_bound() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(LIMITS), str(SESSIONS)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])

    # The boxes were full: four messages each way (the byte bounds, not the counts, stopped them).
    assert set(found["acks"]) == {4}, found["acks"]
    assert found["outbox_counts"] == [4]
    budget = LIMITS["max_body_size"]
    assert found["outbox_bytes"] > SESSIONS * budget * 0.99
    assert found["inbox_bytes"] > SESSIONS * budget * 0.99

    growth = found["after"] - found["before"]
    bound = SESSIONS * formula(**LIMITS)
    held = found["outbox_bytes"] + found["inbox_bytes"]
    print(f"\n{SESSIONS} full sessions: RSS grew {growth / 2**20:.1f} MiB; formula {bound / 2**20:.1f} MiB "
          f"(ratio {growth / bound:.2f}); queued bytes {held / 2**20:.1f} MiB; "
          f"per session {growth / SESSIONS / KIB:.0f} KiB vs {formula(**LIMITS) / KIB:.0f} KiB")
    assert growth <= 3 * bound, f"RSS grew {growth} bytes, more than 3x the formula's {bound}"
    # And the measurement sees what the sessions hold (it is not measuring nothing).
    assert growth >= 0.5 * held, f"RSS grew {growth} bytes, less than half of the {held} bytes queued"

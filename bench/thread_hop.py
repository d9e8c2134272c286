"""What the hop to the session loop costs a request, for the Tornado adapter's design.

The Tornado adapter hands each request from Tornado's loop to the handler's
own loop thread and back (``handle_request_async``). This measures a short
poll (``wait=0``) served that way against the same request served by
running the handler's coroutine directly on its own loop (no hop), in one
run, and prints the per-request times and their difference.

    python bench/thread_hop.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pollsession import HttpHandler, Session  # noqa: E402
from tests.fakes import FakeContext, body_of  # noqa: E402


async def idle(session: Session) -> None:
    await session.receive()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    async def short_polls(handler: HttpHandler) -> float:
        """Seconds per short poll of one session, asked from the loop this runs on."""
        sid = body_of(await handler.handle_request_async(FakeContext()))["sid"]
        context = FakeContext(headers={"Pollsession-Id": sid}, query=[("ack", "0"), ("wait", "0")])
        start = time.perf_counter()
        for _ in range(args.requests):
            await handler.handle_request_async(context)
        return (time.perf_counter() - start) / args.requests

    async def direct() -> float:
        handler = HttpHandler(idle, use_running_loop=True)  # the sessions on this very loop
        try:
            return await short_polls(handler)
        finally:
            await handler.aclose()

    hopped_handler = HttpHandler(idle)  # the sessions on a thread of its own
    hop, local = [], []
    for _ in range(args.rounds):
        hop.append(asyncio.run(short_polls(hopped_handler)))  # another loop, as Tornado's would be
        local.append(asyncio.run(direct()))
    hopped_handler.close()
    h, d = statistics.median(hop), statistics.median(local)
    print(f"short poll, median of {args.rounds} rounds of {args.requests}:")
    print(f"  served on the handler's loop directly (use_running_loop=True): {d * 1e6:7.1f} us/request")
    print(f"  handed over from another loop (the default): {h * 1e6:7.1f} us/request")
    print(f"  the hop costs {(h - d) * 1e6:.1f} us/request ({h / d:.2f}x of the core's own work)")


if __name__ == "__main__":
    main()

"""The benchmarks, run by the asyncio load generator against the server processes.

``bench_echo``, ``bench_fanout`` and ``bench_throughput`` take the servers of
one framework (one process per system, all started at once) and interleave
the systems round by round, so that bursts of noise on the shared machine
spread over all of them; ``bench_hold`` takes one fresh server. They use only
the measurement core of :mod:`clients` (``BenchClient``), so every system is
timed by the same code. Server CPU and memory are read with psutil from each
server's pid.

Definitions:

* echo: one session sends a text and waits for its echo on the long poll,
  sequentially; ``echo_n`` round trips after ``echo_warmup``, in blocks of
  ``echo_block`` per system. The server process's CPU time (user+system, all
  threads) over its measured round trips, divided by their number, is the
  CPU per echo. PyWebIO (100 ms per echo by design) runs alongside.
* fan-out: N sessions with their polls held (server CPU quiet and every
  client's poll outstanding), then ``POST /bench/broadcast``; the time from
  just before that trigger until the last of the N clients has the message.
  ``fanout_rounds`` rounds per N (median), N growing in steps with the same
  sessions. PyWebIO (short polls: N requests a second) runs alone afterwards.
* memory: before each fan-out step, with N polls held: (server RSS now -
  server RSS before the first fan-out session) / N.
* throughput: one session asks for ``!burst:K``; the server sends K texts as
  fast as its send API allows while the client keeps polling (acking); K
  divided by the time from the request until the K-th text was delivered.
* hold: a fresh server, ``hold_n`` sessions each with a held poll, then one
  broadcast to all of them: did every session open, hold and get it, and at
  what RSS.
"""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from clients import CLIENTS, BenchClient

__all__ = ["Config", "Server", "start_server", "start_servers", "bench_echo", "bench_fanout", "bench_throughput", "bench_hold",
           "percentile", "raise_nofile"]

HERE = Path(__file__).resolve().parent
PAD = "x" * 32  # echo payload: "e<i>:" + 32 bytes


@dataclass
class Config:
    echo_warmup: int = 50
    echo_n: int = 500
    pywebio_echo_warmup: int = 5
    pywebio_echo_n: int = 500  # PyWebIO holds every POST 100 ms: its echo run is the longest
    fanout_ns: dict[str, list[int]] = field(default_factory=lambda: {"tornado": [100, 300, 1000], "flask": [100, 300]})
    fanout_rounds: int = 5
    pywebio_fanout_rounds: int = 2  # each PyWebIO round waits for the 1 s pulls
    burst: int = 20_000
    burst_rounds: int = 5
    pywebio_burst: int = 5_000  # PyWebIO (thread sessions under Flask) delivers ~1,000 msg/s
    pywebio_burst_rounds: int = 1
    echo_block: int = 50
    hold_n: int = 10_000
    hold_settle_max: float = 10.0
    hold_timeout: float = 20.0
    open_concurrency: int = 100
    settle_max: float = 20.0
    timeout: float = 30.0

    @classmethod
    def quick(cls) -> Config:
        return cls(echo_warmup=5, echo_n=30, pywebio_echo_warmup=2, pywebio_echo_n=5,
                   fanout_ns={"tornado": [10, 30], "flask": [10]}, fanout_rounds=1, pywebio_fanout_rounds=1,
                   burst=2000, burst_rounds=1, pywebio_burst=500, echo_block=10, hold_n=200, settle_max=5.0, timeout=20.0)


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# -- the server process ---------------------------------------------------------------


@dataclass
class Server:
    system: str
    framework: str
    popen: subprocess.Popen[bytes]
    port: int
    pid: int
    proc: psutil.Process

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu(self) -> float:
        times = self.proc.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        return int(self.proc.memory_info().rss)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def spawn_server(system: str, framework: str, *, core: int = 0, logs: Path | None = None
                 ) -> subprocess.Popen[bytes]:
    """Start ``servers.py SYSTEM FRAMEWORK`` pinned to ``core`` with taskset; see :func:`server_ready`.

    Its stderr goes to ``logs/server-FRAMEWORK-SYSTEM.log`` when ``logs`` is given.
    """
    command = ["taskset", "-c", str(core), sys.executable, str(HERE / "servers.py"), system, framework]
    stderr = open(logs / f"server-{framework}-{system}.log", "ab") if logs is not None else None
    try:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=stderr, cwd=HERE)
    finally:
        if stderr is not None:
            stderr.close()


def server_ready(system: str, framework: str, popen: subprocess.Popen[bytes]) -> Server:
    """Wait until a spawned server listens (it prints its port and pid)."""
    assert popen.stdout is not None
    line = popen.stdout.readline()
    if not line:
        popen.wait()
        raise RuntimeError(f"{framework}/{system} server failed to start (exit {popen.returncode})")
    ready = json.loads(line)
    return Server(system, framework, popen, int(ready["port"]), int(ready["pid"]), psutil.Process(int(ready["pid"])))


def start_server(system: str, framework: str, *, core: int = 0, logs: Path | None = None) -> Server:
    return server_ready(system, framework, spawn_server(system, framework, core=core, logs=logs))


def start_servers(systems: Iterable[str], framework: str, *, core: int = 0, logs: Path | None = None
                  ) -> dict[str, Server]:
    """Start one server per system at once (imports overlap); return them when all listen."""
    spawned = {system: spawn_server(system, framework, core=core, logs=logs) for system in systems}
    servers: dict[str, Server] = {}
    try:
        for system, popen in spawned.items():
            servers[system] = server_ready(system, framework, popen)
    except BaseException:
        for popen in spawned.values():
            popen.kill()
        raise
    return servers


def new_http(connections: int = 0) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, ttl_dns_cache=None, enable_cleanup_closed=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_read=120))


async def settle(server: Server, clients: list[BenchClient], *, quiet: float = 0.25, max_wait: float = 20.0) -> bool:
    """Wait until the server's CPU is quiet and every long-poll client has its poll outstanding.

    Short-polling clients (PyWebIO) never let the server go quiet; for them it
    waits one and a half pull intervals. Returns False if ``max_wait`` ran out.
    """
    if clients and not clients[0].long_polling:
        await asyncio.sleep(1.5)
        return True
    deadline = time.monotonic() + max_wait
    before = server.cpu()
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet)
        now = server.cpu()
        if now - before < 0.03 * quiet and all(client.in_flight for client in clients):
            return True
        before = now
    return False


async def open_clients(cls: type[BenchClient], http: aiohttp.ClientSession, base: str, count: int,
                       concurrency: int) -> list[BenchClient]:
    """Open ``count`` sessions, ``concurrency`` at a time, each polling once open."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> BenchClient:
        client = cls(http, base)
        async with gate:
            await client.open()
        client.start()
        return client

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def one_client_each(http: aiohttp.ClientSession, servers: dict[str, Server]) -> dict[str, BenchClient]:
    """One opened, polling client per server."""
    return {system: (await open_clients(CLIENTS[system], http, server.base, 1, 1))[0]
            for system, server in servers.items()}


# -- echo -------------------------------------------------------------------------


async def bench_echo(servers: dict[str, Server], config: Config, progress: Callable[[str], None]) -> dict[str, Any]:
    """Echo latency and server CPU per echo of every server.

    The machine is shared: noise comes in bursts. The long-polling systems run
    their round trips in blocks of ``echo_block``, round-robin, so that every
    burst spreads over all of them and the ratios stay fair. PyWebIO's echo
    (its server holds every POST 100 ms, so 500 round trips take a minute and
    cost its server ~1 % of the core) runs at the same time in the background.
    """
    results: dict[str, Any] = {}
    samples: dict[str, list[float]] = {s: [] for s in servers}
    cpu: dict[str, float] = dict.fromkeys(servers, 0.0)
    async with new_http() as http:
        clients = await one_client_each(http, servers)
        wanted = {s: config.pywebio_echo_n if s == "pywebio" else config.echo_n for s in servers}
        warmup = {s: min(config.pywebio_echo_warmup if s == "pywebio" else config.echo_warmup, wanted[s])
                  for s in servers}

        async def run(system: str, count: int) -> None:
            server, client = servers[system], clients[system]
            before = server.cpu()
            for _ in range(count):
                samples[system].append(await client.echo(f"e{len(samples[system])}:{PAD}") / 1e6)
            cpu[system] += server.cpu() - before

        async def alone(system: str) -> None:
            for i in range(warmup[system]):
                await clients[system].echo(f"w{i}:{PAD}")
            await run(system, wanted[system])

        blocked = [s for s in servers if clients[s].long_polling]
        background = [asyncio.create_task(alone(s)) for s in servers if not clients[s].long_polling]
        for system in blocked:
            for i in range(warmup[system]):
                await clients[system].echo(f"w{i}:{PAD}")
            await settle(servers[system], [clients[system]], max_wait=2.0)
        while any(len(samples[s]) < wanted[s] for s in blocked):
            for system in blocked:
                todo = min(config.echo_block, wanted[system] - len(samples[system]))
                if todo > 0:
                    await run(system, todo)
        if background:
            progress("long-polling systems done; waiting for PyWebIO's echo run")
            await asyncio.gather(*background)
        await asyncio.gather(*(client.stop() for client in clients.values()))
    for system in servers:
        values = samples[system]
        results[system] = {
            "n": len(values),
            "warmup": warmup[system],
            "p50_ms": percentile(values, 50),
            "p90_ms": percentile(values, 90),
            "p99_ms": percentile(values, 99),
            "mean_ms": statistics.fmean(values),
            "max_ms": max(values),
            "cpu_per_echo_us": cpu[system] / len(values) * 1e6,
            "samples_ms": [round(v, 4) for v in values],
        }
        r = results[system]
        progress(f"{system:12s} echo p50 {r['p50_ms']:7.2f} ms  p90 {r['p90_ms']:7.2f}  p99 {r['p99_ms']:7.2f}  "
                 f"server CPU/echo {r['cpu_per_echo_us']:6.0f} us  (n={r['n']})")
    return results


# -- fan-out and memory ---------------------------------------------------------------


async def broadcast_round(server: Server, http: aiohttp.ClientSession, clients: list[BenchClient], marker: str,
                          timeout: float) -> dict[str, Any]:
    """Trigger one broadcast; the ms from the trigger until every client had ``marker``."""
    times: list[int] = []
    everyone = asyncio.Event()
    target = len(clients)

    def watch(text: str, at: int) -> bool:
        if text != marker:
            return False
        times.append(at)
        if len(times) == target:
            everyone.set()
        return True

    for client in clients:
        client.watch = watch
    started = time.perf_counter_ns()
    async with http.post(server.base + "/bench/broadcast", data=marker.encode()) as response:
        sent = (await response.json())["sent"]
    try:
        await asyncio.wait_for(everyone.wait(), timeout)
    except asyncio.TimeoutError:
        pass
    for client in clients:
        client.watch = None
    return {
        "ms": (max(times) - started) / 1e6 if len(times) == target else None,
        "received": len(times),
        "sent": sent,
    }


async def bench_fanout(servers: dict[str, Server], config: Config, progress: Callable[[str], None]) -> dict[str, Any]:
    """Fan-out time and memory per held session, N growing; rounds interleaved across systems.

    Long-polling systems hold their N polls side by side (idle held polls cost
    no CPU) and take their broadcast rounds in turn. PyWebIO short-polls (N
    requests a second on the server core), so it runs alone afterwards.
    """
    framework = next(iter(servers.values())).framework
    steps = config.fanout_ns[framework]
    results: dict[str, Any] = {}
    groups = [[s for s in servers if s != "pywebio"], [s for s in servers if s == "pywebio"]]
    for group in groups:
        if not group:
            continue
        async with new_http() as http:
            clients: dict[str, list[BenchClient]] = {s: [] for s in group}
            rss0: dict[str, int] = {}
            for system in group:
                await settle(servers[system], [], max_wait=2.0)
                rss0[system] = servers[system].rss()
                results[system] = {"fanout": {}, "memory": {"rss0_mb": rss0[system] / 2**20, "by_n": {}}}
            for n in steps:
                for system in group:
                    more = await open_clients(CLIENTS[system], http, servers[system].base, n - len(clients[system]),
                                              config.open_concurrency)
                    clients[system] += more
                for system in group:
                    settled = await settle(servers[system], clients[system], max_wait=config.settle_max)
                    rss = servers[system].rss()
                    results[system]["memory"]["by_n"][str(n)] = {
                        "rss_mb": rss / 2**20, "per_session_kb": (rss - rss0[system]) / n / 1024, "settled": settled}
                rounds: dict[str, list[dict[str, Any]]] = {s: [] for s in group}
                rounds_wanted = config.pywebio_fanout_rounds if "pywebio" in group else config.fanout_rounds
                for r in range(rounds_wanted):
                    for system in group:
                        if r or len(group) > 1:
                            await settle(servers[system], clients[system], max_wait=config.settle_max)
                        rounds[system].append(await broadcast_round(
                            servers[system], http, clients[system], f"bc{n}-{r}", config.timeout))
                for system in group:
                    times = [x["ms"] for x in rounds[system] if x["ms"] is not None]
                    entry: dict[str, Any] = {
                        "median_ms": statistics.median(times) if len(times) == len(rounds[system]) else None,
                        "rounds_ms": [x["ms"] for x in rounds[system]],
                        "received": [x["received"] for x in rounds[system]],
                        "sent": [x["sent"] for x in rounds[system]],
                        "client_errors": sum(c.errors for c in clients[system]),
                    }
                    results[system]["fanout"][str(n)] = entry
                    memory = results[system]["memory"]["by_n"][str(n)]
                    shown = f"{entry['median_ms']:8.1f} ms" if entry["median_ms"] is not None else "INCOMPLETE"
                    progress(f"{system:12s} fan-out N={n:<5d} {shown}  rounds "
                             f"{[None if t is None else round(t, 1) for t in entry['rounds_ms']]}  "
                             f"memory {memory['per_session_kb']:.1f} KiB/session")
            for system in group:
                results[system]["memory"]["per_session_kb"] = (
                    results[system]["memory"]["by_n"][str(steps[-1])]["per_session_kb"])
                await asyncio.gather(*(client.stop() for client in clients[system]))
    return results


# -- throughput ---------------------------------------------------------------------


async def burst(client: BenchClient, count: int, timeout: float) -> float | None:
    """Ask for ``count`` texts; messages per second until the last was delivered (None: timed out)."""
    got = 0
    last = 0
    done = asyncio.Event()

    def watch(text: str, at: int) -> bool:
        nonlocal got, last
        if not text.startswith("b"):
            return False
        got += 1
        last = at
        if got == count:
            done.set()
        return True

    client.watch = watch
    started = time.perf_counter_ns()
    try:
        await client.send(f"!burst:{count}")
        await asyncio.wait_for(done.wait(), timeout)
    except asyncio.TimeoutError:
        return None
    finally:
        client.watch = None
    return count / ((last - started) / 1e9)


async def bench_throughput(servers: dict[str, Server], config: Config,
                           progress: Callable[[str], None]) -> dict[str, Any]:
    """Single-session throughput of every server; rounds interleaved, PyWebIO after the others."""
    results: dict[str, Any] = {}
    size = {s: config.pywebio_burst if s == "pywebio" else config.burst for s in servers}
    wanted = {s: config.pywebio_burst_rounds if s == "pywebio" else config.burst_rounds for s in servers}
    async with new_http() as http:
        clients = await one_client_each(http, servers)
        for system, client in clients.items():
            await burst(client, max(1, size[system] // 10), config.timeout)  # warm-up
        rates: dict[str, list[float | None]] = {s: [] for s in servers}
        groups = [[s for s in servers if s != "pywebio"], [s for s in servers if s == "pywebio"]]
        for group in groups:
            for r in range(max((wanted[s] for s in group), default=0)):
                for system in group:
                    if r < wanted[system]:
                        await settle(servers[system], [clients[system]], max_wait=5.0)
                        rates[system].append(await burst(clients[system], size[system], config.timeout))
        await asyncio.gather(*(client.stop() for client in clients.values()))
    for system in servers:
        measured = [r for r in rates[system] if r is not None]
        results[system] = {
            "k": size[system],
            "rounds_msgs_per_s": rates[system],
            "msgs_per_s": statistics.median(measured) if measured and len(measured) == len(rates[system]) else None,
        }
        value = results[system]["msgs_per_s"]
        progress(f"{system:12s} throughput {size[system]} messages: "
                 f"{'INCOMPLETE' if value is None else f'{value:9.0f} msg/s'}  rounds "
                 f"{[None if r is None else round(r) for r in rates[system]]}")
    return results


# -- 10,000 held polls -------------------------------------------------------------------


async def bench_hold(server: Server, config: Config, progress: Callable[[str], None]) -> dict[str, Any]:
    cls = CLIENTS[server.system]
    n = config.hold_n
    started = time.monotonic()
    async with new_http() as http:
        warm = cls(http, server.base)
        await warm.open()
        warm.start()
        await warm.echo("warm")
        await warm.stop()
        await settle(server, [], max_wait=2.0)
        rss0 = server.rss()
        clients: list[BenchClient] = []
        failures = 0
        # Open in slices so that a refusal shows up as a count, not as one exception.
        gate = asyncio.Semaphore(config.open_concurrency * 2)

        async def one() -> None:
            nonlocal failures
            client = cls(http, server.base)
            async with gate:
                try:
                    await client.open()
                except Exception:
                    failures += 1
                    return
            client.start()
            clients.append(client)

        await asyncio.gather(*(one() for _ in range(n)))
        opened_s = time.monotonic() - started
        settled = await settle(server, clients, max_wait=config.hold_settle_max)
        rss = server.rss()
        held = sum(1 for c in clients if c.in_flight)
        round_ = await broadcast_round(server, http, clients, "bc-hold", config.hold_timeout)
        errors = sum(c.errors for c in clients)
        await asyncio.gather(*(client.stop() for client in clients))
    result = {
        "n": n,
        "opened": len(clients),
        "open_failures": failures,
        "held": held,
        "settled": settled,
        "client_errors": errors,
        "open_seconds": opened_s,
        "rss0_mb": rss0 / 2**20,
        "rss_mb": rss / 2**20,
        "per_session_kb": (rss - rss0) / n / 1024,
        "broadcast_ms": round_["ms"],
        "broadcast_received": round_["received"],
        "server_alive": server.alive(),
    }
    result["holds"] = bool(result["opened"] == n and held == n and round_["received"] == n and result["server_alive"])
    progress(f"{n} held polls: opened {len(clients)} in {opened_s:.1f}s, held {held}, "
             f"RSS {result['rss_mb']:.0f} MiB ({result['per_session_kb']:.1f} KiB/session), "
             f"broadcast to all {round_['received']}/{n} in "
             f"{round_['ms'] if round_['ms'] is None else round(round_['ms'], 1)} ms")
    return result



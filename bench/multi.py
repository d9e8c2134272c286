"""Many workers on Redis (``python bench/run.py --workers``): what forwarding and a second worker cost and give.

Three deployments of the same Tornado application (``bench/worker.py``) run
side by side, each behind its own port of one nginx (plain round robin, the
README's configuration), all on one redis-server (persistence off):

* ``in-process``: one process, no backend (the default, ``LocalBackend``);
* ``redis-1``: one ``RedisBackend`` worker (every request is local, but
  broadcasts and session counts go through Redis);
* ``redis-2``: two ``RedisBackend`` workers (a request reaching the worker
  that does not own its session is forwarded to the owner through Redis).

Cores (2 here): the in-process server, the redis-1 worker and the first
redis-2 worker on core 0; the second redis-2 worker on core 1, with the load
generator, nginx and redis-server. There is no third core, so two workers
share theirs with everything else; see the README for what that limits.

The benchmarks, each interleaved over the deployments round by round (the
machine is noisy; only ratios within one run are compared):

1. echo latency through nginx, each deployment, as a ratio to ``in-process``;
2. forwarded vs local: on redis-2, sessions talked to directly (no nginx) at
   their owner, or always at the other worker; both owners, pooled;
3. echo throughput: one session through nginx (aiohttp), and the aggregate
   load of ``load_sessions`` sessions (``bench_load``: lean generator
   processes, enough sessions to saturate one worker) through nginx
   (``load``) and straight at their owner (``load-owner``: what a second
   worker gives without forwarding), each session echoing sequentially for
   ``rate_seconds``: echoes/s, and each process's CPU use over the window
   (cores, and CPU µs per echo: what is saturated, what an echo costs where);
4. fan-out: ``fanout_n`` sessions per deployment, polls held through nginx,
   one ``POST /bench/broadcast`` through nginx; until the last client has it,
   and each process's CPU seconds over the round.

``python multi.py --echo-load SESSIONS BASE...`` is one generator process of
``bench_load`` (started by it, not by hand).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from clients import BenchClient, PollsessionClient, ProtocolFailure
from deploy import Deployment, Nginx, Redis, Stack, start_worker
from loadgen import PAD, broadcast_round, new_http, open_clients, percentile, settle

__all__ = ["MultiConfig", "run_workers", "DEPLOYMENTS"]

DEPLOYMENTS = ("in-process", "redis-1", "redis-2")
# Extra redis-py URL options for the workers (none: RedisBackend sizes its own blocking pool).
POOL = ""
Progress = Callable[[str], None]


@dataclass
class MultiConfig:
    echo_warmup: int = 50
    echo_n: int = 1000
    echo_block: int = 50
    rate_seconds: float = 2.0
    rate_rounds: int = 5
    load_sessions: int = 120
    load_processes: int = 3
    fanout_n: int = 1000
    fanout_rounds: int = 5
    open_concurrency: int = 100
    settle_max: float = 20.0
    timeout: float = 30.0

    @classmethod
    def quick(cls) -> MultiConfig:
        return cls(echo_warmup=10, echo_n=200, echo_block=20, rate_seconds=0.5, rate_rounds=3,
                   load_sessions=60, load_processes=2,
                   fanout_n=100, fanout_rounds=2, settle_max=5.0, timeout=20.0)


def summary(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50_ms": percentile(values, 50), "p90_ms": percentile(values, 90),
            "p99_ms": percentile(values, 99), "mean_ms": statistics.fmean(values),
            "samples_ms": [round(v, 4) for v in values]}


async def echo_block(client: BenchClient, count: int, into: list[float]) -> None:
    for _ in range(count):
        into.append(await client.echo(f"e{len(into)}:{PAD}") / 1e6)


async def interleaved_echo(clients: dict[str, BenchClient], config: MultiConfig) -> dict[str, list[float]]:
    """``echo_n`` echoes per client after ``echo_warmup``, in blocks of ``echo_block``, round robin."""
    samples: dict[str, list[float]] = {key: [] for key in clients}
    for key, client in clients.items():
        await echo_block(client, config.echo_warmup, [])
    while any(len(s) < config.echo_n for s in samples.values()):
        for key, client in clients.items():
            await echo_block(client, min(config.echo_block, config.echo_n - len(samples[key])), samples[key])
    return samples


# -- 1. echo latency through nginx ------------------------------------------------------


async def bench_echo(deployments: dict[str, Deployment], config: MultiConfig, progress: Progress) -> dict[str, Any]:
    async with new_http() as http:
        clients = {key: (await open_clients(PollsessionClient, http, d.base, 1, 1))[0]
                   for key, d in deployments.items()}
        before = {key: d.cpu() for key, d in deployments.items()}
        samples = await interleaved_echo(clients, config)
        cpu = {key: d.cpu() - before[key] for key, d in deployments.items()}
        await asyncio.gather(*(c.stop() for c in clients.values()))
    results = {}
    for key, values in samples.items():
        # CPU over warm-up and measured echoes alike: only the blocks' sum is known per deployment.
        results[key] = {**summary(values), "cpu_per_echo_us": cpu[key] / (len(values) + config.echo_warmup) * 1e6}
        r = results[key]
        progress(f"echo via nginx  {key:10s} p50 {r['p50_ms']:6.2f} ms  p90 {r['p90_ms']:6.2f}  "
                 f"p99 {r['p99_ms']:6.2f}  workers' CPU/echo {r['cpu_per_echo_us']:5.0f} us")
    return results


# -- 2. forwarded vs local ---------------------------------------------------------------


async def bench_forward(two: Deployment, config: MultiConfig, progress: Progress) -> dict[str, Any]:
    """Sessions opened at each worker; talked to at their owner (local) or at the other one (forwarded)."""
    a, b = two.workers
    async with new_http() as http:
        clients: dict[str, BenchClient] = {}
        for owner, other in ((a, b), (b, a)):
            for kind, target in (("local", owner), ("forwarded", other)):
                client = PollsessionClient(http, owner.base)
                await client.open()
                client.url = target.base + "/poll"  # every later request goes straight to ``target``
                client.start()
                clients[f"{kind}@{owner.system}"] = client
        samples = await interleaved_echo(clients, config)
        await asyncio.gather(*(c.stop() for c in clients.values()))
    results: dict[str, Any] = {"by_owner": {key: summary(values) for key, values in samples.items()}}
    for kind in ("local", "forwarded"):
        results[kind] = summary([v for key, values in samples.items() if key.startswith(kind + "@") for v in values])
    results["added_p50_ms"] = results["forwarded"]["p50_ms"] - results["local"]["p50_ms"]
    for key, r in results["by_owner"].items():
        progress(f"direct echo     {key:18s} p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f}")
    progress(f"forwarded echo adds {results['added_p50_ms']:.2f} ms at p50 "
             f"({results['forwarded']['p50_ms']:.2f} vs {results['local']['p50_ms']:.2f} ms)")
    return results


# -- 3. echo throughput -------------------------------------------------------------------


async def echo_rate(clients: list[BenchClient], seconds: float) -> tuple[float, float]:
    """Every client echoing sequentially for ``seconds``: (echoes per second, elapsed seconds)."""
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + seconds
    done = 0

    async def one(client: BenchClient) -> None:
        nonlocal done
        i = 0
        while loop.time() < stop_at:
            await client.echo(f"t{i}:{PAD}")
            i += 1
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(one(c) for c in clients))
    elapsed = time.perf_counter() - started
    return done / elapsed, elapsed


class CpuMeter:
    """CPU seconds of named processes over a window, as a fraction of one core."""

    def __init__(self, processes: dict[str, list[psutil.Process]]) -> None:
        self.processes = processes

    def read(self) -> dict[str, float]:
        out = {}
        for name, procs in self.processes.items():
            total = 0.0
            for proc in procs:
                try:
                    times = proc.cpu_times()
                    total += times.user + times.system
                except psutil.Error:
                    pass
            out[name] = total
        return out

    @staticmethod
    def use(before: dict[str, float], after: dict[str, float], elapsed: float) -> dict[str, float]:
        return {name: round((after[name] - before[name]) / elapsed, 3) for name in before}


async def bench_throughput(deployments: dict[str, Deployment], meter_of: Callable[[str], CpuMeter],
                           config: MultiConfig, progress: Progress) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with new_http() as http:
        for mode, count in (("single", 1),):
            clients = {key: await open_clients(PollsessionClient, http, d.base, count, config.open_concurrency)
                       for key, d in deployments.items()}
            for key in deployments:
                await echo_rate(clients[key], min(0.5, config.rate_seconds))  # warm-up
            rounds: dict[str, list[dict[str, Any]]] = {key: [] for key in deployments}
            for _ in range(config.rate_rounds):
                for key, d in deployments.items():
                    await settle(d, clients[key], max_wait=2.0)  # type: ignore[arg-type]
                    meter = meter_of(key)
                    before = meter.read()
                    rate, elapsed = await echo_rate(clients[key], config.rate_seconds)
                    rounds[key].append({"echoes_per_s": rate, "cpu": CpuMeter.use(before, meter.read(), elapsed)})
            for key in deployments:
                await asyncio.gather(*(c.stop() for c in clients[key]))
                rates = [r["echoes_per_s"] for r in rounds[key]]
                best = min(range(len(rates)), key=lambda i: abs(rates[i] - statistics.median(rates)))
                results.setdefault(mode, {})[key] = {
                    "sessions": count, "echoes_per_s": statistics.median(rates), "rounds": rates,
                    "cpu": rounds[key][best]["cpu"]}  # the CPU use of the median round
                r = results[mode][key]
                progress(f"throughput {mode:6s} ({count:2d} sessions) {key:10s} {r['echoes_per_s']:7.0f} echoes/s  "
                         f"CPU (cores) {r['cpu']}")
    return results


# -- 3b. aggregate echo load, from lean generator processes ----------------------------
#
# aiohttp costs about 0.4 ms of client CPU per request (README, "Why aiohttp"): one such process echoing
# on 50 sessions saturates its core before a worker does. The aggregate-load figure is instead driven by
# ``LOAD_PROCESSES`` processes of ``python multi.py --echo-load``: HTTP/1.1 written and read by hand over
# asyncio streams, two keep-alive connections per session (its held poll, its pushes), no background task.


def _request(method: str, target: str, sid: str, body: bytes = b"") -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: bench\r\n"
    if sid:
        head += f"Pollsession-Id: {sid}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None, request: bytes
                    ) -> tuple[int, bytes]:
    """Send ``request`` (unless None: its answer is awaited only) and read one answer: (status, body)."""
    if writer is not None:
        writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    at = head.lower().find(b"\r\ncontent-length:")
    if at < 0:
        raise ProtocolFailure(f"an answer without Content-Length: {head[:200]!r}")
    length = int(head[at + 17:head.index(b"\r\n", at + 2)])
    return int(head[9:12]), await reader.readexactly(length)


class LeanSession:
    """One pollsession session echoing sequentially: a poll always outstanding, one text pushed at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.sid = ""
        self.last = 0  # the highest seq received (each echo is one message)
        self.sent = 0

    async def open(self) -> None:
        self.poll = await asyncio.open_connection(self.host, self.port)
        self.push = await asyncio.open_connection(self.host, self.port)
        status, body = await _exchange(*self.poll, _request("GET", "/poll", ""))
        if status != 200:
            raise ProtocolFailure(f"open: HTTP {status} {body[:200]!r}")
        self.sid = json.loads(body)["sid"]
        self.poll[1].write(_request("GET", f"/poll?ack={self.last}", self.sid))

    async def run(self, stop_at: float) -> int:
        """Echo until ``stop_at`` (loop time); the number of echoes. The poll stays outstanding after."""
        loop = asyncio.get_running_loop()
        done = 0
        while loop.time() < stop_at:
            self.sent += 1
            text = json.dumps({"messages": [{"seq": self.sent, "type": "text", "data": f"t{self.sent}:{PAD}"}]})
            status, body = await _exchange(*self.push, _request("POST", "/poll", self.sid, text.encode()))
            if status != 200:
                raise ProtocolFailure(f"push: HTTP {status} {body[:200]!r}")
            while self.last < self.sent:  # the echo comes back on the outstanding poll
                status, body = await _exchange(self.poll[0], None, b"")
                answer = json.loads(body)
                if status != 200 or answer["closed"] is not None:
                    raise ProtocolFailure(f"poll: HTTP {status} {body[:200]!r}")
                if answer["messages"]:
                    self.last = max(self.last, answer["messages"][-1]["seq"])
                self.poll[1].write(_request("GET", f"/poll?ack={self.last}", self.sid))
            done += 1
        return done


async def echo_load_process(bases: list[str], sessions: int) -> None:
    """``--echo-load``: open ``sessions`` (session i at ``bases[i % len]``), print ``ready``; then for each
    ``go SECONDS`` line on stdin echo on all of them for SECONDS and print ``{"echoes", "elapsed", "cpu"}``."""
    loop = asyncio.get_running_loop()
    addresses = [(u.hostname or "127.0.0.1", u.port or 80) for u in map(urllib.parse.urlsplit, bases)]
    clients = [LeanSession(*addresses[i % len(addresses)]) for i in range(sessions)]
    for start in range(0, sessions, 20):
        await asyncio.gather(*(c.open() for c in clients[start:start + 20]))
    print("ready", flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line.startswith("go "):
            return
        cpu = time.process_time()
        started = loop.time()
        done = await asyncio.gather(*(c.run(started + float(line[3:])) for c in clients))
        print(json.dumps({"echoes": sum(done), "elapsed": loop.time() - started,
                          "cpu": time.process_time() - cpu}), flush=True)


class EchoLoad:
    """``processes`` generator processes on ``core``, ``sessions`` sessions spread over them."""

    def __init__(self, bases: list[str], sessions: int, processes: int, core: int) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        for i in range(processes):
            share = sessions // processes + (i < sessions % processes)
            self.procs.append(subprocess.Popen(
                ["taskset", "-c", str(core), sys.executable, str(Path(__file__).resolve()), "--echo-load",
                 str(share), *bases], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for proc in self.procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                self.stop()
                raise RuntimeError("an echo-load process failed to open its sessions")
        self.processes = [psutil.Process(p.pid) for p in self.procs]

    async def round(self, seconds: float) -> dict[str, float]:
        """Every process echoing for ``seconds`` at once: echoes/s (summed), and the processes' CPU seconds."""
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(f"go {seconds}\n")
            proc.stdin.flush()
        loop = asyncio.get_running_loop()
        answers = [json.loads(await loop.run_in_executor(None, p.stdout.readline))  # type: ignore[union-attr]
                   for p in self.procs]
        return {"echoes_per_s": sum(a["echoes"] / a["elapsed"] for a in answers),
                "echoes": sum(a["echoes"] for a in answers), "cpu_s": sum(a["cpu"] for a in answers)}

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def bench_load(deployments: dict[str, Deployment], meter_of: Callable[[str, list[psutil.Process]], CpuMeter],
                     config: MultiConfig, progress: Progress, *, client_core: int) -> dict[str, Any]:
    """Aggregate echoes/s of ``load_sessions`` sessions, through nginx and (``load-owner``) straight to owners."""
    results: dict[str, Any] = {}
    for mode in ("load", "load-owner"):
        loads: dict[str, EchoLoad] = {}
        try:
            for key, d in deployments.items():
                bases = [w.base for w in d.workers] if mode == "load-owner" else [d.base]
                loads[key] = EchoLoad(bases, config.load_sessions, config.load_processes, client_core)
            for key in deployments:
                await loads[key].round(min(0.5, config.rate_seconds))  # warm-up
            rounds: dict[str, list[dict[str, Any]]] = {key: [] for key in deployments}
            for _ in range(config.rate_rounds):
                for key, d in deployments.items():
                    await asyncio.sleep(0.3)  # the previous deployment's last answers
                    meter = meter_of(key, loads[key].processes)
                    before = meter.read()
                    started = time.perf_counter()
                    got = await loads[key].round(config.rate_seconds)
                    elapsed = time.perf_counter() - started
                    cpu = CpuMeter.use(before, meter.read(), elapsed)
                    per_echo = {name: round(used * elapsed / got["echoes"] * 1e6) for name, used in cpu.items()}
                    rounds[key].append({**got, "cpu": cpu, "cpu_us_per_echo": per_echo})
        finally:
            for load in loads.values():
                load.stop()
        for key in deployments:
            rates = [r["echoes_per_s"] for r in rounds[key]]
            best = min(range(len(rates)), key=lambda i: abs(rates[i] - statistics.median(rates)))
            results.setdefault(mode, {})[key] = {
                "sessions": config.load_sessions, "processes": config.load_processes,
                "echoes_per_s": statistics.median(rates), "rounds": rates,
                "cpu": rounds[key][best]["cpu"], "cpu_us_per_echo": rounds[key][best]["cpu_us_per_echo"]}
            r = results[mode][key]
            progress(f"throughput {mode:10s} ({config.load_sessions} sessions) {key:10s} {r['echoes_per_s']:7.0f} "
                     f"echoes/s  rounds {[round(x) for x in rates]}  CPU (cores) {r['cpu']}")
    return results


# -- 4. fan-out -------------------------------------------------------------------------


async def bench_fanout(deployments: dict[str, Deployment], meter_of: Callable[..., CpuMeter], config: MultiConfig,
                       progress: Progress) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with new_http() as http:
        clients = {}
        for key, d in deployments.items():
            clients[key] = await open_clients(PollsessionClient, http, d.base, config.fanout_n,
                                              config.open_concurrency)
        rounds: dict[str, list[dict[str, Any]]] = {key: [] for key in deployments}
        for r in range(config.fanout_rounds):
            for key, d in deployments.items():
                await settle(d, clients[key], max_wait=config.settle_max)  # type: ignore[arg-type]
                meter = meter_of(key)
                before = meter.read()
                got = await broadcast_round(d, http, clients[key], f"bc-{key}-{r}",  # type: ignore[arg-type]
                                            config.timeout)
                after = meter.read()  # CPU seconds of each process over the round (until the last client had it)
                rounds[key].append({**got, "cpu_s": {name: round(after[name] - before[name], 3) for name in before}})
        for key in deployments:
            times = [x["ms"] for x in rounds[key]]
            complete = [t for t in times if t is not None]
            results[key] = {"n": config.fanout_n, "median_ms": statistics.median(complete)
                            if len(complete) == len(times) else None, "rounds_ms": times,
                            "received": [x["received"] for x in rounds[key]],
                            "cpu_s": rounds[key][min(range(len(times)), key=lambda i: abs((times[i] or 1e9) - (
                                statistics.median(complete) if complete else 0)))]["cpu_s"],
                            "client_errors": sum(c.errors for c in clients[key])}
            await asyncio.gather(*(c.stop() for c in clients[key]))
            entry = results[key]
            shown = "INCOMPLETE" if entry["median_ms"] is None else f"{entry['median_ms']:7.1f} ms"
            progress(f"fan-out to {config.fanout_n} {key:10s} {shown}  rounds "
                     f"{[None if t is None else round(t, 1) for t in times]}  CPU s (median round) {entry['cpu_s']}")
    return results


# -- the run ------------------------------------------------------------------------------


async def run_workers(config: MultiConfig, progress: Progress, logs: Path, *, server_core: int = 0,
                      client_core: int = 1) -> dict[str, Any]:
    """Start redis-server, the workers and nginx; run the four benchmarks; stop everything."""
    started = time.monotonic()
    # A process manager's (or timeout's) SIGTERM ends the run as Ctrl-C does: through the Stack's cleanup.
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    results: dict[str, Any] = {"config": asdict(config), "redis_url_options": POOL, "cores": {
        "in-process": [server_core], "redis-1": [server_core], "redis-2": [server_core, client_core],
        "load generator, nginx, redis-server": [client_core]}}
    with Stack() as stack:
        redis = Redis(client_core).start()
        stack.add(redis)
        tag = secrets.token_hex(3)
        workers: dict[str, list[tuple[int, str | None]]] = {
            "in-process": [(server_core, None)],
            "redis-1": [(server_core, f"bench1-{tag}")],
            "redis-2": [(server_core, f"bench2-{tag}"), (client_core, f"bench2-{tag}")],
        }
        deployments: dict[str, Deployment] = {}
        for key, specs in workers.items():
            servers = []
            for index, (core, name) in enumerate(specs):
                server = start_worker(f"{key}-{'ab'[index]}", core, redis.url + POOL if name else None, name or "", logs)
                stack.add(server)
                servers.append(server)
            deployments[key] = Deployment(key, servers)
        nginx = Nginx(client_core, {d.port: [w.port for w in d.workers] for d in deployments.values()}).start()
        stack.add(nginx)
        progress(f"redis-server :{redis.port}, nginx {', '.join(f'{k} :{d.port}' for k, d in deployments.items())}")
        me = psutil.Process()
        nginx_procs = nginx.processes()
        redis_proc = psutil.Process(redis.process.pid)  # type: ignore[union-attr]

        def meter_of(key: str, generators: list[psutil.Process] | None = None) -> CpuMeter:
            named = {f"worker {w.system[-1]}": [w.proc] for w in deployments[key].workers}
            return CpuMeter({**named, "nginx": nginx_procs, "redis": [redis_proc],
                             "load generator": generators or [me]})

        results["echo"] = await bench_echo(deployments, config, progress)
        results["forward"] = await bench_forward(deployments["redis-2"], config, progress)
        results["throughput"] = await bench_throughput(deployments, meter_of, config, progress)
        results["throughput"].update(await bench_load(deployments, meter_of, config, progress,
                                                      client_core=client_core))
        results["fanout"] = await bench_fanout(deployments, meter_of, config, progress)
        dead = [w.system for d in deployments.values() for w in d.workers if not w.alive()]
        if dead:
            raise RuntimeError(f"workers died: {', '.join(dead)} (see {logs}/server-workers-*.log)")
    results["duration_s"] = time.monotonic() - started
    return results


if __name__ == "__main__":  # a generator process of bench_load: ``multi.py --echo-load SESSIONS BASE...``
    if sys.argv[1:2] != ["--echo-load"]:
        sys.exit("usage: multi.py --echo-load SESSIONS BASE... (started by bench_load)")
    asyncio.run(echo_load_process(sys.argv[3:], int(sys.argv[2])))

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
3. echo throughput, one session and ``rate_sessions`` sessions through
   nginx, and ``rate_sessions`` sessions talked to straight at their owner
   (``owner``: what a second worker gives without forwarding), each echoing
   sequentially for ``rate_seconds``: echoes/s, and each process's CPU use
   over the window (what is saturated);
4. fan-out: ``fanout_n`` sessions per deployment, polls held through nginx,
   one ``POST /bench/broadcast`` through nginx; until the last client has it.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from clients import BenchClient, PollsessionClient
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
    rate_sessions: int = 50
    rate_seconds: float = 2.0
    rate_rounds: int = 5
    fanout_n: int = 1000
    fanout_rounds: int = 5
    open_concurrency: int = 100
    settle_max: float = 20.0
    timeout: float = 30.0

    @classmethod
    def quick(cls) -> MultiConfig:
        return cls(echo_warmup=10, echo_n=200, echo_block=20, rate_sessions=50, rate_seconds=0.5, rate_rounds=3,
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


async def open_for(mode: str, deployment: Deployment, http: Any, count: int, config: MultiConfig
                   ) -> list[BenchClient]:
    """Through nginx, or (``owner``) opened at each worker in turn and always talked to there (no forwarding)."""
    if mode != "owner":
        return await open_clients(PollsessionClient, http, deployment.base, count, config.open_concurrency)
    workers = deployment.workers
    shares = [count // len(workers) + (i < count % len(workers)) for i in range(len(workers))]
    opened = [await open_clients(PollsessionClient, http, w.base, share, config.open_concurrency)
              for w, share in zip(workers, shares)]
    return [client for group in opened for client in group]


async def bench_throughput(deployments: dict[str, Deployment], meter_of: Callable[[str], CpuMeter],
                           config: MultiConfig, progress: Progress) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with new_http() as http:
        for mode, count in (("single", 1), ("multi", config.rate_sessions), ("owner", config.rate_sessions)):
            clients = {key: await open_for(mode, d, http, count, config) for key, d in deployments.items()}
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


# -- 4. fan-out -------------------------------------------------------------------------


async def bench_fanout(deployments: dict[str, Deployment], config: MultiConfig, progress: Progress) -> dict[str, Any]:
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
                rounds[key].append(await broadcast_round(d, http, clients[key], f"bc-{key}-{r}",  # type: ignore[arg-type]
                                                         config.timeout))
        for key in deployments:
            times = [x["ms"] for x in rounds[key]]
            complete = [t for t in times if t is not None]
            results[key] = {"n": config.fanout_n, "median_ms": statistics.median(complete)
                            if len(complete) == len(times) else None, "rounds_ms": times,
                            "received": [x["received"] for x in rounds[key]],
                            "client_errors": sum(c.errors for c in clients[key])}
            await asyncio.gather(*(c.stop() for c in clients[key]))
            entry = results[key]
            shown = "INCOMPLETE" if entry["median_ms"] is None else f"{entry['median_ms']:7.1f} ms"
            progress(f"fan-out to {config.fanout_n} {key:10s} {shown}  rounds "
                     f"{[None if t is None else round(t, 1) for t in times]}")
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

        def meter_of(key: str) -> CpuMeter:
            named = {f"worker {w.system[-1]}": [w.proc] for w in deployments[key].workers}
            return CpuMeter({**named, "nginx": nginx_procs, "redis": [redis_proc], "load generator": [me]})

        results["echo"] = await bench_echo(deployments, config, progress)
        results["forward"] = await bench_forward(deployments["redis-2"], config, progress)
        results["throughput"] = await bench_throughput(deployments, meter_of, config, progress)
        results["fanout"] = await bench_fanout(deployments, config, progress)
        dead = [w.system for d in deployments.values() for w in d.workers if not w.alive()]
        if dead:
            raise RuntimeError(f"workers died: {', '.join(dead)} (see {logs}/server-workers-*.log)")
    results["duration_s"] = time.monotonic() - started
    return results

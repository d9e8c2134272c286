"""The "Many workers (Redis)" section of results.md and its targets, from ``results["workers"]``.

Every figure is a ratio within the one run (``bench/multi.py``): latency and
fan-out to the in-process deployment (no backend, one process, behind the
same nginx), throughput of two workers to one, a forwarded echo to a local one.
"""

from __future__ import annotations

from typing import Any

__all__ = ["worker_checks", "worker_markdown"]

LABELS = {"in-process": "one process, no backend", "redis-1": "1 worker, RedisBackend",
          "redis-2": "2 workers, RedisBackend"}


_CPU = ("worker a", "worker b", "nginx", "redis", "load generator")


def _ms(value: float | None) -> str:
    return "-" if value is None else (f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms")


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def _x(ratio: float | None) -> str:
    return "" if ratio is None else f" ({ratio:.2f}x)"


def _status(value: float | None, limit: float, higher_is_better: bool = False) -> str:
    if value is None:
        return "N/A"
    return "PASS" if (value >= limit if higher_is_better else value <= limit) else "MISS"


def worker_checks(section: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for many workers: PASS, MISS or N/A each."""
    rows: list[dict[str, Any]] = []

    def add(check: str, value: float | None, limit: float, absolute: str, higher: bool = False) -> None:
        rows.append({"framework": "tornado", "system": "redis-2", "check": check, "value": value, "limit": limit,
                     "status": _status(value, limit, higher), "absolute": absolute, "higher_is_better": higher})

    forward = section.get("forward") or {}
    if forward:
        add("a forwarded echo adds <= 1 ms at p50 (direct to a non-owner vs to the owner; value in ms)",
            forward["added_p50_ms"], 1.0, f"{_ms(forward['forwarded']['p50_ms'])} vs {_ms(forward['local']['p50_ms'])}")
    throughput = section.get("throughput") or {}
    load = throughput.get("load") or throughput.get("multi") or {}  # "multi": runs before the lean generator
    if "redis-1" in load and "redis-2" in load:
        one, two = load["redis-1"]["echoes_per_s"], load["redis-2"]["echoes_per_s"]
        add(f"aggregate echo throughput, {load['redis-2']['sessions']} sessions via nginx: 2 workers >= 1.6x 1 worker",
            _ratio(two, one), 1.6, f"{two:,.0f}/s vs {one:,.0f}/s", higher=True)
    owner = throughput.get("load-owner") or throughput.get("owner") or {}
    if "redis-1" in owner and "redis-2" in owner:
        one, two = owner["redis-1"]["echoes_per_s"], owner["redis-2"]["echoes_per_s"]
        add("the same, requests straight to their owner (no forwarding; not the deployment the target names)",
            _ratio(two, one), 1.6, f"{two:,.0f}/s vs {one:,.0f}/s", higher=True)
    fanout = section.get("fanout") or {}
    if "in-process" in fanout and "redis-2" in fanout:
        mine, base = fanout["redis-2"]["median_ms"], fanout["in-process"]["median_ms"]
        add(f"fan-out to {fanout['redis-2']['n']} held polls: 2 workers <= 1.5x one process", _ratio(mine, base),
            1.5, f"{_ms(mine)} vs {_ms(base)}")
    return rows


def worker_markdown(section: dict[str, Any]) -> list[str]:
    """The section's lines: where it ran, four tables, the targets."""
    config = section["config"]
    lines = [
        "### Many workers (Redis)", "",
        f"Run {section.get('finished', '-')} ({'quick' if section['quick'] else 'full'} mode, "
        f"{section.get('duration_s', 0):.0f} s), {section['machine']}, {section.get('load_at_end', float('nan')):.1f} "
        f"at the end. Tornado, `use_running_loop=True`, behind one nginx (round robin, no keepalive), one "
        f"redis-server (workers' redis-py URL option `{section.get('redis_url_options', '')}`). Cores: " + "; ".join(f"{k} on {', '.join(map(str, v))}" for k, v in section["cores"].items())
        + f"{'' if section.get('pinned', True) else ' (NOT pinned)'}.", "",
        f"**Echo latency through nginx** ({config['echo_n']} round trips each, interleaved; ratio to one process "
        f"without a backend). Workers' CPU per echo: their CPU time over the run (warm-up included) per echo.", "",
        "| deployment | p50 | p90 | p99 | workers' CPU/echo |", "|---|---|---|---|---|",
    ]
    echo = section.get("echo") or {}
    base = echo.get("in-process", {})
    for key in ("in-process", "redis-1", "redis-2"):
        if key in echo:
            e = echo[key]
            cells = [f"{_ms(e[p])}{'' if key == 'in-process' else _x(_ratio(e[p], base.get(p)))}"
                     for p in ("p50_ms", "p90_ms", "p99_ms")]
            lines.append(f"| {LABELS[key]} | " + " | ".join(cells) + f" | {e['cpu_per_echo_us']:.0f} µs |")
    forward = section.get("forward")
    if forward:
        lines += ["", "**Forwarded vs local** (2 workers, no nginx: each session's requests go straight to its "
                  "owner, or always to the other worker; a session opened at each worker, pooled):", "",
                  "| requests go to | p50 | p90 | p99 |", "|---|---|---|---|"]
        for kind, label in (("local", "the owner"), ("forwarded", "the other worker (forwarded through Redis)")):
            f = forward[kind]
            lines.append(f"| {label} | {_ms(f['p50_ms'])} | {_ms(f['p90_ms'])} | {_ms(f['p99_ms'])} |")
        lines += ["", f"A forwarded echo adds **{forward['added_p50_ms']:.2f} ms** at p50. By owner: " + "; ".join(
            f"{k} p50 {_ms(v['p50_ms'])}" for k, v in forward["by_owner"].items()) + "."]
    throughput = section.get("throughput") or {}
    if throughput:
        sessions = config.get("load_sessions", config.get("rate_sessions"))
        modes = [("single", "1 session, via nginx"), ("load", f"{sessions} sessions, via nginx"),
                 ("load-owner", f"{sessions} sessions, straight to their owner")]
        modes = [(mode, title) for mode, title in modes if mode in throughput]
        lines += ["", f"**Echo throughput** (each session echoing sequentially for {config['rate_seconds']:g} s, "
                  f"{config['rate_rounds']} rounds, median; in brackets the ratio to 1 worker; the spread is the "
                  f"rounds' min-max as ratios to that median). {sessions} sessions: driven by "
                  f"{config.get('load_processes', 1)} lean generator processes (hand-written HTTP/1.1), on the "
                  "shared core. \"Straight to their owner\": the sessions opened at each worker in turn, every "
                  "request sent to that worker (what sticky sessions would give: no forwarding, no nginx).", "",
                  "| deployment | " + " | ".join(title for _, title in modes) + " |", "|---" * (len(modes) + 1) + "|"]
        for key in ("in-process", "redis-1", "redis-2"):
            cells = []
            for mode, _ in modes:
                entry = throughput[mode].get(key, {})
                rate = entry.get("echoes_per_s")
                ratio = _ratio(rate, throughput[mode].get("redis-1", {}).get("echoes_per_s"))
                spread = (f" [{min(entry['rounds']) / rate:.2f}-{max(entry['rounds']) / rate:.2f}]"
                          if rate and len(entry.get("rounds", [])) > 1 else "")
                cells.append("-" if rate is None else f"{rate:,.0f}/s{_x(ratio)}{spread}")
            lines.append(f"| {LABELS[key]} | " + " | ".join(cells) + " |")
        lines += ["", f"CPU in the median round, {sessions} sessions: cores used (1.00 is one core saturated) "
                  "and, after the slash, CPU µs per echo:", "",
                  "| deployment | requests | " + " | ".join(_CPU) + " |", "|---|---" + "|---" * len(_CPU) + "|"]
        for key in ("in-process", "redis-1", "redis-2"):
            for mode, title in modes[1:]:
                entry = throughput[mode].get(key, {})
                cpu, per = entry.get("cpu"), entry.get("cpu_us_per_echo", {})
                if cpu is not None:
                    lines.append(f"| {LABELS[key]} | {title.split(', ', 1)[1]} | " + " | ".join(
                        "-" if cpu.get(name) is None else f"{cpu[name]:.2f} / {per.get(name, 0):.0f}"
                        for name in _CPU) + " |")
    fanout = section.get("fanout") or {}
    if fanout:
        base_ms = fanout.get("in-process", {}).get("median_ms")
        n = next(iter(fanout.values()))["n"]
        lines += ["", f"**Fan-out** ({n} sessions per deployment, polls held through nginx; one broadcast "
                  f"through nginx; until the last client has it; {config['fanout_rounds']} rounds, median):", "",
                  "| deployment | fan-out | ratio to one process | rounds (ms) | received | client errors | CPU s in the "
                  "median round (" + ", ".join(_CPU) + ") |",
                  "|---|---|---|---|---|---|---|"]
        for key in ("in-process", "redis-1", "redis-2"):
            if key in fanout:
                f = fanout[key]
                ratio = _ratio(f["median_ms"], base_ms)
                rounds = ", ".join("-" if t is None else f"{t:.0f}" for t in f["rounds_ms"])
                lines.append(f"| {LABELS[key]} | {_ms(f['median_ms'])} | {'-' if ratio is None else f'{ratio:.2f}x'} "
                             f"| {rounds} | {min(f['received'])}/{f['n']} | {f['client_errors']} | "
                             + ", ".join("-" if (f.get("cpu_s") or {}).get(name) is None else f"{f['cpu_s'][name]:.2f}"
                                         for name in _CPU) + " |")
    lines += ["", "#### Targets (many workers)", "", "| check | value | absolute | result |", "|---|---|---|---|"]
    for row in worker_checks(section):
        value = "-" if row["value"] is None else f"{row['value']:.2f}"
        lines.append(f"| {row['check']} | {value} | {row['absolute']} | **{row['status']}** |")
    return lines + [""]

"""From ``results.json`` to the Markdown table, the PASS/MISS list and the PNG plots.

Every figure is shown absolute and as a ratio to the raw baseline of the same
framework in the same run (the machine is shared and noisy; only ratios taken
minutes apart are comparable across runs). ``python bench/report.py
results.json`` redraws everything from a saved file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["ratios", "checks", "markdown", "plots", "SYSTEM_ORDER"]

SYSTEM_ORDER = ("raw", "pollsession", "pollsession-rl", "engineio", "pywebio")
POLLSESSIONS = ("pollsession", "pollsession-rl")  # the systems the targets are checked for
LABELS = {"raw": "raw baseline", "pollsession": "pollsession", "pollsession-rl": "pollsession, use_running_loop",
          "engineio": "python-engineio", "pywebio": "PyWebIO (HTTP)"}
COLORS = {"raw": "#777777", "pollsession": "#1f77b4", "pollsession-rl": "#17becf", "engineio": "#d62728",
          "pywebio": "#2ca02c"}


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def metrics(framework: str, system: dict[str, Any]) -> dict[str, float | None]:
    """The flat metrics of one system: name -> value (lower is better unless it is throughput)."""
    out: dict[str, float | None] = {
        "echo_p50_ms": _get(system, "echo", "p50_ms"),
        "echo_p90_ms": _get(system, "echo", "p90_ms"),
        "echo_p99_ms": _get(system, "echo", "p99_ms"),
        "cpu_per_echo_us": _get(system, "echo", "cpu_per_echo_us"),
        "memory_kb": _get(system, "memory", "per_session_kb"),
        "throughput": _get(system, "throughput", "msgs_per_s"),
        "hold_memory_kb": _get(system, "hold", "per_session_kb"),
        "hold_broadcast_ms": _get(system, "hold", "broadcast_ms"),
    }
    for n, entry in (_get(system, "fanout") or {}).items():
        out[f"fanout_{n}_ms"] = entry.get("median_ms")
    return out


def ratios(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float | None]]]:
    """framework -> system -> metric -> value / raw value (None when either is missing)."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for framework, systems in results["systems"].items():
        raw = metrics(framework, systems.get("raw", {}))
        out[framework] = {}
        for name, system in systems.items():
            mine = metrics(framework, system)
            out[framework][name] = {key: _ratio(value, raw.get(key)) for key, value in mine.items()}
    return out


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets, each PASS, MISS or N/A, for each pollsession configuration measured."""
    rows: list[dict[str, Any]] = []
    table = ratios(results)

    def add(framework: str, system: str, name: str, value: float | None, limit: float,
            higher_is_better: bool = False, absolute: str = "") -> None:
        if value is None:
            status = "N/A"
        elif higher_is_better:
            status = "PASS" if value >= limit else "MISS"
        else:
            status = "PASS" if value <= limit else "MISS"
        rows.append({"framework": framework, "system": system, "check": name, "value": value, "limit": limit,
                     "status": status, "absolute": absolute, "higher_is_better": higher_is_better})

    for framework, systems in results["systems"].items():
        if "raw" not in systems:
            continue
        for system in (s for s in POLLSESSIONS if s in systems):
            mine = table[framework][system]
            absolute = metrics(framework, systems[system])

            def check(name: str, key: str, limit: float, fmt: Any, higher: bool = False) -> None:
                add(framework, system, name, mine.get(key), limit, higher, fmt(absolute.get(key)))

            check("echo p50 <= 1.2x raw", "echo_p50_ms", 1.2, _ms)
            check("echo p99 <= 2x raw", "echo_p99_ms", 2.0, _ms)
            fan_keys = sorted((k for k in mine if k.startswith("fanout_")), key=lambda k: int(k.split("_")[1]))
            if fan_keys:
                n = fan_keys[-1].split("_")[1]
                label = f"fan-out to {n} held polls <= 1.3x raw"
                if framework != "tornado" or n != "1000":
                    label += " (the target names 1000; largest N run here)"
                check(label, fan_keys[-1], 1.3, _ms)
            check("throughput >= 0.5x raw", "throughput", 0.5, _rate, higher=True)
            check("idle memory per held session <= 1.5x raw", "memory_kb", 1.5, _kb)
            hold = _get(systems[system], "hold")
            if hold is not None:
                rows.append({"framework": framework, "system": system,
                             "check": f"{hold['n']:,} concurrent held polls hold", "value": None, "limit": None,
                             "status": "PASS" if hold.get("holds") else "MISS",
                             "absolute": f"{hold['held']}/{hold['n']} held, {hold['broadcast_received']}/{hold['n']} "
                                         f"got the broadcast, {_kb(hold['per_session_kb'])}/session",
                             "higher_is_better": False})
                check(f"memory per held session at {hold['n']:,} <= 1.5x raw", "hold_memory_kb", 1.5, _kb)
    tornado = results["systems"].get("tornado", {})
    for system in (s for s in POLLSESSIONS if s in tornado and "engineio" in tornado):
        mine, theirs = metrics("tornado", tornado[system]), metrics("tornado", tornado["engineio"])
        for key in mine:
            if key == "hold_broadcast_ms" or mine[key] is None or theirs.get(key) is None:
                continue
            add("tornado", system, f"ahead of python-engineio: {_label(key)}", _ratio(mine[key], theirs[key]), 1.0,
                key == "throughput", f"{_fmt(key, mine[key])} vs {_fmt(key, theirs[key])}")
    return rows


def _label(key: str) -> str:
    """A metric key as words."""
    if key.startswith("fanout_"):
        return f"fan-out to {key.split('_')[1]}"
    return {"echo_p50_ms": "echo p50", "echo_p90_ms": "echo p90", "echo_p99_ms": "echo p99",
            "cpu_per_echo_us": "server CPU per echo", "memory_kb": "memory per held session",
            "throughput": "throughput", "hold_memory_kb": "memory per session in the held-polls run"}.get(key, key)


def _ms(value: float | None) -> str:
    return "-" if value is None else (f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms")


def _kb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} KiB"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}/s"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} µs"


def _fmt(key: str, value: float | None) -> str:
    if key == "throughput":
        return _rate(value)
    if key.endswith("_kb"):
        return _kb(value)
    if key.endswith("_us"):
        return _us(value)
    return _ms(value)


def _cell(key: str, value: float | None, ratio: float | None, system: str) -> str:
    text = _fmt(key, value)
    if value is None or system == "raw" or ratio is None:
        return text
    return f"{text} ({ratio:.2f}x)"


def markdown(results: dict[str, Any]) -> str:
    """The results section: versions, one table per framework, the target checks."""
    meta = results["meta"]
    table = ratios(results)
    lines = [
        f"Run {meta['finished']} ({'quick' if meta['quick'] else 'full'} mode, {meta['duration_s']:.0f} s), "
        f"{meta['machine']}, {meta.get('load_at_end', float('nan')):.1f} at the end. Servers on core "
        f"{meta['server_core']}, load generator on core {meta['client_core']}"
        f"{'' if meta.get('pinned', True) else ' (NOT pinned)'}{'; PROFILED (timings not representative)' if meta.get('profiled') else ''}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",
        "",
        "Each cell: absolute value, then (ratio to the raw baseline of the same framework, same run). "
        "Lower is better except throughput.",
        "",
    ]
    for framework, systems in results["systems"].items():
        steps = sorted({int(n) for s in systems.values() for n in (_get(s, "fanout") or {})})
        columns = [("echo_p50_ms", "echo p50"), ("echo_p90_ms", "echo p90"), ("echo_p99_ms", "echo p99"),
                   ("cpu_per_echo_us", "server CPU/echo")]
        columns += [(f"fanout_{n}_ms", f"fan-out N={n}") for n in steps]
        columns += [("memory_kb", f"memory/held session (N={steps[-1] if steps else '-'})"),
                    ("throughput", "throughput (msg/s)")]
        hold_n = next((_get(s, "hold", "n") for s in systems.values() if _get(s, "hold")), None)
        if hold_n:
            columns += [("hold_memory_kb", f"memory/session at {hold_n}"),
                        ("hold_broadcast_ms", f"broadcast to {hold_n}")]
        lines += [f"### {framework.capitalize()}", "",
                  "| system | " + " | ".join(title for _, title in columns) + " |",
                  "|---" * (len(columns) + 1) + "|"]
        for name in SYSTEM_ORDER:
            if name not in systems:
                continue
            values = metrics(framework, systems[name])
            cells = []
            for key, _ in columns:
                cell = _cell(key, values.get(key), table[framework][name].get(key), name)
                if key.startswith("hold_") and _get(systems[name], "hold") is None:
                    cell = "n/a (short-polls)" if name == "pywebio" else "-"
                if key == "memory_kb" and name == "pywebio" and cell != "-":
                    cell += " †"
                cells.append(cell)
            lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
        holds = {name: _get(s, "hold") for name, s in systems.items() if _get(s, "hold")}
        if holds:
            lines.append("")
            for name in SYSTEM_ORDER:
                hold = holds.get(name)
                if hold:
                    lines.append(
                        f"- {LABELS[name]}, {hold['n']:,} held polls: {'holds' if hold['holds'] else 'DOES NOT HOLD'} -- "
                        f"opened {hold['opened']} (failures {hold['open_failures']}) in {hold['open_seconds']:.1f} s, "
                        f"{hold['held']} held, broadcast reached {hold['broadcast_received']}, "
                        f"RSS {hold['rss0_mb']:.0f} -> {hold['rss_mb']:.0f} MiB, client errors {hold['client_errors']}.")
        lines.append("")
    lines += ["† PyWebIO short-polls: its sessions hold no poll, so this is memory per idle session.", "",
              "### Targets (pollsession)", "", "| framework | configuration | check | ratio | absolute | result |",
              "|---|---|---|---|---|---|"]
    for row in checks(results):
        ratio = "-" if row["value"] is None else f"{row['value']:.2f}x"
        lines.append(f"| {row['framework']} | {LABELS.get(row['system'], row['system'])} | {row['check']} | {ratio} "
                     f"| {row['absolute']} | **{row['status']}** |")
    if not results["systems"]:  # a file with only the many-workers section (run.py --workers alone)
        lines = []
    if results.get("workers"):
        from multi_report import worker_markdown

        lines += ["", *worker_markdown(results["workers"])]
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any], out: Path) -> list[Path]:
    """Draw the three PNGs into ``out``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frameworks = list(results["systems"])
    written: list[Path] = []
    if not frameworks:
        return written
    style: dict[str, Any] = {"dpi": 80, "bbox_inches": "tight"}

    fig, axes = plt.subplots(1, len(frameworks), figsize=(4.6 * len(frameworks), 3.2), squeeze=False)
    for ax, framework in zip(axes[0], frameworks):
        for name in SYSTEM_ORDER:
            samples = _get(results["systems"][framework], name, "echo", "samples_ms")
            if not samples:
                continue
            ordered = sorted(samples)
            ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
            ax.step(ordered, ys, where="post", label=LABELS[name], color=COLORS[name])
        ax.set_xscale("log")
        ax.set_xlabel("echo round trip (ms, log)")
        ax.set_ylabel("fraction of echoes")
        ax.set_title(f"Echo latency, {framework}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    path = out / "echo_latency.png"
    fig.savefig(path, **style)
    plt.close(fig)
    written.append(path)

    fig, axes = plt.subplots(1, len(frameworks), figsize=(4.6 * len(frameworks), 3.2), squeeze=False)
    for ax, framework in zip(axes[0], frameworks):
        for name in SYSTEM_ORDER:
            system = _get(results["systems"], framework, name) or {}
            points = sorted((int(n), e["median_ms"]) for n, e in (system.get("fanout") or {}).items()
                            if e.get("median_ms") is not None)
            hold = system.get("hold")
            if hold and hold.get("broadcast_ms") is not None:
                points.append((hold["n"], hold["broadcast_ms"]))
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=LABELS[name],
                        color=COLORS[name])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("held polls N (log)")
        ax.set_ylabel("broadcast until all got it (ms, log)")
        ax.set_title(f"Fan-out, {framework}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    path = out / "fanout.png"
    fig.savefig(path, **style)
    plt.close(fig)
    written.append(path)

    groups: list[tuple[str, str, str]] = []  # (label, framework, key)
    for framework in frameworks:
        steps = sorted({int(n) for s in results["systems"][framework].values() for n in (_get(s, "fanout") or {})})
        if steps:
            groups.append((f"{framework}\nN={steps[-1]}", framework, "memory"))
        if any(_get(s, "hold") for s in results["systems"][framework].values()):
            n = next(_get(s, "hold", "n") for s in results["systems"][framework].values() if _get(s, "hold"))
            groups.append((f"{framework}\nN={n}", framework, "hold"))
    fig, ax = plt.subplots(figsize=(1.9 * max(2, len(groups)) + 1, 3.2))
    width = 0.8 / len(SYSTEM_ORDER)
    for i, name in enumerate(SYSTEM_ORDER):
        xs, ys = [], []
        for g, (_, framework, key) in enumerate(groups):
            value = _get(results["systems"], framework, name, key, "per_session_kb")
            if value is not None:
                xs.append(g + (i - (len(SYSTEM_ORDER) - 1) / 2) * width)
                ys.append(value)
        if xs:
            ax.bar(xs, ys, width, label=LABELS[name], color=COLORS[name])
    ax.set_xticks(range(len(groups)), [g[0] for g in groups])
    ax.set_ylabel("server RSS growth / session (KiB)")
    ax.set_title("Idle memory per held session")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    path = out / "memory.png"
    fig.savefig(path, **style)
    plt.close(fig)
    written.append(path)
    return written


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "results.json")
    data = json.loads(source.read_text())
    (source.parent / "results.md").write_text(markdown(data))
    plots(data, source.parent)
    print(markdown(data))

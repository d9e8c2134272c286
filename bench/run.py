#!/usr/bin/env python3
"""Run every pollsession benchmark: ``python bench/run.py`` (add ``--quick`` for a < 60 s version).

What it does, in order (see bench/README.md for the definitions):

1. installs ``bench/requirements.txt`` (and pollsession itself, editable)
   into the current environment if something is missing, then re-runs itself;
2. re-runs itself under ``taskset -c 1``: the load generator has core 1 and
   every server process gets core 0 (``taskset -c 0``);
3. per framework (Tornado, then Flask): starts one server process per system
   (raw baseline, pollsession, pollsession with ``use_running_loop=True`` on
   Tornado, python-engineio, PyWebIO), runs the echo, fan-out/memory and
   throughput benchmarks with the systems interleaved, and stops them; on
   Tornado it then holds 10,000 polls on a fresh server of raw, pollsession
   and python-engineio in turn;
4. writes ``bench/results/results.json``, ``results.md`` and the PNG plots, and
   prints the table and the PASS/MISS list of the targets.

``--workers`` runs the many-workers benchmark instead (``bench/multi.py``:
Tornado workers on Redis behind nginx round robin) and merges its section
into the ``results.json`` already in ``--out`` (if any), so that one file
and one ``results.md`` hold both.

``--publish`` also copies results.md and the PNGs to bench/results-latest/ and
rewrites the results section of bench/README.md. ``--profile`` samples the
pollsession server with py-spy during every phase (bench/results/profile-*).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVER_CORE, CLIENT_CORE = 0, 1
NEEDED = {"aiohttp": "aiohttp", "psutil": "psutil", "matplotlib": "matplotlib", "engineio": "python-engineio",
          "pywebio": "pywebio", "tornado": "tornado", "flask": "flask"}
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def ensure_requirements(allow_install: bool) -> None:
    """Install what is missing into this interpreter's environment, then start over."""
    missing = [module for module in NEEDED if importlib.util.find_spec(module) is None]
    need_self = importlib.util.find_spec("pollsession") is None
    if not missing and not need_self:
        return
    if not allow_install or os.environ.get("POLLSESSION_BENCH_INSTALLED"):
        sys.exit(f"missing {', '.join(NEEDED[m] for m in missing) or 'pollsession'}: "
                 f"run  {sys.executable} -m pip install -e '{ROOT}[flask,tornado]' -r {HERE / 'requirements.txt'}")
    print(f"installing the benchmark requirements into {sys.prefix} ...", flush=True)
    command = [sys.executable, "-m", "pip", "install", "-q", "-r", str(HERE / "requirements.txt")]
    if need_self:
        command += ["-e", f"{ROOT}[flask,tornado]"]
    subprocess.run(command, check=True)
    os.environ["POLLSESSION_BENCH_INSTALLED"] = "1"
    os.execv(sys.executable, [sys.executable, *sys.argv])


def pin_to_client_core() -> bool:
    """Re-run under ``taskset -c 1`` unless already there; False when pinning is impossible."""
    allowed = os.sched_getaffinity(0)
    if allowed == {CLIENT_CORE}:
        return True
    if os.environ.get("POLLSESSION_BENCH_PINNED") or not {SERVER_CORE, CLIENT_CORE} <= allowed \
            or shutil.which("taskset") is None:
        print("warning: cannot pin to cores 0 and 1; running unpinned (results are less comparable)")
        return False
    os.environ["POLLSESSION_BENCH_PINNED"] = "1"
    os.execvp("taskset", ["taskset", "-c", str(CLIENT_CORE), sys.executable, *sys.argv])
    return True  # not reached


def versions() -> dict[str, str]:
    found = {"Python": platform.python_version()}
    for dist in ("tornado", "flask", "werkzeug", "python-engineio", "pywebio", "aiohttp", "psutil"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "missing"
    import pollsession

    commit = _git("rev-parse", "--short=10", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--", "pollsession", "adapters")
    found["pollsession"] = f"{pollsession.__version__} @ {commit}{' + uncommitted changes' if dirty else ''}"
    return found


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs ({model}), load average {load[0]:.1f} at start"


class Progress:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.prefix = ""

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {self.prefix}{message}", flush=True)


async def run_framework(framework: str, systems: list[str], config: Any, progress: Progress, out: Path,
                        profile: bool, hold: bool) -> dict[str, Any]:
    from loadgen import bench_echo, bench_fanout, bench_hold, bench_throughput, start_server, start_servers
    from profiling import Profiler

    results: dict[str, dict[str, Any]] = {system: {} for system in systems}
    progress.prefix = f"{framework}: "
    servers = {}
    try:
        servers = start_servers(systems, framework, core=SERVER_CORE, logs=out)
        progress(f"servers up ({', '.join(f'{s} pid {v.pid}' for s, v in servers.items())})")

        def profiled(phase: str) -> ExitStack:
            stack = ExitStack()
            for system, server in servers.items():
                if profile and system.startswith("pollsession"):
                    stack.enter_context(Profiler(server.pid, out / f"profile-{framework}-{system}-{phase}.txt"))
            return stack

        phases: list[tuple[str, Callable[..., Any]]] = [
            ("echo", bench_echo), ("fanout", bench_fanout), ("throughput", bench_throughput)]
        for phase, bench in phases:
            with profiled(phase):
                found = await bench(servers, config, progress)
            for system, value in found.items():
                if phase == "fanout":
                    results[system].update(value)
                else:
                    results[system][phase] = value
            for system, server in servers.items():
                if not server.alive():
                    raise RuntimeError(f"{framework}/{system} server died during {phase}")
    finally:
        for server in servers.values():
            server.stop()
    if hold:
        for system in (s for s in ("raw", "pollsession", "engineio") if s in systems):
            server = start_server(system, framework, core=SERVER_CORE, logs=out)
            try:
                progress.prefix = f"{framework}: {system:12s} "
                with ExitStack() as stack:
                    if profile and system == "pollsession":
                        stack.enter_context(Profiler(server.pid, out / f"profile-{framework}-{system}-hold.txt"))
                    results[system]["hold"] = await bench_hold(server, config, progress)
            finally:
                server.stop()
    progress.prefix = ""
    return results


def publish(out: Path, results: dict[str, Any], images: list[Path], table: str) -> None:
    latest = HERE / "results-latest"
    latest.mkdir(exist_ok=True)
    for image in images:
        shutil.copy2(image, latest / image.name)
    (latest / "results.md").write_text("# Latest benchmark results\n\n" + table + "\n"
                                       + "\n".join(f"![{i.stem}]({i.name})" for i in images) + "\n")
    readme = HERE / "README.md"
    text = readme.read_text()
    if README_START in text and README_END in text:
        section = (table + "\n" + "\n".join(f"![{i.stem}](results-latest/{i.name})" for i in images) + "\n")
        text = re.sub(re.escape(README_START) + ".*?" + re.escape(README_END),
                      lambda _: f"{README_START}\n{section}{README_END}", text, flags=re.S)
        readme.write_text(text)
    print(f"published to {latest} and {readme}")


def run_workers_only(args: argparse.Namespace, pinned: bool) -> None:
    """``--workers``: the many-workers section, merged into the results already in ``args.out``."""
    from deploy import problem
    from multi import MultiConfig, run_workers
    from multi_report import worker_checks
    from report import markdown

    missing = problem()
    if missing:
        sys.exit(f"the many-workers benchmark cannot run: {missing}")
    args.out.mkdir(parents=True, exist_ok=True)
    progress = Progress()
    progress.prefix = "workers: "
    config = MultiConfig.quick() if args.quick else MultiConfig()
    progress(f"{'quick' if args.quick else 'full'} run; workers on cores {SERVER_CORE} and {CLIENT_CORE}, load "
             f"generator, nginx and redis-server on core {CLIENT_CORE}{'' if pinned else ' (UNPINNED)'}")
    path = args.out / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if "meta" not in results:  # no other section yet: this run's meta stands for the file
        results = {"meta": {"quick": args.quick, "machine": machine(), "versions": versions(), "pinned": pinned,
                            "server_core": SERVER_CORE, "client_core": CLIENT_CORE, "profiled": False,
                            "started": datetime.datetime.now().isoformat(timespec="seconds"), "duration_s": 0.0,
                            "finished": "-", "load_at_end": os.getloadavg()[0]}, "systems": {}}
    section = {"quick": args.quick, "machine": machine(), "pinned": pinned,
               "started": datetime.datetime.now().isoformat(timespec="seconds"), "versions": versions()}
    try:
        section.update(asyncio.run(run_workers(config, progress, args.out, server_core=SERVER_CORE,
                                               client_core=CLIENT_CORE)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        sys.exit("interrupted: redis-server, nginx and the workers are stopped; nothing written")
    section["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    section["load_at_end"] = os.getloadavg()[0]
    results["workers"] = section
    path.write_text(json.dumps(results, indent=1))
    table = markdown(results)
    (args.out / "results.md").write_text(table)
    print()
    print(table)
    print("Targets (many workers):")
    for row in worker_checks(section):
        ratio = "" if row["value"] is None else f"{row['value']:.2f}  "
        print(f"  {row['status']:4s}  {row['check']}: {ratio}{row['absolute']}")
    print(f"\nwrote {path} and results.md in {section['duration_s']:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny version of everything, in < 60 s")
    parser.add_argument("--frameworks", default="tornado,flask", help="comma-separated (default: tornado,flask)")
    parser.add_argument("--systems", default="raw,pollsession,pollsession-rl,engineio,pywebio",
                        help="comma-separated; raw is always added (every figure is a ratio to it); "
                             "pollsession-rl (use_running_loop=True) runs on Tornado only")
    parser.add_argument("--no-hold", action="store_true", help="skip the 10,000 held polls on Tornado")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="output directory (bench/results)")
    parser.add_argument("--publish", action="store_true",
                        help="copy results.md and the PNGs to bench/results-latest/ and update bench/README.md")
    parser.add_argument("--profile", action="store_true",
                        help="sample the pollsession server with py-spy in every phase (timings not representative)")
    parser.add_argument("--no-install", action="store_true", help="fail instead of pip-installing what is missing")
    parser.add_argument("--workers", action="store_true",
                        help="run only the many-workers benchmark (Redis, nginx; bench/multi.py) and merge its "
                             "section into the results.json in --out")
    args = parser.parse_args()

    ensure_requirements(not args.no_install)
    pinned = pin_to_client_core()
    sys.path.insert(0, str(HERE))
    from loadgen import Config, raise_nofile
    from report import checks, markdown, plots
    from servers import SUPPORTED

    nofile = raise_nofile()
    if args.workers:
        run_workers_only(args, pinned)
        return
    config = Config.quick() if args.quick else Config()
    if nofile < config.hold_n + 2000:
        config.hold_n = max(100, nofile - 2000)
        print(f"warning: RLIMIT_NOFILE is {nofile}; holding {config.hold_n} polls instead")
    frameworks = [f for f in args.frameworks.split(",") if f]
    systems = ["raw", *[s for s in args.systems.split(",") if s and s != "raw"]]
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("server-*.log"):
        old.unlink()
    progress = Progress()
    progress(f"{'quick' if args.quick else 'full'} run: {', '.join(frameworks)} x {', '.join(systems)}; "
             f"servers on core {SERVER_CORE}, load generator on core {CLIENT_CORE}{'' if pinned else ' (UNPINNED)'}; "
             f"RLIMIT_NOFILE {nofile}")
    meta = {"quick": args.quick, "machine": machine(), "versions": versions(), "pinned": pinned,
            "server_core": SERVER_CORE, "client_core": CLIENT_CORE, "profiled": args.profile,
            "started": datetime.datetime.now().isoformat(timespec="seconds"), "config": vars(config)}
    results: dict[str, Any] = {"meta": meta, "systems": {}}
    for framework in frameworks:
        results["systems"][framework] = asyncio.run(run_framework(
            framework, [s for s in systems if s in SUPPORTED[framework]], config, progress, args.out, args.profile,
            hold=framework == "tornado" and not args.no_hold))
    meta["duration_s"] = time.monotonic() - progress.started
    meta["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    meta["load_at_end"] = os.getloadavg()[0]
    previous = args.out / "results.json"
    if previous.exists():  # keep the many-workers section of an earlier ``--workers`` run
        earlier = json.loads(previous.read_text()).get("workers")
        if earlier is not None:
            results["workers"] = earlier
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    (args.out / "results.md").write_text(table)
    images = plots(results, args.out)
    print()
    print(table)
    print("Targets:")
    for row in checks(results):
        ratio = "" if row["value"] is None else f"{row['value']:.2f}x  "
        print(f"  {row['status']:4s}  {row['framework']:8s} {row['system']:15s} {row['check']}: {ratio}{row['absolute']}")
    print(f"\nwrote {args.out / 'results.json'}, results.md, {', '.join(i.name for i in images)} "
          f"in {meta['duration_s']:.0f} s")
    if args.publish:
        publish(args.out, results, images, table)


if __name__ == "__main__":
    main()

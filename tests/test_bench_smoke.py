"""The benchmark suite's quick mode runs end to end (only when asked: POLLSESSION_BENCH=1).

The benchmarks need python-engineio, PyWebIO, aiohttp, psutil and matplotlib,
which the main suite does not; so this test runs only when the environment
variable ``POLLSESSION_BENCH=1`` is set, with the interpreter named by
``POLLSESSION_BENCH_PYTHON`` (default: the one running pytest), which must have
``bench/requirements.txt`` installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.utils import MS

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    os.environ.get("POLLSESSION_BENCH") != "1",
    reason="benchmark smoke test: set POLLSESSION_BENCH=1 to run bench/run.py --quick "
           "(needs bench/requirements.txt; POLLSESSION_BENCH_PYTHON picks the interpreter)",
)


def test_quick_mode_runs_everything_and_writes_every_output(tmp_path: Path) -> None:
    python = os.environ.get("POLLSESSION_BENCH_PYTHON") or sys.executable
    started = time.monotonic()
    done = subprocess.run(
        [python, str(ROOT / "bench" / "run.py"), "--quick", "--no-install", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    for name in ("results.json", "results.md", "echo_latency.png", "fanout.png", "memory.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["systems"]) == {"tornado", "flask"}
    expected = {"raw", "pollsession", "engineio", "pywebio"}
    assert set(results["systems"]["tornado"]) == expected | {"pollsession-rl"}  # use_running_loop
    assert set(results["systems"]["flask"]) == expected
    for framework, systems in results["systems"].items():
        for name, system in systems.items():
            where = f"{framework}/{name}"
            assert system["echo"]["n"] > 0 and system["echo"]["p50_ms"] > 0, where
            assert system["throughput"]["msgs_per_s"], where
            assert system["memory"]["per_session_kb"] is not None, where
            for n, entry in system["fanout"].items():
                assert entry["median_ms"] is not None, f"{where} fan-out to {n}: {entry}"
    for name in ("raw", "pollsession", "engineio"):
        assert results["systems"]["tornado"][name]["hold"]["holds"], name
    assert "PASS" in done.stdout or "MISS" in done.stdout  # the target checks were printed
    # "Under 60 s" for the quick mode, scaled like every duration of the suite on a slow machine.
    assert elapsed < 60_000 * MS, f"quick mode took {elapsed:.0f} s"

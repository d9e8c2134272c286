"""Sampling profiles of a benchmarked server with py-spy, and a plain-text summary of them.

``run.py --profile`` attaches ``py-spy record --nonblocking --threads`` to the
pollsession server for each benchmark phase and writes, per phase,
``profile-<framework>-<phase>.txt`` (collapsed stacks, for flamegraph tools or
speedscope) and ``profile-<framework>-<phase>.summary.txt``: the frames where
samples land (self) and the frames that are on the stack (inclusive), per
thread and overall. Timings of a profiled run are not representative: py-spy
shares the load generator's core.
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

_REPO = str(Path(__file__).resolve().parent.parent) + "/"  # frames in the repository show relative to it

__all__ = ["Profiler", "summarise"]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


class Profiler:
    """``with Profiler(pid, path):`` samples ``pid`` while the block runs (nothing if py-spy is missing)."""

    def __init__(self, pid: int, path: Path, *, rate: int = 200) -> None:
        self.pid = pid
        self.path = path
        self.rate = rate
        self._popen: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        beside = Path(sys.executable).parent / "py-spy"  # the venv's bin/, often not on PATH
        exe = str(beside) if beside.exists() else shutil.which("py-spy")
        if exe is None:
            print("  (py-spy not found: no profile)")
            return self
        self._popen = subprocess.Popen(
            [exe, "record", "--pid", str(self.pid), "--rate", str(self.rate), "--format", "raw", "--nonblocking",
             "--threads", "--full-filenames", "-o", str(self.path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        time.sleep(0.5)  # let it attach before the phase starts
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._popen is None:
            return
        self._popen.send_signal(signal.SIGINT)
        try:
            self._popen.wait(30)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()
        if self.path.exists():
            self.path.with_suffix(".summary.txt").write_text(summarise(self.path))


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = match["file"]
    for marker in ("site-packages/", "/lib/python3.11/", _REPO):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{match['func']} ({file}:{match['line']})" if match["line"] else f"{match['func']} ({file})"


def _function(frame: str) -> str:
    """The frame without its line number: one row per function."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    return _short(f"{match['func']} ({match['file']})")


def summarise(path: Path, top: int = 30) -> str:
    """Self and inclusive sample shares per function, per thread and overall."""
    per_thread: dict[str, list[tuple[list[str], int]]] = collections.defaultdict(list)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "?"
        # One group per kind of thread: werkzeug's "Thread-12 (process_request_thread)" are all alike.
        thread = re.sub(r"\(\d+\)|-\d+", "", thread).replace("thread : ", "thread: ")
        frames = [f for f in frames if not f.startswith(("thread", "process"))]
        per_thread[thread].append((frames, int(count)))
    total = sum(c for rows in per_thread.values() for _, c in rows)
    out = [f"{path.name}: {total} samples (non-idle) over {len(per_thread)} kinds of thread", ""]

    def block(title: str, rows: list[tuple[list[str], int]]) -> None:
        n = sum(c for _, c in rows)
        self_time: collections.Counter[str] = collections.Counter()
        inclusive: collections.Counter[str] = collections.Counter()
        modules: collections.Counter[str] = collections.Counter()
        for frames, count in rows:
            if not frames:
                continue
            self_time[_function(frames[-1])] += count
            modules[_module(frames[-1])] += count
            for name in {_function(f) for f in frames}:
                inclusive[name] += count
        out.append(f"== {title}: {n} samples ({100 * n / max(total, 1):.1f}% of all)")
        out.append("-- self time by package/module:")
        for name, count in modules.most_common(12):
            out.append(f"  {100 * count / max(n, 1):5.1f}%  {name}")
        out.append("-- self time (where samples land):")
        for name, count in self_time.most_common(top):
            out.append(f"  {100 * count / max(n, 1):5.1f}%  {name}")
        out.append("-- inclusive (on the stack):")
        for name, count in inclusive.most_common(top):
            out.append(f"  {100 * count / max(n, 1):5.1f}%  {name}")
        out.append("")

    block("all threads", [row for rows in per_thread.values() for row in rows])
    for thread, rows in sorted(per_thread.items(), key=lambda item: -sum(c for _, c in item[1]))[:4]:
        block(thread, rows)
    return "\n".join(out)


def _module(frame: str) -> str:
    match = _FRAME.match(frame)
    file = match["file"] if match else frame
    if _REPO in file:
        return file.split(_REPO, 1)[1]
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1].split("/", 1)[0]
    if "/lib/python3" in file:
        return "stdlib:" + file.rsplit("/", 1)[-1]
    return file


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1])))

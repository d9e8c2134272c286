"""The processes of the many-workers benchmark: one redis-server, one nginx, the workers.

Bench-side twins of ``tests/redis_server.py`` and ``tests/nginx.py`` (those
import pytest, which the bench environment does not have): redis-server on a
free port with persistence off; one nginx, in the foreground with every file
it writes in a temp directory, listening on one free port per deployment and
balancing each plain round robin over that deployment's workers, with the
README's configuration (HTTP/1.1 upstream, no buffering, no upstream
keepalive, no sticky sessions). Workers are ``bench/worker.py`` processes
pinned with ``taskset``. Every ``stop()`` is idempotent; :class:`Stack`
stops everything it started, in reverse, also on Ctrl-C.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from loadgen import Server

__all__ = ["NGINX", "Redis", "Nginx", "Deployment", "Stack", "free_port", "start_worker", "problem"]

HERE = Path(__file__).resolve().parent
NGINX = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else shutil.which("nginx")


def problem() -> str | None:
    """Why the many-workers benchmark cannot run here, or None."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install redis-server)"
    if NGINX is None:
        return "nginx is not installed (apt-get install nginx)"
    if importlib.util.find_spec("redis") is None:
        return f"the redis package is missing: {sys.executable} -m pip install 'redis>=5.0'"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not accept on port {port} within {timeout:g} s") from None
            time.sleep(0.02)


def _stop(process: subprocess.Popen[bytes] | None, signum: int = signal.SIGTERM) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signum)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Redis:
    core: int
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        self.process = subprocess.Popen(
            ["taskset", "-c", str(self.core), "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(self.port, self.process, "redis-server")
        return self

    def cpu(self) -> float:
        assert self.process is not None
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        _stop(self.process)


def nginx_conf(routes: dict[int, list[int]], directory: Path) -> str:
    """One ``server`` per listening port, each balancing round robin over its upstream ports."""
    user = "user root root;\n" if os.geteuid() == 0 else ""  # as root its workers would run as nobody
    upstreams, servers = [], []
    for index, (port, ports) in enumerate(routes.items()):
        members = "\n".join(f"        server 127.0.0.1:{p};" for p in ports)
        upstreams.append(f"    upstream d{index} {{\n{members}\n    }}")
        servers.append(f"""    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://d{index};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 60s;
            proxy_send_timeout 60s;
            client_max_body_size 0;
            proxy_next_upstream error timeout non_idempotent;
        }}
    }}""")
    paths = "\n".join(f"    {kind}_temp_path {directory}/{kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                                "uwsgi", "scgi"))
    return (f"{user}daemon off;\nworker_processes 1;\nworker_rlimit_nofile 65536;\npid {directory}/nginx.pid;\n"
            f"error_log {directory}/error.log warn;\nevents {{\n    worker_connections 16384;\n}}\n"
            f"http {{\n    access_log off;\n{paths}\n" + "\n".join(upstreams) + "\n" + "\n".join(servers) + "\n}\n")


@dataclass
class Nginx:
    core: int
    routes: dict[int, list[int]]  # listening port -> upstream ports
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pollsession-bench-nginx-")))
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Nginx:
        assert NGINX is not None
        conf = self.directory / "nginx.conf"
        conf.write_text(nginx_conf(self.routes, self.directory))
        self.process = subprocess.Popen(
            ["taskset", "-c", str(self.core), NGINX, "-p", str(self.directory), "-c", str(conf),
             "-e", str(self.directory / "error.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in self.routes:
            try:
                _wait_listening(port, self.process, "nginx")
            except RuntimeError as exc:
                log = self.directory / "error.log"
                raise RuntimeError(f"{exc}: {log.read_text() if log.exists() else ''}") from None
        return self

    def processes(self) -> list[psutil.Process]:
        """The master and its worker (their CPU is the balancer's cost)."""
        assert self.process is not None
        master = psutil.Process(self.process.pid)
        return [master, *master.children()]

    def stop(self) -> None:
        _stop(self.process)  # SIGTERM, nginx's fast stop (SIGQUIT would wait for the held polls)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_worker(label: str, core: int, redis_url: str | None, name: str, logs: Path | None) -> Server:
    """A ``bench/worker.py`` process on ``core``; with ``redis_url``, a RedisBackend worker of ``name``."""
    command = ["taskset", "-c", str(core), sys.executable, str(HERE / "worker.py")]
    if redis_url is not None:
        command += ["--redis", redis_url, "--name", name]
    stderr = open(logs / f"server-workers-{label}.log", "ab") if logs is not None else subprocess.DEVNULL
    try:
        popen = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=stderr, cwd=HERE)
    finally:
        if logs is not None:
            stderr.close()  # type: ignore[union-attr]
    assert popen.stdout is not None
    line = popen.stdout.readline()
    if not line:
        popen.wait()
        raise RuntimeError(f"worker {label} failed to start (exit {popen.returncode})")
    ready = json.loads(line)
    server = Server(label, "tornado", popen, int(ready["port"]), int(ready["pid"]), psutil.Process(int(ready["pid"])))
    server.worker_id = ready.get("worker_id")  # type: ignore[attr-defined]
    return server


@dataclass
class Deployment:
    """Workers behind one nginx port: ``base`` is nginx, ``workers[i].base`` a worker directly."""

    label: str
    workers: list[Server]
    port: int = field(default_factory=free_port)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu(self) -> float:
        return sum(worker.cpu() for worker in self.workers)

    def rss(self) -> int:
        return sum(worker.rss() for worker in self.workers)

    def alive(self) -> bool:
        return all(worker.alive() for worker in self.workers)


class Stack:
    """Everything started, stopped in reverse order on exit (exception and Ctrl-C included)."""

    def __init__(self) -> None:
        self._started: list[Redis | Nginx | Server] = []

    def add(self, thing: Redis | Nginx | Server) -> None:
        self._started.append(thing)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc_info: object) -> None:
        while self._started:
            self._started.pop().stop()

"""A real nginx for the tests: a plain round-robin balancer in front of N workers, on a free port.

``start_nginx(upstreams)`` returns a running :class:`Nginx`; ``stop()`` ends
it. It is Debian's nginx (``.ci/run`` installs it), run in the foreground
(``daemon off``) with every path it writes (pid, logs, temp files) in a
directory of its own, as root or as a normal user. Without nginx the tests
skip, except under ``CI``, where they fail (``nginx_or_skip``), like the
``redis_server`` fixture.

The configuration is what a deployment of pollsession behind nginx needs,
and nothing that would hide a bug of the multi-worker backend:

* Plain round robin: no ``ip_hash``, no sticky cookie, so consecutive
  requests of one session reach different workers and most are forwarded
  to the session's owner.
* Long polls: HTTP/1.1 to the workers, no response or request buffering (an
  answer goes out as the worker writes it), ``proxy_read_timeout`` well
  above the poll hold, no body limit (the app answers its own JSON 413).
* No upstream ``keepalive``: every request opens its own connection to a
  worker, so gunicorn's workers, which share one listening socket, each
  accept their share.
* A dead worker: its refused connection goes to the next worker
  (``proxy_next_upstream error timeout``, nginx's default; ``off`` would turn
  every request aimed at it into a 502). nginx retries only while nothing
  has been sent to the client, and ``non_idempotent`` lets it retry a POST
  too: every request of the protocol is idempotent (a push carries seqs the
  owner deduplicates, a poll carries its ack), so a retried one loses and
  doubles nothing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["Nginx", "NGINX", "nginx_conf", "nginx_or_skip", "nginx_problem", "start_nginx"]

# Debian's package; elsewhere, whatever "nginx" is on PATH.
NGINX = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else shutil.which("nginx")


def nginx_problem() -> str | None:
    if NGINX is None:
        return "nginx is not installed at /usr/sbin/nginx nor on PATH (apt-get install nginx)"
    return None


def nginx_or_skip() -> str:
    """The nginx binary; skips the test without one, fails it under CI."""
    problem = nginx_problem()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"nginx tests cannot run under CI: {problem}", pytrace=False)
        pytest.skip(problem)
    assert NGINX is not None
    return NGINX


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nginx_conf(port: int, upstreams: Sequence[int], directory: Path, *, read_timeout: float = 60.0) -> str:
    """The configuration: ``127.0.0.1:port`` balancing round robin over ``127.0.0.1:<each of upstreams>``."""
    servers = "\n".join(f"        server 127.0.0.1:{upstream};" for upstream in upstreams)
    # As root, nginx's workers would switch to "nobody", who cannot write our temp directory.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    return f"""{user}daemon off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    log_format upstreams '$request_method $status $request_time upstream="$upstream_addr"';
    access_log {directory}/access.log upstreams;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;

    upstream pollsession {{
        # Plain round robin: no ip_hash, no sticky sessions, no keepalive.
{servers}
    }}

    server {{
        listen 127.0.0.1:{port};

        location / {{
            proxy_pass http://pollsession;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout {read_timeout:g}s;
            proxy_send_timeout {read_timeout:g}s;
            client_max_body_size 0;
            proxy_next_upstream error timeout non_idempotent;
        }}
    }}
}}
"""


@dataclass
class Nginx:
    """One nginx process in front of ``upstreams`` (ports on 127.0.0.1)."""

    upstreams: Sequence[int]
    read_timeout: float = 60.0
    port: int = field(default_factory=_free_port)
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pollsession-nginx-")))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start nginx and return once its port accepts connections."""
        binary = nginx_or_skip()
        conf = self.directory / "nginx.conf"
        conf.write_text(nginx_conf(self.port, self.upstreams, self.directory, read_timeout=self.read_timeout))
        # -e: the log of the start itself, before the configuration is read (else /var/log/nginx).
        self.process = subprocess.Popen(
            [binary, "-p", str(self.directory), "-c", str(conf), "-e", str(self.directory / "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                stderr = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"nginx exited with {self.process.returncode}: {stderr}{self.errors()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"nginx did not accept on port {self.port} within {timeout:g} s") from None
                time.sleep(0.01)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop nginx: SIGQUIT (finish the requests in flight), SIGKILL if it has not exited by ``timeout``."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(3)  # SIGQUIT: nginx's graceful shutdown
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr is not None:
            process.stderr.close()

    def errors(self) -> str:
        """nginx's error log so far."""
        log = self.directory / "error.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def access_log(self) -> list[str]:
        log = self.directory / "access.log"
        return log.read_text(errors="replace").splitlines() if log.exists() else []

    def __enter__(self) -> Nginx:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_nginx(upstreams: Sequence[int], *, read_timeout: float = 60.0) -> Nginx:
    """A running nginx balancing over ``upstreams``; use it as a context manager, or call ``stop()``."""
    nginx = Nginx(upstreams, read_timeout=read_timeout)
    try:
        nginx.start()
    except BaseException:
        shutil.rmtree(nginx.directory, ignore_errors=True)
        raise
    return nginx

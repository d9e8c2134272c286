"""Many worker processes, one Redis, a plain round-robin nginx in front: deployments as users run them.

Every test starts real processes: a ``redis-server`` (the ``redis_server``
fixture), the workers (``examples/redis_tornado.py`` three times, or
``gunicorn -c examples/redis_gunicorn.conf.py`` with three workers), and an
nginx balancing round robin over them without sticky sessions
(``tests/nginx.py``). The clients are ``pollsession.client.Client``\\ s
talking to nginx only, so consecutive requests of one session reach
different workers and most are forwarded to the session's owner through
Redis. What each test checks:

* every echo comes back exactly once and in order (Tornado, gunicorn);
* a worker killed (SIGKILL) in the middle of the traffic: its clients end
  with 1012 within ``OWNER_GONE_DEADLINE``, never 1006 and never a hang; the
  other clients lose nothing;
* a worker stopped (SIGTERM): its clients end with 1001 at once;
* a ``Publisher`` (no sessions) reaches every client of every worker once;
* once the sessions end, Redis holds nothing of them; and what an idle
  session costs in Redis memory.

Each deployment has a name of its own, so the tests share one Redis.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import signal
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gunicorn  # noqa: F401  # a test dependency: missing, this file must fail, not skip
import pytest
import requests

from pollsession import SessionClosed
from pollsession.backends.redis import Publisher
from pollsession.client import Client
from tests.nginx import Nginx, nginx_conf, nginx_or_skip, start_nginx
from tests.test_examples import ROOT, TIMEOUT, Server, free_port, running
from tests.test_readme import README, code_block
from tests.utils import MS, wait_until

TORNADO_EXAMPLE = "examples/redis_tornado.py"
GUNICORN_CONF = "examples/redis_gunicorn.conf.py"
WORKERS = 3
WORKER_ID = re.compile(r"worker (\S{8}) ")  # the line each example prints per worker, with the backend's id

# From the SIGKILL to the last of the killed worker's clients hearing 1012.
# Its clients learn it on their next request, whichever worker it reaches: a
# poll held by the dead worker is cut (nginx retries it on another worker), a
# poll forwarded to it is given up within RedisBackend's liveness_interval
# (1 s). Measured: see the print of the test.
OWNER_GONE_DEADLINE = 10_000 * MS
# From the SIGTERM to the last of the stopped worker's clients hearing 1001:
# the worker answers their held polls (its own and those forwarded to it) at once.
GRACEFUL_CLOSE_DEADLINE = 2000 * MS


def require_nginx() -> None:
    nginx_or_skip()  # before any process starts: skip (or fail under CI) at once


# -- a deployment ------------------------------------------------------------------


@dataclass
class Worker:
    server: Server
    port: int
    worker_id: str


@dataclass
class Deployment:
    """Workers of one name on one Redis, behind one nginx."""

    name: str
    redis: Any  # tests.redis_server.RedisServer
    workers: list[Worker]
    nginx: Nginx
    worker_ids: list[str] = field(default_factory=list)  # every backend's id (gunicorn: one per worker)

    @property
    def url(self) -> str:
        return f"{self.nginx.url}/poll"

    def owner(self, client: Client) -> str:
        """The worker id of the worker that owns ``client``'s session (its id begins with it)."""
        assert client.sid is not None
        owner = client.sid[:8]
        assert owner in self.worker_ids, (owner, self.worker_ids)
        return owner

    def worker(self, worker_id: str) -> Worker:
        return next(worker for worker in self.workers if worker.worker_id == worker_id)


def worker_ids_in(server: Server, count: int) -> list[str]:
    """The ``count`` backend ids ``server`` printed (once each of its workers started)."""
    ids: list[str] = wait_until(lambda: (found := WORKER_ID.findall(server.output())) and len(found) >= count
                                and found, TIMEOUT, f"{count} worker ids in the output")
    return ids


@contextlib.contextmanager
def tornado_deployment(redis: Any, tmp_path: Path, count: int = WORKERS) -> Iterator[Deployment]:
    """``count`` processes of examples/redis_tornado.py, one name, behind nginx."""
    require_nginx()
    name = "deploy-" + secrets.token_hex(4)
    with contextlib.ExitStack() as stack:
        workers = []
        for index in range(count):
            port = free_port()
            args = [TORNADO_EXAMPLE, "--port", str(port), "--redis", redis.url, "--name", name]
            server = stack.enter_context(running(args, tmp_path / f"worker{index}", port=port))
            workers.append(Worker(server, port, worker_ids_in(server, 1)[0]))
        nginx = stack.enter_context(start_nginx([worker.port for worker in workers]))
        yield Deployment(name, redis, workers, nginx, [worker.worker_id for worker in workers])
        for worker in workers:
            assert "Traceback" not in worker.server.errors(), worker.server.errors()


def open_clients(url: str, count: int) -> list[Client]:
    clients: list[Client] = []
    try:
        for _ in range(count):
            clients.append(Client(url, request_timeout=TIMEOUT))
    except BaseException:
        close_all(clients)
        raise
    return clients


def close_all(clients: list[Client]) -> None:
    with ThreadPoolExecutor(max(1, len(clients))) as pool:
        list(pool.map(lambda client: client.close(timeout=TIMEOUT), clients))


# -- echoes --------------------------------------------------------------------------


@dataclass
class Echoes:
    """What one client's ``echo`` saw: the echoes in arrival order, and how it ended."""

    label: str
    received: list[Any] = field(default_factory=list)
    closed: int | None = None  # the close code, if the session ended
    closed_at: float | None = None  # monotonic
    error: str = ""

    def expected(self, count: int) -> list[str]:
        return [f"{self.label} {n}" for n in range(count)]


def echo(client: Client, echoes: Echoes, count: int, window: int) -> Echoes:
    """Send ``count`` messages, ``window`` at a time, and read each window's echoes.

    Then one more, ``"end"``: it comes back right after the last echo, which
    proves no echo came twice (a duplicate would have come first). Records a
    close instead of raising it.
    """
    try:
        for start in range(0, count, window):
            texts = [f"{echoes.label} {n}" for n in range(start, min(count, start + window))]
            for text in texts:
                client.send(text)
            for _ in texts:
                echoes.received.append(client.receive(timeout=TIMEOUT))
        client.send("end")
        echoes.received.append(client.receive(timeout=TIMEOUT))
    except SessionClosed as closed:
        echoes.closed, echoes.closed_at = closed.code, time.monotonic()
    except Exception as error:  # noqa: BLE001  # recorded, and asserted on by the caller
        echoes.error = f"after {len(echoes.received)} echoes: {type(error).__name__}: {error}"
    return echoes


def echo_all(clients: list[Client], count: int, window: int) -> list[Echoes]:
    """Every client echoes ``count`` messages at once, each on a thread of its own."""
    runs = [Echoes(f"client{index}") for index in range(len(clients))]
    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(lambda pair: echo(pair[0], pair[1], count, window), zip(clients, runs)))
    return runs


def assert_exact(run: Echoes, count: int) -> None:
    assert run.error == "" and run.closed is None, (run.label, run.error, run.closed)
    assert run.received == [*run.expected(count), "end"], f"{run.label}: echoes lost, doubled or out of order"


def upstream_shares(nginx: Nginx) -> dict[str, int]:
    """How many requests nginx passed to each upstream address (its access log)."""
    shares: dict[str, int] = {}
    for line in nginx.access_log():
        match = re.search(r'upstream="([^"]*)"', line)
        assert match, line
        for address in match.group(1).split(", "):  # "a, b" when nginx passed the request on
            shares[address] = shares.get(address, 0) + 1
    return shares


# -- the deployments ---------------------------------------------------------------------

ECHO_CLIENTS = 20
ECHO_MESSAGES = 200
WINDOW = 10  # messages sent before their echoes are read: many requests, most of them forwarded


def test_tornado_workers_echo_exactly_once_in_order(redis_server: Any, tmp_path: Path) -> None:
    with tornado_deployment(redis_server, tmp_path) as deployment:
        clients = open_clients(deployment.url, ECHO_CLIENTS)
        try:
            owners = {deployment.owner(client) for client in clients}
            started = time.monotonic()
            runs = echo_all(clients, ECHO_MESSAGES, WINDOW)
            elapsed = time.monotonic() - started
        finally:
            close_all(clients)
        shares = upstream_shares(deployment.nginx)
    for run in runs:
        assert_exact(run, ECHO_MESSAGES)
    assert owners == set(deployment.worker_ids), owners  # sessions on every worker
    total = sum(shares.values())
    assert set(shares) == {f"127.0.0.1:{worker.port}" for worker in deployment.workers}, shares
    # Round robin: each worker took about a third of the requests, so about two thirds were forwarded.
    assert all(share > total / (2 * WORKERS) for share in shares.values()), shares
    print(f"tornado: {ECHO_CLIENTS} clients x {ECHO_MESSAGES} echoes in {elapsed:.2f} s over {total} requests "
          f"{sorted(shares.values())}")


GUNICORN_CLIENTS = 20
GUNICORN_MESSAGES = 200


def test_gunicorn_workers_echo_exactly_once_in_order(redis_server: Any, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    require_nginx()
    conf = (ROOT / GUNICORN_CONF).read_text()
    assert "workers = 3" in conf and 'worker_class = "gthread"' in conf and "threads = 8" in conf, conf
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("POLLSESSION_NAME", name := "deploy-" + secrets.token_hex(4))
    port = free_port()
    access_log = tmp_path / "access.log"  # which worker process served each request, for which session
    args = ["-m", "gunicorn", "-c", GUNICORN_CONF, "--no-control-socket", "--access-logfile", str(access_log),
            "--access-logformat", "%(p)s %({pollsession-id}i)s %(s)s"]
    with running(args, tmp_path / "gunicorn", port=port) as server:
        worker_ids = worker_ids_in(server, WORKERS)
        # One upstream, the port the workers share: each request opens its own connection
        # (no upstream keepalive), and whichever worker accepts it answers.
        with start_nginx([port]) as nginx:
            deployment = Deployment(name, redis_server, [], nginx, worker_ids)
            clients = open_clients(deployment.url, GUNICORN_CLIENTS)
            try:
                owners = [deployment.owner(client) for client in clients]
                started = time.monotonic()
                runs = echo_all(clients, GUNICORN_MESSAGES, WINDOW)
                elapsed = time.monotonic() - started
            finally:
                close_all(clients)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(TIMEOUT) == 0, server.errors()
    for run in runs:
        assert_exact(run, GUNICORN_MESSAGES)
    assert "Traceback" not in server.errors(), server.errors()
    worker_of_pid = {pid: worker_id for worker_id, pid in re.findall(r"worker (\S{8}) in process (\d+)",
                                                                    server.output())}
    served: dict[str, int] = {}
    forwarded = 0
    for line in access_log.read_text().splitlines():
        pid, sid, _status = line.split()
        worker_id = worker_of_pid[pid.strip("<>")]
        served[worker_id] = served.get(worker_id, 0) + 1
        forwarded += sid != "-" and sid[:8] != worker_id
    total = sum(served.values())
    # The kernel hands each connection to whichever worker accepts first: not evenly, but to several.
    assert len(served) >= 2 and forwarded > 0, (served, forwarded)
    spread = sorted(owners.count(worker_id) for worker_id in worker_ids)
    print(f"gunicorn: {GUNICORN_CLIENTS} clients x {GUNICORN_MESSAGES} echoes in {elapsed:.2f} s; sessions per "
          f"worker {spread}; requests per worker {sorted(served.values())}, {forwarded} of {total} forwarded")


KILL_CLIENTS = 15
KILL_MESSAGES = 300  # far more than the clients echo before the kill: the traffic goes on around it
KILL_AFTER = 30  # echoes every client has had before the kill


def test_a_killed_worker_ends_its_sessions_with_1012_and_no_others(redis_server: Any, tmp_path: Path) -> None:
    with tornado_deployment(redis_server, tmp_path) as deployment:
        clients = open_clients(deployment.url, KILL_CLIENTS)
        try:
            owners = [deployment.owner(client) for client in clients]
            victim = deployment.worker(owners[0])
            runs = [Echoes(f"client{index}") for index in range(len(clients))]
            with ThreadPoolExecutor(len(clients)) as pool:
                futures = [pool.submit(echo, client, run, KILL_MESSAGES, 5) for client, run in zip(clients, runs)]
                wait_until(lambda: all(len(run.received) >= KILL_AFTER or run.error for run in runs), TIMEOUT,
                           f"every client to have {KILL_AFTER} echoes")
                victim.server.process.kill()
                killed = time.monotonic()
                for future in futures:
                    future.result(timeout=OWNER_GONE_DEADLINE + TIMEOUT)  # never a hang
        finally:
            close_all(clients)
    delays = []
    for owner, run in zip(owners, runs):
        if owner == victim.worker_id:
            assert run.error == "", (run.label, run.error)
            assert run.closed == 1012, (run.label, run.closed)  # never 1006
            assert run.closed_at is not None
            delays.append(run.closed_at - killed)
            assert run.received == run.expected(len(run.received)), f"{run.label}: echoes out of order"
        else:
            assert_exact(run, KILL_MESSAGES)
    assert delays, "the killed worker owned no session"
    assert max(delays) < OWNER_GONE_DEADLINE, delays
    print(f"SIGKILL: {len(delays)} of {len(runs)} clients ended with 1012 after "
          f"{statistics.median(delays) * 1000:.0f} ms (median), {max(delays) * 1000:.0f} ms (last); "
          f"the other {len(runs) - len(delays)} echoed all {KILL_MESSAGES}")


STOP_CLIENTS = 15


def test_a_stopped_worker_ends_its_sessions_with_1001_at_once(redis_server: Any, tmp_path: Path) -> None:
    with tornado_deployment(redis_server, tmp_path) as deployment:
        clients = open_clients(deployment.url, STOP_CLIENTS)
        try:
            for run in echo_all(clients, 1, 1):  # each client's next poll is held (here or forwarded)
                assert_exact(run, 1)
            owners = [deployment.owner(client) for client in clients]
            victim = deployment.worker(owners[0])
            stopped = time.monotonic()
            victim.server.process.send_signal(signal.SIGTERM)
            delays = []
            for owner, client in zip(owners, clients):
                if owner != victim.worker_id:
                    continue
                with pytest.raises(SessionClosed) as closed:
                    client.receive(timeout=max(0.0, stopped + GRACEFUL_CLOSE_DEADLINE - time.monotonic()))
                assert closed.value.code == 1001, closed.value
                delays.append(time.monotonic() - stopped)
            assert victim.server.process.wait(TIMEOUT) == 0, victim.server.errors()
            exited = time.monotonic() - stopped
            others = [client for owner, client in zip(owners, clients) if owner != victim.worker_id]
            for run in echo_all(others, 20, 5):  # the other workers' sessions go on
                assert_exact(run, 20)
        finally:
            close_all(clients)
    assert delays and max(delays) < GRACEFUL_CLOSE_DEADLINE, delays
    print(f"SIGTERM: {len(delays)} of {len(clients)} clients ended with 1001 after "
          f"{max(delays) * 1000:.0f} ms (last); the worker exited after {exited * 1000:.0f} ms")


PUBLISHER_CLIENTS = 30


def test_a_publisher_reaches_every_client_of_every_worker_once(redis_server: Any, tmp_path: Path) -> None:
    with tornado_deployment(redis_server, tmp_path) as deployment:
        clients = open_clients(deployment.url, PUBLISHER_CLIENTS)
        try:
            owners = [deployment.owner(client) for client in clients]
            assert set(owners) == set(deployment.worker_ids), owners
            with Publisher(redis_server.url, name=deployment.name) as publisher:
                assert publisher.broadcast({"news": 1}) == WORKERS  # every worker is subscribed
                assert publisher.broadcast({"news": 2}) == WORKERS

            def hears(client: Client) -> list[Any]:
                heard = [client.receive(timeout=TIMEOUT), client.receive(timeout=TIMEOUT)]
                client.send("end")  # comes back after anything broadcast before it
                return [*heard, client.receive(timeout=TIMEOUT)]

            with ThreadPoolExecutor(len(clients)) as pool:
                heard = list(pool.map(hears, clients))
            # And one from a session: the example broadcasts {"broadcast": text} to everyone.
            clients[0].send({"broadcast": "from client0"})
            with ThreadPoolExecutor(len(clients)) as pool:
                heard_too = list(pool.map(lambda client: client.receive(timeout=TIMEOUT), clients))
        finally:
            close_all(clients)
    assert heard == [[{"news": 1}, {"news": 2}, "end"]] * PUBLISHER_CLIENTS, heard
    assert heard_too == [{"broadcast": "from client0"}] * PUBLISHER_CLIENTS, heard_too
    print(f"Publisher: {PUBLISHER_CLIENTS} clients, sessions per worker "
          f"{sorted(owners.count(worker_id) for worker_id in set(owners))}")


IDLE_SESSIONS = 200


def key_bytes(store: Any, name: str) -> int:
    """What the keys of deployment ``name`` take in Redis (MEMORY USAGE, summed)."""
    return sum(store.memory_usage(key) or 0 for key in store.keys(f"{name}:*"))


def test_redis_keeps_nothing_of_the_sessions(redis_server: Any, tmp_path: Path) -> None:
    import redis

    store: Any = redis.Redis.from_url(redis_server.url)
    try:
        with tornado_deployment(redis_server, tmp_path) as deployment, requests.Session() as http:
            name, worker_ids = deployment.name, deployment.worker_ids
            clients = open_clients(deployment.url, WORKERS * 3)
            try:
                clients[0].send({"broadcast": "hello"})  # the deployment's broadcast counter now exists
                for client in clients:
                    assert client.receive(timeout=TIMEOUT) == {"broadcast": "hello"}
            finally:
                close_all(clients)
            # Idle sessions: opened (round robin over the workers), never polled.
            before, keys_before = int(store.info("memory")["used_memory"]), key_bytes(store, name)
            sids = []
            for _ in range(IDLE_SESSIONS):
                response = http.get(deployment.url, timeout=TIMEOUT)
                assert response.status_code == 200, response.text
                sids.append(response.json()["sid"])
            after, keys_after = int(store.info("memory")["used_memory"]), key_bytes(store, name)
            keys_with_sessions = {key.decode() for key in store.keys(f"{name}:*")}
            for sid in sids:  # each DELETE through nginx: mostly forwarded to the owner
                response = http.delete(deployment.url, headers={"Pollsession-Id": sid}, timeout=TIMEOUT)
                assert response.status_code == 204, response.text
            running_keys = {key.decode(): store.pttl(key) for key in store.keys(f"{name}:*")}
        # Every worker stopped (SIGTERM), and every session with it.
        stopped_keys = {key.decode(): store.pttl(key) for key in store.keys(f"{name}:*")}
        stopped_keys = {key: ttl for key, ttl in stopped_keys.items() if ttl != -2}  # -2: expired meanwhile
    finally:
        store.close()
    per_session = (after - before) / IDLE_SESSIONS
    alive = {f"{name}:worker:{worker_id}:alive" for worker_id in worker_ids}
    known = {f"{name}:worker:{worker_id}:known" for worker_id in worker_ids}
    counter = f"{name}:broadcast:number"
    # While the workers run: keys of the workers and of the deployment, none of a session.
    assert keys_with_sessions == set(running_keys), (keys_with_sessions, running_keys)  # no key of a session
    per_worker = {key for key in running_keys if re.fullmatch(rf"{name}:worker:({'|'.join(worker_ids)}):\w+", key)}
    assert set(running_keys) - per_worker <= {counter, f"{name}:workers"}, running_keys
    assert all(running_keys[key] > 0 for key in per_worker), running_keys  # they expire by themselves
    # Once they stopped: the liveness keys, expiring (the short "alive" ones may be gone already), and
    # the broadcast counter, which must outlive them.
    assert known | {counter} <= set(stopped_keys) <= alive | known | {counter}, stopped_keys
    assert all(stopped_keys[key] > 0 for key in set(stopped_keys) - {counter}), stopped_keys
    assert stopped_keys[counter] == -1, stopped_keys
    # used_memory moves with the client connections' buffers too, by more than the sessions could add.
    print(f"Redis: {per_session:.1f} bytes of used_memory per idle session ({before} before, {after} with "
          f"{IDLE_SESSIONS} idle sessions); the deployment's keys {keys_before} bytes before, {keys_after} with "
          f"them ({(keys_after - keys_before) / IDLE_SESSIONS:.1f} per session, {len(keys_with_sessions)} keys); "
          f"keys while running: {sorted(running_keys)}")


# -- a graceful stop, while forwarding others' polls ---------------------------------------

EXIT_DEADLINE = 2000 * MS


def test_a_stopped_worker_exits_at_once_though_it_forwards_held_polls(redis_server: Any, tmp_path: Path) -> None:
    with tornado_deployment(redis_server, tmp_path) as deployment:
        clients = open_clients(deployment.url, STOP_CLIENTS)
        try:
            for run in echo_all(clients, 1, 1):  # every next poll is held: a third of them forwarded by each worker
                assert_exact(run, 1)
            victim = deployment.workers[0]
            stopped = time.monotonic()
            victim.server.process.send_signal(signal.SIGTERM)
            assert victim.server.process.wait(TIMEOUT) == 0, victim.server.errors()
            exited = time.monotonic() - stopped
        finally:
            close_all(clients)
    assert exited < EXIT_DEADLINE, f"the worker exited {exited:.2f} s after its SIGTERM"


# -- the README is what these tests run -------------------------------------------------


def test_readme_gunicorn_config_is_the_one_the_test_runs() -> None:
    conf = (ROOT / GUNICORN_CONF).read_text()
    assert code_block(conf.splitlines()[0]) == conf


def test_readme_tornado_lines_are_the_example_s() -> None:
    example = {line.strip() for line in (ROOT / TORNADO_EXAMPLE).read_text().splitlines()}
    snippet = code_block(f"# from {TORNADO_EXAMPLE}").splitlines()[1:]
    assert snippet and all(line.strip() in example for line in snippet), snippet


def test_readme_nginx_block_is_the_one_the_tests_run(tmp_path: Path) -> None:
    match = re.search(r"```nginx\n(.*?)```", README, flags=re.S)
    assert match, "README has no nginx block"
    generated = {line.strip() for line in nginx_conf(80, [8001, 8002, 8003], tmp_path).splitlines()}
    readme = [line.strip() for line in match.group(1).splitlines()]
    missing = [line for line in readme if line and not line.startswith(("#", "listen ")) and line not in generated]
    assert not missing, f"README's nginx lines the tests do not run: {missing}"

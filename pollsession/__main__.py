"""``python -m pollsession``: command-line tools; for now, the chat demo.

::

    python -m pollsession --version
    python -m pollsession demo [--adapter tornado|flask] [--host 127.0.0.1] [--port 8000]
                               [--nick-timeout 60] [--clock-interval 5]
                               [--redis redis://127.0.0.1:6379/0 [--workers 3]]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pollsession import __version__

__all__ = ["main", "build_parser"]


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535 (0: any free port), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pollsession",
        description="pollsession: a WebSocket-like session over HTTP long-polling.",
        epilog="Try: python -m pollsession demo   (options: python -m pollsession demo --help)",
    )
    parser.add_argument("--version", action="version", version=f"pollsession {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="serve a small chat to try pollsession in a browser",
        description=(
            "Serve a small chat: open the printed URL in two browser tabs. Rooms are chosen by URL "
            "(/room/<name>); a clock is pushed to every session. Stop with Ctrl-C (or SIGTERM): every "
            "session is closed with 1001."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--adapter", choices=("tornado", "flask"), default="tornado",
                      help="the web framework that serves the demo")
    demo.add_argument("--host", default="127.0.0.1",
                      help="the address to listen on (0.0.0.0: every interface, for other machines too)")
    demo.add_argument("--port", type=_port, default=8000, help="the port to listen on (0: any free port)")
    demo.add_argument("--nick-timeout", type=_positive_seconds, default=60.0, metavar="SECONDS",
                      help="a session without an accepted nickname this long after it opened (the page "
                           "opens it as it loads) is closed with 1008")
    demo.add_argument("--clock-interval", type=_positive_seconds, default=5.0, metavar="SECONDS",
                      help="how often the clock is pushed to every session")
    demo.add_argument("--redis", metavar="URL", default=None,
                      help="keep the sessions and the chat in this Redis (needs pollsession[redis]), so that "
                           "several workers, or several demos started with the same URL behind one balancer, "
                           "serve one chat; default: in this process")
    demo.add_argument("--workers", type=_workers, default=1, metavar="N",
                      help="serve with N processes sharing the port (needs --redis; Linux, macOS, BSD)")
    return parser


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of workers, got {text!r}") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"expected from 1 to 64 workers, got {value}")
    return value


REDIS_NAME = "pollsession-demo"
"""The deployment name the demo's sessions and chat use in Redis (``RedisBackend(name=...)``)."""


def _redis_problem(url: str) -> str | None:
    """Why the demo cannot use the Redis at ``url``, or None; checked before any worker starts."""
    try:
        import redis
    except ModuleNotFoundError:
        return "--redis needs redis-py, which is not installed: pip install 'pollsession[redis]'"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    except ValueError as error:
        return f"--redis {url!r} is not a Redis URL: {error}"
    try:
        client.ping()
    except (redis.RedisError, OSError) as error:
        return f"cannot reach Redis at {url}: {error}"
    finally:
        client.close()
    return None


def _run_demo(args: argparse.Namespace) -> int:
    from pollsession.demo import WILDCARD_HOSTS, Chat, MissingFramework, require_framework, serve, serve_workers

    try:
        require_framework(args.adapter)
    except MissingFramework as error:
        print(f"pollsession demo: {error}", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.workers > 1 and args.redis is None:
        print("pollsession demo: --workers needs --redis: workers share their sessions and chat through Redis",
              file=sys.stderr)
        return 2
    if args.redis is not None:
        problem = _redis_problem(args.redis)
        if problem is not None:
            print(f"pollsession demo: {problem}", file=sys.stderr)
            return 1

    def make_chat() -> Chat:
        options: dict[str, Any] = {}
        if args.redis is not None:
            from pollsession.backends.redis import RedisBackend
            from pollsession.demo import RedisStore

            options.update(backend=RedisBackend(args.redis, name=REDIS_NAME),
                           store=RedisStore(args.redis, name=REDIS_NAME, clock_interval=args.clock_interval))
        # On Tornado the sessions share Tornado's loop, so that the shutdown
        # answers every held poll before the loop ends.
        return Chat(nick_timeout=args.nick_timeout, clock_interval=args.clock_interval,
                    use_running_loop=args.adapter == "tornado", **options)

    where = "" if args.redis is None else f", {args.workers} worker{'s' if args.workers > 1 else ''} on Redis"

    def ready(url: str) -> None:
        print(f"pollsession demo ({args.adapter}{where}): open {url}/ in two browser tabs (Ctrl-C to stop)",
              flush=True)
        if args.host in WILDCARD_HOSTS:
            port = url.rsplit(":", 1)[1]
            print(f"pollsession demo: listening on every interface ({args.host or '0.0.0.0'}): from another "
                  f"machine, open http://<this machine's address>:{port}/", flush=True)

    try:
        if args.workers > 1:
            status = serve_workers(args.adapter, make_chat, args.workers, host=args.host, port=args.port,
                                   ready=ready)
        else:
            serve(args.adapter, make_chat(), host=args.host, port=args.port, ready=ready)
            status = 0
    except OSError as error:  # most often: the port is taken
        print(f"pollsession demo: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    except RuntimeError as error:  # several workers where fork() is missing
        print(f"pollsession demo: {error}", file=sys.stderr)
        return 1
    print("pollsession demo: stopped", flush=True)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _run_demo(args)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

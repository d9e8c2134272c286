"""The event-loop thread that runs every session of a handler.

Thread-safety
-------------

One :class:`EventLoopThread` owns one asyncio loop, running in one daemon
thread that it starts on first use, so there is no "forgot to start the loop"
failure mode (and nothing is started before a ``fork``). All session state
lives on that loop. The only way in from another thread is :meth:`submit`
(run a coroutine there and get a ``concurrent.futures.Future``); every other
object in pollsession is touched from the loop thread only. :meth:`stop` is idempotent.

With ``borrow_running_loop=True`` it starts no thread: on first use it takes
the loop running in the calling thread (an async framework's), and the rules
are the same; :meth:`stop` then leaves that loop running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["EventLoopThread", "LoopStopped"]

T = TypeVar("T")
logger = logging.getLogger("pollsession")


class LoopStopped(RuntimeError):
    """The loop thread was stopped; nothing more can run on it."""


class EventLoopThread:
    """One asyncio loop in one daemon thread, started lazily, stopped once."""

    def __init__(self, name: str = "pollsession-loop", *, borrow_running_loop: bool = False) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._borrow = borrow_running_loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop, started if needed. Use it from other threads only through submit/call_soon."""
        with self._lock:
            return self._ensure_started()

    def start(self) -> None:
        """Start the thread now (borrowing: take the loop running in the calling thread)."""
        with self._lock:
            self._ensure_started()

    @property
    def started(self) -> bool:
        """Whether the thread has been started (it starts on first use)."""
        return self._thread is not None

    def in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the loop; safe from any thread. Raises LoopStopped after stop()."""
        with self._lock:
            try:
                loop = self._ensure_started()
            except RuntimeError:  # stopped, or no loop to borrow: the coroutine will never run
                coro.close()
                raise
            return asyncio.run_coroutine_threadsafe(coro, loop)

    def stop(self) -> None:
        """Stop the loop, cancel what still runs on it, and join the thread. Idempotent.

        A borrowed loop is left running: it belongs to someone else.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None or self._borrow:
            return
        if threading.current_thread() is thread:
            raise RuntimeError("EventLoopThread.stop() cannot be called from its own loop thread")
        loop.call_soon_threadsafe(loop.stop)
        thread.join()

    def _ensure_started(self) -> asyncio.AbstractEventLoop:
        if self._stopped:
            raise LoopStopped("the pollsession event loop has been stopped")
        if self._loop is None and self._borrow:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError(
                    "use_running_loop=True: the handler is first used outside a running event loop; "
                    "its first request (or submit) must come from the loop it should run on"
                ) from None
            self._thread = threading.current_thread()
        if self._loop is None:
            started = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(started,), name=self._name, daemon=True)
            self._thread.start()
            started.wait()
        assert self._loop is not None
        return self._loop

    def _run(self, started: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        started.set()
        try:
            loop.run_forever()
        finally:
            try:
                _cancel_remaining(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel every task left on the loop and let each finish, as asyncio.run does."""
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            logger.error("task %r raised during shutdown", task, exc_info=task.exception())

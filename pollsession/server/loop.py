"""The event-loop thread that runs every session of a handler.

Thread-safety
-------------

One :class:`EventLoopThread` owns one asyncio loop, running in one daemon
thread that it starts on first use, so there is no "forgot to start the loop"
failure mode (and nothing is started before a ``fork``). All session state
lives on that loop. The only way in from another thread is to run a
coroutine there: :meth:`submit` from any thread (it returns a
``concurrent.futures.Future``), or its async form :meth:`run_from_loop` from
a task of another running loop (Tornado's, by default), which costs one
wake-up each way and no chained futures. Every other object in pollsession
is touched from the loop thread only. :meth:`stop` is idempotent.

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
            future: concurrent.futures.Future[T] = concurrent.futures.Future()
            submission = _Submission(coro, future, loop)
            loop.call_soon_threadsafe(submission.start)
        future.add_done_callback(submission.abandon_if_cancelled)
        return future

    def run_from_loop(self, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Run ``coro`` on this loop for a task of another running loop: await the result there.

        The async form of :meth:`submit`, for the loop that calls it (a
        framework's): the coroutine starts with one ``call_soon_threadsafe``
        and its result comes back with one more, about half what
        ``run_coroutine_threadsafe`` and ``wrap_future`` cost together.
        Cancelling the returned future cancels the coroutine's task. If the
        task is cancelled here (the loop stopping), the future is cancelled.
        Raises LoopStopped after stop().
        """
        caller = asyncio.get_running_loop()
        answer: asyncio.Future[T] = caller.create_future()
        with self._lock:
            try:
                loop = self._ensure_started()
            except RuntimeError:
                coro.close()
                raise
            crossing = _Crossing(coro, answer, caller, loop)
            loop.call_soon_threadsafe(crossing.start)
        answer.add_done_callback(crossing.abandon_if_cancelled)
        return answer

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


class _Submission:
    """One coroutine run by :meth:`EventLoopThread.submit`: ``run_coroutine_threadsafe`` without chained futures.

    ``start``, ``finished`` and ``cancel`` run on the loop (in the order they
    were scheduled, so ``cancel`` finds the task ``start`` made);
    ``abandon_if_cancelled`` runs in whichever thread cancelled the future.
    """

    __slots__ = ("_coro", "_future", "_loop", "_task")

    def __init__(self, coro: Coroutine[Any, Any, Any], future: concurrent.futures.Future[Any],
                 loop: asyncio.AbstractEventLoop) -> None:
        self._coro = coro
        self._future = future
        self._loop = loop
        self._task: asyncio.Task[Any] | None = None

    def start(self) -> None:
        self._task = self._loop.create_task(self._coro)
        self._task.add_done_callback(self.finished)

    def finished(self, task: asyncio.Task[Any]) -> None:
        try:
            if task.cancelled():
                self._future.cancel()
            elif task.exception() is not None:
                self._future.set_exception(task.exception())
            else:
                self._future.set_result(task.result())
        except concurrent.futures.InvalidStateError:  # cancelled by its holder meanwhile
            pass

    def abandon_if_cancelled(self, future: concurrent.futures.Future[Any]) -> None:
        if not future.cancelled():
            return
        try:
            self._loop.call_soon_threadsafe(self.cancel)
        except RuntimeError:  # the loop is closed: its task is gone already
            pass

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


class _Crossing:
    """One coroutine run by :meth:`EventLoopThread.run_from_loop`, between the two loops.

    ``start``, ``finished`` and ``cancel`` run on the target loop; ``settle``
    and ``abandon_if_cancelled`` on the caller's. Callbacks of one loop run
    in the order they were scheduled, so ``cancel`` always finds the task
    that ``start`` made.
    """

    __slots__ = ("_coro", "_answer", "_caller", "_loop", "_task")

    def __init__(self, coro: Coroutine[Any, Any, Any], answer: asyncio.Future[Any],
                 caller: asyncio.AbstractEventLoop, loop: asyncio.AbstractEventLoop) -> None:
        self._coro = coro
        self._answer = answer
        self._caller = caller
        self._loop = loop
        self._task: asyncio.Task[Any] | None = None

    def start(self) -> None:
        self._task = self._loop.create_task(self._coro)
        self._task.add_done_callback(self.finished)

    def finished(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            outcome: tuple[bool, Any] | None = None
        else:
            error = task.exception()
            outcome = (False, error) if error is not None else (True, task.result())
        try:
            self._caller.call_soon_threadsafe(self.settle, outcome)
        except RuntimeError:  # the caller's loop is closed: nobody waits for the answer
            pass

    def settle(self, outcome: tuple[bool, Any] | None) -> None:
        if self._answer.done():  # the caller gave up
            return
        if outcome is None:
            self._answer.cancel()
        elif outcome[0]:
            self._answer.set_result(outcome[1])
        else:
            self._answer.set_exception(outcome[1])

    def abandon_if_cancelled(self, answer: asyncio.Future[Any]) -> None:
        if not answer.cancelled():
            return
        try:
            self._loop.call_soon_threadsafe(self.cancel)
        except RuntimeError:  # the target loop is closed: its task is gone already
            pass

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


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

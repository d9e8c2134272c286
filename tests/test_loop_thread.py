"""EventLoopThread's two ways in: submit from any thread, run_from_loop from another loop.

Plain calls with real threads and loops; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from pollsession.server.loop import EventLoopThread, LoopStopped

DEADLINE = 5.0


@pytest.fixture
def loop_thread() -> Iterator[EventLoopThread]:
    thread = EventLoopThread("test-loop")
    yield thread
    thread.stop()


async def whose_thread() -> str:
    return threading.current_thread().name


def test_run_from_loop_runs_on_the_loop_thread_and_returns_its_result(loop_thread: EventLoopThread) -> None:
    async def caller() -> str:
        return await asyncio.wait_for(loop_thread.run_from_loop(whose_thread()), DEADLINE)

    assert asyncio.run(caller()) == "test-loop"
    assert loop_thread.submit(whose_thread()).result(DEADLINE) == "test-loop"


def test_run_from_loop_raises_what_the_coroutine_raised(loop_thread: EventLoopThread) -> None:
    async def fails() -> None:
        raise KeyError("inside")

    async def caller() -> None:
        await asyncio.wait_for(loop_thread.run_from_loop(fails()), DEADLINE)

    with pytest.raises(KeyError, match="inside"):
        asyncio.run(caller())


def test_cancelling_the_caller_cancels_the_task_on_the_loop(loop_thread: EventLoopThread) -> None:
    started, cancelled = threading.Event(), threading.Event()

    async def held() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def caller() -> None:
        waiting = asyncio.ensure_future(loop_thread.run_from_loop(held()))
        assert await asyncio.to_thread(started.wait, DEADLINE)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(caller())
    assert cancelled.wait(DEADLINE), "the task on the loop thread was not cancelled"


def test_a_stopping_loop_cancels_the_callers_future(loop_thread: EventLoopThread) -> None:
    started = threading.Event()

    async def held() -> None:
        started.set()
        await asyncio.sleep(3600)

    async def caller() -> bool:
        answer = loop_thread.run_from_loop(held())
        assert await asyncio.to_thread(started.wait, DEADLINE)
        await asyncio.to_thread(loop_thread.stop)
        try:
            await asyncio.wait_for(answer, DEADLINE)
        except asyncio.CancelledError:
            return answer.cancelled()
        return False

    assert asyncio.run(caller())


def test_after_stop_both_ways_in_raise_loop_stopped(loop_thread: EventLoopThread) -> None:
    loop_thread.stop()
    coroutine = whose_thread()
    with pytest.raises(LoopStopped):
        loop_thread.submit(coroutine)

    async def caller() -> None:
        loop_thread.run_from_loop(whose_thread())

    with pytest.raises(LoopStopped):
        asyncio.run(caller())


def test_cancelling_a_submitted_future_cancels_its_task(loop_thread: EventLoopThread) -> None:
    started, cancelled = threading.Event(), threading.Event()

    async def held() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    future = loop_thread.submit(held())
    assert started.wait(DEADLINE)
    assert future.cancel()
    assert cancelled.wait(DEADLINE), "the task on the loop thread was not cancelled"


def test_a_submitted_coroutine_raises_through_its_future(loop_thread: EventLoopThread) -> None:
    async def fails() -> None:
        raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        loop_thread.submit(fails()).result(DEADLINE)

"""WakeupHandle and Task.block_after: wake at most once, never spuriously, across threads
and loops."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest
from helpers import await_until, loop_thread, run_threads, wait_until

from ioserver.sched import (
    AsyncTask,
    AsyncWakeup,
    Task,
    ThreadWakeup,
    WakeupHandle,
    current_async_task,
    current_task,
)


class HandleBox:
    """Where a ``block_after`` callback leaves its handle for a waker to find."""

    def __init__(self) -> None:
        self.handles: list[WakeupHandle] = []

    def __call__(self, handle: WakeupHandle) -> None:
        self.handles.append(handle)

    @property
    def handle(self) -> WakeupHandle:
        return self.handles[-1]


# -- wake() returns True exactly once ------------------------------------------------


def test_wake_returns_true_once_then_false() -> None:
    """A handle can be ended once: the first wake() wins, every later one is refused."""
    handle = ThreadWakeup()
    assert not handle.claimed
    assert handle.wake() is True
    assert handle.claimed
    assert handle.wake() is False
    assert handle.wake() is False
    assert handle.park(0) is True  # the wake stands


def test_block_after_woken_twice_second_wake_false() -> None:
    """Two wakes of one blocking invocation: the second returns False, the block returns True."""
    box = HandleBox()
    woke: list[bool] = []

    def waker() -> None:
        wait_until(lambda: box.handles)
        woke.append(box.handle.wake())
        woke.append(box.handle.wake())

    result = run_threads([lambda: Task().block_after(box), waker])
    assert result[0] is True
    assert woke == [True, False]


@pytest.mark.timeout(30)
def test_wake_from_two_threads_at_once_exactly_one_wins() -> None:
    """Two threads released by a Barrier race to wake the same handle: exactly one wins."""
    barrier = threading.Barrier(2)
    for _ in range(200):
        box = HandleBox()
        results: list[bool] = []

        def waker(box: HandleBox = box, results: list[bool] = results) -> None:
            wait_until(lambda: box.handles)
            barrier.wait(5)
            results.append(box.handle.wake())

        out = run_threads([lambda box=box: Task().block_after(box), waker, waker])
        assert out[0] is True
        assert sorted(results) == [False, True]


# -- block_after: woken -> True, timeout -> False ---------------------------------------


def test_block_after_returns_true_when_woken() -> None:
    """A thread blocked without a timeout returns True once another thread wakes it."""
    box = HandleBox()
    woke: list[bool] = []

    def waker() -> None:
        wait_until(lambda: box.handles)
        woke.append(box.handle.wake())

    result = run_threads([lambda: Task().block_after(box, timeout=30), waker])
    assert result == [True, None]
    assert woke == [True]


@pytest.mark.parametrize("timeout", [0, 0.02])
def test_block_after_returns_false_on_timeout_and_wake_is_refused(timeout: float) -> None:
    """Nobody wakes: block_after returns False, and a later wake() finds the handle ended."""
    box = HandleBox()
    t0 = time.monotonic()
    assert Task().block_after(box, timeout=timeout) is False
    assert time.monotonic() - t0 >= timeout * 0.9
    assert box.handle.wake() is False


def test_block_after_callback_waking_own_handle_returns_at_once() -> None:
    """A callback that wakes its own handle (a re-check found work) cancels the block."""
    t0 = time.monotonic()
    assert Task().block_after(lambda h: h.wake(), timeout=None) is True
    assert time.monotonic() - t0 < 5


@pytest.mark.asyncio
async def test_async_block_after_callback_waking_own_handle_returns_at_once() -> None:
    task = current_async_task()
    assert isinstance(task, AsyncTask)
    assert await task.block_after(lambda h: h.wake(), timeout=None) is True


@pytest.mark.asyncio
@pytest.mark.parametrize("timeout", [0, 0.02])
async def test_async_block_after_returns_false_on_timeout(timeout: float) -> None:
    box = HandleBox()
    assert await current_async_task().block_after(box, timeout=timeout) is False  # type: ignore[misc]
    assert box.handle.wake() is False


def test_no_spurious_wakeup_from_an_old_handle() -> None:
    """A late wake() of a finished block's handle does not end a later block."""
    task = Task()
    first = HandleBox()
    assert task.block_after(lambda h: (first(h), h.wake()), timeout=1) is True
    old = first.handle

    stale: list[bool] = []

    def late_waker(handle: WakeupHandle) -> None:
        # The new block is registered; the old handle's owner fires again.
        stale.append(old.wake())

    assert task.block_after(late_waker, timeout=0.05) is False
    assert stale == [False]


@pytest.mark.asyncio
async def test_async_no_spurious_wakeup_from_an_old_handle() -> None:
    task = current_async_task()
    first = HandleBox()
    assert await task.block_after(lambda h: (first(h), h.wake()), timeout=1) is True  # type: ignore[misc]
    old = first.handle
    threading.Thread(target=old.wake, daemon=True).start()  # a late waker in another thread
    assert await task.block_after(lambda h: None, timeout=0.05) is False  # type: ignore[misc]
    assert old.wake() is False


def test_current_task_is_the_thread_outside_a_loop() -> None:
    assert isinstance(current_task(), Task)


# -- across threads and loops ------------------------------------------------------------


@pytest.mark.asyncio
async def test_thread_wakes_coroutine() -> None:
    """A plain thread ends a coroutine's block; the loop stays responsive meanwhile."""
    box = HandleBox()
    woke: list[bool] = []

    def waker() -> None:
        wait_until(lambda: box.handles)
        woke.append(box.handle.wake())

    t = threading.Thread(target=waker, daemon=True)
    t.start()
    task = current_async_task()
    assert isinstance(task, AsyncTask)
    assert await task.block_after(box, timeout=30) is True
    t.join(10)
    assert woke == [True]


@pytest.mark.asyncio
async def test_coroutine_wakes_thread() -> None:
    """A coroutine ends a blocked thread's wait."""
    box = HandleBox()
    result: list[bool] = []
    t = threading.Thread(
        target=lambda: result.append(Task().block_after(box, timeout=30)), daemon=True
    )
    t.start()
    await await_until(lambda: box.handles)
    assert box.handle.wake() is True
    await await_until(lambda: not t.is_alive())
    assert result == [True]


@pytest.mark.parametrize("uv", [False, True], ids=["asyncio", "uvloop"])
def test_coroutine_on_one_loop_wakes_coroutine_on_another(uv: bool) -> None:
    """Two loops in two threads: a coroutine on B ends a block on A."""
    box = HandleBox()

    async def sleeper() -> bool:
        return await current_async_task().block_after(box, timeout=30)  # type: ignore[no-any-return,misc]

    async def waker() -> bool:
        await await_until(lambda: box.handles)
        return box.handle.wake()

    with loop_thread(uv) as a, loop_thread(not uv) as b:
        fut = a.submit(sleeper())
        assert b.run(waker()) is True
        assert fut.result(10) is True


# -- races -----------------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_timeout_vs_wake_race_never_loses_a_wake() -> None:
    """A wake() that returned True always corresponds to a block_after that returned True.

    Sleeper and waker race: the sleeper's timeout expires around the moment the
    waker fires. Either the wake wins (both True) or the timeout does (both False).
    """
    rng = random.Random(1234)
    outcomes = {True: 0, False: 0}
    for _ in range(400):
        box = HandleBox()
        delay = rng.choice([0, 0.0001, 0.0005, 0.001])
        timeout = rng.choice([0, 0.0002, 0.0005, 0.001])
        woke: list[bool] = []

        def waker(box: HandleBox = box, delay: float = delay, woke: list[bool] = woke) -> None:
            wait_until(lambda: box.handles)
            if delay:
                time.sleep(delay)
            woke.append(box.handle.wake())

        out = run_threads([lambda box=box, t=timeout: Task().block_after(box, timeout=t), waker])
        assert woke == [out[0]]
        outcomes[woke[0]] += 1
    assert outcomes[True] + outcomes[False] == 400


@pytest.mark.timeout(40)
def test_async_timeout_vs_thread_wake_race_never_loses_a_wake() -> None:
    """The same race for a coroutine sleeper on a uvloop loop and a waker thread."""
    rng = random.Random(99)

    async def sleeper(box: HandleBox, timeout: float) -> bool:
        return await current_async_task().block_after(box, timeout=timeout)  # type: ignore[no-any-return,misc]

    with loop_thread(use_uvloop=True) as lt:
        for _ in range(300):
            box = HandleBox()
            timeout = rng.choice([0, 0.0002, 0.0005, 0.001])
            delay = rng.choice([0, 0.0001, 0.0005, 0.001])
            fut = lt.submit(sleeper(box, timeout))
            wait_until(lambda box=box: box.handles)
            if delay:
                time.sleep(delay)
            woke = box.handle.wake()
            assert fut.result(10) is woke


@pytest.mark.asyncio
async def test_cancelled_async_block_after_raises_and_refuses_later_wake() -> None:
    """Cancelled before any wake: CancelledError, and the handle can no longer be woken."""
    box = HandleBox()
    task = asyncio.create_task(current_async_task().block_after(box))  # type: ignore[arg-type]
    await await_until(lambda: box.handles)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert box.handle.wake() is False


@pytest.mark.asyncio
async def test_woken_then_cancelled_async_block_after_keeps_the_wake() -> None:
    """Woken (by another thread), then cancelled before resuming: the wake counted, and
    block_after still raises CancelledError."""
    box = HandleBox()
    task = asyncio.create_task(current_async_task().block_after(box))  # type: ignore[arg-type]
    await await_until(lambda: box.handles)
    woke: list[bool] = []
    t = threading.Thread(target=lambda: woke.append(box.handle.wake()), daemon=True)
    t.start()
    t.join(10)
    task.cancel()  # the wake's call_soon_threadsafe has not run yet
    with pytest.raises(asyncio.CancelledError):
        await task
    assert woke == [True]


@pytest.mark.asyncio
async def test_async_park_losing_the_claim_waits_for_the_wakers_payload() -> None:
    """park(0) that finds the handle claimed by a waker returns only after that waker's
    unpark, so the payload it left is there to read (as ThreadWakeup.park does)."""
    loop = asyncio.get_running_loop()
    handle = AsyncWakeup(loop)
    claimed, go = threading.Event(), threading.Event()

    def waker() -> None:
        assert handle.claim()
        claimed.set()
        go.wait(10)  # preempted between the claim and the payload
        handle.payload = "payload"
        handle.unpark()

    threading.Thread(target=waker, daemon=True).start()
    claimed.wait(10)
    threading.Timer(0.02, go.set).start()
    assert await handle.park(0) is True
    assert handle.payload == "payload"

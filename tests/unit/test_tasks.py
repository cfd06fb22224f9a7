"""The task plug-in (ioserver.sched): current_task / current_async_task, using_task,
yield_now, and the handle contract: unpark returns False when the sleeper's scheduler
is gone, and then the waker keeps the message (nothing is lost)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from helpers import in_thread, wait_until

from ioserver import Channel, select
from ioserver.sched import (
    AsyncTask,
    AsyncWakeup,
    Task,
    ThreadWakeup,
    WakeupHandle,
    current_async_task,
    current_task,
    using_task,
    yield_now,
)

# -- a third-party scheduler, plugged in through using_task ---------------------------


class EventWakeup(WakeupHandle):
    """A third party's handle: parks on a threading.Event (its own primitive)."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def unpark(self) -> bool:
        self.event.set()
        return True


class EventTask:
    """A third party's blocking task: counts its parks, parks on an Event."""

    def __init__(self) -> None:
        self.blocks = 0
        self.yields = 0

    def yield_now(self) -> None:
        self.yields += 1

    def block_after(
        self, f: Callable[[WakeupHandle], object], timeout: float | None = None
    ) -> bool:
        self.blocks += 1
        handle = EventWakeup()
        f(handle)
        if handle.event.wait(timeout):
            return True
        if handle.claim():
            return False
        handle.event.wait()  # a waker won the claim: its unpark follows at once
        return True


@pytest.mark.parametrize("capacity", [None, 1, 0])
def test_a_plugged_in_scheduler_parks_its_own_tasks(capacity: int | None) -> None:
    """recv, send and select inside using_task park through the plugged-in task."""
    ch: Channel[int] = Channel(capacity)
    task = EventTask()
    n = 50
    got: list[int] = []

    def consumer() -> None:
        with using_task(task):
            assert current_task() is task
            for _ in range(n // 2):
                got.append(ch.recv(timeout=10))
            for _ in range(n // 2):
                got.append(select(ch, timeout=10)[1])

    t, _ = in_thread(consumer)
    wait_until(lambda: task.blocks > 0)  # the consumer parked through our task
    for i in range(n):
        ch.send(i)
    t.join(10)
    assert got == list(range(n))
    assert task.blocks >= 1


def test_using_task_nests_and_restores() -> None:
    outer, inner = EventTask(), EventTask()
    assert isinstance(current_task(), Task)
    with using_task(outer):
        assert current_task() is outer
        with using_task(inner):
            assert current_task() is inner
            yield_now()
        assert current_task() is outer
    assert isinstance(current_task(), Task)
    assert (outer.yields, inner.yields) == (0, 1)


def test_using_task_is_per_thread() -> None:
    task = EventTask()
    seen: list[Any] = []
    with using_task(task):
        t, _ = in_thread(lambda: seen.append(current_task()))
        t.join(10)
    assert isinstance(seen[0], Task)


def test_a_plugged_in_scheduler_times_out_and_takes_nothing() -> None:
    ch: Channel[int] = Channel()
    task = EventTask()
    with using_task(task), pytest.raises(TimeoutError):
        ch.recv(timeout=0.02)
    ch.send(1)
    assert ch.recv(timeout=0) == 1  # no stale registration swallowed it
    assert ch.statistics().waiting_receivers == 0


@pytest.mark.asyncio
async def test_current_task_kinds_in_asyncio() -> None:
    """A blocking call in a coroutine is the thread's; an await is the asyncio task's."""
    assert isinstance(current_task(), Task)
    assert isinstance(current_async_task(), AsyncTask)
    await current_async_task().yield_now()


def test_current_async_task_outside_any_loop_raises() -> None:
    with pytest.raises(RuntimeError):
        current_async_task()


def test_detection_imports_nothing() -> None:
    """Detection looks only at libraries already imported: neither trio, sniffio nor
    gevent is imported by ioserver, whatever is called."""
    code = (
        "import sys, asyncio, ioserver\n"
        "from ioserver.sched import current_task, current_async_task\n"
        "ch = ioserver.Channel(); ch.send(1); ch.recv()\n"
        "current_task()\n"
        "async def main():\n"
        "    current_async_task(); ch.send(2); await ch.arecv()\n"
        "    try:\n"
        "        await ch.arecv(timeout=0.01)\n"
        "    except TimeoutError:\n"
        "        pass\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in ('trio', 'sniffio', 'gevent', 'greenlet') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- the handle contract ---------------------------------------------------------------


def test_a_thread_handle_unpark_returns_true() -> None:
    h = ThreadWakeup()
    assert h.claim()
    assert h.unpark() is True
    assert h.park(0) is True


def test_an_asyncio_handle_of_a_closed_loop_refuses() -> None:
    loop = asyncio.new_event_loop()
    h = AsyncWakeup(loop)
    loop.close()
    assert h.claim()
    assert h.unpark() is False


def _park_arecv_then_close(ch: Channel[Any], op: Callable[[], Any]) -> None:
    """Run ``op()`` (an arecv/asend) as a task on a fresh loop until it parks, then
    close the loop with the task still parked: its scheduler is gone."""
    loop = asyncio.new_event_loop()
    task = loop.create_task(op())
    loop.run_until_complete(asyncio.sleep(0.01))
    assert not task.done()
    loop.close()
    task._log_destroy_pending = False  # type: ignore[attr-defined]  # gone on purpose


@pytest.mark.parametrize("capacity", [None, 1, 0])
def test_a_message_for_a_receiver_whose_loop_closed_goes_to_the_next(
    capacity: int | None,
) -> None:
    """Regression: a receiver parked in arecv on a loop that was then closed.
    The sender's unpark is refused, so the message stays for the next receiver
    (it used to be handed to the dead task and lost)."""
    ch: Channel[str] = Channel(capacity)
    _park_arecv_then_close(ch, ch.arecv)
    t, out = in_thread(lambda: ch.recv(timeout=10))
    wait_until(lambda: ch.statistics().waiting_receivers >= 1)
    ch.send("m", timeout=10)
    t.join(10)
    assert out == ["m"]
    with pytest.raises(TimeoutError):
        ch.recv(timeout=0)  # exactly once


def test_a_slot_for_a_sender_whose_loop_closed_goes_to_the_next_sender() -> None:
    """A full bounded channel: the slot freed for a sender parked on a closed loop
    goes to the next parked sender; no message is lost or duplicated."""
    ch: Channel[str] = Channel(1)
    ch.send("first")
    _park_arecv_then_close(ch, lambda: ch.asend("dead"))
    t, _ = in_thread(lambda: ch.send("second", timeout=10))
    wait_until(lambda: ch.statistics().waiting_senders >= 2)
    assert ch.recv(timeout=10) == "first"
    assert ch.recv(timeout=10) == "second"
    t.join(10)
    with pytest.raises(TimeoutError):
        ch.recv(timeout=0)


def test_a_rendezvous_with_a_sender_whose_loop_closed_takes_the_next() -> None:
    ch: Channel[str] = Channel(0)
    _park_arecv_then_close(ch, lambda: ch.asend("dead"))
    t, _ = in_thread(lambda: ch.send("live", timeout=10))
    wait_until(lambda: ch.statistics().waiting_senders >= 2)
    assert ch.recv(timeout=10) == "live"
    t.join(10)

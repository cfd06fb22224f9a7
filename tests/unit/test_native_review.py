"""Regression tests for defects a review of the native core found (each failed before).

Native core only: the pure-Python core has its own tests of the same contract.
Subprocess cases run where a signal, a fork or a second import must not touch the
test process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import ioserver
from ioserver import Channel

pytestmark = pytest.mark.skipif(not ioserver.NATIVE, reason="the native core is not in use")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_script(body: str, timeout: float = 60) -> str:
    """Run ``body`` in a fresh interpreter on this checkout; its stdout (exit 0 required)."""
    env = {k: v for k, v in os.environ.items() if k != "IOSERVER_PURE"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.timeout(60)
def test_heap_types_are_not_leaked_per_object() -> None:
    """Each ThreadWakeup made by a park and each awaitable op holds exactly one
    reference to its type (PyObject_GC_New already takes it)."""
    from ioserver import _native  # type: ignore[attr-defined]

    ch: Channel[int] = Channel()

    def timed_out_parks(count: int) -> None:
        for _ in range(count):
            try:
                ch.recv(timeout=0.0001)
            except TimeoutError:
                pass

    timed_out_parks(10)  # warm up
    before = sys.getrefcount(_native.ThreadWakeup)
    timed_out_parks(200)
    after = sys.getrefcount(_native.ThreadWakeup)  # outside the assert: pytest's
    assert after == before  # rewriting would hold a reference to the type
    before = sys.getrefcount(_native._Op)
    ops = [ch.arecv() for _ in range(200)]  # more than the freelist holds
    for op in ops:
        op.close()  # type: ignore[attr-defined]
    del ops, op
    after = sys.getrefcount(_native._Op)
    assert after == before


@pytest.mark.timeout(60)
def test_a_second_unpark_is_refused() -> None:
    """A second unpark() would leave a release behind for the thread's next park."""
    from ioserver import _native

    tw = _native.ThreadWakeup()
    assert tw.claim()
    tw.unpark()
    with pytest.raises(RuntimeError):
        tw.unpark()
    assert tw.park(0)
    assert not _native.ThreadWakeup().park(0.2)  # a fresh block is not woken by a stale release


@pytest.mark.timeout(60)
def test_a_nested_block_does_not_take_an_outer_handles_wakeup() -> None:
    """Python code between an outer registration and its park (a signal handler, a
    __del__) may block on the same thread: the outer handle's release stays the
    outer handle's, and the nested block neither returns early nor leaves a dead
    entry behind that would swallow the next message."""
    from ioserver import _native

    outer: Channel[str] = Channel()
    inner: Channel[str] = Channel()
    handle = _native.ThreadWakeup()
    assert outer._sel_register_recv(handle, 0)
    threading.Timer(0.2, outer.send, args=("for the outer handle",)).start()
    with pytest.raises(TimeoutError):
        inner.recv(timeout=1.0)
    inner.send("m")
    assert inner.try_recv() == "m"
    assert handle.park(5)
    assert handle.payload == (0, "for the outer handle")


@pytest.mark.timeout(60)
def test_a_stray_signal_on_a_worker_keeps_its_place_in_the_queue() -> None:
    """A signal delivered to a parked worker thread (any Python handler installed)
    must not move its send behind a later one: FIFO among blocked senders."""
    previous = signal.signal(signal.SIGUSR1, lambda *a: None)
    try:
        ch: Channel[str] = Channel(1)
        ch.send("x")
        a = threading.Thread(target=ch.send, args=("a",))
        a.start()
        deadline = time.monotonic() + 10
        while ch.statistics().waiting_senders < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        b = threading.Thread(target=ch.send, args=("b",))
        b.start()
        while ch.statistics().waiting_senders < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert a.ident is not None
        signal.pthread_kill(a.ident, signal.SIGUSR1)
        time.sleep(0.2)
        got = [ch.recv(timeout=5) for _ in range(3)]
        a.join(5)
        b.join(5)
        assert got == ["x", "a", "b"]
    finally:
        signal.signal(signal.SIGUSR1, previous)


@pytest.mark.timeout(60)
def test_a_forked_child_gets_the_slots_of_the_parents_woken_threads() -> None:
    """A receiver woken with a message holds its slot until it runs; forked before
    that, the child's copy of the channel must not stay one slot short forever."""
    out = run_script(
        """
        import os, threading, time
        from ioserver import Channel
        ch = Channel(1)
        got = []
        r = threading.Thread(target=lambda: got.append(ch.recv()))
        r.start()
        while ch.statistics().waiting_receivers < 1:
            time.sleep(0.01)
        ch.send("x")
        pid = os.fork()
        if pid == 0:
            try:
                ch.send("y", timeout=2)
                os._exit(0 if ch.recv(timeout=2) == "y" else 3)
            except TimeoutError:
                os._exit(4)
        _, status = os.waitpid(pid, 0)
        r.join(5)
        print(os.waitstatus_to_exitcode(status), got)
        """
    )
    assert out.split() == ["0", "['x']"]


@pytest.mark.timeout(60)
def test_an_interrupt_inside_a_python_unpark_wakes_the_task_and_reaches_the_caller() -> None:
    """A KeyboardInterrupt raised inside a coroutine handle's unpark (run by a C
    channel after its step) is not swallowed: the task is woken with its message,
    and the interrupt reaches the sender."""
    out = run_script(
        """
        import asyncio, signal, threading, time
        import ioserver.sched as S
        from ioserver import Channel
        ch = Channel()
        res = []
        def io_thread():
            async def main():
                try:
                    res.append(await asyncio.wait_for(ch.arecv(), 5))
                except asyncio.TimeoutError:
                    res.append("never woken")
            asyncio.run(main())
        t = threading.Thread(target=io_thread)
        t.start()
        while ch.statistics().waiting_receivers < 1:
            time.sleep(0.01)
        orig = S.AsyncWakeup.unpark
        fired = []
        def unpark(self):
            if not fired:
                fired.append(1)
                signal.raise_signal(signal.SIGINT)
            orig(self)
        S.AsyncWakeup.unpark = unpark
        try:
            ch.send("msg")
            print("no-interrupt")
        except KeyboardInterrupt:
            print("interrupt")
        S.AsyncWakeup.unpark = orig
        t.join(10)
        print(res)
        """
    )
    assert out.split() == ["interrupt", "['msg']"]


@pytest.mark.timeout(60)
def test_the_native_module_refuses_a_second_initialisation() -> None:
    """Its types live in C statics: a second exec would free types still in use."""
    out = run_script(
        """
        import importlib, sys
        import ioserver._native
        del sys.modules["ioserver._native"]
        try:
            importlib.import_module("ioserver._native")
            print("loaded twice")
        except ImportError:
            print("refused")
        """
    )
    assert out.strip() == "refused"


def test_timeouts_that_overflow_or_are_nan() -> None:
    """A huge timeout blocks as long as None would (no overflow); NaN is an error."""
    ch: Channel[int] = Channel()
    threading.Timer(0.1, ch.send, args=(1,)).start()
    assert ch.recv(timeout=1e300) == 1
    with pytest.raises(ValueError):
        ch.recv(timeout=float("nan"))

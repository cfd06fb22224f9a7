"""The request queue's compiled twin (NativeRequestQueue, csrc/queue.c) against its contract.

Two kinds of tests:
  * on a bare queue (no loop: ``_on_pipe`` drains on the test's thread), for
    each queue class this process has (``PyRequestQueue`` always, ``NativeRequestQueue``
    with the compiled core): reference counts, counters, argument handling;
  * through a real IOServer (whichever core runs): floods, the close race,
    fork, BaseException.
Helper threads are daemons; tests wait for states, never for times, and count
every request.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import run_threads, wait_until

from ioserver import requests
from ioserver._core import NATIVE
from ioserver.requests import PyRequestQueue, ServerStopped
from ioserver.sched import ThreadWakeup
from ioserver.server import IOServer

CLASSES: list[Any] = [PyRequestQueue]
if NATIVE:
    CLASSES.append(requests.NativeRequestQueue)


@pytest.fixture(params=CLASSES, ids=lambda cls: cls.__name__)
def queue_class(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture
def io() -> Iterator[IOServer]:
    server = IOServer(name="test-native-queue").start()
    try:
        yield server
    finally:
        server.stop()


def noop(*args: object) -> None:
    pass


class Token:
    """A fresh object whose reference count the tests watch."""


def test_the_server_uses_the_native_queue_with_the_compiled_core() -> None:
    expected = "NativeRequestQueue" if NATIVE else "PyRequestQueue"
    assert requests.RequestQueue.__name__ == expected
    with IOServer() as io:
        assert type(io._requests).__name__ == expected
        assert io.stats()["core"] == ("native" if NATIVE else "python")


# -- bare queue: references -----------------------------------------------------------


def test_references_are_dropped_after_running(queue_class: Any) -> None:
    """Every reference a submit takes (fn, each arg, reject) is dropped once the
    request has run; none is dropped twice."""
    w = queue_class()
    try:
        fn, arg, reject = Token(), Token(), Token()
        calls: list[object] = []

        def run(a: object, b: object) -> None:
            calls.append(a)

        before = [sys.getrefcount(x) for x in (fn, arg, reject, run)]
        for _ in range(100):
            w.submit(run, arg, fn, reject=reject)
            w.submit(run, fn, arg, deadline=None)
        assert w.pending() == 200
        assert sys.getrefcount(arg) > before[1]
        w._on_pipe()  # the pipe byte the first submit wrote: drain everything here
        assert w.pending() == 0
        assert len(calls) == 200 and w.requests == 200
        calls.clear()
        after = [sys.getrefcount(x) for x in (fn, arg, reject, run)]
        assert after == before
    finally:
        w.close()


def test_references_are_dropped_after_rejection_at_close(queue_class: Any) -> None:
    """close() rejects each queued request once (a callable gets the exception, a
    WakeupHandle is woken with ``(False, exc)``) and then drops every reference."""
    w = queue_class()
    fn, arg = Token(), Token()
    rejected: list[BaseException] = []

    def reject(exc: BaseException) -> None:
        rejected.append(exc)

    handles = [ThreadWakeup() for _ in range(3)]
    before = [sys.getrefcount(x) for x in (fn, arg, reject, *handles)]
    for _ in range(50):
        w.submit(fn, arg, reject=reject)
        w.submit(fn, arg)
    for handle in handles:
        w.submit(fn, arg, handle, reject=handle)
    reason = ServerStopped("closing for the test")
    w.close(reason)
    assert w.done and w.pending() == 0
    assert rejected == [reason] * 50
    for handle in handles:
        assert handle.park(0) is True
        assert handle.payload == (False, reason)
    rejected.clear()
    for handle in handles:
        handle.payload = None
    del handle
    after = [sys.getrefcount(x) for x in (fn, arg, reject, *handles)]
    assert after == before
    assert w._rfd == -1 and w._wfd == -1
    with pytest.raises(ServerStopped, match="has stopped"):
        w.submit(fn, arg)
    assert [sys.getrefcount(x) for x in (fn, arg)] == before[:2]


@pytest.mark.skipif(not NATIVE, reason="the compiled core is not in use")
def test_a_queue_in_a_cycle_with_its_requests_is_collected() -> None:
    """The C type takes part in garbage collection: a queue whose requests refer
    back to it is freed (and its pipe closed) once unreachable."""
    w = requests.NativeRequestQueue()
    wfd = w._wfd
    w.submit(noop, w)
    w.submit(noop, reject=w.submit)
    ref = weakref.ref(w)
    requests._LIVE.discard(w)
    del w
    gc.collect()
    assert ref() is None
    with pytest.raises(OSError):
        os.fstat(wfd)


# -- bare queue: arguments and counters -------------------------------------------------


def test_submit_arguments(queue_class: Any) -> None:
    w = queue_class()
    try:
        with pytest.raises(TypeError):
            w.submit()
        with pytest.raises(TypeError):
            w.submit(noop, bogus=1)
        assert w.pending() == 0
    finally:
        w.close()


def test_pipe_writes_coalesce_and_timed_requests_skip_the_pipe(queue_class: Any) -> None:
    """One pipe byte per drain: the first submit takes the token and writes, later
    ones write nothing until the drain releases it; a request with a deadline at
    or after the armed wakeup writes nothing at all."""
    w = queue_class(max_batch=1_000_000)
    try:
        for _ in range(1000):
            w.submit(noop)
        assert (w.pipe_writes, w.pending()) == (1, 1000)
        w._on_pipe()
        assert (w.requests, w.batches, w.max_batch_seen) == (1000, 1, 1000)
        assert w.longest_batch > 0
        w._on_pipe()  # nothing queued, the byte already read
        assert w.empty_wakeups == 1 and w.requests == 1000
        w.submit(noop)
        assert w.pipe_writes == 2
        w._on_pipe()
        w.next_wakeup = 100.0
        w.submit(noop, deadline=100.0)
        w.submit(noop, deadline=250)
        assert (w.skipped_wakeups, w.pipe_writes) == (2, 2)
        w.submit(noop, deadline=99.5)  # earlier than the armed wakeup: wake the loop
        assert (w.skipped_wakeups, w.pipe_writes) == (2, 3)
        w.wake_at()  # the armed wakeup fired: drains, and nothing is armed now
        assert w.next_wakeup == float("inf")
        w._on_pipe()  # the third one's byte (wake_at found the token held)
        assert (w.pending(), w.requests) == (0, 1004)
        w.submit(noop, deadline=5.0)  # nothing armed: the pipe
        assert w.pipe_writes == 4
    finally:
        w.close()


def test_a_stray_byte_streak_is_logged_once(
    queue_class: Any, caplog: pytest.LogCaptureFixture
) -> None:
    w = queue_class()
    try:
        with caplog.at_level(logging.WARNING, logger="ioserver"):
            for _ in range(requests.SPIN_THRESHOLD + 5):
                os.write(w._wfd, b"x")
                w._on_pipe()
        assert w.empty_wakeups == requests.SPIN_THRESHOLD + 5
        assert len([r for r in caplog.records if "with nothing to do" in r.getMessage()]) == 1
    finally:
        w.close()


def test_a_request_raising_base_exception_is_logged_and_the_drain_goes_on(
    queue_class: Any, caplog: pytest.LogCaptureFixture
) -> None:
    w = queue_class()
    ran: list[int] = []

    def boom(kind: type[BaseException]) -> None:
        raise kind("from a request")

    try:
        with caplog.at_level(logging.ERROR, logger="ioserver"):
            kinds = (SystemExit, KeyboardInterrupt, GeneratorExit, ValueError)
            for i, kind in enumerate(kinds):
                w.submit(boom, kind)
                w.submit(ran.append, i)
            w._on_pipe()
        assert ran == [0, 1, 2, 3] and w.requests == 8
        failed = [r for r in caplog.records if "failed" in r.getMessage()]
        assert [r.exc_info[0] for r in failed if r.exc_info] == [
            SystemExit,
            KeyboardInterrupt,
            GeneratorExit,
            ValueError,
        ]
        assert all(r.exc_info and r.exc_info[2] is not None for r in failed)  # tracebacks
    finally:
        w.close()


# -- through a server: floods, close race, fork -------------------------------------------


@pytest.mark.timeout(60)
def test_flood_from_two_threads_runs_every_request_once_in_order(io: IOServer) -> None:
    per_thread = 50_000
    ran = [0, 0]  # loop thread only
    last = [-1, -1]
    out_of_order = [0, 0]

    def record(tid: int, i: int) -> None:
        ran[tid] += 1
        if i != last[tid] + 1:
            out_of_order[tid] += 1
        last[tid] = i

    before = io.stats()
    start = threading.Barrier(2)

    def producer(tid: int) -> None:
        start.wait(10)
        submit = io.call_soon
        for i in range(per_thread):
            submit(record, tid, i)

    run_threads([lambda: producer(0), lambda: producer(1)], timeout=40)
    wait_until(lambda: sum(ran) == 2 * per_thread, 20, "every request to run")
    assert io.call(lambda: (ran, out_of_order)) == ([per_thread] * 2, [0, 0])
    after = io.stats()
    assert after["requests"] - before["requests"] == 2 * per_thread + 1
    writes = after["pipe_writes"] - before["pipe_writes"]
    assert writes < per_thread  # coalesced (typically a handful)
    assert after["max_batch"] <= io._requests.max_batch
    assert after["pending"] == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("round_", range(10))
def test_submits_racing_stop_each_run_or_reject_or_raise(round_: int) -> None:
    """Two producers submit as fast as they can while a third thread stops the
    server: each submit that returned was run or rejected exactly once; the
    others raised ServerStopped."""
    io = IOServer(name="close-race").start()
    ran: list[tuple[int, int]] = []
    rejected: list[tuple[int, int]] = []
    accepted: list[list[int]] = [[], []]
    going = threading.Event()

    def producer(tid: int) -> int:
        submit = io._requests.submit
        i = 0
        while True:
            key = (tid, i)
            try:
                submit(ran.append, key, reject=lambda exc, key=key: rejected.append(key))
            except ServerStopped:
                return i
            accepted[tid].append(i)
            i += 1
            if i == 200:
                going.set()
            if i > 10_000_000:
                pytest.fail("stop() never took effect")

    def stopper() -> None:
        going.wait(10)
        io.stop()

    run_threads([lambda: producer(0), lambda: producer(1), stopper], timeout=60)
    assert io._requests.done
    seen = ran + rejected
    assert len(seen) == len(set(seen)), "a request ran or was rejected twice"
    assert set(seen) == {(t, i) for t in (0, 1) for i in accepted[t]}
    for tid in (0, 1):  # FIFO per producer among the ones that ran
        mine = [i for t, i in ran if t == tid]
        assert mine == sorted(mine)


@pytest.mark.timeout(60)
def test_calls_racing_stop_return_or_raise_server_stopped() -> None:
    io = IOServer(name="call-race").start()
    outcomes: list[str] = []

    def caller() -> None:
        while True:
            try:
                assert io.call(lambda: 7, timeout=20) == 7
            except ServerStopped:
                outcomes.append("stopped")
                return

    def stopper() -> None:
        time.sleep(0.05)
        io.stop()

    run_threads([caller, caller, caller, stopper], timeout=50)
    assert outcomes == ["stopped"] * 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.timeout(30)
def test_a_forked_childs_copy_refuses_submits(io: IOServer) -> None:
    block = threading.Event()
    io.call_soon(block.wait, 10)  # the loop is busy: the next requests stay queued
    for _ in range(5):
        io.call_soon(noop)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery from here on
        code = 1
        try:
            w = io._requests
            ok = w.done and w.pending() == 0 and w._wfd == -1 and w._rfd == -1
            try:
                w.submit(noop)
                ok = False
            except ServerStopped as exc:
                ok = ok and "fork" in str(exc)
            os.write(wfd, b"ok" if ok else b"bad")
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.005)
    report = os.read(rfd, 16)
    os.close(rfd)
    assert os.waitstatus_to_exitcode(status) == 0 and report == b"ok"
    block.set()
    assert io.call(lambda: "parent ok") == "parent ok"
    assert not io._requests.done


@pytest.mark.timeout(30)
def test_base_exception_in_a_request_is_logged_and_the_server_serves_on(
    io: IOServer, caplog: pytest.LogCaptureFixture
) -> None:
    def leave() -> None:
        raise SystemExit(3)

    with caplog.at_level(logging.ERROR, logger="ioserver"):
        io.call_soon(leave)
        assert io.call(lambda: "alive") == "alive"
    records = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(records) == 1 and records[0].exc_info and records[0].exc_info[0] is SystemExit


@pytest.mark.timeout(30)
def test_loop_thread_submits_never_write_the_pipe(io: IOServer) -> None:
    def from_loop() -> tuple[int, int]:
        before = io._requests.pipe_writes
        for _ in range(100):
            io.call_soon(noop)
        return before, io._requests.pipe_writes

    before, after = io.call(from_loop)
    assert before == after


@pytest.mark.timeout(30)
def test_a_busy_loop_costs_no_pipe_write(io: IOServer) -> None:
    """While the loop runs a request (the token is held), submits write nothing."""
    entered, release = threading.Event(), threading.Event()

    def busy() -> None:
        entered.set()
        release.wait(10)

    io.call_soon(busy)
    assert entered.wait(10)
    before = io._requests.pipe_writes
    done: list[int] = []
    for i in range(1000):
        io.call_soon(done.append, i)
    assert io._requests.pipe_writes == before
    release.set()
    wait_until(lambda: len(done) == 1000, 10)
    assert done == list(range(1000))

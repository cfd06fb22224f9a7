"""The request queue and coalescing self-pipe (wakeup.py), driven through a real IOServer.

Counters that the loop writes are read back with ``io.call`` (FIFO: it runs
after everything submitted before it). Helper threads are daemons; tests wait
for states, never for times, and count every request.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import run_threads, wait_until

from ioserver.server import IOServer
from ioserver.wakeup import ServerStopped


@pytest.fixture
def io() -> Iterator[IOServer]:
    server = IOServer(name="test-wakeup").start()
    try:
        yield server
    finally:
        server.stop()


def noop() -> None:
    pass


# -- coalescing -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_burst_coalesces_pipe_writes_and_runs_every_request_once_in_fifo_order(
    io: IOServer,
) -> None:
    """200k ``call_soon`` from 2 threads: far fewer pipe writes than requests
    (one write covers a whole drain), every request runs exactly once, and each
    producer's requests run in submission order."""
    per_thread = 100_000
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
        start.wait()
        call_soon = io.call_soon
        for i in range(per_thread):
            call_soon(record, tid, i)

    run_threads([lambda: producer(0), lambda: producer(1)], timeout=50)
    assert io.call(lambda: (list(ran), list(last), list(out_of_order))) == (
        [per_thread, per_thread],
        [per_thread - 1, per_thread - 1],
        [0, 0],
    )
    after = io.stats()
    requests = after["requests"] - before["requests"]
    pipe_writes = after["pipe_writes"] - before["pipe_writes"]
    assert requests >= 2 * per_thread
    assert pipe_writes / requests < 0.2, (pipe_writes, requests)
    assert after["pending"] == 0


def test_submit_from_loop_thread_never_writes_the_pipe(io: IOServer) -> None:
    """A request submitted on the loop thread schedules its drain with
    ``call_soon``: the pipe write counter does not move, and the request runs."""
    ran: list[int] = []

    def submit_many() -> tuple[int, int]:
        before = io._wakeup.pipe_writes
        for i in range(100):
            io.call_soon(ran.append, i)
        return before, io._wakeup.pipe_writes

    before, after = io.call(submit_many)
    assert after == before
    # FIFO: this call was submitted after the 100, so they have all run.
    assert io.call(lambda: list(ran)) == list(range(100))


def test_loop_thread_submit_outside_a_drain_schedules_one(io: IOServer) -> None:
    """A loop-thread submit from an I/O callback (no drain running, token free)
    takes the token and schedules a drain itself: still no pipe write."""
    ran = threading.Event()
    seen: list[int] = []

    def from_callback() -> None:
        seen.append(io._wakeup.pipe_writes)
        io.call_soon(ran.set)
        seen.append(io._wakeup.pipe_writes)

    io.call(lambda: io.loop.call_soon(from_callback))
    assert ran.wait(10)
    assert len(seen) == 2 and seen[0] == seen[1]


def test_self_resubmitting_request_does_not_starve_other_producers(io: IOServer) -> None:
    """A request that resubmits itself from the loop (trio's starvation test)
    never monopolises the loop: a request from another thread still runs, and
    the chain runs in bounded batches."""
    stop = threading.Event()
    hops = [0]

    def hop() -> None:
        hops[0] += 1
        if not stop.is_set():
            io.call_soon(hop)

    io.call_soon(hop)
    wait_until(lambda: hops[0] > 5000, what="the chain to run")
    assert io.call(lambda: "other", timeout=10) == "other"
    stop.set()
    final = io.call(lambda: hops[0])
    assert final > 5000
    assert io.call(lambda: hops[0]) == final  # the chain ended
    assert io.stats()["max_batch"] <= io._wakeup.max_batch


def test_deadline_request_behind_an_armed_wakeup_needs_no_pipe_write(io: IOServer) -> None:
    """Lesson 1 (docs/architecture.md): a request not needed before the loop's armed wakeup does not
    write the pipe; one needed earlier does, and both then run in order."""
    w = io._wakeup
    ran: list[str] = []
    far = time.monotonic() + 1000

    io.call(lambda: setattr(w, "next_wakeup", far))
    before = io.stats()
    w.submit(ran.append, "late", deadline=far + 1)
    mid = io.stats()
    assert mid["skipped_wakeups"] == before["skipped_wakeups"] + 1
    assert mid["pipe_writes"] == before["pipe_writes"]
    assert mid["pending"] == 1  # queued, the loop asleep: nothing woke it
    w.submit(ran.append, "early", deadline=time.monotonic())
    wait_until(lambda: len(ran) == 2, what="both requests to run")
    assert ran == ["late", "early"]
    assert io.stats()["pipe_writes"] == before["pipe_writes"] + 1
    io.call(lambda: setattr(w, "next_wakeup", float("inf")))


# -- faults -------------------------------------------------------------------------------


def test_failing_request_is_logged_and_the_loop_goes_on(
    io: IOServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception from a request is logged with its traceback; the requests
    after it still run."""
    ran: list[int] = []

    def boom() -> None:
        raise ValueError("boom from a request")

    with caplog.at_level(logging.ERROR, logger="ioserver"):
        io.call_soon(ran.append, 1)
        io.call_soon(boom)
        io.call_soon(ran.append, 2)
        assert io.call(lambda: list(ran)) == [1, 2]
    failures = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ValueError]
    assert len(failures) == 1
    assert "boom from a request" in str(failures[0].exc_info[1])
    assert io.running
    assert io.call(lambda: 42) == 42


# -- time budget --------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_request_flood_does_not_starve_io(io: IOServer) -> None:
    """Lesson 2 (docs/architecture.md): with 100k requests queued, a TCP echo (an
    I/O callback on the loop) is served between batches, long before the flood is
    drained."""
    n = 100_000
    ran = [0]
    echoes: list[tuple[int, int]] = []  # (requests run, requests still queued) at echo time

    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname(), timeout=30)
    server_side, _ = listener.accept()
    listener.close()
    server_side.setblocking(False)

    def on_readable() -> None:
        data = server_side.recv(65536)
        echoes.append((ran[0], io._wakeup.pending()))
        server_side.send(data)

    io.call(io.loop.add_reader, server_side.fileno(), on_readable)

    gate = threading.Event()
    gated = threading.Event()

    def hold_the_loop() -> None:
        gated.set()
        gate.wait(30)

    def count() -> None:
        ran[0] += 1

    try:
        io.call_soon(hold_the_loop)
        assert gated.wait(10)
        for _ in range(n):  # all queued while the loop is held
            io.call_soon(count)
        client.sendall(b"ping")  # on loopback: in the server socket's buffer on return
        gate.set()
        assert client.recv(16) == b"ping"
        assert io.call(lambda: ran[0], timeout=50) == n
        assert len(echoes) == 1
        run_at_echo, queued_at_echo = echoes[0]
        assert run_at_echo < n // 2, echoes
        assert queued_at_echo > 0, echoes
    finally:
        gate.set()
        io.call(io.loop.remove_reader, server_side.fileno())
        server_side.close()
        client.close()


# -- shutdown (lesson 7, docs/architecture.md) -----------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("round_", range(10))
def test_submit_racing_stop_is_never_lost_janus2_anyio1265(
    round_: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression test for janus#2 / anyio#1265: 4 threads submit in a loop
    while another thread stops the server. Every submit either raised
    ServerStopped, or its request ran, or it was rejected: none is lost or
    handled twice, and nothing raises "Event loop is closed"."""
    io = IOServer(name=f"race-{round_}").start()
    w = io._wakeup
    producers = 4
    ran: list[list[int]] = [[] for _ in range(producers)]
    rejected: list[list[int]] = [[] for _ in range(producers)]
    accepted = [0] * producers
    errors: list[BaseException] = []
    start = threading.Barrier(producers + 1)

    def producer(tid: int) -> None:
        start.wait()
        i = 0
        try:
            while True:
                try:
                    w.submit(ran[tid].append, i, reject=lambda exc, i=i: rejected[tid].append(i))
                except ServerStopped:
                    break
                accepted[tid] += 1
                i += 1
            # once stopped, always stopped
            with pytest.raises(ServerStopped):
                io.call_soon(noop)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=producer, args=(t,), daemon=True) for t in range(producers)]
    for t in threads:
        t.start()
    stopper_errors: list[BaseException] = []

    def stopper() -> None:
        try:
            start.wait()
            # stop mid-stream, once every producer is under way
            wait_until(lambda: min(accepted) >= 200 + 100 * (round_ % 4), what="producers")
            io.stop()
        except BaseException as exc:
            stopper_errors.append(exc)

    with caplog.at_level(logging.DEBUG):
        s = threading.Thread(target=stopper, daemon=True)
        s.start()
        s.join(30)
        for t in threads:
            t.join(30)
        assert not s.is_alive() and not any(t.is_alive() for t in threads)
    assert not errors and not stopper_errors, (errors, stopper_errors)
    for tid in range(producers):
        handled = ran[tid] + rejected[tid]
        assert sorted(handled) == list(range(accepted[tid])), f"producer {tid} lost requests"
        assert ran[tid] == list(range(len(ran[tid])))  # ran in FIFO order, a prefix
    assert "Event loop is closed" not in caplog.text
    assert io.failure is None
    assert io.stats()["state"] == "stopped"
    with pytest.raises(ServerStopped):
        io.call_soon(noop)
    with pytest.raises(ServerStopped):
        io.call(noop)


@pytest.mark.timeout(60)
def test_blocking_calls_racing_stop_all_return_or_raise_server_stopped() -> None:
    """4 threads in an ``io.call`` loop while another thread stops the server:
    each call returns its result or raises ServerStopped; nobody hangs."""
    io = IOServer(name="call-race").start()
    done = [0] * 4
    start = threading.Barrier(5)

    def caller(tid: int) -> str:
        start.wait()
        while True:
            try:
                assert io.call(lambda: tid, timeout=20) == tid
            except ServerStopped:
                return "stopped"
            done[tid] += 1

    def stopper() -> str:
        start.wait()
        wait_until(lambda: min(done) >= 50, what="callers")
        io.stop()
        return "stopper"

    results = run_threads([*(lambda t=t: caller(t) for t in range(4)), stopper], timeout=50)
    assert results == ["stopped"] * 4 + ["stopper"]
    with pytest.raises(ServerStopped):
        io.call(noop)


# -- fork (lesson 11, docs/architecture.md) --------------------------------------------------------


@pytest.mark.timeout(30)
def test_forked_child_cannot_submit_and_parent_keeps_working(io: IOServer) -> None:
    """A child made with ``os.fork()`` holds a copy of the server whose submits
    raise ServerStopped (it must never write the parent's pipe); the parent's
    server is unaffected."""
    assert io.call(lambda: 1) == 1
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery from here on
        code = 3
        try:
            try:
                io.call_soon(noop)
            except ServerStopped:
                code = 0
            else:
                code = 1
            if code == 0:
                try:
                    io.call(noop, timeout=5)
                    code = 4
                except ServerStopped:
                    pass
        except BaseException:
            code = 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while True:
        wpid, status = os.waitpid(pid, os.WNOHANG)
        if wpid:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.005)
    assert os.waitstatus_to_exitcode(status) == 0
    assert io.call(lambda: "parent ok") == "parent ok"
    ran = threading.Event()
    io.call_soon(ran.set)
    assert ran.wait(10)


def test_pipe_fds_are_close_on_exec(io: IOServer) -> None:
    """Lesson 11 (docs/architecture.md): the self-pipe is not inherited by exec'd programs."""
    w: Any = io._wakeup
    for fd in (w._rfd, w._wfd):
        assert not os.get_inheritable(fd)


def test_a_spinning_loop_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Lesson 9 (docs/architecture.md): pipe wakeups that find nothing to do are
    counted, and a streak of them (something waking the loop for nothing, over and
    over) is logged once;
    stray bytes don't upset the token, and the server keeps serving."""
    from ioserver.wakeup import SPIN_THRESHOLD

    with IOServer() as io, caplog.at_level(logging.WARNING, logger="ioserver"):
        w = io._wakeup
        before = io.stats()["empty_wakeups"]
        for i in range(1, SPIN_THRESHOLD + 11):
            os.write(w._wfd, b"x")  # a stray wakeup: no token, nothing queued
            deadline = time.monotonic() + 10
            while io.stats()["empty_wakeups"] - before < i:
                assert time.monotonic() < deadline, "the loop did not wake"
                time.sleep(0.0005)
        spins = [r for r in caplog.records if "with nothing to do" in r.getMessage()]
        assert len(spins) == 1
        assert io.call(lambda: "still serving") == "still serving"


@pytest.mark.parametrize("bad", [{"max_batch": 0}, {"max_batch": -5}, {"quantum": -1.0}])
def test_a_request_queue_with_no_room_per_batch_is_refused(bad: dict[str, Any]) -> None:
    """A batch of no requests would never drain the queue: refused when built, on both
    cores (it used to be accepted, and then the loop never ran a request)."""
    from ioserver.wakeup import Wakeup

    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        Wakeup(**bad)

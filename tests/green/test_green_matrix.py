"""The matrix: sleepers x wakers x outcomes x operations, every message counted.

Sleepers and wakers are the five kinds of task: a thread, an asyncio task, a trio
task, a greenlet on the main thread's hub, a greenlet on a worker thread's hub.
Operations: recv on an empty channel, send on a full bounded channel, a
rendezvous send, and a select over a channel and a port. Outcomes: woken (by each
kind of waker), timeout, cancelled before a waker claimed, cancelled after (the
waker acts and the cancel follows in the same scheduler step), and scheduler
gone (an asyncio loop closed, a gevent hub destroyed). In every case the
messages put in equal the messages taken out: nothing lost, nothing twice.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
import trio
from green_support import (
    ASYNC_KINDS,
    KINDS,
    JobCancelled,
    make_runner,
    outcome,
    pump_until,
)

from ioserver import Channel, ChannelClosed, Empty, IOServer, aselect, select

OPS = ("recv", "send_full", "rendezvous", "select")
CANCELLABLE = ("asyncio", "trio", "greenlet_main", "greenlet_worker")


@pytest.fixture(scope="module")
def io() -> Iterator[IOServer]:
    with IOServer() as server:
        yield server


@pytest.fixture(scope="module")
def runners() -> Iterator[dict[str, Any]]:
    made = {kind: make_runner(kind) for kind in KINDS}
    try:
        yield made
    finally:
        for runner in made.values():
            runner.close()
        hub = gevent.get_hub()  # the main thread's: made by the main-hub runner's waits
        hub.destroy(destroy_loop=True)  # later tests' blocking calls are the thread's again


class Case:
    """One operation on fresh channels: the sleeper's side, the waker's side, the count."""

    def __init__(self, op: str, io: IOServer) -> None:
        self.op = op
        self.port = None
        if op == "recv":
            self.ch: Channel[str] = Channel()
        elif op == "send_full":
            self.ch = Channel(1)
            self.ch.send("pre")
        elif op == "rendezvous":
            self.ch = Channel(0)
        else:
            self.ch = Channel()
            self.port = io.open_udp(("127.0.0.1", 0))  # a real port that stays silent
        self.put = ["pre"] if op == "send_full" else []
        self.taken: list[Any] = []

    # the sleeper's operation, in each form
    def sleep_sync(self, timeout: float | None = 10) -> Callable[[], Any]:
        ch, op = self.ch, self.op
        if op == "recv":
            return lambda: ch.recv(timeout=timeout)
        if op == "select":
            return lambda: select(ch, self.port, timeout=timeout)[1]
        self.put.append("x")
        return lambda: ch.send("x", timeout=timeout)

    def sleep_async(self, timeout: float | None = 10) -> Callable[[], Any]:
        ch, op = self.ch, self.op
        if op == "recv":
            return lambda: ch.arecv(timeout=timeout)
        if op == "select":

            async def sel() -> Any:
                return (await aselect(ch, self.port, timeout=timeout))[1]

            return sel
        self.put.append("x")
        return lambda: ch.asend("x", timeout=timeout)

    def sleeper_parked(self) -> bool:
        stats = self.ch.statistics()
        return (
            stats.waiting_senders
            if self.op in ("send_full", "rendezvous")
            else stats.waiting_receivers
        ) >= 1

    # the waker's operation, in each form: the complement of the sleeper's
    def wake_sync(self) -> Callable[[], Any]:
        ch = self.ch
        if self.op in ("recv", "select"):
            self.put.append("m")
            return lambda: ch.send("m", timeout=10)
        return lambda: ch.recv(timeout=10)

    def wake_async(self) -> Callable[[], Any]:
        ch = self.ch
        if self.op in ("recv", "select"):
            self.put.append("m")
            return lambda: ch.asend("m", timeout=10)
        return lambda: ch.arecv(timeout=10)

    def record(self, result: tuple[str, Any]) -> None:
        status, value = result
        if status == "ok" and value is not None:
            self.taken.append(value)

    def settle(self) -> None:
        """Take what is left and check the count: every message put was taken once."""
        while True:
            try:
                self.taken.append(self.ch.try_recv())
            except (Empty, ChannelClosed):
                break
        assert sorted(self.taken) == sorted(self.put), (self.taken, self.put)
        stats = self.ch.statistics()
        assert (stats.waiting_senders, stats.waiting_receivers) == (0, 0)
        if self.port is not None:
            self.port.close()


def start_sleeper(case: Case, runner: Any, timeout: float | None = 10) -> Any:
    fn = case.sleep_async(timeout) if runner.kind in ASYNC_KINDS else case.sleep_sync(timeout)
    return runner.submit(fn)


def start_waker(case: Case, runner: Any) -> Any:
    return runner.submit(case.wake_async() if runner.kind in ASYNC_KINDS else case.wake_sync())


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("waker", KINDS)
@pytest.mark.parametrize("sleeper", KINDS)
def test_woken(sleeper: str, waker: str, op: str, runners: dict[str, Any], io: IOServer) -> None:
    case = Case(op, io)
    s = start_sleeper(case, runners[sleeper])
    pump_until(case.sleeper_parked, what="the sleeper to park")
    w = start_waker(case, runners[waker])
    ws, wv = outcome(w.future)
    ss, sv = outcome(s.future)
    assert (ss, ws) == ("ok", "ok"), (sv, wv)
    case.record((ss, sv))
    case.record((ws, wv))
    case.settle()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("sleeper", KINDS)
def test_timeout(sleeper: str, op: str, runners: dict[str, Any], io: IOServer) -> None:
    case = Case(op, io)
    s = start_sleeper(case, runners[sleeper], timeout=0.05)
    status, exc = outcome(s.future)
    assert status == "error" and isinstance(exc, TimeoutError), exc
    if op in ("send_full", "rendezvous"):
        case.put.remove("x")  # timed out: it did not happen
    case.settle()


def _cancelled(kind: str, exc: BaseException) -> bool:
    if kind == "asyncio":
        return isinstance(exc, asyncio.CancelledError)
    if kind == "trio":
        return isinstance(exc, JobCancelled)
    return isinstance(exc, gevent.GreenletExit)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("sleeper", CANCELLABLE)
def test_cancelled_before_the_claim(
    sleeper: str, op: str, runners: dict[str, Any], io: IOServer
) -> None:
    """Cancelled while parked, before any waker: nothing happened, and the next
    waker's message is not swallowed by a stale registration."""
    case = Case(op, io)
    s = start_sleeper(case, runners[sleeper])
    pump_until(case.sleeper_parked, what="the sleeper to park")
    s.cancel()
    status, exc = outcome(s.future)
    assert status == "error" and _cancelled(sleeper, exc), exc
    if op in ("send_full", "rendezvous"):
        case.put.remove("x")
    else:
        case.put.append("after")
        case.ch.send("after")
    case.settle()


@pytest.mark.parametrize("op", ("recv", "send_full", "select"))
@pytest.mark.parametrize("sleeper", CANCELLABLE)
def test_cancelled_after_the_claim(
    sleeper: str, op: str, runners: dict[str, Any], io: IOServer
) -> None:
    """A waker in the sleeper's own scheduler acts, and the cancel follows in the same
    step, before the sleeper runs: the operation either completed (trio's rule:
    Cancelled comes at the next checkpoint) or was undone (asyncio, gevent: the
    message goes back), never half of it."""
    case = Case(op, io)
    runner = runners[sleeper]
    s = start_sleeper(case, runner)
    pump_until(case.sleeper_parked, what="the sleeper to park")
    ch = case.ch

    def act() -> None:
        if op in ("recv", "select"):
            case.put.append("m")
            ch.send("m")
        else:
            case.taken.append(ch.try_recv())  # frees the slot the sleeper waits for
        s.cancel_here()

    async def aact() -> None:
        act()

    w = runner.submit(aact if sleeper in ASYNC_KINDS else act)
    assert outcome(w.future)[0] == "ok"
    status, value = outcome(s.future)
    if status == "ok":
        case.record((status, value))
    else:
        assert _cancelled(sleeper, value), value
        assert sleeper != "trio", "trio: a cancel that lost the claim lets the operation complete"
        if op == "send_full":
            case.put.remove("x")  # undone: the slot went back
    case.settle()


# -- scheduler gone --------------------------------------------------------------------


def _park_on_a_loop_then_close_it(case: Case) -> None:
    loop = asyncio.new_event_loop()
    task = loop.create_task(case.sleep_async()())
    loop.run_until_complete(asyncio.sleep(0.02))
    assert not task.done()
    loop.close()
    task._log_destroy_pending = False  # type: ignore[attr-defined]  # gone on purpose


def _park_on_a_hub_then_destroy_it(case: Case) -> None:
    fn = case.sleep_sync()

    def worker() -> None:
        hub = gevent.get_hub()
        gevent.spawn(fn)
        gevent.sleep(0.02)  # the greenlet parks
        hub.destroy(destroy_loop=True)

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("gone", ["asyncio_loop_closed", "gevent_hub_destroyed"])
def test_scheduler_gone(gone: str, op: str, runners: dict[str, Any], io: IOServer) -> None:
    """The sleeper's scheduler ends while it is parked. Its unpark is refused, and
    the waker keeps what it meant to hand over: the next party gets it."""
    case = Case(op, io)
    if gone == "asyncio_loop_closed":
        _park_on_a_loop_then_close_it(case)
    else:
        _park_on_a_hub_then_destroy_it(case)
    if op in ("send_full", "rendezvous"):
        case.put.remove("x")  # the dead sender never sent
        if op == "send_full":
            case.taken.append(case.ch.recv(timeout=10))  # its slot is refused, then freed
        case.put.append("y")
        t = threading.Thread(target=case.ch.send, args=("y",), kwargs={"timeout": 10})
        t.start()
        case.taken.append(case.ch.recv(timeout=10))
        t.join(10)
    else:
        case.put.append("m")
        case.ch.send("m")  # handed to the dead receiver, refused, kept
    case.settle()


def test_trio_handle_after_the_run_finished_refuses() -> None:
    from ioserver.sched.trio import TrioWakeup

    async def make() -> TrioWakeup:
        return TrioWakeup()

    handle = trio.run(make)
    assert handle.claim()
    assert handle.unpark() is False

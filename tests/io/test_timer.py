"""Timers (drivers/timer.py) on a real IOServer: send_after, cancel, interval ports.

Tests wait for states (a sentinel timer, a counter read back with ``io.call``),
never for a fixed sleep; the only timing assumption is that a timer due in
50 ms fires well within 5 s.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import run_threads, wait_until

from ioserver.channel import Channel, ChannelClosed, Empty
from ioserver.drivers import timer as timer_mod
from ioserver.drivers.timer import Timer, loop_info
from ioserver.messages import Closed, Tick
from ioserver.requests import ServerStopped
from ioserver.server import IOServer

INF = float("inf")


@pytest.fixture
def io() -> Iterator[IOServer]:
    with IOServer(name="test-timer") as server:
        yield server


@pytest.fixture(params=["auto", "asyncio"])
def any_io(request: pytest.FixtureRequest) -> Iterator[IOServer]:
    """The server on uvloop (auto) and on asyncio's selector loop."""
    with IOServer(name="test-timer", loop=request.param) as server:
        yield server


def info(io: IOServer) -> dict[str, Any]:
    return io.call(loop_info, io)


def recv_all(ch: Channel[Any], n: int, timeout: float = 10.0) -> list[Any]:
    return [ch.recv(timeout=timeout) for _ in range(n)]


class LoopGate:
    """Holds the loop thread in a request until ``open()``.

    A timer added after a timer with a later deadline already fired would
    arrive out of deadline order: that is not a bug, just a late add. Holding
    the loop while submitting makes every add land before anything fires.
    """

    def __init__(self, io: IOServer) -> None:
        self._entered = threading.Event()
        self._release = threading.Event()
        io.call_soon(self._hold)
        assert self._entered.wait(10)

    def _hold(self) -> None:
        self._entered.set()
        self._release.wait(20)

    def open(self) -> None:
        self._release.set()


# -- send_after: delivery and order -----------------------------------------------------


def test_send_after_delivers_to_a_channel(any_io: IOServer) -> None:
    ch: Channel[Any] = Channel()
    start = time.monotonic()
    t = any_io.send_after(0.05, ch, "wake")
    assert isinstance(t, Timer)
    assert ch.recv(timeout=10) == "wake"
    assert time.monotonic() >= t.deadline >= start + 0.05  # never early
    assert t.fired and not t.cancelled
    assert t.cancel() is False  # already fired
    assert not t.cancelled


def test_send_after_delivers_to_a_port_inbox(io: IOServer) -> None:
    port = io.interval(1000)  # a port that will not tick during the test
    io.send_after(0.01, port, "to the port")
    assert port.recv(timeout=10) == "to the port"
    shared: Channel[Any] = Channel(8)
    port2 = io.interval(1000, inbox=shared)
    io.send_after(0.01, port2, "to the shared inbox")
    assert shared.recv(timeout=10) == "to the shared inbox"
    port.close()
    port2.close()
    assert isinstance(port.recv(timeout=10), Closed)
    assert isinstance(shared.recv(timeout=10), Closed)


def test_send_after_from_the_loop_thread(io: IOServer) -> None:
    ch: Channel[Any] = Channel()
    t = io.call(lambda: io.send_after(0.01, ch, "from the loop"))
    assert ch.recv(timeout=10) == "from the loop"
    assert t.fired


def test_messages_arrive_in_deadline_order_each_exactly_once(any_io: IOServer) -> None:
    rng = random.Random(1234)
    delays = [rng.uniform(0, 0.2) for _ in range(50)]
    ch: Channel[Any] = Channel()
    gate = LoopGate(any_io)
    timers = [any_io.send_after(d, ch, i) for i, d in enumerate(delays)]
    gate.open()
    got = recv_all(ch, 50)
    assert sorted(got) == list(range(50))  # all 50, exactly once
    deadlines = [timers[i].deadline for i in got]
    assert deadlines == sorted(deadlines)
    sentinel = any_io.send_after(0.01, ch, "sentinel")
    assert ch.recv(timeout=10) == "sentinel" and sentinel.fired
    with pytest.raises(Empty):
        ch.try_recv()


def test_same_deadline_fires_in_submission_order(
    io: IOServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ch: Channel[Any] = Channel()
    base = time.monotonic()
    # Freeze the clock while submitting so all 100 get the very same deadline.
    monkeypatch.setattr(timer_mod, "monotonic", lambda: base)
    timers = [io.send_after(0.05, ch, i) for i in range(100)]
    monkeypatch.setattr(timer_mod, "monotonic", time.monotonic)
    assert len({t.deadline for t in timers}) == 1
    assert recv_all(ch, 100) == list(range(100))


def test_a_burst_of_due_timers_fires_in_batches_in_order(any_io: IOServer) -> None:
    """3000 timers all due when the loop gets to them: more than one drain
    (max_batch) and more than one fire pass (FIRE_BATCH), still in order."""
    ch: Channel[Any] = Channel()
    gate = LoopGate(any_io)
    for i in range(3000):
        any_io.send_after(0, ch, i)
    gate.open()
    assert recv_all(ch, 3000) == list(range(3000))
    state = info(any_io)
    assert state["size"] == 0 and state["fired"] == 3000


# -- cancel -------------------------------------------------------------------------------


def test_cancel_before_fire_returns_true_and_the_message_never_arrives(io: IOServer) -> None:
    ch: Channel[Any] = Channel()
    t = io.send_after(0.1, ch, "cancelled")
    assert t.cancel() is True
    assert t.cancelled and not t.fired
    assert t.cancel() is False  # only once
    io.send_after(0.3, ch, "sentinel")  # well past the cancelled deadline
    assert ch.recv(timeout=10) == "sentinel"
    with pytest.raises(Empty):
        ch.try_recv()
    assert not t.fired


def test_cancel_racing_fire_exactly_one_outcome_per_timer(io: IOServer) -> None:
    n = 500
    ch: Channel[Any] = Channel()
    timers = [io.send_after(i * 0.0002, ch, i) for i in range(n)]  # due over 0.1 s
    cancelled = [False] * n

    def canceller() -> None:
        order = list(range(n))
        random.Random(7).shuffle(order)
        for i in order:
            cancelled[i] = timers[i].cancel()
            if i % 50 == 0:
                time.sleep(0.001)  # let the loop fire some meanwhile

    run_threads([canceller])
    sentinel = io.send_after(0.2, ch, "sentinel")
    arrived: set[int] = set()
    while (msg := ch.recv(timeout=10)) != "sentinel":
        assert msg not in arrived
        arrived.add(msg)
    assert sentinel.fired
    for i, t in enumerate(timers):
        assert cancelled[i] != (i in arrived), i
        assert t.cancelled == cancelled[i] and t.fired == (i in arrived)
    for t in timers:
        assert t.cancel() is False


# -- lesson 1 (docs/architecture.md): a later deadline costs no wakeup -----------------------------


def test_later_deadlines_skip_the_pipe_and_an_earlier_one_wakes_the_loop(
    any_io: IOServer,
) -> None:
    io = any_io
    ch: Channel[Any] = Channel()
    far = io.send_after(10, ch, "far")
    wait_until(lambda: io.call(lambda: io._requests.next_wakeup) == far.deadline, what="armed")
    before = io.stats()
    timers: list[Timer] = []

    def producer() -> None:
        timers.extend(io.send_after(11, ch, i) for i in range(1000))

    run_threads([producer])
    after = io.stats()
    assert after["skipped_wakeups"] - before["skipped_wakeups"] >= 990
    assert after["pipe_writes"] - before["pipe_writes"] <= 3
    assert after["pending"] >= 990  # queued, not yet run: nothing woke the loop

    start = time.monotonic()
    io.send_after(0.05, ch, "early")  # earlier than the armed deadline: must wake
    assert ch.recv(timeout=5) == "early"
    assert time.monotonic() - start < 5
    state = info(io)
    assert state["size"] == 1001  # the 1000 skipped adds were drained on the way
    assert state["next_wakeup"] == far.deadline == state["armed"]

    assert all(t.cancel() for t in [far, *timers])
    state = info(io)  # cancelled in deadline order: each left from the top of the heap
    assert state["size"] == 0
    assert state["armed"] == INF == state["next_wakeup"]
    with pytest.raises(Empty):
        ch.try_recv()


def test_next_wakeup_tracks_the_earliest_deadline(io: IOServer) -> None:
    ch: Channel[Any] = Channel()
    w = io._requests
    assert io.call(lambda: w.next_wakeup) == INF
    a = io.send_after(30, ch, "a")
    assert io.call(lambda: w.next_wakeup) == a.deadline
    b = io.send_after(20, ch, "b")
    assert io.call(lambda: w.next_wakeup) == b.deadline
    io.send_after(40, ch, "c")
    assert io.call(lambda: w.next_wakeup) == b.deadline
    assert b.cancel()
    assert io.call(lambda: w.next_wakeup) == a.deadline
    d = io.send_after(0.01, ch, "d")
    assert ch.recv(timeout=10) == "d" and d.fired
    assert io.call(lambda: w.next_wakeup) == a.deadline  # re-armed after firing


# -- full and closed targets -------------------------------------------------------------------


def test_a_full_channel_gets_the_messages_once_room_appears_in_order(io: IOServer) -> None:
    ch: Channel[Any] = Channel(capacity=1)
    ch.send("first")
    timers = [io.send_after(0.01 * (i + 1), ch, i) for i in range(5)]
    wait_until(lambda: all(t.fired for t in timers), what="all fired")
    assert len(ch) == 1
    assert info(io)["backlog"] == 5
    assert ch.recv(timeout=10) == "first"
    assert recv_all(ch, 5) == list(range(5))
    assert info(io)["backlog"] == 0


def test_a_closed_channel_drops_the_message_and_the_loop_keeps_serving(io: IOServer) -> None:
    ch: Channel[Any] = Channel()
    ch.close()
    t = io.send_after(0, ch, "lost")
    wait_until(lambda: t.fired, what="fired")
    assert io.call(lambda: 1) == 1
    assert info(io)["dropped"] == 1
    # A channel that closes while its message waits for room.
    full: Channel[Any] = Channel(capacity=1)
    full.send("x")
    t2 = io.send_after(0, full, "waiting")
    wait_until(lambda: t2.fired, what="fired")
    full.close()
    wait_until(lambda: info(io)["dropped"] == 2, what="dropped")
    assert info(io)["backlog"] == 0
    assert io.call(lambda: 1) == 1


def test_bad_arguments(io: IOServer) -> None:
    ch: Channel[Any] = Channel()
    with pytest.raises(ValueError):
        io.send_after(-1, ch, "x")
    with pytest.raises(ValueError):
        io.send_after(float("nan"), ch, "x")
    with pytest.raises(ValueError):
        io.send_after(float("inf"), ch, "x")
    with pytest.raises(ValueError):
        io.send_after(1, Channel(0), "x")  # the loop cannot block on a rendezvous
    with pytest.raises(TypeError):
        io.send_after(1, [], "x")
    with pytest.raises(ValueError):
        io.interval(0)
    with pytest.raises(ValueError):
        io.interval(0.1, packet="line")
    with pytest.raises(TypeError):
        io.interval(0.1, bogus=1)


# -- heap compaction ---------------------------------------------------------------------------


def test_cancelling_10000_timers_compacts_the_heap(io: IOServer) -> None:
    ch: Channel[Any] = Channel()
    keeper = io.send_after(25, ch, "keeper")  # stays first: cancels can't leave from the top
    rng = random.Random(3)
    timers = [io.send_after(30 + rng.random(), ch, i) for i in range(10_000)]
    assert info(io)["size"] == 10_001
    assert all(t.cancel() for t in timers)
    state = info(io)
    assert state["compactions"] >= 1
    assert state["size"] <= 65
    assert state["cancelled"] <= state["size"]
    assert state["armed"] == keeper.deadline == state["next_wakeup"]
    assert keeper.cancel()
    state = info(io)
    assert state["size"] == 0 and state["armed"] == INF == state["next_wakeup"]


# -- interval ports ----------------------------------------------------------------------------


def test_interval_ticks_count_up_and_close_delivers_one_closed(any_io: IOServer) -> None:
    port = any_io.interval(0.05)
    assert port.kind == "interval"
    ticks = [port.recv(timeout=10) for _ in range(5)]
    assert all(isinstance(t, Tick) and t.port is port for t in ticks)
    counts = [t.count for t in ticks]
    state = port.info()
    assert state["coalesced"] == 0  # someone was receiving
    if state["skipped"] == 0:  # the loop was never a period late
        assert counts == [1, 2, 3, 4, 5]
    else:
        assert counts == sorted(set(counts)) and counts[0] >= 1
    port.close()
    rest = list(port)  # ends when the own inbox closes after Closed
    assert isinstance(rest[-1], Closed)
    assert all(isinstance(m, Tick) for m in rest[:-1])
    with pytest.raises(ChannelClosed):
        port.recv(timeout=1)


def test_closed_interval_delivers_nothing_more(io: IOServer) -> None:
    shared: Channel[Any] = Channel()
    port = io.interval(0.02, inbox=shared)
    assert isinstance(shared.recv(timeout=10), Tick)
    port.close()
    io.send_after(0.2, shared, "sentinel")  # ten periods later
    msgs = []
    while (msg := shared.recv(timeout=10)) != "sentinel":
        msgs.append(msg)
    closed = [m for m in msgs if isinstance(m, Closed)]
    assert len(closed) == 1 and msgs[-1] is closed[0]
    assert io.stats()["ports"].get("interval", 0) == 0


def test_passive_interval_read_returns_the_next_tick(io: IOServer) -> None:
    port = io.interval(0.02, active=False)
    wait_until(lambda: port.info()["count"] >= 3, what="three periods")
    assert len(port) == 0  # passive: nothing delivered
    state = port.info()
    assert state["pending_messages"] <= 1
    first = port.read(timeout=10)
    assert isinstance(first, Tick) and first.count >= 3  # the coalesced, latest count
    second = port.read(timeout=10)
    assert isinstance(second, Tick) and second.count > first.count
    port.close()
    assert isinstance(port.recv(timeout=10), Closed)  # Closed needs no read


def test_interval_nobody_receiving_bounded_memory_and_count_jumps(io: IOServer) -> None:
    inbox: Channel[Any] = Channel(capacity=4)
    port = io.interval(0.005, inbox=inbox)
    wait_until(lambda: port.info()["count"] >= 40, what="forty periods")
    state = port.info()
    assert len(inbox) <= 4
    assert state["pending_messages"] <= 1
    assert state["coalesced"] > 0
    delivered = [inbox.recv(timeout=10) for _ in range(4)]
    counts = [t.count for t in delivered]
    assert counts == sorted(set(counts)) and counts[-1] <= 4 + state["skipped"]
    later = inbox.recv(timeout=10)
    assert isinstance(later, Tick) and later.count >= 30  # it kept counting
    port.close()
    while not isinstance(inbox.recv(timeout=10), Closed):
        pass


def test_interval_active_n_sends_passive_then_coalesces(io: IOServer) -> None:
    from ioserver.messages import Passive

    port = io.interval(0.01, active=2)
    msgs = [port.recv(timeout=10) for _ in range(3)]
    assert [type(m) for m in msgs] == [Tick, Tick, Passive]
    wait_until(lambda: port.info()["coalesced"] >= 2, what="coalescing")
    assert port.info()["pending_messages"] == 1
    port.setopts(active=1)
    tick = port.recv(timeout=10)
    assert isinstance(tick, Tick) and tick.count > msgs[1].count + 1
    port.close()


def test_server_stop_closes_intervals_and_drops_pending_timers() -> None:
    ch: Channel[Any] = Channel()
    io = IOServer(name="test-timer-stop").start()
    port = io.interval(0.01)
    t = io.send_after(30, ch, "never")
    assert isinstance(port.recv(timeout=10), Tick)
    io.stop()
    msgs = list(port)
    closed = msgs[-1]
    assert isinstance(closed, Closed) and closed.reason == "server stopped"
    assert t.cancel() is True  # it never fired; cancelling after the stop is harmless
    with pytest.raises(ServerStopped):
        io.send_after(0, ch, "x")
    with pytest.raises(ServerStopped):
        io.interval(0.1)


def test_many_threads_many_timers(io: IOServer) -> None:
    """4 threads x 500 timers: each arrives once, deadline order per channel."""
    ch: Channel[Any] = Channel()
    all_timers: list[list[Timer]] = [[] for _ in range(4)]

    def producer(k: int) -> None:
        rng = random.Random(k)
        for i in range(500):
            all_timers[k].append(io.send_after(rng.uniform(0, 0.1), ch, (k, i)))

    gate = LoopGate(io)
    run_threads([lambda k=k: producer(k) for k in range(4)])
    gate.open()
    got = recv_all(ch, 2000)
    assert len(set(got)) == 2000
    deadlines = [all_timers[k][i].deadline for k, i in got]
    assert deadlines == sorted(deadlines)

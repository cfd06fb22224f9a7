"""select()/aselect(): exactly one operation, a random pick among ready ones, nothing lost.

The last part ports ideas from Go's channel tests (go/test/chan/select*.go,
doubleselect.go, nonblock.go), as crossbeam's tests/golang.rs does.
"""

from __future__ import annotations

import asyncio
import importlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from helpers import Background, await_until, loop_thread, run_threads, wait_until

from ioserver import Channel, ChannelClosed, Empty, Full, aselect, select
from ioserver.sched import AsyncWakeup, ThreadWakeup

FLAVOURS = [None, 1, 4, 0]
FLAVOUR_IDS = ["unbounded", "bounded1", "bounded4", "rendezvous"]


@pytest.fixture(params=FLAVOURS, ids=FLAVOUR_IDS)
def capacity(request: pytest.FixtureRequest) -> int | None:
    return request.param  # type: ignore[no-any-return]


def receivers(ch: Channel[Any]) -> int:
    return ch.statistics().waiting_receivers


def senders(ch: Channel[Any]) -> int:
    return ch.statistics().waiting_senders


def drain(ch: Channel[Any]) -> list[Any]:
    out = []
    while True:
        try:
            out.append(ch.try_recv())
        except (Empty, ChannelClosed):
            return out


def offer(ch: Channel[Any], value: Any) -> Background | None:
    """Make ``value`` receivable on ``ch``: buffered, or by a parked thread sender."""
    if ch.capacity == 0:
        bg = Background(lambda: ch.send(value, timeout=10))
        wait_until(lambda: senders(ch) >= 1)
        return bg
    ch.send(value)
    return None


# -- results ---------------------------------------------------------------------------------


def test_select_receive_returns_source_and_message(capacity: int | None) -> None:
    a: Channel[Any] = Channel(capacity)
    b: Channel[Any] = Channel(capacity)
    bg = offer(a, "m")
    assert select(a, b, timeout=5) == (a, "m")
    if bg:
        bg.result()
    assert drain(a) == drain(b) == []


def test_select_send_returns_channel_and_none(capacity: int | None) -> None:
    a: Channel[Any] = Channel(capacity)
    b: Channel[Any] = Channel(capacity)
    rx = Background(lambda: a.recv(timeout=10)) if capacity == 0 else None
    if rx:
        wait_until(lambda: receivers(a) == 1)
    empty: Channel[Any] = Channel()
    src, msg = select((a, "v"), empty, timeout=5)
    assert (src, msg) == (a, None)
    assert (rx.result() if rx else a.try_recv()) == "v"
    assert drain(b) == []


@pytest.mark.asyncio
async def test_aselect_receive_and_send(capacity: int | None) -> None:
    a: Channel[Any] = Channel(capacity)
    b: Channel[Any] = Channel(capacity)
    bg = await asyncio.to_thread(offer, a, "m")
    assert await aselect(b, a, timeout=5) == (a, "m")
    if bg:
        await asyncio.to_thread(bg.result)
    rx = Background(lambda: b.recv(timeout=10))
    assert await aselect((b, "v"), timeout=5) == (b, None)
    assert await asyncio.to_thread(rx.result) == "v"


def test_select_on_the_same_channel_twice_takes_one_message() -> None:
    """Go select7: two identical receive cases; one message consumed."""
    c: Channel[int] = Channel()
    bg = Background(lambda: select(c, c, timeout=10))
    wait_until(lambda: receivers(c) >= 1)
    c.send(1)
    c.send(2)
    assert bg.result() == (c, 1)
    assert drain(c) == [2]
    assert receivers(c) == 0


def test_select_sending_twice_to_one_channel_sends_once() -> None:
    c: Channel[int] = Channel(capacity=0)
    bg = Background(lambda: select((c, 1), (c, 2), timeout=10))
    wait_until(lambda: senders(c) >= 1)
    got = c.recv(timeout=10)
    assert bg.result() == (c, None)
    assert got in (1, 2)
    with pytest.raises(Empty):
        c.try_recv()


# -- argument errors -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [42, "chan", [1, 2], None, (Channel(), 1, 2), (42, "v")])
def test_select_rejects_a_non_selectable_argument(bad: Any) -> None:
    ok: Channel[int] = Channel()
    ok.send(1)
    with pytest.raises(TypeError):
        select(ok, bad, timeout=0)
    assert ok.try_recv() == 1  # nothing happened


@pytest.mark.asyncio
async def test_aselect_argument_errors() -> None:
    with pytest.raises(TypeError):
        await aselect(object())
    with pytest.raises(ValueError):
        await aselect()


def test_select_without_operations_raises_value_error() -> None:
    with pytest.raises(ValueError):
        select()
    with pytest.raises(ValueError):
        select(timeout=0)


# -- timeouts ----------------------------------------------------------------------------------


def test_select_timeout_zero_polls(capacity: int | None) -> None:
    a: Channel[Any] = Channel(capacity)
    b: Channel[Any] = Channel(capacity)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        select(a, b, timeout=0)
    assert time.monotonic() - t0 < 5
    if capacity is not None:
        for _ in range(capacity):
            a.send("fill")
            b.send("fill")
        with pytest.raises(TimeoutError):
            select((a, 1), (b, 2), timeout=0)
        assert drain(a) == drain(b) == ["fill"] * capacity
    assert receivers(a) + receivers(b) + senders(a) + senders(b) == 0


@pytest.mark.asyncio
async def test_aselect_timeout_zero_polls(capacity: int | None) -> None:
    a: Channel[Any] = Channel(capacity)
    with pytest.raises(TimeoutError):
        await aselect(a, timeout=0)
    assert receivers(a) == 0


def test_select_timeout_waits_then_leaves_no_registration() -> None:
    a: Channel[int] = Channel()
    b: Channel[int] = Channel(capacity=0)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        select(a, (b, 1), timeout=0.03)
    assert time.monotonic() - t0 >= 0.025
    assert receivers(a) == senders(b) == 0
    a.send(5)
    assert a.try_recv() == 5


@pytest.mark.asyncio
async def test_aselect_timeout_waits_then_leaves_no_registration() -> None:
    a: Channel[int] = Channel()
    b: Channel[int] = Channel(capacity=0)
    with pytest.raises(TimeoutError):
        await aselect(a, (b, 1), timeout=0.03)
    assert receivers(a) == senders(b) == 0


@pytest.mark.timeout(30)
def test_select_with_timeouts_loses_nothing() -> None:
    """A select that timed out did nothing: every message is received exactly once."""
    rng = random.Random(21)
    a: Channel[Any] = Channel(capacity=2)
    b: Channel[Any] = Channel(capacity=0)
    n = 300

    def producer(ch: Channel[Any], tag: str) -> None:
        for i in range(n):
            if rng.random() < 0.2:
                time.sleep(0.0005)
            ch.send((tag, i), timeout=10)

    got: list[Any] = []

    def consumer() -> None:
        while len(got) < 2 * n:
            try:
                got.append(select(a, b, timeout=rng.choice([0, 0.0002, 0.001]))[1])
            except TimeoutError:
                pass

    run_threads([lambda: producer(a, "a"), lambda: producer(b, "b"), consumer], timeout=25)
    assert sorted(got) == sorted((t, i) for t in "ab" for i in range(n))
    for tag in "ab":
        assert [i for t, i in got if t == tag] == list(range(n))


# -- fairness ------------------------------------------------------------------------------------


def test_select_fairness_between_ready_receives() -> None:
    """crossbeam's `fairness`: two always-ready sources each win at least COUNT/2/2 times."""
    count = 2000
    a: Channel[int] = Channel()
    b: Channel[int] = Channel()
    for i in range(count):
        a.send(i)
        b.send(i)
    wins = Counter(select(a, b, timeout=0)[0] for _ in range(count))
    assert wins[a] >= count // 2 // 2
    assert wins[b] >= count // 2 // 2
    assert wins[a] + wins[b] == count
    assert len(a) + len(b) == count  # exactly one message per select


def test_select_fairness_between_ready_sends() -> None:
    count = 2000
    a: Channel[int] = Channel()
    b: Channel[int] = Channel()
    wins = Counter(select((a, 1), (b, 2), timeout=0)[0] for _ in range(count))
    assert wins[a] >= count // 4 and wins[b] >= count // 4
    assert len(a) == wins[a] and len(b) == wins[b]


@pytest.mark.asyncio
async def test_aselect_fairness() -> None:
    count = 2000
    a: Channel[int] = Channel()
    b: Channel[int] = Channel(capacity=count)
    for i in range(count):
        a.send(i)
        b.send(i)
    wins = Counter([(await aselect(a, b))[0] for _ in range(count)])
    assert wins[a] >= count // 4 and wins[b] >= count // 4


# -- closed sources ------------------------------------------------------------------------------


def test_closed_source_is_ready_buffered_first_then_channel_closed() -> None:
    a: Channel[int] = Channel(capacity=4)
    b: Channel[int] = Channel()
    a.send(1)
    a.send(2)
    a.close()
    assert select(a, b, timeout=0) == (a, 1)
    assert select(a, b) == (a, 2)
    for _ in range(3):
        with pytest.raises(ChannelClosed) as exc:
            select(b, a)  # would block on b alone: the closed a is ready
        assert exc.value.channel is a


def test_closed_source_and_a_ready_source_both_get_picked() -> None:
    a: Channel[int] = Channel()
    b: Channel[int] = Channel()
    a.close()
    for i in range(200):
        b.send(i)
    picks = Counter()
    for _ in range(200):
        try:
            src, _ = select(a, b, timeout=0)
            picks[src] += 1
        except ChannelClosed as exc:
            picks[exc.channel] += 1
    assert picks[a] > 0 and picks[b] > 0
    assert len(b) == 200 - picks[b]


def test_close_wakes_a_parked_select_with_that_channel(capacity: int | None) -> None:
    a: Channel[Any] = Channel(capacity)
    b: Channel[Any] = Channel(capacity)
    bg = Background(lambda: select(a, b))
    wait_until(lambda: receivers(a) == receivers(b) == 1)
    b.close()
    exc = bg.outcome()
    assert isinstance(exc, ChannelClosed)
    assert exc.channel is b
    assert receivers(a) == 0


@pytest.mark.asyncio
async def test_close_wakes_a_parked_aselect(capacity: int | None) -> None:
    a: Channel[Any] = Channel(capacity)
    b: Channel[Any] = Channel(capacity)
    task = asyncio.ensure_future(aselect(a, b))
    await await_until(lambda: receivers(a) == receivers(b) == 1)
    await asyncio.to_thread(a.close)
    with pytest.raises(ChannelClosed) as exc:
        await task
    assert exc.value.channel is a
    assert receivers(b) == 0


def test_send_in_select_on_closed_channel_raises_with_value(capacity: int | None) -> None:
    a: Channel[Any] = Channel(capacity)
    b: Channel[Any] = Channel(capacity)
    a.close()
    with pytest.raises(ChannelClosed) as exc:
        select((a, "v"), b)
    assert exc.value.channel is a
    assert exc.value.value == "v"


def test_close_wakes_a_select_parked_on_a_send(capacity: int | None) -> None:
    if capacity is None:
        pytest.skip("unbounded sends never park")
    a: Channel[Any] = Channel(capacity)
    for _ in range(capacity):
        a.send("fill")
    bg = Background(lambda: select((a, "v")))
    wait_until(lambda: senders(a) == 1)
    a.close()
    exc = bg.outcome()
    assert isinstance(exc, ChannelClosed)
    assert (exc.channel, exc.value) == (a, "v")
    assert drain(a) == ["fill"] * capacity


# -- exactly one, no swallowed wakeup ---------------------------------------------------------


@pytest.mark.timeout(30)
def test_select_consumes_exactly_one_when_two_sources_turn_ready_at_once(
    capacity: int | None,
) -> None:
    """Two senders released by a Barrier make both sources ready at once: the select takes
    one message and the other stays for the next receiver."""
    for i in range(60):
        a: Channel[Any] = Channel(capacity)
        b: Channel[Any] = Channel(capacity)
        sel = Background(lambda a=a, b=b: select(a, b, timeout=10))
        wait_until(lambda a=a, b=b: receivers(a) == receivers(b) == 1)
        barrier = threading.Barrier(2)

        def send(ch: Channel[Any], v: str, barrier: threading.Barrier = barrier) -> None:
            barrier.wait(5)
            ch.send(v, timeout=10)

        s1 = Background(lambda a=a, i=i: send(a, f"a{i}"))
        s2 = Background(lambda b=b, i=i: send(b, f"b{i}"))
        src, msg = sel.result()
        assert (src, msg) in ((a, f"a{i}"), (b, f"b{i}"))
        other = b if src is a else a
        assert other.recv(timeout=10) == (f"b{i}" if src is a else f"a{i}")
        s1.result()
        s2.result()
        assert drain(a) == drain(b) == []


def test_select_does_not_swallow_a_wakeup_meant_for_another_receiver() -> None:
    """Go select6 (issue 2075): a select woken through b leaves a stale entry on a; the
    next send on a must skip it and wake the receiver parked on a behind it."""
    a: Channel[str] = Channel(capacity=0)
    b: Channel[str] = Channel(capacity=0)
    sel = Background(lambda: select(a, b, timeout=10))
    wait_until(lambda: receivers(a) == 1)
    rx = Background(lambda: a.recv(timeout=10))
    wait_until(lambda: receivers(a) == 2)
    b.send("for the select", timeout=10)
    a.send("for the receiver", timeout=10)
    assert sel.result() == (b, "for the select")
    assert rx.result() == "for the receiver"
    # The queues are intact: another round trip on a works.
    rx2 = Background(lambda: a.recv(timeout=10))
    a.send("again", timeout=10)
    assert rx2.result() == "again"


def test_receiver_parked_before_a_select_is_served_first() -> None:
    a: Channel[str] = Channel()
    b: Channel[str] = Channel()
    rx = Background(lambda: a.recv(timeout=10))
    wait_until(lambda: receivers(a) == 1)
    sel = Background(lambda: select(a, b, timeout=10))
    wait_until(lambda: receivers(a) == 2)
    a.send("first")
    assert rx.result() == "first"
    b.send("second")
    assert sel.result() == (b, "second")


@pytest.mark.timeout(40)
def test_no_wakeup_lost_among_selects_and_receivers(capacity: int | None) -> None:
    """A select(a, b) and plain receivers on a and on b, parked in random order; two
    messages sent at once (one per channel), then one more on each: all three finish,
    each channel stays FIFO, and exactly one message is left over."""
    rng = random.Random(31)
    for _ in range(40):
        a: Channel[Any] = Channel(capacity)
        b: Channel[Any] = Channel(capacity)
        parties: list[tuple[str, int, Callable[[], Any]]] = [
            ("sel", 2, lambda a=a, b=b: select(a, b, timeout=10)[1]),
            ("ra", 1, lambda a=a: a.recv(timeout=10)),
            ("rb", 1, lambda b=b: b.recv(timeout=10)),
        ]
        rng.shuffle(parties)
        bgs = {}
        parked = 0
        for name, entries, fn in parties:
            bgs[name] = Background(fn)
            parked += entries
            wait_until(lambda a=a, b=b, n=parked: receivers(a) + receivers(b) == n)
        barrier = threading.Barrier(2)
        firsts = [
            Background(lambda a=a, w=barrier: (w.wait(5), a.send("a1", timeout=10))),
            Background(lambda b=b, w=barrier: (w.wait(5), b.send("b1", timeout=10))),
        ]
        for s in firsts:
            s.result()
        seconds = [
            Background(lambda a=a: a.send("a2", timeout=10)),
            Background(lambda b=b: b.send("b2", timeout=10)),
        ]
        sel, ra, rb = (bgs[name].result() for name in ("sel", "ra", "rb"))
        left_over = []
        while len(left_over) < 1:  # buffered, or held by a parked rendezvous sender
            left_over += drain(a) + drain(b)
        for s in seconds:
            s.result()
        assert left_over in (["a2"], ["b2"])
        assert sorted([sel, ra, rb, *left_over]) == ["a1", "a2", "b1", "b2"]
        assert ra in ("a1", "a2") and rb in ("b1", "b2")
        if ra == "a2":
            assert sel == "a1"  # FIFO on a
        if rb == "b2":
            assert sel == "b1"
        assert drain(a) == drain(b) == []


# -- send operations -------------------------------------------------------------------------


@pytest.mark.parametrize("capacity", [1, 0], ids=["bounded1", "rendezvous"])
def test_select_send_blocks_until_a_receiver_takes_or_makes_room(capacity: int) -> None:
    ch: Channel[str] = Channel(capacity)
    other: Channel[str] = Channel()
    if capacity:
        ch.send("fill")
    sel = Background(lambda: select((ch, "v"), other))
    wait_until(lambda: senders(ch) == 1 and receivers(other) == 1)
    assert not sel.done.is_set()
    assert len(ch) == capacity
    first = ch.recv(timeout=10)
    assert sel.result() == (ch, None)
    got = [first, *drain(ch)] if capacity else [first]
    assert got == (["fill", "v"] if capacity else ["v"])
    assert receivers(other) == senders(ch) == 0


@pytest.mark.parametrize("capacity", [1, 0], ids=["bounded1", "rendezvous"])
@pytest.mark.asyncio
async def test_aselect_send_blocks_until_a_receiver_takes_or_makes_room(capacity: int) -> None:
    ch: Channel[str] = Channel(capacity)
    if capacity:
        ch.send("fill")
    task = asyncio.ensure_future(aselect((ch, "v")))
    await await_until(lambda: senders(ch) == 1)
    assert not task.done()
    got = [await asyncio.to_thread(ch.recv, 10)]
    assert await asyncio.wait_for(task, 10) == (ch, None)
    if capacity:
        got.append(ch.try_recv())
    assert got == (["fill", "v"] if capacity else ["v"])


def test_select_sends_on_one_of_two_rendezvous_only() -> None:
    a: Channel[str] = Channel(capacity=0)
    b: Channel[str] = Channel(capacity=0)
    rx = Background(lambda: b.recv(timeout=10))
    wait_until(lambda: receivers(b) == 1)
    assert select((a, "to a"), (b, "to b"), timeout=5) == (b, None)
    assert rx.result() == "to b"
    assert senders(a) == 0
    with pytest.raises(Full):
        a.try_send("x")  # nobody receiving on a, and no sender left behind
    with pytest.raises(Empty):
        a.try_recv()


class CountingWakeups:
    """Counts the wakeup handles select.py makes: one per park (no busy loop)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # ``ioserver.select`` is the function; the module behind it:
        select_module = importlib.import_module("ioserver.select")
        self.made = 0
        counter = self

        class CountingThreadWakeup(ThreadWakeup):
            def __init__(self) -> None:
                super().__init__()
                counter.made += 1

        class CountingAsyncWakeup(AsyncWakeup):
            def __init__(self, loop: Any = None) -> None:
                super().__init__(loop)
                counter.made += 1

        monkeypatch.setattr(select_module, "ThreadWakeup", CountingThreadWakeup)
        monkeypatch.setattr(select_module, "AsyncWakeup", CountingAsyncWakeup)


def test_select_sending_and_receiving_on_one_rendezvous_parks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A select cannot meet itself: select((c, v), c) with nobody else parks once and
    times out (regression: its own entries made it 'ready', and it spun on the CPU)."""
    c: Channel[str] = Channel(capacity=0)
    wakeups = CountingWakeups(monkeypatch)
    with pytest.raises(TimeoutError):
        select((c, "v"), c, timeout=0.1)
    assert wakeups.made <= 2
    assert senders(c) == receivers(c) == 0


@pytest.mark.asyncio
async def test_aselect_sending_and_receiving_on_one_rendezvous_parks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c: Channel[str] = Channel(capacity=0)
    wakeups = CountingWakeups(monkeypatch)
    with pytest.raises(TimeoutError):
        await aselect(c, (c, "v"), timeout=0.1)
    assert wakeups.made <= 2
    assert senders(c) == receivers(c) == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kinds", ["threads", "coroutines", "mixed"])
def test_two_selects_exchange_over_one_rendezvous(kinds: str) -> None:
    """Two parties each select((c, mine), c): one sends, the other receives its value."""
    c: Channel[str] = Channel(capacity=0)

    def party(name: str) -> Any:
        return select((c, name), c, timeout=10)

    async def aparty(name: str) -> Any:
        return await aselect(c, (c, name), timeout=10)

    with loop_thread() as la, loop_thread(use_uvloop=True) as lb:
        for i in range(60):
            names = (f"x{i}", f"y{i}")
            if kinds == "threads":
                results = run_threads([lambda n=n: party(n) for n in names])
            elif kinds == "coroutines":
                futs = [la.submit(aparty(names[0])), lb.submit(aparty(names[1]))]
                results = [f.result(10) for f in futs]
            else:
                fut = la.submit(aparty(names[0]))
                second = party(names[1])
                results = [fut.result(10), second]
            assert all(src is c for src, _ in results)
            sent = [k for k, (_, msg) in enumerate(results) if msg is None]
            assert len(sent) == 1  # exactly one party sent...
            assert results[1 - sent[0]][1] == names[sent[0]]  # ...and the other got it
            assert senders(c) == receivers(c) == 0


def test_select_mixing_send_and_receive(capacity: int | None) -> None:
    """select((out, v), inp): whichever can proceed does, and only that one."""
    if capacity is None:
        pytest.skip("an unbounded send is always ready")
    for first in ("inp", "out") * 5:
        out: Channel[str] = Channel(capacity)
        inp: Channel[str] = Channel(capacity)
        for _ in range(capacity):
            out.send("fill")
        sel = Background(lambda out=out, inp=inp: select((out, "v"), inp, timeout=10))
        wait_until(lambda out=out, inp=inp: senders(out) == 1 and receivers(inp) == 1)
        if first == "inp":
            inp.send("m", timeout=10)
            assert sel.result() == (inp, "m")
            assert drain(out) == ["fill"] * capacity  # "v" was not sent
        else:
            took = out.recv(timeout=10)
            assert sel.result() == (out, None)
            assert [took, *drain(out)] == ["fill"] * capacity + ["v"]
            with pytest.raises(Empty):
                inp.try_recv()
        assert senders(out) == receivers(inp) == 0


def test_select_receives_from_a_rendezvous_with_a_coroutine_sender() -> None:
    rv: Channel[str] = Channel(capacity=0)
    other: Channel[str] = Channel()
    with loop_thread(use_uvloop=True) as lt:
        fut = lt.submit(rv.asend("from coroutine", timeout=10))
        wait_until(lambda: senders(rv) == 1)
        assert select(other, rv, timeout=10) == (rv, "from coroutine")
        fut.result(10)


def test_coroutine_aselect_on_uvloop_woken_by_threads() -> None:
    a: Channel[int] = Channel()
    b: Channel[int] = Channel(capacity=0)

    async def selector(n: int) -> list[tuple[str, int]]:
        out = []
        for _ in range(n):
            src, msg = await aselect(a, b, timeout=10)
            out.append(("a" if src is a else "b", msg))
        return out

    with loop_thread(use_uvloop=True) as lt:
        fut = lt.submit(selector(200))
        run_threads(
            [lambda: [a.send(i) for i in range(100)], lambda: [b.send(i) for i in range(100)]]
        )
        got = fut.result(10)
    assert sorted(got) == sorted((t, i) for t in "ab" for i in range(100))


# -- cancellation ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_cancelled_aselect_did_nothing(capacity: int | None) -> None:
    a: Channel[Any] = Channel(capacity)
    b: Channel[Any] = Channel(0)
    task = asyncio.ensure_future(aselect(a, (b, "v")))
    await await_until(lambda: receivers(a) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert receivers(a) == senders(b) == 0
    with pytest.raises(Empty):
        b.try_recv()


@pytest.mark.asyncio
@pytest.mark.timeout(40)
async def test_aselect_cancel_race_counts_every_message(capacity: int | None) -> None:
    """Cancel an aselect(a, b) at various points while threads send one message to each:
    the aselect returned at most one, and the rest is still there."""
    rng = random.Random(41)
    cancelled = 0
    for i in range(200):
        a: Channel[Any] = Channel(capacity)
        b: Channel[Any] = Channel(capacity)
        task = asyncio.ensure_future(aselect(a, b))
        point = i % 5
        if point >= 2:
            await await_until(lambda a=a: receivers(a) == 1)
        sa = Background(lambda a=a, i=i: a.send(("a", i), timeout=10))
        sb = Background(lambda b=b, i=i: b.send(("b", i), timeout=10)) if i % 2 else None
        if point == 1:
            await asyncio.sleep(0)
        elif point == 3:
            time.sleep(rng.choice([0, 0.00005, 0.0002]))
        elif point == 4:
            # A message was handed over while the loop is blocked: the task has not run.
            wait_until(lambda sa=sa, sb=sb: sa.done.is_set() or (sb and sb.done.is_set()))
        task.cancel()
        outcome = (await asyncio.gather(task, return_exceptions=True))[0]
        got = []
        if isinstance(outcome, asyncio.CancelledError):
            cancelled += 1
        else:
            src, msg = outcome
            assert src is (a if msg[0] == "a" else b)
            got.append(msg)
        if ("a", i) not in got:
            got.append(await a.arecv(timeout=10))
        if sb is not None and ("b", i) not in got:
            got.append(await b.arecv(timeout=10))
        await asyncio.to_thread(sa.result)
        if sb is not None:
            await asyncio.to_thread(sb.result)
        expected = [("a", i)] + ([("b", i)] if sb is not None else [])
        assert sorted(got) == expected
        assert drain(a) == drain(b) == []
    assert cancelled >= 80


@pytest.mark.asyncio
@pytest.mark.timeout(40)
async def test_aselect_send_cancel_race_delivers_iff_it_returned(capacity: int | None) -> None:
    if capacity is None:
        pytest.skip("an unbounded send is always ready")
    rng = random.Random(42)
    stop = ("stop",)
    for i in range(150):
        ch: Channel[Any] = Channel(capacity)
        filled = ["fill"] * capacity
        for f in filled:
            ch.send(f)
        other: Channel[Any] = Channel()

        def receiver(ch: Channel[Any] = ch) -> list[Any]:
            got = []
            while (msg := ch.recv(timeout=10)) is not stop:
                got.append(msg)
            return got

        task = asyncio.ensure_future(aselect((ch, i), other))
        point = i % 4
        if point >= 2:
            await await_until(lambda ch=ch: senders(ch) == 1)
        rx = Background(receiver)
        if point == 1:
            await asyncio.sleep(0)
        elif point == 2:
            time.sleep(rng.choice([0, 0.00005, 0.0002]))
        elif point == 3:
            wait_until(lambda ch=ch: senders(ch) == 0)  # claimed; the task has not run
        task.cancel()
        outcome = (await asyncio.gather(task, return_exceptions=True))[0]
        await asyncio.to_thread(ch.send, stop, 10)
        got = await asyncio.to_thread(rx.result)
        if isinstance(outcome, asyncio.CancelledError):
            assert got == filled
        else:
            assert outcome == (ch, None)
            assert got == [*filled, i]
        assert receivers(other) == 0


@pytest.mark.asyncio
async def test_aselect_cancel_right_after_its_timeout_is_a_plain_cancel() -> None:
    """Regression: the timeout fired, then the cancel landed before the task resumed."""
    a: Channel[int] = Channel()
    task = asyncio.ensure_future(aselect(a, timeout=0.01))
    await asyncio.sleep(0)
    asyncio.get_running_loop().call_later(0.011, task.cancel)
    time.sleep(0.05)
    outcome = (await asyncio.gather(task, return_exceptions=True))[0]
    assert isinstance(outcome, asyncio.CancelledError | TimeoutError), repr(outcome)
    assert receivers(a) == 0


# -- ports of Go's select tests ------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_go_doubleselect_each_value_received_once() -> None:
    """go/test/chan/doubleselect.go: one sender selects over four unbuffered channels for
    each value; a mux per channel forwards to one output; every value arrives once."""
    n = 1500
    chans: list[Channel[int]] = [Channel(capacity=0) for _ in range(4)]
    out: Channel[int] = Channel()
    muxes_done = []

    def sender() -> None:
        for i in range(n):
            select(*((c, i) for c in chans))
        for c in chans:
            c.close()

    def mux(c: Channel[int]) -> None:
        for v in c:
            out.send(v)
        muxes_done.append(c)
        if len(muxes_done) == 4:
            out.close()

    got: list[int] = []

    def receiver() -> None:
        got.extend(out)

    run_threads([sender, *(lambda c=c: mux(c) for c in chans), receiver], timeout=35)
    assert sorted(got) == list(range(n))


@pytest.mark.timeout(40)
def test_go_select_many_senders_and_receivers() -> None:
    """Many threads select-sending to and select-receiving from a mix of channel flavours:
    every value sent is received exactly once."""
    chans: list[Channel[Any]] = [Channel(), Channel(1), Channel(4), Channel(0)]
    n_send, n_recv, per = 4, 4, 200
    total = n_send * per
    got: list[Any] = []
    lock = threading.Lock()

    def sender(s: int) -> None:
        rng = random.Random(s)
        for i in range(per):
            ops = rng.sample(chans, rng.randint(1, 4))
            select(*((c, (s, i)) for c in ops), timeout=10)

    def receiver() -> None:
        while True:
            try:
                _, msg = select(*chans, timeout=10)
            except ChannelClosed:
                return
            with lock:
                got.append(msg)
                if len(got) == total:
                    for c in chans:
                        c.close()

    run_threads([*(lambda s=s: sender(s) for s in range(n_send))] + [receiver] * n_recv, 35)
    assert sorted(got) == sorted((s, i) for s in range(n_send) for i in range(per))


@pytest.mark.timeout(30)
def test_go_nonblock_polling_select_meets_a_blocked_partner(capacity: int | None) -> None:
    """go/test/chan/nonblock.go: a non-blocking select eventually meets a partner thread
    blocked on the other side, for receives and for sends."""
    ch: Channel[Any] = Channel(capacity)
    for i in range(20):
        sender = Background(lambda i=i: ch.send(i, timeout=10))
        for _ in range(100_000):
            try:
                assert select(ch, timeout=0) == (ch, i)
                break
            except TimeoutError:
                time.sleep(0.0001)
        else:
            pytest.fail("non-blocking receive never succeeded")
        sender.result()
        rx = Background(lambda: ch.recv(timeout=10))
        for _ in range(100_000):
            try:
                assert select((ch, ("s", i)), timeout=0) == (ch, None)
                break
            except TimeoutError:
                time.sleep(0.0001)
        else:
            pytest.fail("non-blocking send never succeeded")
        assert rx.result() == ("s", i)


def test_go_closedchan_select_on_closed_channels(capacity: int | None) -> None:
    """go/test/closedchan.go: a closed channel is always ready for a receiving select (here:
    ChannelClosed) and a sending select fails; neither blocks."""
    c: Channel[Any] = Channel(capacity)
    open_: Channel[Any] = Channel(capacity)
    c.close()
    for _ in range(10):
        with pytest.raises(ChannelClosed) as exc:
            select(open_, c)
        assert exc.value.channel is c
        with pytest.raises(ChannelClosed) as exc:
            select((c, 1), open_)
        assert exc.value.channel is c
    assert receivers(open_) == senders(open_) == 0

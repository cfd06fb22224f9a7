"""Stress: many threads and coroutines on shared channels, closed at a random moment;
then random single-thread schedules against a sequential model (hypothesis).

The invariant (docs/architecture.md, "Guarantees"): a send that returned was
delivered, exactly once; a send that raised was not delivered at all; nobody hangs.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from helpers import loop_thread, run_threads, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ioserver import Channel, ChannelClosed, Empty, Full, aselect, select

FLAVOURS = [None, 4, 0]
FLAVOUR_IDS = ["unbounded", "bounded4", "rendezvous"]


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Switch threads far more often than the default 5 ms, to shake out interleavings."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(5e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


# =========================================================================================
# Producers and consumers over two channels, closed at a random moment
# =========================================================================================


@dataclass
class Ledger:
    """What every party did; appended to from many threads (list.append is atomic)."""

    sent: list[Any] = field(default_factory=list)  # values whose send returned
    refused: list[Any] = field(default_factory=list)  # values whose send raised
    # (consumer, channel name, value) for every message received
    received: list[tuple[str, str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _name(ch: Channel[Any], a: Channel[Any]) -> str:
    return "a" if ch is a else "b"


def thread_producer(
    pid: int, rng: random.Random, a: Channel[Any], b: Channel[Any], led: Ledger
) -> None:
    """Sends (pid, seq) with a random operation each time, until both channels are closed."""
    open_ = [a, b]
    seq = 0
    while open_:
        value = (pid, seq)
        seq += 1
        ch = rng.choice(open_)
        op = rng.randrange(5)
        try:
            if op == 0:
                ch.send(value)
                led.sent.append(value)
            elif op == 1:
                ch.send(value, timeout=rng.choice([0, 0.0005]))
                led.sent.append(value)
            elif op == 2:
                ch.try_send(value)
                led.sent.append(value)
            else:
                _src, none = select(*((c, value) for c in open_), timeout=0.01)
                if none is not None:
                    led.errors.append(f"select-send returned {none!r}")
                led.sent.append(value)
        except (TimeoutError, Full) as exc:
            if isinstance(exc, Full) and exc.value is not value:
                led.errors.append(f"Full.value {exc.value!r} is not {value!r}")
            led.refused.append(value)
        except ChannelClosed as exc:
            if exc.value is not value:
                led.errors.append(f"ChannelClosed.value {exc.value!r} is not {value!r}")
            led.refused.append(value)
            if exc.channel in open_:
                open_.remove(exc.channel)


async def coroutine_producer(
    pid: int, rng: random.Random, a: Channel[Any], b: Channel[Any], led: Ledger
) -> None:
    open_ = [a, b]
    seq = 0
    while open_:
        value = (pid, seq)
        seq += 1
        ch = rng.choice(open_)
        op = rng.randrange(3)
        if rng.random() < 0.05:
            await asyncio.sleep(0)  # a ready asend never suspends: let the others run too
        try:
            if op == 0:
                await ch.asend(value)
            elif op == 1:
                await ch.asend(value, timeout=rng.choice([0, 0.0005]))
            else:
                await aselect(*((c, value) for c in open_), timeout=0.01)
            led.sent.append(value)
        except TimeoutError:
            led.refused.append(value)
        except ChannelClosed as exc:
            if exc.value is not value:
                led.errors.append(f"ChannelClosed.value {exc.value!r} is not {value!r}")
            led.refused.append(value)
            if exc.channel in open_:
                open_.remove(exc.channel)


def thread_receiver(rng: random.Random, ch: Channel[Any], name: str, led: Ledger) -> None:
    while True:
        try:
            msg = ch.recv(timeout=rng.choice([None, 0.001]))
        except TimeoutError:
            continue
        except ChannelClosed:
            return
        led.received.append(("recv", name, msg))


async def coroutine_receiver(rng: random.Random, ch: Channel[Any], name: str, led: Ledger) -> None:
    while True:
        if rng.random() < 0.05:
            await asyncio.sleep(0)
        try:
            msg = await ch.arecv(timeout=rng.choice([None, 0.001]))
        except TimeoutError:
            continue
        except ChannelClosed:
            return
        led.received.append(("arecv", name, msg))


def select_receiver(rng: random.Random, a: Channel[Any], b: Channel[Any], led: Ledger) -> None:
    open_ = [a, b]
    while open_:
        try:
            src, msg = select(*open_, timeout=rng.choice([None, 0.001]))
        except TimeoutError:
            continue
        except ChannelClosed as exc:
            open_.remove(exc.channel)
            continue
        led.received.append(("select", _name(src, a), msg))


def run_scenario(capacity: int | None, seed: int, max_close_after: int) -> Ledger:
    """4 producer threads + 2 producer coroutines -> recv thread (a), arecv coroutine (b),
    select thread (a and b); a closer closes both channels after a random number of sends."""
    rng = random.Random(seed)
    a: Channel[Any] = Channel(capacity)
    b: Channel[Any] = Channel(capacity)
    led = Ledger()
    close_after = rng.randrange(max_close_after)
    rngs = [random.Random(rng.getrandbits(32)) for _ in range(10)]

    def closer() -> None:
        wait_until(lambda: len(led.sent) >= close_after, timeout=30)
        first, second = (a, b) if rngs[9].random() < 0.5 else (b, a)
        first.close()
        if rngs[9].random() < 0.5:
            time.sleep(0.0005)  # only to vary the race between the two closes
        second.close()

    with loop_thread(use_uvloop=seed % 2 == 0) as lt:
        coros = [
            lt.submit(coroutine_producer(100, rngs[4], a, b, led)),
            lt.submit(coroutine_producer(101, rngs[5], a, b, led)),
            lt.submit(coroutine_receiver(rngs[6], b, "b", led)),
        ]
        fns: list[Callable[[], object]] = [
            *(lambda p=p: thread_producer(p, rngs[p], a, b, led) for p in range(4)),
            lambda: thread_receiver(rngs[7], a, "a", led),
            lambda: select_receiver(rngs[8], a, b, led),
            closer,
        ]
        run_threads(fns, timeout=40)
        for fut in coros:
            fut.result(10)
    check_ledger(led, a, b)
    return led


def check_ledger(led: Ledger, a: Channel[Any], b: Channel[Any]) -> None:
    assert led.errors == []
    got = [msg for _, _, msg in led.received]
    dupes = [m for m, n in Counter(got).items() if n > 1]
    assert dupes == [], f"received more than once: {dupes[:5]}"
    sent, refused = set(led.sent), set(led.refused)
    assert len(sent) == len(led.sent) and not sent & refused
    lost = sent - set(got)
    assert not lost, f"{len(lost)} sent messages never received, e.g. {sorted(lost)[:5]}"
    ghosts = set(got) - sent
    assert not ghosts, f"received messages whose send did not return: {sorted(ghosts)[:5]}"
    # Each consumer sees each producer's messages on one channel in order (FIFO).
    for consumer in ("recv", "arecv", "select"):
        for chan in "ab":
            seqs: dict[int, list[int]] = {}
            for c, n, (pid, seq) in led.received:
                if c == consumer and n == chan:
                    seqs.setdefault(pid, []).append(seq)
            for pid, s in seqs.items():
                assert s == sorted(s), f"{consumer} saw producer {pid} out of order on {chan}"
    for ch in (a, b):
        assert ch.closed
        with pytest.raises(ChannelClosed):
            ch.try_recv()
        stats = ch.statistics()
        assert (stats.waiting_senders, stats.waiting_receivers) == (0, 0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("capacity", FLAVOURS, ids=FLAVOUR_IDS)
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_producers_consumers_closed_at_random(
    capacity: int | None, seed: int, busy_switching: None
) -> None:
    """Every message whose send returned is received exactly once, none whose send raised
    is received, per-producer order holds, and nobody hangs."""
    led = run_scenario(capacity, seed, max_close_after=40_000)
    assert len(led.received) == len(led.sent)


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("capacity", [*FLAVOURS, 1], ids=[*FLAVOUR_IDS, "bounded1"])
def test_producers_consumers_closed_at_random_long(capacity: int | None) -> None:
    for seed in range(100, 140):
        run_scenario(capacity, seed, max_close_after=200_000)


# -- cancellation under load ----------------------------------------------------------------


async def _cancel_storm(rng: random.Random, ch: Channel[Any], n: int) -> tuple[list[Any], int]:
    """Receive n messages with arecv/aselect calls that are cancelled at random moments."""
    got: list[Any] = []
    cancelled = 0
    while len(got) < n:
        coro = ch.arecv() if rng.random() < 0.5 else aselect(ch)
        task = asyncio.ensure_future(coro)
        for _ in range(rng.randrange(3)):
            await asyncio.sleep(0)
        if rng.random() < 0.5:
            task.cancel()
        try:
            result = await task
        except asyncio.CancelledError:
            cancelled += 1
            continue
        got.append(result[1] if isinstance(result, tuple) and result[0] is ch else result)
    return got, cancelled


@pytest.mark.timeout(60)
@pytest.mark.parametrize("capacity", FLAVOURS, ids=FLAVOUR_IDS)
def test_cancelled_receives_under_load_lose_nothing(
    capacity: int | None, busy_switching: None
) -> None:
    """Two sender threads; a coroutine receives with arecv/aselect that get cancelled at
    random moments: every message is received exactly once, in per-sender order."""
    n = 1500
    ch: Channel[Any] = Channel(capacity)
    rng = random.Random(5)
    with loop_thread(use_uvloop=True) as lt:
        fut = lt.submit(_cancel_storm(rng, ch, 2 * n))
        run_threads([lambda s=s: [ch.send((s, i)) for i in range(n)] for s in range(2)], 40)
        got, cancelled = fut.result(20)
    assert cancelled > 0
    assert sorted(got) == sorted((s, i) for s in range(2) for i in range(n))
    for s in range(2):
        assert [i for t, i in got if t == s] == list(range(n))


# =========================================================================================
# Random single-thread schedules against a sequential model
# =========================================================================================


class Model:
    """A sequential channel: what each operation must do with no other party around."""

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self.buf: list[Any] = []
        self.closed = False

    def room(self) -> bool:
        return self.capacity is None or len(self.buf) < self.capacity

    def send(self, v: Any, blocked: str) -> tuple[Any, ...]:
        if self.closed:
            return ("ChannelClosed", v)
        if self.room():
            self.buf.append(v)
            return ("ok", None)
        return (blocked, v if blocked == "Full" else None)

    def recv(self, blocked: str) -> tuple[Any, ...]:
        if self.buf:
            return ("ok", self.buf.pop(0))
        if self.closed:
            return ("ChannelClosed", None)
        return (blocked, None)


def outcome(fn: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        return ("ok", fn())
    except ChannelClosed as exc:
        return ("ChannelClosed", exc.value)
    except Full as exc:
        return ("Full", exc.value)
    except Empty:
        return ("Empty", None)
    except TimeoutError:
        return ("TimeoutError", None)


timeouts = st.sampled_from([0, 0, 0, 0.001])
values = st.integers(0, 1000)
operations = st.one_of(
    st.tuples(st.just("send"), values, timeouts),
    st.tuples(st.just("try_send"), values),
    st.tuples(st.just("asend"), values, timeouts),
    st.tuples(st.just("select_send"), values),
    st.tuples(st.just("recv"), timeouts),
    st.tuples(st.just("try_recv")),
    st.tuples(st.just("arecv"), timeouts),
    st.tuples(st.just("select_recv")),
    st.tuples(st.just("close")),
    st.tuples(st.just("len")),
    st.tuples(st.just("stats")),
    st.tuples(st.just("drain_iter")),
)


@pytest.fixture(scope="module")
def event_loop_for_model() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.mark.timeout(120)
@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    capacity=st.sampled_from([None, 0, 1, 2, 3, 5]),
    ops=st.lists(operations, max_size=40),
)
def test_random_schedule_matches_the_sequential_model(
    capacity: int | None,
    ops: list[tuple[Any, ...]],
    event_loop_for_model: asyncio.AbstractEventLoop,
) -> None:
    ch: Channel[Any] = Channel(capacity)
    model = Model(capacity)
    run = event_loop_for_model.run_until_complete
    for op in ops:
        kind = op[0]
        if kind == "send":
            real = outcome(lambda op=op: ch.send(op[1], timeout=op[2]))
            want = model.send(op[1], "TimeoutError")
        elif kind == "try_send":
            real = outcome(lambda op=op: ch.try_send(op[1]))
            want = model.send(op[1], "Full")
        elif kind == "asend":
            real = outcome(lambda op=op: run(ch.asend(op[1], timeout=op[2])))
            want = model.send(op[1], "TimeoutError")
        elif kind == "select_send":
            real = outcome(lambda op=op: select((ch, op[1]), timeout=0))
            want = model.send(op[1], "TimeoutError")
            if want[0] == "ok":
                want = ("ok", (ch, None))
        elif kind == "recv":
            real = outcome(lambda op=op: ch.recv(timeout=op[1]))
            want = model.recv("TimeoutError")
        elif kind == "try_recv":
            real = outcome(ch.try_recv)
            want = model.recv("Empty")
        elif kind == "arecv":
            real = outcome(lambda op=op: run(ch.arecv(timeout=op[1])))
            want = model.recv("TimeoutError")
        elif kind == "select_recv":
            real = outcome(lambda: select(ch, timeout=0))
            want = model.recv("TimeoutError")
            if want[0] == "ok":
                want = ("ok", (ch, want[1]))
        elif kind == "close":
            real = outcome(ch.close)
            model.closed = True
            want = ("ok", None)
        elif kind == "len":
            real = ("ok", len(ch))
            want = ("ok", len(model.buf))
        elif kind == "stats":
            s = ch.statistics()
            real = (
                "ok",
                (s.buffered, s.capacity, s.waiting_senders, s.waiting_receivers, s.closed),
            )
            want = ("ok", (len(model.buf), capacity, 0, 0, model.closed))
        else:  # drain_iter: iterate only once closed (it would block otherwise)
            if not model.closed:
                continue
            real = ("ok", list(ch))
            want = ("ok", model.buf[:])
            model.buf.clear()
        assert real == want, f"{op}: channel gave {real}, model {want}"
        assert ch.closed == model.closed

"""Both cores, one contract: the same random programs, threads included, give the same answers.

Hypothesis writes a program: steps, each one operation (send, recv, try_send,
try_recv, select, close, statistics) given to one of three actor threads, over two
channels. The program runs once on pure-Python channels (``PyChannel`` and
``select.py_select``) and once on native ones (``NativeChannel`` and the native
``select``), and every observable result must be equal: what each operation
returned or raised, in step order, and what the channels hold at the end.

Threads make the order of events nondeterministic unless each step waits for the
system to settle. After giving a step to its actor, the driver waits until every
actor is either idle (its operation finished and recorded) or parked: exactly the
parked registrations the busy actors imply show in the channels' statistics
(``waiting_senders`` / ``waiting_receivers``). That is exact, not a guess with a
sleep: an operation that has not parked yet, or was woken and has not recorded
yet, makes the counts differ, so the driver keeps waiting. A select whose poll
would find more than one operation ready picks at random (its contract), so such a
step is narrowed to its first ready operation in both runs; every other select
really parks on both channels and is woken by the other actors.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from queue import SimpleQueue
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ioserver import channel as channel_module
from ioserver._core import native
from ioserver.channel import ChannelClosed, Empty, Full, PyChannel

select_module = importlib.import_module("ioserver.select")  # the module, not the function

pytestmark = pytest.mark.skipif(native is None, reason="the native core is not in use")

ACTORS = 3
SETTLE = 10.0  # seconds a step may take to settle before the test fails

# One step: (actor, operation, channel index, value). Operations:
#   send/recv (may park), try_send/try_recv, select_rr (recv on 0 or 1),
#   select_rs (recv on the channel, send the value on the other), close, stats.
OPS = ["send", "recv", "try_send", "try_recv", "select_rr", "select_rs", "close", "stats"]
WEIGHTS = [5, 5, 3, 3, 2, 2, 0, 1]  # close comes from its own strategy: rare


@dataclass
class World:
    """One core's channels and select."""

    channels: list[Any]
    select: Callable[..., tuple[Any, Any]]


def _worlds(capacity: int | None) -> list[World]:
    native_channel = channel_module.NativeChannel
    return [
        World([PyChannel(capacity), PyChannel(capacity)], select_module.py_select),
        World([native_channel(capacity), native_channel(capacity)], select_module.select),
    ]


def _recv_ready(ch: Any) -> bool:
    s = ch.statistics()
    return s.buffered > 0 or s.closed or s.waiting_senders > 0


def _send_ready(ch: Any) -> bool:
    s = ch.statistics()
    if s.closed or s.waiting_receivers > 0:
        return True
    return s.capacity is None or s.buffered < s.capacity


class Actor:
    """A thread that runs the operations it is given, one at a time, and records each result."""

    def __init__(self, world: World, results: dict[int, Any]) -> None:
        self.world = world
        self.results = results
        self.inbox: SimpleQueue[tuple[int, Callable[[], Any]] | None] = SimpleQueue()
        self.busy: int | None = None  # the step running (or parked) now
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.inbox.get()) is not None:
            step, op = item
            try:
                result: Any = ("ok", op())
            except (Empty, Full, ChannelClosed, TimeoutError) as exc:
                where = getattr(exc, "channel", None)
                index = self.world.channels.index(where) if where is not None else None
                result = (type(exc).__name__, getattr(exc, "value", None), index)
            self.results[step] = result


def _stats(ch: Any) -> tuple[Any, ...]:
    s = ch.statistics()
    return (s.buffered, s.capacity, s.waiting_senders, s.waiting_receivers, s.closed, len(ch))


def _describe(world: World, value: Any) -> Any:
    """A result with channels replaced by their index (comparable across worlds)."""
    if isinstance(value, tuple) and len(value) == 2 and value[0] in world.channels:
        return (world.channels.index(value[0]), value[1])
    return value


def _operation(world: World, op: str, index: int, value: int) -> tuple[Callable[[], Any], Any]:
    """The callable for one step and the registrations it leaves if it parks:
    a list of (channel index, "recv" | "send")."""
    chs = world.channels
    ch, other = chs[index], chs[1 - index]
    if op == "send":
        return (lambda: ch.send(value)), [(index, "send")]
    if op == "recv":
        return (lambda: ch.recv()), [(index, "recv")]
    if op == "try_send":
        return (lambda: ch.try_send(value)), []
    if op == "try_recv":
        return (lambda: ch.try_recv()), []
    if op == "close":
        return (lambda: ch.close()), []
    if op == "stats":
        return (lambda: _stats(ch)), []
    # A select: both operations if at most one is ready, else the first ready one
    # alone (a poll that finds two ready picks at random).
    if op == "select_rr":
        ops: list[tuple[Any, int, str]] = [(ch, index, "recv"), (other, 1 - index, "recv")]
    else:
        ops = [(ch, index, "recv"), ((other, value), 1 - index, "send")]
    ready = [o for o in ops if (_recv_ready(o[0]) if o[2] == "recv" else _send_ready(o[0][0]))]
    if len(ready) > 1:
        ops = ready[:1]
    select = world.select
    args = [o[0] for o in ops]
    return (lambda: _describe(world, select(*args))), [(o[1], o[2]) for o in ops]


def _settled(world: World, actors: list[Actor], parked: dict[int, list[tuple[int, str]]]) -> bool:
    """Every busy actor has parked exactly where its operation registers."""
    for actor in actors:
        if actor.busy is not None and actor.busy in actor.results:
            actor.busy = None
    want = [[0, 0], [0, 0]]  # per channel: receivers, senders
    for actor in actors:
        if actor.busy is not None:
            if not parked[actor.busy]:
                return False  # an operation that never parks: it must finish
            for index, kind in parked[actor.busy]:
                want[index][kind == "send"] += 1
    for index, ch in enumerate(world.channels):
        s = ch.statistics()
        if [s.waiting_receivers, s.waiting_senders] != want[index]:
            return False
    return True


def _settle(world: World, actors: list[Actor], parked: dict[int, list[tuple[int, str]]]) -> None:
    deadline = time.monotonic() + SETTLE
    while not _settled(world, actors, parked):
        if time.monotonic() > deadline:
            busy = [a.busy for a in actors]
            stats = [ch.statistics() for ch in world.channels]
            raise AssertionError(f"no settled state: busy steps {busy}, {stats}")
        time.sleep(0.0002)


def _run(world: World, program: list[tuple[int, str, int, int]]) -> list[Any]:
    results: dict[int, Any] = {}
    actors = [Actor(world, results) for _ in range(ACTORS)]
    parked: dict[int, list[tuple[int, str]]] = {}
    ran: list[int] = []
    try:
        for step, (who, op, index, value) in enumerate(program):
            actor = actors[who]
            if actor.busy is not None:
                continue  # this actor is parked: the step is skipped (in both worlds)
            call, parked[step] = _operation(world, op, index, value)
            actor.busy = step
            ran.append(step)
            actor.inbox.put((step, call))
            _settle(world, actors, parked)
        for ch in world.channels:  # release every parked actor, one channel at a time
            ch.close()
            _settle(world, actors, parked)
        tail = []
        for ch in world.channels:
            drained = []
            while True:
                try:
                    drained.append(ch.try_recv())
                except (Empty, ChannelClosed):
                    break
            tail.append(drained)
    finally:
        for ch in world.channels:
            ch.close()
        for actor in actors:
            actor.inbox.put(None)
        for actor in actors:
            actor.thread.join(SETTLE)
    return [(step, results.get(step)) for step in ran] + [("left", tail)]


step_strategy = st.tuples(
    st.integers(0, ACTORS - 1),
    st.sampled_from([op for op, w in zip(OPS, WEIGHTS, strict=True) for _ in range(w)]),
    st.integers(0, 1),
    st.integers(0, 10_000),
)
close_strategy = st.tuples(
    st.integers(0, ACTORS - 1), st.just("close"), st.integers(0, 1), st.just(0)
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    capacity=st.sampled_from([None, 1, 2, 0]),
    program=st.lists(step_strategy, min_size=1, max_size=40),
    closes=st.lists(st.tuples(st.integers(0, 39), close_strategy), max_size=1),
)
def test_threads_get_the_same_answers_from_both_cores(
    capacity: int | None,
    program: list[tuple[int, str, int, int]],
    closes: list[tuple[int, tuple[int, str, int, int]]],
) -> None:
    for at, step in closes:
        program.insert(min(at, len(program)), step)
    python_world, native_world = _worlds(capacity)
    expected = _run(python_world, program)
    got = _run(native_world, program)
    assert got == expected

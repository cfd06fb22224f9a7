"""Stress: every kind of task at once on shared channels, the GIL switching every
microsecond (sys.setswitchinterval(1e-6)), with timeouts and cancels mixed in.
Every message sent is received exactly once; nobody hangs."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from green_support import make_runner, outcome

from ioserver import Channel, aselect, select

N = 150  # messages per producer


@pytest.fixture
def frantic_switching() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


@pytest.mark.parametrize("capacity", [None, 2, 0], ids=["unbounded", "bounded2", "rendezvous"])
def test_all_kinds_at_once(capacity: int | None, frantic_switching: None) -> None:
    kinds = ("thread", "asyncio", "trio", "greenlet_worker")
    runners = {kind: make_runner(kind) for kind in kinds}
    a: Channel[Any] = Channel(capacity)
    b: Channel[Any] = Channel(capacity)
    try:
        jobs = []
        for kind, runner in runners.items():
            msgs = [(kind, i) for i in range(N)]
            if kind in ("asyncio", "trio"):

                async def produce(msgs: list[Any] = msgs) -> list[Any]:
                    for i, m in enumerate(msgs):
                        await (a if i % 2 else b).asend(m, timeout=30)
                    return []

                async def consume(kind: str = kind) -> list[Any]:
                    got: list[Any] = []
                    misses = 0
                    while len(got) < N and misses < 100_000:
                        try:
                            got.append((await aselect(a, b, timeout=0.001))[1])
                        except TimeoutError:
                            misses += 1
                            if kind == "trio":
                                with trio.move_on_after(0.0005):
                                    got.append(await a.arecv())
                    return got

                jobs += [runner.submit(produce), runner.submit(consume)]
            else:

                def sproduce(msgs: list[Any] = msgs) -> list[Any]:
                    for i, m in enumerate(msgs):
                        (a if i % 2 else b).send(m, timeout=30)
                    return []

                def sconsume() -> list[Any]:
                    got: list[Any] = []
                    misses = 0
                    while len(got) < N and misses < 100_000:
                        try:
                            got.append(select(a, b, timeout=0.001)[1])
                        except TimeoutError:
                            misses += 1
                    return got

                jobs += [runner.submit(sproduce), runner.submit(sconsume)]
        received: list[Any] = []
        for job in jobs:
            status, value = outcome(job.future, timeout=60)
            assert status == "ok", value
            received += value
    finally:
        for runner in runners.values():
            runner.close()
    counts = Counter(received)
    assert len(received) == N * len(kinds)
    assert all(c == 1 for c in counts.values())
    assert set(counts) == {(k, i) for k in kinds for i in range(N)}

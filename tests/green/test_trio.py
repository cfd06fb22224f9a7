"""trio tasks on ioserver channels, ports and the I/O thread: arecv/asend/aselect,
async for, IOServer.acall, trio's cancellation rules, trio-asyncio (each side its
own kind)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio

from ioserver import Channel, IOServer, aselect
from ioserver.messages import Datagram
from ioserver.sched import current_async_task, current_task
from ioserver.sched.trio import TrioTask


def test_async_for_over_a_channel_fed_by_a_thread() -> None:
    ch: Channel[int] = Channel(4)
    n = 500

    def producer() -> None:
        for i in range(n):
            ch.send(i)
        ch.close()

    async def main() -> list[int]:
        assert isinstance(current_async_task(), TrioTask)
        threading.Thread(target=producer, daemon=True).start()
        return [m async for m in ch]

    assert trio.run(main) == list(range(n))


def test_trio_tasks_through_a_rendezvous_channel() -> None:
    ch: Channel[int] = Channel(0)
    n = 300

    async def main() -> list[int]:
        got: list[int] = []

        async def producer() -> None:
            for i in range(n):
                await ch.asend(i)

        async def consumer() -> None:
            for _ in range(n):
                got.append(await ch.arecv())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            nursery.start_soon(producer)
        return got

    assert trio.run(main) == list(range(n))


def test_acall_and_a_port_in_trio() -> None:
    """IOServer.acall, and a UDP port's messages through aselect, in a trio task."""
    import socket

    with IOServer() as io:

        async def main() -> Any:
            assert await io.acall(lambda: 6 * 7) == 42
            port = io.open_udp(("127.0.0.1", 0))
            other: Channel[str] = Channel()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.sendto(b"hi", port.address)
                with trio.fail_after(10):
                    src, msg = await aselect(other, port)
            finally:
                sock.close()
                port.close()
            return src is port, msg

        is_port, msg = trio.run(main)
        assert is_port
        assert isinstance(msg, Datagram) and msg.data == b"hi"


def test_a_cancel_that_wins_the_claim_means_nothing_happened() -> None:
    ch: Channel[str] = Channel()

    async def main() -> None:
        with trio.move_on_after(0.05) as scope:
            await ch.arecv()
        assert scope.cancelled_caught
        ch.send("m")
        assert await ch.arecv(timeout=0) == "m"  # no stale registration took it

    trio.run(main)


def test_a_cancel_that_loses_the_claim_lets_the_operation_complete() -> None:
    """trio's rule: the waker won, so the receive completes with its message and
    Cancelled arrives at the task's next checkpoint."""
    ch: Channel[str] = Channel()
    seen: list[Any] = []

    async def main() -> None:
        scope = trio.CancelScope()

        async def sleeper() -> None:
            with scope:
                seen.append(await ch.arecv())
                await trio.lowlevel.checkpoint()
                seen.append("not cancelled")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sleeper)
            while ch.statistics().waiting_receivers == 0:
                await trio.sleep(0.001)
            ch.send("m")  # the waker claims and reschedules the sleeper...
            scope.cancel()  # ...and the cancel comes after, in the same step
        assert scope.cancelled_caught

    trio.run(main)
    assert seen == ["m"]


def test_a_timeout_racing_a_thread_waker_never_loses_a_message() -> None:
    ch: Channel[int] = Channel()
    n = 200
    got: list[int] = []

    async def main() -> None:
        def producer() -> None:
            for i in range(n):
                ch.send(i)

        threading.Thread(target=producer, daemon=True).start()
        timeouts = 0
        while len(got) < n and timeouts < 100_000:
            try:
                got.append(await ch.arecv(timeout=0.0001))
            except TimeoutError:
                timeouts += 1

    trio.run(main)
    assert got == list(range(n))


def test_blocking_calls_in_trio_stay_the_threads() -> None:
    async def main() -> None:
        assert not isinstance(current_task(), TrioTask)

    trio.run(main)


def test_trio_asyncio_each_side_gets_its_own_kind() -> None:
    """Under trio-asyncio the asyncio side awaits through asyncio, the trio side
    through trio, and both receive from the same channel."""
    trio_asyncio = pytest.importorskip("trio_asyncio")
    import asyncio

    from ioserver.sched import AsyncTask

    ch: Channel[str] = Channel()
    kinds: list[str] = []

    async def on_asyncio() -> str:
        kinds.append(type(current_async_task()).__name__)
        assert isinstance(current_async_task(), AsyncTask)
        return await ch.arecv(timeout=10)

    async def main() -> list[str]:
        kinds.append(type(current_async_task()).__name__)
        async with trio_asyncio.open_loop():
            threading.Timer(0.05, ch.send, args=("to asyncio",)).start()
            first = await trio_asyncio.aio_as_trio(on_asyncio)()
            threading.Timer(0.05, ch.send, args=("to trio",)).start()
            second = await ch.arecv(timeout=10)
        assert asyncio  # the asyncio side ran inside trio's thread
        return [first, second]

    assert trio.run(main) == ["to asyncio", "to trio"]
    assert kinds == ["TrioTask", "AsyncTask"]

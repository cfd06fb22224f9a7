"""trio tasks on ioserver channels, ports and the I/O thread: arecv/asend/aselect,
async for, IOServer.acall, trio's cancellation rules, trio-asyncio (each side its
own kind)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
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


TRIO_ASYNCIO = """
import asyncio, threading, trio, trio_asyncio
from ioserver import Channel
from ioserver.sched import AsyncTask, current_async_task

ch = Channel()
kinds = []

async def on_asyncio():
    kinds.append(type(current_async_task()).__name__)
    assert isinstance(current_async_task(), AsyncTask)
    return await ch.arecv(timeout=10)

async def main():
    kinds.append(type(current_async_task()).__name__)
    async with trio_asyncio.open_loop():
        threading.Timer(0.05, ch.send, args=("to asyncio",)).start()
        first = await trio_asyncio.aio_as_trio(on_asyncio)()
        threading.Timer(0.05, ch.send, args=("to trio",)).start()
        second = await ch.arecv(timeout=10)
    return [first, second]

print(trio.run(main), kinds)
"""


def test_trio_asyncio_each_side_gets_its_own_kind() -> None:
    """Under trio-asyncio the asyncio side awaits through asyncio, the trio side
    through trio, and both receive from the same channel. In a child process:
    importing trio_asyncio replaces ``asyncio.new_event_loop`` for the whole
    process (its loops then only run in the thread that made them), which would
    break every later test that makes a loop in one thread for another."""
    if importlib.util.find_spec("trio_asyncio") is None:  # found, not imported here
        pytest.skip("trio_asyncio is not installed")
    out = subprocess.run(
        [sys.executable, "-c", TRIO_ASYNCIO], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['to asyncio', 'to trio'] ['TrioTask', 'AsyncTask']"


# -- a ready operation is a checkpoint (trio's rule) -------------------------------------
#
# Every await of the API checks for a cancel before it acts and yields after it
# acts (with the cancel shielded), even when it need not wait, as trio's memory
# channels do: a loop of ready arecv/asend lets the other tasks run, and a cancel
# pending before the call means it did not happen.

N_READY = 200


def _ready_channel(capacity: int | None) -> Channel[int]:
    """A channel holding N_READY messages, filled by a producer thread before the run."""
    ch: Channel[int] = Channel() if capacity is None else Channel(capacity)
    producer = threading.Thread(target=lambda: [ch.send(i) for i in range(N_READY)])
    producer.start()
    producer.join(10)
    assert len(ch) == N_READY
    return ch


async def _receive_all(ch: Channel[int], how: str, got: list[int]) -> None:
    """Receive every message into ``got``, one at a time, the way ``how`` says."""
    if how == "arecv":
        for _ in range(N_READY):
            got.append(await ch.arecv())
    elif how == "aselect":
        for _ in range(N_READY):
            src, msg = await aselect(ch)
            assert src is ch
            got.append(msg)
    else:  # async for, until the channel is closed and drained
        ch.close()
        async for msg in ch:
            got.append(msg)


@pytest.mark.parametrize("capacity", [None, N_READY])
@pytest.mark.parametrize("how", ["arecv", "aselect", "async_for"])
def test_a_loop_of_ready_receives_lets_other_tasks_run(capacity: int | None, how: str) -> None:
    ch = _ready_channel(capacity)
    ticks: list[int] = []  # how many messages the consumer had each time the other task ran

    async def main() -> list[int]:
        got: list[int] = []
        done = trio.Event()

        async def other() -> None:
            while not done.is_set():
                ticks.append(len(got))
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            await trio.lowlevel.checkpoint()  # let it start
            with trio.fail_after(10):
                await _receive_all(ch, how, got)
            done.set()
        return got

    assert trio.run(main) == list(range(N_READY))
    # The other task ran between receives: it saw most of the counts in between.
    assert len(set(ticks)) >= N_READY // 2, sorted(set(ticks))[:20]


@pytest.mark.parametrize("capacity", [None, N_READY])
def test_a_loop_of_sends_with_room_lets_other_tasks_run(capacity: int | None) -> None:
    ch: Channel[int] = Channel() if capacity is None else Channel(capacity)
    ticks: list[int] = []

    async def main() -> None:
        done = trio.Event()

        async def other() -> None:
            while not done.is_set():
                ticks.append(len(ch))
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            await trio.lowlevel.checkpoint()
            with trio.fail_after(10):
                for i in range(N_READY):
                    await ch.asend(i)
            done.set()

    trio.run(main)
    assert [ch.recv(timeout=0) for _ in range(N_READY)] == list(range(N_READY))
    assert len(set(ticks)) >= N_READY // 2


def test_acall_is_a_checkpoint_and_a_cancelled_one_never_runs() -> None:
    ran: list[int] = []
    with IOServer() as io:

        async def main() -> None:
            with trio.fail_after(10):
                assert await io.acall(lambda: 6 * 7) == 42
            with trio.CancelScope() as scope:
                scope.cancel()
                await io.acall(ran.append, 1)  # cancelled before: never submitted
            assert scope.cancelled_caught

        trio.run(main)
        io.call(lambda: None)  # anything submitted before has run by now
    assert ran == []


@pytest.mark.parametrize("capacity", [None, 4, 0])
@pytest.mark.parametrize("how", ["arecv", "aselect", "async_for"])
def test_a_cancel_pending_before_a_ready_receive_takes_nothing(
    capacity: int | None, how: str
) -> None:
    """Cancelled before it starts, the receive raises Cancelled and the message
    stays in the channel (a rendezvous channel: the parked thread sender stays
    parked, its message undelivered)."""
    ch: Channel[str] = Channel() if capacity is None else Channel(capacity)
    sender: threading.Thread | None = None
    if capacity == 0:
        sender = threading.Thread(target=ch.send, args=("m",), daemon=True)
        sender.start()
        deadline = 10.0
        while ch.statistics().waiting_senders == 0 and deadline > 0:
            deadline -= 0.001
            threading.Event().wait(0.001)
        assert ch.statistics().waiting_senders == 1
    else:
        ch.send("m")
        ch.send("n")
    reached: list[str] = []

    async def main() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            if how == "arecv":
                reached.append(await ch.arecv())
            elif how == "aselect":
                reached.append((await aselect(ch))[1])
            else:
                async for msg in ch:
                    reached.append(msg)
        assert scope.cancelled_caught

    trio.run(main)
    assert reached == []
    if capacity == 0:
        assert ch.statistics().waiting_senders == 1
        assert ch.recv(timeout=10) == "m"
        assert sender is not None
        sender.join(10)
        assert not sender.is_alive()
    else:
        assert len(ch) == 2
        assert [ch.recv(timeout=0), ch.recv(timeout=0)] == ["m", "n"]


@pytest.mark.parametrize("capacity", [None, 4])
@pytest.mark.parametrize("how", ["asend", "aselect"])
def test_a_cancel_pending_before_a_send_with_room_sends_nothing(
    capacity: int | None, how: str
) -> None:
    ch: Channel[str] = Channel() if capacity is None else Channel(capacity)

    async def main() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            if how == "asend":
                await ch.asend("m")
            else:
                await aselect((ch, "m"))
        assert scope.cancelled_caught
        with trio.fail_after(10):
            await ch.asend("after")  # the channel goes on; nothing was sent before

    trio.run(main)
    assert len(ch) == 1
    assert ch.recv(timeout=0) == "after"


@pytest.mark.parametrize("capacity", [None, 64])
@pytest.mark.parametrize("how", ["arecv", "aselect"])
def test_a_cancel_during_the_yield_after_a_receive_loses_nothing(
    capacity: int | None, how: str
) -> None:
    """The yield after a ready receive is shielded: a cancel that lands there
    leaves the receive complete (the message is returned) and arrives at the
    next checkpoint. Attempts repeat until a cancel lands inside the call; in
    every attempt each message is received once or still in the channel."""
    n = 64
    ch: Channel[int] = Channel() if capacity is None else Channel(capacity)
    for i in range(n):
        ch.send(i)
    got: list[int] = []
    landed_inside = 0

    async def main() -> None:
        nonlocal landed_inside
        while len(got) < n:
            state: dict[str, object] = {"inside": False}
            scope = trio.CancelScope()

            async def canceller(state: dict[str, object], scope: trio.CancelScope) -> None:
                while not state["inside"]:
                    await trio.lowlevel.checkpoint()
                scope.cancel()
                state["cancelled_inside"] = state["inside"] is True

            async with trio.open_nursery() as nursery:
                nursery.start_soon(canceller, state, scope)
                await trio.lowlevel.checkpoint()  # the canceller runs and waits
                with scope:
                    state["inside"] = True  # no checkpoint until the receive
                    if how == "arecv":
                        value = await ch.arecv()
                    else:
                        value = (await aselect(ch))[1]
                    state["inside"] = "returned"
                    got.append(value)
                    await trio.lowlevel.checkpoint()  # the cancel is raised here
                if state.get("cancelled_inside"):
                    landed_inside += 1
                    assert scope.cancelled_caught

    trio.run(main)
    assert got == list(range(n))  # each message once, in order: nothing lost
    assert len(ch) == 0
    assert landed_inside >= 1  # the race this test is about did happen


def test_port_asend_is_a_checkpoint_and_a_cancelled_one_writes_nothing() -> None:
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    try:
        with IOServer() as io:
            port = io.open_udp(("127.0.0.1", 0))
            ticks: list[int] = []

            async def main() -> None:
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await port.asend((b"cancelled", sock.getsockname()))
                assert scope.cancelled_caught
                done = trio.Event()

                async def other() -> None:
                    while not done.is_set():
                        ticks.append(1)
                        await trio.lowlevel.checkpoint()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(other)
                    await trio.lowlevel.checkpoint()
                    before = len(ticks)
                    with trio.fail_after(10):
                        for i in range(20):
                            await port.asend((b"%d" % i, sock.getsockname()))
                    assert len(ticks) - before >= 10  # the other task ran between sends
                    done.set()

            trio.run(main)
            got = [sock.recv(100) for _ in range(20)]
            port.close()
    finally:
        sock.close()
    assert got == [b"%d" % i for i in range(20)]  # the cancelled datagram never went

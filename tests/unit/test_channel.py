"""Channel: one conformance suite for every flavour, then what each flavour adds.

``TestConformance`` runs against unbounded, bounded (1 and 4) and rendezvous
channels (CPython test_queue's mixin, crossbeam's per-flavour tests). Helper
threads are daemons; every test waits for states (``statistics()``), never for
times, and counts every message.
"""

from __future__ import annotations

import asyncio
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from helpers import Background, await_until, loop_thread, run_threads, wait_until

from ioserver import Channel, ChannelClosed, ChannelStatistics, Empty, Full

FLAVOURS = [None, 1, 4, 0]
FLAVOUR_IDS = ["unbounded", "bounded1", "bounded4", "rendezvous"]


@pytest.fixture(params=FLAVOURS, ids=FLAVOUR_IDS)
def ch(request: pytest.FixtureRequest) -> Channel[Any]:
    return Channel(capacity=request.param)


@pytest.fixture(params=[1, 0], ids=["bounded1", "rendezvous"])
def blocking_ch(request: pytest.FixtureRequest) -> Channel[Any]:
    """A flavour whose senders can block."""
    return Channel(capacity=request.param)


# -- helpers ------------------------------------------------------------------------------


def fill(ch: Channel[Any]) -> list[Any]:
    """Fill a bounded channel to capacity; return what was sent ([] for other flavours)."""
    if not ch.capacity:
        return []
    items = [("fill", i) for i in range(ch.capacity)]
    for item in items:
        ch.try_send(item)
    return items


def some(ch: Channel[Any], n: int = 3) -> int:
    """How many messages can be sent to ``ch`` without a receiver (at most ``n``)."""
    return n if ch.capacity is None else min(n, ch.capacity)


def drain(ch: Channel[Any]) -> list[Any]:
    """Everything receivable right now, without blocking."""
    out = []
    while True:
        try:
            out.append(ch.try_recv())
        except (Empty, ChannelClosed):
            return out


def assert_capacity_intact(ch: Channel[Any]) -> None:
    """An empty bounded channel takes exactly ``capacity`` messages: no slot leaked or
    double-freed by a handoff, a cancellation or a timeout. Leaves the channel empty."""
    assert len(ch) == 0
    if not ch.capacity:
        return
    for i in range(ch.capacity):
        ch.try_send(("probe", i))
    with pytest.raises(Full):
        ch.try_send("one too many")
    assert drain(ch) == [("probe", i) for i in range(ch.capacity)]


def receivers(ch: Channel[Any]) -> int:
    return ch.statistics().waiting_receivers


def senders(ch: Channel[Any]) -> int:
    return ch.statistics().waiting_senders


def blocking_test(
    call: Callable[[], Any], parked: Callable[[], object], trigger: Callable[[], Any]
) -> Any:
    """CPython's do_blocking_test: prove ``call`` blocks until ``trigger`` runs.

    ``call`` runs in a thread; we wait until ``parked()`` shows it parked, check
    it has not returned, run ``trigger`` and then wait for ``call``'s result.
    """
    bg = Background(call)
    wait_until(parked, what="the call to park")
    assert not bg.done.is_set(), "the call returned without blocking"
    trigger()
    return bg.result()


async def gather_outcomes(*aws: Any) -> list[Any]:
    return list(await asyncio.gather(*aws, return_exceptions=True))


# =========================================================================================
# The conformance suite: every flavour
# =========================================================================================


class TestConformance:
    # -- construction ------------------------------------------------------------------

    def test_is_a_channel_with_its_capacity(self, ch: Channel[Any]) -> None:
        assert isinstance(ch, Channel)
        assert ch.capacity in FLAVOURS
        assert not ch.closed
        assert len(ch) == 0
        assert "Channel" in repr(ch)

    # -- FIFO and the basic operations -----------------------------------------------------

    def test_fifo_one_producer_one_consumer(self, ch: Channel[Any]) -> None:
        """Messages arrive in the order they were sent, each once."""
        n = 300
        got: list[int] = []

        def producer() -> None:
            for i in range(n):
                ch.send(i)

        def consumer() -> None:
            for _ in range(n):
                got.append(ch.recv(timeout=10))

        run_threads([producer, consumer])
        assert got == list(range(n))
        assert len(ch) == 0

    @pytest.mark.asyncio
    async def test_fifo_asend_arecv(self, ch: Channel[Any]) -> None:
        n = 200
        got: list[int] = []

        async def producer() -> None:
            for i in range(n):
                await ch.asend(i)

        async def consumer() -> None:
            for _ in range(n):
                got.append(await ch.arecv(timeout=10))

        await asyncio.wait_for(asyncio.gather(producer(), consumer()), 20)
        assert got == list(range(n))

    def test_try_send_try_recv_with_a_partner(self, ch: Channel[Any]) -> None:
        """try_send succeeds when there is room or a parked receiver; try_recv when there is
        a message or a parked (thread) sender."""
        if ch.capacity == 0:
            bg = Background(lambda: ch.recv(timeout=10))
            wait_until(lambda: receivers(ch) == 1)
            ch.try_send("a")
            assert bg.result() == "a"
            bg = Background(lambda: ch.send("b", timeout=10))
            wait_until(lambda: senders(ch) == 1)
            assert ch.try_recv() == "b"
            bg.result()
        else:
            ch.try_send("a")
            assert ch.try_recv() == "a"
        assert drain(ch) == []

    def test_empty_and_full_are_queue_exceptions(self) -> None:
        assert issubclass(Empty, queue.Empty)
        assert issubclass(Full, queue.Full)
        assert Full("v").value == "v"
        closed = ChannelClosed("chan", "v")
        assert closed.channel == "chan"
        assert closed.value == "v"

    # -- receive timeouts ------------------------------------------------------------------

    def test_try_recv_on_empty_raises_empty(self, ch: Channel[Any]) -> None:
        with pytest.raises(Empty):
            ch.try_recv()
        with pytest.raises(queue.Empty):
            ch.try_recv()
        assert receivers(ch) == 0

    @pytest.mark.parametrize("timeout", [0, 0.03])
    def test_recv_timeout_raises_timeout_error_and_leaves_no_trace(
        self, ch: Channel[Any], timeout: float
    ) -> None:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            ch.recv(timeout=timeout)
        assert time.monotonic() - t0 >= timeout * 0.9
        assert receivers(ch) == 0
        # The channel still works: the timed-out receive took nothing and left no receiver.
        bg = Background(lambda: ch.send("after", timeout=10))
        assert ch.recv(timeout=10) == "after"
        bg.result()

    @pytest.mark.asyncio
    @pytest.mark.parametrize("timeout", [0, 0.03])
    async def test_arecv_timeout_raises_timeout_error_and_leaves_no_trace(
        self, ch: Channel[Any], timeout: float
    ) -> None:
        with pytest.raises(TimeoutError):
            await ch.arecv(timeout=timeout)
        assert receivers(ch) == 0
        if ch.capacity == 0:
            with pytest.raises(Full):
                ch.try_send("x")  # no receiver left behind to take it
        else:
            ch.try_send("x")
            assert await ch.arecv(timeout=0) == "x"

    def test_recv_none_timeout_blocks_until_a_send(self, ch: Channel[Any]) -> None:
        assert blocking_test(lambda: ch.recv(), lambda: receivers(ch) == 1, lambda: ch.send(7)) == 7

    # -- send timeouts -----------------------------------------------------------------------

    def test_send_when_full_raises_full_or_timeout_and_sends_nothing(
        self, ch: Channel[Any]
    ) -> None:
        if ch.capacity is None:
            for i in range(1000):
                ch.send(i, timeout=0)
            ch.try_send("more")
            assert len(ch) == 1001
            return
        filled = fill(ch)
        with pytest.raises(Full) as exc:
            ch.try_send("x")
        assert exc.value.value == "x"
        assert isinstance(exc.value, queue.Full)
        with pytest.raises(TimeoutError):
            ch.send("y", timeout=0)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            ch.send("z", timeout=0.03)
        assert time.monotonic() - t0 >= 0.025
        assert senders(ch) == 0
        assert drain(ch) == filled  # none of x, y, z got in

    @pytest.mark.asyncio
    async def test_asend_when_full_times_out_and_sends_nothing(self, ch: Channel[Any]) -> None:
        if ch.capacity is None:
            await ch.asend("x", timeout=0)
            assert ch.try_recv() == "x"
            return
        filled = fill(ch)
        with pytest.raises(TimeoutError):
            await ch.asend("y", timeout=0)
        with pytest.raises(TimeoutError):
            await ch.asend("z", timeout=0.03)
        assert senders(ch) == 0
        assert drain(ch) == filled

    @pytest.mark.timeout(30)
    def test_recv_with_timeouts_loses_nothing(self, ch: Channel[Any]) -> None:
        """A receive that timed out took nothing: every message shows up exactly once."""
        rng = random.Random(7)
        n = 300
        delays = [rng.choice([0, 0, 0, 0.0002, 0.001]) for _ in range(n)]
        timeouts = [rng.choice([0, 0.0001, 0.0005, 0.002]) for _ in range(4 * n)]
        got: list[int] = []
        expired = 0

        def producer() -> None:
            for i in range(n):
                if delays[i]:
                    time.sleep(delays[i])
                ch.send(i)

        def consumer() -> None:
            nonlocal expired
            k = 0
            while len(got) < n:
                try:
                    got.append(ch.recv(timeout=timeouts[k % len(timeouts)]))
                except TimeoutError:
                    expired += 1
                k += 1

        run_threads([producer, consumer], timeout=25)
        assert got == list(range(n))
        assert drain(ch) == []

    @pytest.mark.timeout(30)
    def test_send_with_timeouts_delivers_exactly_once(self, ch: Channel[Any]) -> None:
        """A send that timed out delivered nothing: retrying it never makes a duplicate."""
        rng = random.Random(8)
        n = 300
        timeouts = [rng.choice([0, 0.0001, 0.0005, 0.002]) for _ in range(4 * n)]
        delays = [rng.choice([0, 0, 0.0002, 0.001]) for _ in range(n)]
        got: list[int] = []
        expired = 0

        def producer() -> None:
            nonlocal expired
            k = 0
            for i in range(n):
                while True:
                    k += 1
                    try:
                        ch.send(i, timeout=timeouts[k % len(timeouts)])
                        break
                    except TimeoutError:
                        expired += 1

        def consumer() -> None:
            for i in range(n):
                if delays[i]:
                    time.sleep(delays[i])
                got.append(ch.recv(timeout=10))

        run_threads([producer, consumer], timeout=25)
        assert got == list(range(n))
        assert drain(ch) == []

    @pytest.mark.asyncio
    @pytest.mark.timeout(30)
    async def test_arecv_with_timeouts_loses_nothing(self, ch: Channel[Any]) -> None:
        rng = random.Random(9)
        n = 200
        delays = [rng.choice([0, 0, 0.0002, 0.001]) for _ in range(n)]

        def producer() -> None:
            for i in range(n):
                if delays[i]:
                    time.sleep(delays[i])
                ch.send(i, timeout=10)

        bg = Background(producer)
        got: list[int] = []
        while len(got) < n:
            try:
                got.append(await ch.arecv(timeout=rng.choice([0, 0.0001, 0.0005, 0.002])))
            except TimeoutError:
                pass
        bg.result()
        assert got == list(range(n))
        assert drain(ch) == []

    @pytest.mark.asyncio
    @pytest.mark.timeout(30)
    async def test_asend_with_timeouts_delivers_exactly_once(self, ch: Channel[Any]) -> None:
        rng = random.Random(10)
        n = 200
        delays = [rng.choice([0, 0, 0.0002, 0.001]) for _ in range(n)]

        def consumer() -> list[int]:
            out = []
            for i in range(n):
                if delays[i]:
                    time.sleep(delays[i])
                out.append(ch.recv(timeout=10))
            return out

        bg = Background(consumer)
        for i in range(n):
            while True:
                try:
                    await ch.asend(i, timeout=rng.choice([0, 0.0001, 0.0005, 0.002]))
                    break
                except TimeoutError:
                    pass
        assert await asyncio.to_thread(bg.result, 20) == list(range(n))
        assert drain(ch) == []

    @pytest.mark.asyncio
    @pytest.mark.parametrize("op", ["arecv", "asend"])
    async def test_cancel_landing_right_after_the_timeout_is_a_plain_cancel(
        self, ch: Channel[Any], op: str
    ) -> None:
        """The timeout fires, then the task is cancelled before it resumes: CancelledError,
        nothing happened, and the channel keeps working (regression: TypeError from
        reading the timeout marker as a handoff)."""
        if op == "asend" and ch.capacity is None:
            pytest.skip("an unbounded asend never parks")
        filled = fill(ch) if op == "asend" else []
        coro = ch.arecv(timeout=0.01) if op == "arecv" else ch.asend("x", timeout=0.01)
        task = asyncio.ensure_future(coro)
        await asyncio.sleep(0)  # parked, with its 10 ms timer
        assert receivers(ch) + senders(ch) == 1
        loop = asyncio.get_running_loop()
        loop.call_later(0.011, task.cancel)  # due right after the timeout
        time.sleep(0.05)  # both are due when the loop next looks: the timeout, then the cancel
        outcome = (await gather_outcomes(task))[0]
        assert isinstance(outcome, asyncio.CancelledError | TimeoutError), repr(outcome)
        assert receivers(ch) + senders(ch) == 0
        assert drain(ch) == filled

    @pytest.mark.asyncio
    async def test_handoffs_to_parked_parties_keep_the_capacity(self, ch: Channel[Any]) -> None:
        """Messages handed to parked recv/arecv/select/aselect receivers, and room handed to
        parked send/asend/select senders, leave every slot accounted for."""
        from ioserver import aselect, select

        receives: list[Callable[[], Any]] = [
            lambda: ch.recv(timeout=10),
            lambda: select(ch, timeout=10)[1],
        ]
        for receive in receives:
            bg = Background(receive)
            wait_until(lambda: receivers(ch) == 1)
            await asyncio.to_thread(ch.send, "m", 10)
            assert bg.result() == "m"
            assert_capacity_intact(ch)
        for areceive in (ch.arecv(timeout=10), aselect(ch, timeout=10)):
            task = asyncio.ensure_future(areceive)
            await await_until(lambda: receivers(ch) == 1)
            await asyncio.to_thread(ch.send, "m", 10)
            assert (await task) in ("m", (ch, "m"))
            assert_capacity_intact(ch)
        if ch.capacity is None:
            return
        sends: list[Callable[[], Any]] = [
            lambda: ch.send("s", timeout=10),
            lambda: select((ch, "s"), timeout=10),
        ]
        for send in sends:
            filled = fill(ch)
            bg = Background(send)
            wait_until(lambda: senders(ch) == 1)
            got = [await asyncio.to_thread(ch.recv, 10) for _ in range(len(filled) + 1)]
            bg.result()
            assert got == [*filled, "s"]
            assert_capacity_intact(ch)
        for asend in (ch.asend("s", timeout=10), aselect((ch, "s"), timeout=10)):
            filled = fill(ch)
            task = asyncio.ensure_future(asend)
            await await_until(lambda: senders(ch) == 1)
            k = len(filled) + 1
            rx = Background(lambda k=k: [ch.recv(timeout=10) for _ in range(k)])
            await task
            assert await asyncio.to_thread(rx.result) == [*filled, "s"]
            assert_capacity_intact(ch)

    def test_timeouts_keep_the_capacity(self, ch: Channel[Any]) -> None:
        for timeout in (0, 0.005):
            with pytest.raises(TimeoutError):
                ch.recv(timeout=timeout)
            if ch.capacity is not None:
                fill(ch)
                with pytest.raises(TimeoutError):
                    ch.send("x", timeout=timeout)
                drain(ch)
            assert_capacity_intact(ch)

    # -- close -----------------------------------------------------------------------------

    def test_close_is_idempotent(self, ch: Channel[Any]) -> None:
        ch.close()
        ch.close()
        assert ch.closed
        assert ch.statistics().closed
        assert "closed" in repr(ch)

    def test_send_on_closed_raises_with_the_value(self, ch: Channel[Any]) -> None:
        ch.close()
        for send in (ch.send, ch.try_send, lambda v: ch.send(v, timeout=0)):
            with pytest.raises(ChannelClosed) as exc:
                send("v")
            assert exc.value.value == "v"
            assert exc.value.channel is ch

    @pytest.mark.asyncio
    async def test_asend_on_closed_raises_with_the_value(self, ch: Channel[Any]) -> None:
        ch.close()
        with pytest.raises(ChannelClosed) as exc:
            await ch.asend("v")
        assert exc.value.value == "v"

    @pytest.mark.asyncio
    async def test_receive_on_closed_and_empty_raises(self, ch: Channel[Any]) -> None:
        ch.close()
        with pytest.raises(ChannelClosed):
            ch.recv()
        with pytest.raises(ChannelClosed):
            ch.recv(timeout=0)
        with pytest.raises(ChannelClosed):
            ch.try_recv()
        with pytest.raises(ChannelClosed):
            await ch.arecv()
        with pytest.raises(ChannelClosed) as exc:
            await ch.arecv(timeout=0)
        assert exc.value.value is None

    def test_receivers_drain_what_is_left_then_closed(self, ch: Channel[Any]) -> None:
        k = some(ch)
        for i in range(k):
            ch.send(i)
        ch.close()
        assert len(ch) == k
        assert [ch.recv() for _ in range(k)] == list(range(k))
        for _ in range(2):
            with pytest.raises(ChannelClosed):
                ch.recv()
            with pytest.raises(ChannelClosed):
                ch.try_recv()
        assert len(ch) == 0

    def test_close_wakes_every_blocked_receiver(self, ch: Channel[Any]) -> None:
        def receiver() -> object:
            try:
                return ch.recv()
            except ChannelClosed:
                return "closed"

        bgs = [Background(receiver) for _ in range(3)]
        wait_until(lambda: receivers(ch) == 3)
        stats = ch.statistics()
        assert (stats.waiting_receivers, stats.buffered, stats.closed) == (3, 0, False)
        ch.close()
        assert [bg.result() for bg in bgs] == ["closed"] * 3
        assert receivers(ch) == 0

    @pytest.mark.asyncio
    async def test_close_wakes_every_blocked_async_receiver(self, ch: Channel[Any]) -> None:
        tasks = [asyncio.ensure_future(ch.arecv()) for _ in range(3)]
        await await_until(lambda: receivers(ch) == 3)
        ch.close()
        outcomes = await asyncio.wait_for(gather_outcomes(*tasks), 10)
        assert all(isinstance(o, ChannelClosed) for o in outcomes), outcomes

    def test_close_wakes_every_blocked_sender(self, ch: Channel[Any]) -> None:
        if ch.capacity is None:
            pytest.skip("unbounded senders never block")
        filled = fill(ch)
        bgs = [Background(lambda i=i: ch.send(("s", i))) for i in range(3)]
        wait_until(lambda: senders(ch) == 3)
        ch.close()
        outcomes = [bg.outcome() for bg in bgs]
        assert all(isinstance(o, ChannelClosed) for o in outcomes), outcomes
        assert [o.value for o in outcomes] == [("s", 0), ("s", 1), ("s", 2)]
        # What was buffered before the close is still delivered; the blocked sends are not.
        assert [ch.recv() for _ in filled] == filled
        with pytest.raises(ChannelClosed):
            ch.recv()

    @pytest.mark.asyncio
    async def test_close_wakes_every_blocked_async_sender(self, ch: Channel[Any]) -> None:
        if ch.capacity is None:
            pytest.skip("unbounded senders never block")
        filled = fill(ch)
        tasks = [asyncio.ensure_future(ch.asend(("s", i))) for i in range(3)]
        await await_until(lambda: senders(ch) == 3)
        ch.close()
        outcomes = await asyncio.wait_for(gather_outcomes(*tasks), 10)
        assert [o.value for o in outcomes] == [("s", 0), ("s", 1), ("s", 2)]
        assert drain(ch) == filled

    # -- len and statistics ------------------------------------------------------------------

    def test_len_counts_buffered_messages(self, ch: Channel[Any]) -> None:
        k = some(ch)
        for i in range(k):
            ch.send(i)
            assert len(ch) == i + 1
        if k:
            ch.recv()
            assert len(ch) == k - 1

    def test_statistics_fields(self, ch: Channel[Any]) -> None:
        stats = ch.statistics()
        assert isinstance(stats, ChannelStatistics)
        assert stats == ChannelStatistics(
            buffered=0,
            capacity=ch.capacity,
            waiting_senders=0,
            waiting_receivers=0,
            closed=False,
        )
        with pytest.raises(AttributeError):
            stats.buffered = 5  # type: ignore[misc]
        k = some(ch, 2)
        for i in range(k):
            ch.send(i)
        ch.close()
        stats = ch.statistics()
        assert (stats.buffered, stats.closed) == (k, True)

    def test_statistics_counts_waiting_receivers(self, ch: Channel[Any]) -> None:
        bgs = [Background(lambda: ch.recv(timeout=10)) for _ in range(3)]
        wait_until(lambda: receivers(ch) == 3)
        assert ch.statistics().waiting_senders == 0
        for i in range(3):
            ch.send(i)
        assert sorted(bg.result() for bg in bgs) == [0, 1, 2]
        assert receivers(ch) == 0

    def test_statistics_counts_waiting_senders(self, ch: Channel[Any]) -> None:
        if ch.capacity is None:
            pytest.skip("unbounded senders never block")
        filled = fill(ch)
        bgs = [Background(lambda i=i: ch.send(("s", i), timeout=10)) for i in range(2)]
        wait_until(lambda: senders(ch) == 2)
        stats = ch.statistics()
        assert (stats.waiting_senders, stats.waiting_receivers) == (2, 0)
        assert stats.buffered == len(filled)
        got = [ch.recv(timeout=10) for _ in range(len(filled) + 2)]
        for bg in bgs:
            bg.result()
        assert sorted(got, key=repr) == sorted([*filled, ("s", 0), ("s", 1)], key=repr)
        assert senders(ch) == 0

    # -- iteration ---------------------------------------------------------------------------

    def test_iteration_ends_on_close(self, ch: Channel[Any]) -> None:
        def producer() -> None:
            for i in range(100):
                ch.send(i)
            ch.close()

        bg = Background(producer)
        assert list(ch) == list(range(100))
        bg.result()

    @pytest.mark.asyncio
    async def test_async_iteration_ends_on_close(self, ch: Channel[Any]) -> None:
        def producer() -> None:
            for i in range(100):
                ch.send(i)
            ch.close()

        bg = Background(producer)
        assert [x async for x in ch] == list(range(100))
        bg.result()

    # -- many parties --------------------------------------------------------------------------

    @pytest.mark.timeout(30)
    def test_mpmc_every_message_exactly_once(self, ch: Channel[Any]) -> None:
        """4 producers, 4 consumers: every message arrives exactly once, and each consumer
        sees each producer's messages in order."""
        producers, per = 4, 250
        done = []
        results: list[list[tuple[int, int]]] = [[] for _ in range(4)]

        def producer(p: int) -> None:
            for i in range(per):
                ch.send((p, i))
            done.append(p)

        def consumer(c: int) -> None:
            for msg in ch:
                results[c].append(msg)

        def closer() -> None:
            wait_until(lambda: len(done) == producers, timeout=25)
            ch.close()

        fns: list[Callable[[], object]] = [closer]
        fns += [lambda p=p: producer(p) for p in range(producers)]
        fns += [lambda c=c: consumer(c) for c in range(4)]
        run_threads(fns, timeout=25)
        everything = [m for r in results for m in r]
        assert sorted(everything) == [(p, i) for p in range(producers) for i in range(per)]
        for r in results:
            for p in range(producers):
                seq = [i for q, i in r if q == p]
                assert seq == sorted(seq)

    def test_blocked_receivers_served_in_arrival_order(self, ch: Channel[Any]) -> None:
        bgs = []
        for i in range(3):
            bgs.append(Background(lambda: ch.recv(timeout=10)))
            wait_until(lambda i=i: receivers(ch) == i + 1)
        for v in range(3):
            ch.send(v)
        assert [bg.result() for bg in bgs] == [0, 1, 2]

    @pytest.mark.asyncio
    async def test_blocked_async_receivers_served_in_arrival_order(self, ch: Channel[Any]) -> None:
        tasks = []
        for i in range(3):
            tasks.append(asyncio.ensure_future(ch.arecv(timeout=10)))
            await await_until(lambda i=i: receivers(ch) == i + 1)
        for v in range(3):
            await asyncio.to_thread(ch.send, v)
        assert await asyncio.gather(*tasks) == [0, 1, 2]

    @pytest.mark.timeout(30)
    def test_blocked_senders_served_in_arrival_order(self, ch: Channel[Any]) -> None:
        """Senders that blocked in order 0, 1, 2 have their messages received in that order
        (after what was already buffered). Repeated: the race is between the woken senders."""
        if ch.capacity is None:
            pytest.skip("unbounded senders never block")
        for _ in range(30):
            filled = fill(ch)
            bgs = []
            for i in range(3):
                bgs.append(Background(lambda i=i: ch.send(("s", i), timeout=10)))
                wait_until(lambda i=i: senders(ch) == i + 1)
            got = [ch.recv(timeout=10) for _ in range(len(filled) + 3)]
            for bg in bgs:
                bg.result()
            assert got == [*filled, ("s", 0), ("s", 1), ("s", 2)]

    # -- cancellation ------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_cancelled_arecv_took_nothing(self, ch: Channel[Any]) -> None:
        task = asyncio.ensure_future(ch.arecv())
        await await_until(lambda: receivers(ch) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert receivers(ch) == 0
        if ch.capacity == 0:
            with pytest.raises(Full):
                ch.try_send("m")  # nobody is left to take it
        else:
            ch.send("m")
            assert ch.try_recv() == "m"

    @pytest.mark.asyncio
    async def test_cancelled_asend_delivered_nothing(self, ch: Channel[Any]) -> None:
        if ch.capacity is None:
            pytest.skip("unbounded senders never block")
        filled = fill(ch)
        task = asyncio.ensure_future(ch.asend("x"))
        await await_until(lambda: senders(ch) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert senders(ch) == 0
        assert drain(ch) == filled
        with pytest.raises(Empty):
            ch.try_recv()

    @pytest.mark.asyncio
    @pytest.mark.timeout(40)
    async def test_arecv_cancel_race_every_message_received_once(self, ch: Channel[Any]) -> None:
        """Cancel an arecv at various points while another thread sends to it: either the
        arecv returned the message, or the message is still there for the next receiver
        (also when the cancel lands after the sender handed the message over)."""
        rng = random.Random(11)
        outcomes = {"received": 0, "cancelled": 0}
        for i in range(300):
            task = asyncio.ensure_future(ch.arecv())
            point = i % 6
            if point >= 2:  # let the receiver park first
                await await_until(lambda: receivers(ch) == 1)
            sender = Background(lambda i=i: ch.send(i, timeout=10))
            if point == 1:
                await asyncio.sleep(0)
            elif point == 3:
                time.sleep(rng.choice([0, 0.00005, 0.0002]))  # the handoff may land now
            elif point == 4:
                sender.result()  # handed over; the loop is blocked, so the task has not run
            elif point == 5:
                for _ in range(rng.randrange(4)):
                    await asyncio.sleep(0)
            task.cancel()
            outcome = (await gather_outcomes(task))[0]
            if isinstance(outcome, asyncio.CancelledError):
                outcomes["cancelled"] += 1
                assert await ch.arecv(timeout=10) == i  # still there, for the next receiver
            else:
                outcomes["received"] += 1
                assert outcome == i
            await asyncio.to_thread(sender.result)
            assert drain(ch) == []
            assert receivers(ch) == 0
            assert_capacity_intact(ch)
        assert outcomes["cancelled"] >= 100  # points 0, 2 and 4 always cancel

    @pytest.mark.asyncio
    @pytest.mark.timeout(40)
    async def test_asend_cancel_race_every_message_delivered_iff_sent(
        self, ch: Channel[Any]
    ) -> None:
        """Cancel an asend at various points while another thread receives: the receiver
        gets the message exactly when the asend returned normally (also when the cancel
        lands after a receiver made room or asked for the message)."""
        rng = random.Random(12)
        stop = ("stop",)
        outcomes = {"sent": 0, "cancelled": 0}
        for i in range(240):
            filled = fill(ch)

            def receiver() -> list[Any]:
                got = []
                while (msg := ch.recv(timeout=10)) is not stop:
                    got.append(msg)
                return got

            task = asyncio.ensure_future(ch.asend(i))
            point = i % 5
            if point >= 2:  # let the sender park (an unbounded one finishes at once)
                await await_until(lambda task=task: senders(ch) == 1 or task.done())
            bg = Background(receiver)
            if point == 1:
                await asyncio.sleep(0)
            elif point == 3:
                time.sleep(rng.choice([0, 0.00005, 0.0002]))
            elif point == 4 and not task.done():
                # The receiver made room / asked for the message: the sender's handle is
                # claimed, but the loop is blocked, so the task has not run yet.
                wait_until(lambda: senders(ch) == 0)
            task.cancel()
            outcome = (await gather_outcomes(task))[0]
            await asyncio.to_thread(ch.send, stop, 10)
            got = await asyncio.to_thread(bg.result)
            if isinstance(outcome, asyncio.CancelledError):
                outcomes["cancelled"] += 1
                assert got == filled
            else:
                outcomes["sent"] += 1
                assert outcome is None
                assert got == [*filled, i]
            assert drain(ch) == []
            assert senders(ch) == 0
            assert_capacity_intact(ch)
        assert outcomes["cancelled"] >= 48  # point 0 always cancels

    # -- threads, coroutines and loops ---------------------------------------------------------

    def test_thread_to_coroutine_on_uvloop_in_another_thread(self, ch: Channel[Any]) -> None:
        n = 300

        async def consumer() -> list[int]:
            return [await ch.arecv(timeout=10) for _ in range(n)]

        with loop_thread(use_uvloop=True) as lt:
            fut = lt.submit(consumer())
            for i in range(n):
                ch.send(i, timeout=10)
            assert fut.result(10) == list(range(n))

    def test_coroutine_on_uvloop_to_thread(self, ch: Channel[Any]) -> None:
        n = 300

        async def producer() -> None:
            for i in range(n):
                await ch.asend(i, timeout=10)

        with loop_thread(use_uvloop=True) as lt:
            fut = lt.submit(producer())
            assert [ch.recv(timeout=10) for _ in range(n)] == list(range(n))
            fut.result(10)

    @pytest.mark.timeout(30)
    def test_coroutines_on_two_loops_share_a_channel(self, ch: Channel[Any]) -> None:
        """A producer and a consumer coroutine on each of two loops (asyncio and uvloop)."""
        n = 300

        async def producer(tag: str) -> None:
            for i in range(n):
                await ch.asend((tag, i))

        async def consumer() -> list[Any]:
            return [msg async for msg in ch]

        with loop_thread() as a, loop_thread(use_uvloop=True) as b:
            consumers = [a.submit(consumer()), b.submit(consumer())]
            producers = [a.submit(producer("a")), b.submit(producer("b"))]
            for fut in producers:
                fut.result(20)
            ch.close()
            got = [msg for fut in consumers for msg in fut.result(20)]
        assert sorted(got) == sorted((t, i) for t in "ab" for i in range(n))


# =========================================================================================
# Flavour-specific
# =========================================================================================


@pytest.mark.parametrize("capacity", [-1, "x", 1.5, True])
def test_invalid_capacity_raises_value_error(capacity: Any) -> None:
    with pytest.raises(ValueError):
        Channel(capacity=capacity)


class TestUnbounded:
    def test_send_never_blocks(self) -> None:
        ch: Channel[int] = Channel()
        for i in range(10_000):
            ch.send(i, timeout=0)
        assert len(ch) == 10_000
        assert ch.statistics().capacity is None
        assert [ch.try_recv() for _ in range(10_000)] == list(range(10_000))


class TestBounded:
    @pytest.mark.parametrize("capacity", [1, 4])
    def test_send_blocks_while_full_and_resumes_when_a_receiver_takes_one(
        self, capacity: int
    ) -> None:
        ch: Channel[Any] = Channel(capacity=capacity)
        filled = fill(ch)
        assert len(ch) == capacity
        blocking_test(lambda: ch.send("late"), lambda: senders(ch) == 1, ch.recv)
        assert len(ch) == capacity
        assert drain(ch) == [*filled[1:], "late"]

    @pytest.mark.asyncio
    async def test_asend_blocks_while_full_and_resumes_when_a_receiver_takes_one(self) -> None:
        ch: Channel[Any] = Channel(capacity=2)
        fill(ch)
        task = asyncio.ensure_future(ch.asend("late"))
        await await_until(lambda: senders(ch) == 1)
        assert not task.done()
        assert await asyncio.to_thread(ch.recv) == ("fill", 0)
        await asyncio.wait_for(task, 10)
        assert drain(ch) == [("fill", 1), "late"]

    @pytest.mark.timeout(30)
    def test_never_holds_more_than_capacity(self) -> None:
        ch: Channel[int] = Channel(capacity=3)
        n = 2000
        worst = 0
        stop = threading.Event()

        def watcher() -> None:
            nonlocal worst
            while not stop.is_set():
                worst = max(worst, len(ch))

        w = Background(watcher)
        got: list[int] = []

        def producer() -> None:
            for i in range(n):
                ch.send(i)

        def consumer() -> None:
            for _ in range(n):
                got.append(ch.recv(timeout=10))

        run_threads([producer, consumer], timeout=25)
        stop.set()
        w.result()
        assert got == list(range(n))
        assert worst <= 3


class TestRendezvous:
    def test_send_completes_only_when_a_receiver_takes_it(self) -> None:
        ch: Channel[str] = Channel(capacity=0)
        received: list[str] = []

        def trigger() -> None:
            assert len(ch) == 0  # the parked message is not buffered
            assert ch.statistics().buffered == 0
            received.append(ch.recv())

        blocking_test(lambda: ch.send("m"), lambda: senders(ch) == 1, trigger)
        assert received == ["m"]

    @pytest.mark.asyncio
    async def test_asend_completes_only_when_a_receiver_takes_it(self) -> None:
        ch: Channel[str] = Channel(capacity=0)
        task = asyncio.ensure_future(ch.asend("m"))
        await await_until(lambda: senders(ch) == 1)
        assert not task.done()
        assert len(ch) == 0
        assert await asyncio.to_thread(ch.recv, 10) == "m"
        await asyncio.wait_for(task, 10)

    def test_try_send_without_receiver_is_full(self) -> None:
        ch: Channel[str] = Channel(capacity=0)
        with pytest.raises(Full) as exc:
            ch.try_send("m")
        assert exc.value.value == "m"

    def test_receiver_not_stuck_behind_a_timed_out_coroutine_sender(self) -> None:
        """A coroutine sender whose asend timed out, but which has not run yet to unregister,
        is at the head of the senders; a thread sender is parked behind it. A receiver must
        take the thread sender's message (regression: recv parked and timed out)."""
        ch: Channel[str] = Channel(capacity=0)
        outcome: list[Any] = []

        async def main() -> None:
            loop = asyncio.get_running_loop()
            task = asyncio.ensure_future(ch.asend("stale", timeout=0.01))
            await asyncio.sleep(0)
            bg = Background(lambda: ch.send("live", timeout=10))
            await await_until(lambda: senders(ch) == 2)

            def receive_in_loop_thread() -> None:
                # Runs right after the asend's timeout claimed its handle, before the
                # task resumes to unregister.
                try:
                    outcome.append(ch.recv(timeout=2))
                except BaseException as exc:
                    outcome.append(exc)

            loop.call_later(0.011, receive_in_loop_thread)
            time.sleep(0.05)
            with pytest.raises(TimeoutError):
                await task
            bg.result()

        asyncio.run(main())
        assert outcome == ["live"]

    def test_try_recv_takes_a_parked_thread_senders_message(self) -> None:
        ch: Channel[str] = Channel(capacity=0)
        bg = Background(lambda: ch.send("m", timeout=10))
        wait_until(lambda: senders(ch) == 1)
        assert ch.try_recv() == "m"
        bg.result()

    @pytest.mark.xfail(
        strict=True,
        reason="known limitation: a parked coroutine sender must hand its message over "
        "itself (so a cancelled asend delivers nothing), which a poll cannot wait for",
    )
    def test_try_recv_takes_a_parked_coroutine_senders_message(self) -> None:
        ch: Channel[str] = Channel(capacity=0)
        with loop_thread() as lt:
            fut = lt.submit(ch.asend("m", timeout=10))
            wait_until(lambda: senders(ch) == 1)
            try:
                assert ch.try_recv() == "m"
            finally:
                assert ch.recv(timeout=10) == "m"
                fut.result(10)


@pytest.mark.parametrize("capacity", [None, 1, 4], ids=["unbounded", "bounded1", "bounded4"])
def test_send_between_a_receivers_check_and_its_registration_is_not_lost(
    capacity: int | None,
) -> None:
    """Regression (found by the cancel-storm stress test, 1 run in 6): a receiver
    looks at the buffer (empty) under the lock, then a fast-path send appends
    without the lock and sees no parked receiver, then the receiver registers and
    parks. The receiver must re-check after registering, or the message sits in
    the buffer beside a sleeping receiver. This replays that interleaving exactly
    (in the pure-Python core, whose premises it tests: the native one makes the
    check and the registration one step under the GIL)."""
    from ioserver.channel import PyChannel
    from ioserver.sched import ThreadWakeup

    ch: PyChannel[str] = PyChannel(capacity)
    with ch._lock:  # the receiver's slow path holds the lock while it checks and registers
        assert not ch._buf  # 1. the receiver's check: nothing there
        ch.send("x")  # 2. a fast-path send (takes no lock): nobody parked yet
        handle = ThreadWakeup()
        ch._park_receiver((handle, 0))  # 3. the receiver registers...
        ch._on_receiver_parked()  # ...and re-checks
    assert handle.park(0), "the receiver was not woken: a lost wakeup"
    assert handle.payload == (0, "x")
    assert len(ch) == 0


class _Msg:
    """A message whose ``port`` attribute raises for one of them (issue 12, item 6)."""

    def __init__(self, name: str, port: object, broken: bool = False) -> None:
        self.name = name
        self._port = port
        self._broken = broken

    @property
    def port(self) -> object:
        if self._broken:
            raise RuntimeError(f"{self.name}: port is broken")
        return self._port

    def __repr__(self) -> str:
        return self.name


@pytest.mark.parametrize("capacity", [None, 8], ids=["unbounded", "bounded"])
def test_take_matching_loses_nothing_when_the_predicate_raises(capacity: int | None) -> None:
    """Regression (issue 12, item 6): ``transfer()`` takes a port's messages out of
    a shared inbox with ``getattr(m, "port", None) is port``; a message whose
    ``port`` raised left the inbox with 1 message of 3. Now nothing moves: every
    message stays, in order, and the exception propagates."""
    mine, other = object(), object()
    ch: Channel[_Msg] = Channel(capacity)
    msgs = [_Msg("a", mine), _Msg("b", other, broken=True), _Msg("c", mine)]
    for m in msgs:
        ch.send(m)
    with pytest.raises(RuntimeError, match="port is broken"):
        ch._take_matching(lambda m: getattr(m, "port", None) is mine)
    assert [ch.try_recv() for _ in range(3)] == msgs
    assert len(ch) == 0
    if capacity is not None:  # the slots add up
        for i in range(capacity):
            ch.try_send(_Msg(str(i), mine))
        with pytest.raises(Full):
            ch.try_send(_Msg("x", mine))


def test_take_matching_takes_the_matches_in_order_and_keeps_the_rest() -> None:
    mine, other = object(), object()
    ch: Channel[_Msg] = Channel(capacity=4)
    msgs = [_Msg("a", mine), _Msg("b", other), _Msg("c", mine), _Msg("d", other)]
    for m in msgs:
        ch.send(m)
    assert ch._take_matching(lambda m: m.port is mine) == [msgs[0], msgs[2]]
    assert [ch.try_recv(), ch.try_recv()] == [msgs[1], msgs[3]]
    ch.try_send(_Msg("e", mine))
    ch.try_send(_Msg("f", mine))
    ch.try_send(_Msg("g", mine))
    ch.try_send(_Msg("h", mine))  # the two taken slots came back
    with pytest.raises(Full):
        ch.try_send(_Msg("i", mine))

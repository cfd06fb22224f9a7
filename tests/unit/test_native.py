"""The native core (ioserver._native): what the shared suite can't see.

References (no leak, no early free), memory that stays flat, handles of one kind
woken by the other core, signals during a park in C, a forked child, and the
same answers as the pure-Python channel for the same operations.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import signal
import sys
import threading
import time
import weakref
from typing import Any

import pytest
from helpers import in_thread, wait_until

from ioserver import channel as channel_module
from ioserver import sched, select
from ioserver._core import native
from ioserver.channel import Channel, ChannelClosed, Empty, Full, PyChannel

pytestmark = pytest.mark.skipif(native is None, reason="the native core is not in use")

T = 10.0
CAPACITIES = [None, 4, 0]
IDS = ["unbounded", "bounded", "rendezvous"]


class Msg:
    """A message that can be weakly referenced."""


def test_the_native_classes_are_in_use() -> None:
    assert Channel is channel_module.NativeChannel
    assert sched.ThreadWakeup is native.ThreadWakeup  # type: ignore[union-attr]
    assert issubclass(sched.AsyncWakeup, native.WakeupHandle)  # type: ignore[union-attr]
    assert isinstance(Channel(), Channel) and isinstance(Channel(0), Channel)
    assert Channel[int] is not None  # Generic subscripting


# -- references ----------------------------------------------------------------------


@pytest.mark.parametrize("capacity", [None, 4], ids=["unbounded", "bounded"])
def test_send_recv_keep_refcounts_exact(capacity: int | None) -> None:
    ch: Channel[Any] = Channel(capacity)
    m = Msg()
    base = sys.getrefcount(m)
    ch.send(m)
    assert sys.getrefcount(m) == base + 1  # the buffer holds one
    assert ch.recv() is m
    assert sys.getrefcount(m) == base
    ch.try_send(m)
    assert ch.try_recv() is m
    assert sys.getrefcount(m) == base


def test_rendezvous_handoff_keeps_refcounts_exact() -> None:
    ch: Channel[Any] = Channel(0)
    m = Msg()
    base = sys.getrefcount(m)
    t, out = in_thread(lambda: ch.recv(timeout=T))
    wait_until(lambda: ch.statistics().waiting_receivers == 1)
    ch.send(m, timeout=T)
    t.join(T)
    assert out[0] is m
    out.clear()
    assert sys.getrefcount(m) == base


@pytest.mark.parametrize("capacity", [1, 0], ids=["bounded", "rendezvous"])
def test_timed_out_send_keeps_no_reference(capacity: int) -> None:
    ch: Channel[Any] = Channel(capacity)
    if capacity:
        ch.send("filler")
    m = Msg()
    base = sys.getrefcount(m)
    for timeout in (0, 0.01):
        with pytest.raises(TimeoutError):
            ch.send(m, timeout=timeout)
        assert sys.getrefcount(m) == base
    with pytest.raises(Full) as info:
        ch.try_send(m)
    assert info.value.value is m
    del info
    assert sys.getrefcount(m) == base
    assert ch.statistics().waiting_senders == 0


def test_closed_send_hands_the_value_back_and_keeps_no_reference() -> None:
    ch: Channel[Any] = Channel(2)
    ch.close()
    m = Msg()
    base = sys.getrefcount(m)
    with pytest.raises(ChannelClosed) as info:
        ch.send(m)
    assert info.value.value is m and info.value.channel is ch
    del info
    assert sys.getrefcount(m) == base


@pytest.mark.parametrize("capacity", [None, 4], ids=["unbounded", "bounded"])
def test_messages_are_freed_with_a_closed_channel(capacity: int | None) -> None:
    ch: Channel[Any] = Channel(capacity)
    msgs = [Msg() for _ in range(3)]
    refs = [weakref.ref(m) for m in msgs]
    for m in msgs:
        ch.send(m)
    del msgs, m
    ch.close()
    assert all(r() is not None for r in refs)  # close keeps them for the receivers
    chref = weakref.ref(ch)
    del ch
    gc.collect()
    assert chref() is None
    assert all(r() is None for r in refs)


def test_a_channel_in_a_cycle_with_its_message_is_collected() -> None:
    ch: Channel[Any] = Channel()
    ch._anchor = ch  # a cycle through the anchor slot
    ch.send([ch])  # and through a message
    chref = weakref.ref(ch)
    del ch
    gc.collect()
    assert chref() is None


@pytest.mark.parametrize("how", ["recv", "select"])
def test_a_handed_over_message_is_not_kept_by_the_parked_receiver(how: str) -> None:
    """The native core reuses one handle per thread for its parks: it must not
    keep the last message handed over alive."""
    ch: Channel[Any] = Channel()
    idle: Channel[Any] = Channel()

    def later() -> None:
        time.sleep(0.05)
        ch.send(Msg())

    t = threading.Thread(target=later)
    t.start()
    m = ch.recv(timeout=T) if how == "recv" else select(ch, idle, timeout=T)[1]
    t.join(T)
    ref = weakref.ref(m)
    del m
    assert ref() is None


def test_parked_receiver_timeout_leaves_no_reference_to_its_handle() -> None:
    ch: Channel[Any] = Channel()
    before = len(gc.get_objects())
    for _ in range(200):
        with pytest.raises(TimeoutError):
            ch.recv(timeout=0.0001)
    gc.collect()
    assert len(gc.get_objects()) - before < 50
    assert ch.statistics().waiting_receivers == 0


# -- memory ----------------------------------------------------------------------------


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_long_bounded_stress_keeps_memory_flat() -> None:
    ch: Channel[Any] = Channel(8)
    n = 100_000

    def produce() -> None:
        for i in range(n):
            ch.send((i, "x" * (i % 7)))

    def consume() -> int:
        total = 0
        for _ in range(n):
            total += ch.recv(timeout=T)[0]
        return total

    def round_() -> None:
        p = threading.Thread(target=produce)
        t, out = in_thread(consume)
        p.start()
        p.join(60)
        t.join(60)
        assert out == [n * (n - 1) // 2]

    round_()  # warm up: arenas, the threads' park locks
    gc.collect()
    start = _rss_kib()
    for _ in range(4):
        round_()
    gc.collect()
    grown = _rss_kib() - start
    assert grown < 2048, f"RSS grew by {grown} KiB over 400k messages"
    assert ch.statistics().waiting_senders == ch.statistics().waiting_receivers == 0


def test_an_idle_bounded_channel_is_small() -> None:
    ch: Channel[Any] = Channel(64)
    assert sys.getsizeof(ch) < 256  # buffers are allocated on first use


# -- handles of the other kind ------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_handle_is_woken_by_a_thread_sending_on_a_native_channel() -> None:
    ch: Channel[Any] = Channel(0)
    handle = sched.AsyncWakeup()
    assert ch._sel_register_recv(handle, 3)
    t, out = in_thread(lambda: ch.send("m", timeout=T))
    assert await handle.park(T)
    assert handle.payload == (3, "m")
    t.join(T)
    assert out == [None]


def test_native_thread_wakeup_is_woken_by_python_code() -> None:
    handle = sched.ThreadWakeup()

    def waker() -> None:
        time.sleep(0.02)
        assert handle.claim()
        handle.payload = ("from", "python")
        time.sleep(0.01)  # claim and unpark apart, as a Python waker may leave them
        handle.unpark()

    t = threading.Thread(target=waker)
    t.start()
    assert handle.park(T)
    assert handle.payload == ("from", "python")
    t.join(T)
    # The thread's park lock is consumed: the next park does not return early.
    other = sched.ThreadWakeup()
    assert other.park(0.02) is False


def test_pure_python_channel_drives_native_handles() -> None:
    ch: PyChannel[Any] = PyChannel(2)
    t, out = in_thread(lambda: [ch.recv(timeout=T) for _ in range(50)])
    for i in range(50):
        ch.send(i, timeout=T)
    t.join(T)
    assert out == [list(range(50))]


def test_abort_after_a_wake_consumes_the_release() -> None:
    handle = sched.ThreadWakeup()
    assert handle.wake()
    assert handle.abort() is False  # a waker won; its release is taken here
    assert sched.ThreadWakeup().park(0.02) is False  # nothing left over for the next park


# -- signals during a park in C ------------------------------------------------------------


class Interrupt(BaseException):
    pass


needs_main = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread()
    or not hasattr(signal, "pthread_kill"),
    reason="needs the main thread and pthread_kill",
)


def _signal_main_after(delay: float, then: Any = None) -> threading.Thread:
    main = threading.get_ident()

    def run() -> None:
        time.sleep(delay)
        signal.pthread_kill(main, signal.SIGUSR1)
        if then is not None:
            time.sleep(delay)
            then()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@needs_main
@pytest.mark.timeout(30)
@pytest.mark.parametrize("capacity", CAPACITIES, ids=IDS)
def test_a_handler_that_returns_lets_a_parked_recv_go_on(capacity: int | None) -> None:
    ch: Channel[Any] = Channel(capacity)
    calls: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda *a: calls.append(1))
    try:
        t = _signal_main_after(0.05, then=lambda: ch.send("m", timeout=T))
        assert ch.recv(timeout=T) == "m"
        t.join(T)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert calls == [1]
    stats = ch.statistics()
    assert (stats.waiting_receivers, stats.waiting_senders, stats.buffered) == (0, 0, 0)


@needs_main
@pytest.mark.timeout(30)
@pytest.mark.parametrize("capacity", CAPACITIES, ids=IDS)
def test_a_handler_that_raises_ends_a_parked_recv_and_leaves_no_waiter(
    capacity: int | None,
) -> None:
    ch: Channel[Any] = Channel(capacity)

    def handler(*args: Any) -> None:
        raise Interrupt

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        t = _signal_main_after(0.05)
        with pytest.raises(Interrupt):
            ch.recv(timeout=T)
        t.join(T)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert ch.statistics().waiting_receivers == 0
    # The channel works on: the next message is not lost to a dead entry.
    t, out = in_thread(lambda: ch.send("after", timeout=T))
    assert ch.recv(timeout=T) == "after"
    t.join(T)
    assert out == [None]


@needs_main
@pytest.mark.timeout(30)
@pytest.mark.parametrize("capacity", [1, 0], ids=["bounded", "rendezvous"])
def test_a_handler_that_raises_ends_a_parked_send_which_stored_nothing(capacity: int) -> None:
    ch: Channel[Any] = Channel(capacity)
    if capacity:
        ch.send("first")

    def handler(*args: Any) -> None:
        raise Interrupt

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        t = _signal_main_after(0.05)
        with pytest.raises(Interrupt):
            ch.send("never", timeout=T)
        t.join(T)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert ch.statistics().waiting_senders == 0
    got = []
    while True:
        try:
            got.append(ch.try_recv())
        except Empty:
            break
    assert got == (["first"] if capacity else [])


@needs_main
@pytest.mark.timeout(30)
def test_a_handler_that_raises_ends_a_parked_native_select_with_no_entry_left() -> None:
    a: Channel[Any] = Channel()
    b: Channel[Any] = Channel(1)
    b.send("full")

    def handler(*args: Any) -> None:
        raise Interrupt

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        t = _signal_main_after(0.05)
        with pytest.raises(Interrupt):
            select(a, (b, "never"), timeout=T)
        t.join(T)
    finally:
        signal.signal(signal.SIGUSR1, old)
    for ch in (a, b):
        stats = ch.statistics()
        assert (stats.waiting_receivers, stats.waiting_senders) == (0, 0)
    assert b.try_recv() == "full"
    with pytest.raises(Empty):
        b.try_recv()  # the interrupted select's send stored nothing


@needs_main
@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["recv", "select"])
def test_interrupt_storm_loses_and_duplicates_nothing(how: str) -> None:
    """A thread sends a numbered stream to the main thread, which is signalled at
    random; a handler that raises about half the time. Every message arrives once
    (through recv, or through select, in C, over the stream and an idle channel)."""
    ch: Channel[Any] = Channel(2)
    idle: Channel[Any] = Channel()
    receive = (
        (lambda: ch.recv(timeout=T)) if how == "recv" else (lambda: select(ch, idle, timeout=T)[1])
    )
    n = 3000
    rng = random.Random(5)
    stop = threading.Event()
    main = threading.get_ident()

    def handler(*args: Any) -> None:
        if rng.random() < 0.5:
            raise Interrupt

    def feed() -> None:
        for i in range(n):
            ch.send(i, timeout=T)

    def pester() -> None:
        while not stop.is_set():
            time.sleep(0.0003)
            signal.pthread_kill(main, signal.SIGUSR1)

    old = signal.signal(signal.SIGUSR1, handler)
    got: list[int] = []
    feeder = threading.Thread(target=feed, daemon=True)
    pesterer = threading.Thread(target=pester, daemon=True)
    try:
        feeder.start()
        pesterer.start()
        while len(got) < n:
            try:
                got.append(receive())
            except Interrupt:
                pass
    finally:
        signal.signal(signal.SIGUSR1, lambda *a: None)  # late signals of the pesterer
        stop.set()
        pesterer.join(T)
        feeder.join(T)
        signal.signal(signal.SIGUSR1, old)
    assert got == list(range(n))
    assert ch.statistics().waiting_receivers == idle.statistics().waiting_receivers == 0


# -- fork ---------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.timeout(30)
def test_a_forked_child_does_not_inherit_parked_receivers() -> None:
    ch: Channel[Any] = Channel()
    t, out = in_thread(lambda: ch.recv(timeout=5))
    wait_until(lambda: ch.statistics().waiting_receivers == 1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        pid = os.fork()
    if pid == 0:  # the child: the parked thread does not exist here
        code = 1
        try:
            ch.send("child")
            if ch.recv(timeout=1) == "child" and ch.statistics().waiting_receivers == 0:
                bounded: Channel[Any] = Channel(1)
                bounded.send(1)
                code = 0 if bounded.recv(timeout=1) == 1 else 3
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    ch.send("parent")
    t.join(T)
    assert out == ["parent"]
    assert os.waitstatus_to_exitcode(status) == 0


# -- the same answers as the pure-Python channel ------------------------------------------


@pytest.mark.parametrize("capacity", [None, 1, 3, 0], ids=["unbounded", "b1", "b3", "rdv"])
def test_differential_single_thread(capacity: int | None) -> None:
    """Random non-blocking operations on both cores give the same outcomes."""
    rng = random.Random(capacity or 7)
    channels = [PyChannel(capacity), channel_module.NativeChannel(capacity)]

    def outcome(ch: Any, op: str, value: int) -> Any:
        try:
            if op == "send":
                return ("ok", ch.try_send(value))
            if op == "recv":
                return ("ok", ch.try_recv())
            if op == "close":
                return ("ok", ch.close())
            if op == "take":
                return ("ok", ch._take_matching(lambda m: m % 3 == 0))
            if op == "overflow":
                return ("ok", ch._put_overflow(value))
            s = ch.statistics()
            return ("ok", (s.buffered, s.capacity, s.closed, len(ch)))
        except (Empty, Full, ChannelClosed) as exc:
            return (type(exc).__name__, getattr(exc, "value", None))

    for step in range(2000):
        op = rng.choice(["send"] * 6 + ["recv"] * 5 + ["stats", "take", "overflow"])
        if step == 1500:
            op = "close"
        results = [outcome(ch, op, step) for ch in channels]
        assert results[0] == results[1], (step, op, results)


@pytest.mark.asyncio
async def test_arecv_asend_do_nothing_until_awaited() -> None:
    ch: Channel[Any] = Channel(1)
    ch.send("m")
    pending = ch.arecv()  # not awaited: takes nothing
    assert len(ch) == 1
    pending.close()
    assert await ch.arecv() == "m"
    op = ch.asend("x")
    task = asyncio.ensure_future(op)
    task.cancel()  # cancelled before it started: sent nothing
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(ch) == 0
    await ch.asend("y")
    assert ch.try_recv() == "y"


# -- the message makers (csrc/messages.c) ---------------------------------------------------


def test_message_makers_build_the_same_messages_as_the_classes() -> None:
    from ioserver.messages import Data, Datagram, Tick, make_data, make_datagram, make_tick

    payload = Msg()
    before = sys.getrefcount(payload)
    made = [make_data("p", payload), make_datagram("p", b"x", ("h", 1)), make_tick("p", 3)]
    assert made == [Data("p", payload), Datagram("p", b"x", ("h", 1)), Tick("p", 3)]
    assert [type(m) for m in made] == [Data, Datagram, Tick]
    assert hash(made[2]) == hash(Tick("p", 3)) and repr(made[0]) == repr(Data("p", payload))
    assert sys.getrefcount(payload) == before + 1  # held once, by the message
    with pytest.raises(AttributeError):  # still frozen
        made[0].port = "q"  # type: ignore[misc]
    assert make_data(port="p", data=1) == Data("p", 1)  # keywords: the class call
    with pytest.raises(TypeError):
        make_data("p")  # a wrong count: the class call, and its error
    del made
    gc.collect()
    assert sys.getrefcount(payload) == before


def test_a_message_in_a_cycle_is_collected() -> None:
    from ioserver.messages import make_data

    holder = Msg()
    message = make_data(holder, None)
    holder.message = message  # type: ignore[attr-defined]
    alive = weakref.ref(holder)
    del holder, message
    gc.collect()
    assert alive() is None


def test_message_maker_refuses_what_it_cannot_build() -> None:
    from dataclasses import dataclass

    from ioserver.messages import Data

    @dataclass(frozen=True)
    class NoSlots:
        port: Any

    @dataclass(frozen=True, slots=True)
    class Checked:
        port: Any

        def __post_init__(self) -> None:
            pass

    with pytest.raises(TypeError, match="__slots__"):
        native.message_maker(NoSlots, ("port",))
    with pytest.raises(TypeError, match="__post_init__"):
        native.message_maker(Checked, ("port",))
    with pytest.raises(TypeError, match="not an object slot"):
        native.message_maker(Data, ("port", "__repr__"))


# -- the driver input path (csrc/deliver.c) -------------------------------------------------


def test_the_driver_input_path_is_native_and_honours_overrides() -> None:
    """feed, deliver and StreamDriver.data_received are the C methods; a class that
    puts its own deliver in place is still called by the C feed, as Python would."""
    import socket

    from ioserver.drivers.base import Driver
    from ioserver.drivers.stream import StreamDriver
    from ioserver.messages import Data
    from ioserver.server import IOServer

    assert type(Driver.__dict__["feed"]).__name__ == "method_descriptor"
    assert type(Driver.__dict__["deliver"]).__name__ == "method_descriptor"
    assert type(StreamDriver.__dict__["data_received"]).__name__ == "method_descriptor"
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[Any] = []
    with IOServer() as io:
        port = io.connect_tcp(*listener.getsockname())
        peer, _ = listener.accept()
        original = StreamDriver.deliver

        def deliver(self: Any, message: Any) -> None:
            seen.append(message)
            original(self, message)

        io.call(setattr, StreamDriver, "deliver", deliver)
        try:
            peer.sendall(b"hello")
            assert port.recv(timeout=T) == Data(port, b"hello")
        finally:
            io.call(delattr, StreamDriver, "deliver")
        peer.sendall(b"again")
        assert port.recv(timeout=T) == Data(port, b"again")
        assert seen == [Data(port, b"hello")]
        port.close()
        peer.close()
    listener.close()


def test_the_send_path_is_native_and_falls_back_to_the_reference() -> None:
    """Port.send is the C method; keywords, other types and a replaced
    _write_on_loop take the Python send, with the same result."""
    import socket

    from ioserver.port import Port, PortClosed
    from ioserver.server import IOServer

    assert type(Port.__dict__["send"]).__name__ == "method_descriptor"
    assert type(Port.__dict__["_queue_write"]).__name__ == "method_descriptor"
    listener = socket.create_server(("127.0.0.1", 0))
    with IOServer() as io:
        port = io.connect_tcp(*listener.getsockname())
        peer, _ = listener.accept()
        peer.settimeout(T)
        assert port.send(b"a") is True  # C
        assert port.send(b"b", nowait=True) is True  # keywords: the Python send
        assert port.send(bytearray(b"c"), timeout=T) is True  # another type
        with pytest.raises(TypeError, match="str"):
            port.send("text")
        got = b""
        while len(got) < 3:
            got += peer.recv(10)
        assert got == b"abc"
        wait_until(lambda: port.info()["unsent_bytes"] == 0, what="all written")
        port.close()
        with pytest.raises(PortClosed):
            port.send(b"late")
        peer.close()
    listener.close()

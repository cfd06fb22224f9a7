"""A signal handler's exception (Ctrl-C) in a parked call: the call ends at once,
nothing is lost or duplicated (docs/architecture.md, "Guarantees").

Every test runs in the main thread, the only one where Python runs signal
handlers. The interrupt is placed deterministically: ``ThreadWakeup.unpark`` is
wrapped so that the waker thread sends SIGINT to the main thread right after it
handed the wakeup over, while it still holds the GIL; the woken main thread
then meets the signal in its park (inside the interrupted ``acquire`` or at
the first check after it), the window the bug lived in. A watchdog sends a
further SIGINT if the call is still stuck after a while (what a user would
do), so that a call that needs two Ctrl-Cs fails the test instead of hanging
it; the failure messages count messages sent, interrupts delivered, lost and
duplicated.
"""

from __future__ import annotations

import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import in_thread, wait_until

from ioserver import Channel, IOServer, select
from ioserver import sched as sched_module
from ioserver.channel import Empty, Full

pytestmark = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread()
    or not hasattr(signal, "pthread_kill"),
    reason="needs the main thread and pthread_kill",
)

T = 10.0
#: Seconds a call may stay stuck after an interrupt before the watchdog sends another.
STUCK = 2.0


class Interrupt(BaseException):
    """What the test's SIGINT handler raises (a BaseException, like KeyboardInterrupt,
    so that no ``except Exception`` swallows it, and pytest keeps running if one
    escapes a test)."""


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise Interrupt


class Interrupter:
    """Sends SIGINT to the main thread right after chosen wakeups of a main-thread park.

    ``arm(n)``: the next ``n`` wakeups of a handle the main thread parks on are
    each followed by one SIGINT (``probability`` < 1 skips some at random).
    ``parked`` is set whenever the main thread is about to park.
    """

    def __init__(self, probability: float = 1.0, seed: int = 12) -> None:
        self.main = threading.get_ident()
        self.parked = threading.Event()
        self.delivered = 0  # SIGINTs sent after a wakeup
        self.extra = 0  # SIGINTs the watchdog sent to a stuck call
        self.max_extra = 3
        self.armed = 0
        self.watching = False  # the watchdog acts only while a test watches a call
        self.probability = probability
        self.random = random.Random(seed)
        self.current: object = None  # the handle the main thread parks on now
        self.last_progress = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def arm(self, n: int = 1) -> None:
        self.armed = n

    def kill(self) -> None:
        signal.pthread_kill(self.main, signal.SIGINT)

    def after_unpark(self, handle: object) -> None:
        if handle is not self.current or threading.get_ident() == self.main:
            return
        with self._lock:
            if self.armed <= 0:
                return
            if self.probability < 1.0 and self.random.random() >= self.probability:
                return
            self.armed -= 1
            self.delivered += 1
        for _ in range(self.random.randrange(50)):  # vary the landing a little (GIL held)
            pass
        self.kill()

    def progress(self) -> None:
        self.last_progress = time.monotonic()

    def watchdog(self) -> None:
        """Send another SIGINT while the main thread stays stuck (``max_extra`` in all)."""
        while not self._stop.wait(0.1):
            stuck = time.monotonic() - self.last_progress > STUCK
            if self.watching and stuck and self.extra < self.max_extra:
                self.extra += 1
                self.last_progress = time.monotonic()
                self.kill()

    def stop(self) -> None:
        self._stop.set()


@pytest.fixture
def interrupter(monkeypatch: pytest.MonkeyPatch) -> Iterator[Interrupter]:
    it = Interrupter()
    original_park = sched_module.ThreadWakeup.park
    original_unpark = sched_module.ThreadWakeup.unpark

    def park(self: Any, timeout: float | None = None) -> bool:
        if threading.get_ident() == it.main:
            it.current = self
            it.parked.set()
        return original_park(self, timeout)  # type: ignore[no-any-return]

    def unpark(self: Any) -> None:
        original_unpark(self)
        it.after_unpark(self)

    monkeypatch.setattr(sched_module.ThreadWakeup, "park", park)
    monkeypatch.setattr(sched_module.ThreadWakeup, "unpark", unpark)
    old_handler = signal.signal(signal.SIGINT, _raise_interrupt)
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.5)  # the waker keeps the GIL until it blocks: a steady landing
    dog = threading.Thread(target=it.watchdog, daemon=True, name="interrupt-watchdog")
    dog.start()
    try:
        yield it
    finally:
        it.stop()
        dog.join(T)
        sys.setswitchinterval(old_interval)
        signal.signal(signal.SIGINT, old_handler)


def _interrupted_once(it: Interrupter, call: Callable[[], Any]) -> None:
    """Run ``call`` (armed for one interrupt) and check that one SIGINT ended it."""
    it.progress()
    it.arm(1)
    it.watching = True
    try:
        with pytest.raises(Interrupt):
            result = call()
            pytest.fail(f"returned {result!r}; interrupts delivered {it.delivered}")
    finally:
        it.watching = False
        it.arm(0)
    assert it.delivered == 1, "the interrupt never came: the wakeup did not happen"
    assert it.extra == 0, f"the call needed {1 + it.extra} interrupts to end (it hung)"


# -- deterministic: one per operation ----------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("capacity", [None, 4])
def test_recv_interrupted_after_handover_puts_the_message_back_first(
    interrupter: Interrupter, capacity: int | None
) -> None:
    ch: Channel[str] = Channel(capacity)

    def feed() -> None:
        assert interrupter.parked.wait(T)
        ch.send("first")  # handed to the parked main thread, then SIGINT
        ch.send("second")

    interrupter.parked.clear()
    t, out = in_thread(feed)
    _interrupted_once(interrupter, ch.recv)
    t.join(T)
    assert out == [None]
    # Put back at the head: FIFO holds, nothing lost, the slots add up.
    assert [ch.try_recv(), ch.try_recv()] == ["first", "second"]
    if capacity is not None:
        for i in range(capacity):
            ch.try_send(str(i))
        with pytest.raises(Full):
            ch.try_send("one too many")


@pytest.mark.timeout(30)
def test_rendezvous_recv_interrupted_after_handover_keeps_the_message(
    interrupter: Interrupter,
) -> None:
    ch: Channel[str] = Channel(capacity=0)
    interrupter.parked.clear()

    def send() -> None:
        assert interrupter.parked.wait(T)
        ch.send("m", timeout=T)  # hands "m" straight to the parked receiver

    t, out = in_thread(send)
    _interrupted_once(interrupter, ch.recv)
    t.join(T)
    assert out == [None]  # the send completed: the message was handed over...
    assert ch.try_recv() == "m"  # ...and the interrupted receive gave it back


@pytest.mark.timeout(30)
def test_select_interrupted_after_handover_puts_the_message_back(
    interrupter: Interrupter,
) -> None:
    a: Channel[str] = Channel()
    b: Channel[str] = Channel(capacity=2)
    interrupter.parked.clear()

    def feed() -> None:
        assert interrupter.parked.wait(T)
        b.send("m")

    t, out = in_thread(feed)
    _interrupted_once(interrupter, lambda: select(a, b))
    t.join(T)
    assert out == [None]
    assert b.try_recv() == "m"
    with pytest.raises(Empty):
        a.try_recv()
    assert b.statistics().waiting_receivers == 0 and a.statistics().waiting_receivers == 0


@pytest.mark.timeout(30)
def test_bounded_send_interrupted_after_a_slot_freed_stored_nothing(
    interrupter: Interrupter,
) -> None:
    ch: Channel[str] = Channel(capacity=1)
    ch.send("queued")
    interrupter.parked.clear()

    def take() -> Any:
        assert interrupter.parked.wait(T)
        return ch.recv(timeout=T)  # frees the slot: the parked send is admitted

    t, out = in_thread(take)
    _interrupted_once(interrupter, lambda: ch.send("x"))
    t.join(T)
    assert out == ["queued"]
    # The send raised, so it did not happen: "x" is nowhere, and its slot is free.
    with pytest.raises(Empty):
        ch.try_recv()
    ch.try_send("y")
    assert ch.try_recv() == "y"


@pytest.mark.timeout(30)
def test_rendezvous_send_interrupted_delivered_nothing(interrupter: Interrupter) -> None:
    ch: Channel[str] = Channel(capacity=0)
    interrupter.parked.clear()

    def take() -> Any:
        assert interrupter.parked.wait(T)
        return ch.recv(timeout=T)

    t, out = in_thread(take)
    _interrupted_once(interrupter, lambda: ch.send("x"))
    # The receiver still waits; the next send is the one it gets.
    ch.send("y", timeout=T)
    t.join(T)
    assert out == ["y"], f"the interrupted send delivered {out!r}"


@pytest.mark.timeout(30)
def test_select_send_interrupted_stored_nothing(interrupter: Interrupter) -> None:
    ch: Channel[str] = Channel(capacity=1)
    other: Channel[str] = Channel()
    ch.send("queued")
    interrupter.parked.clear()

    def take() -> Any:
        assert interrupter.parked.wait(T)
        return ch.recv(timeout=T)

    t, out = in_thread(take)
    _interrupted_once(interrupter, lambda: select((ch, "x"), other))
    t.join(T)
    assert out == ["queued"]
    with pytest.raises(Empty):
        ch.try_recv()
    ch.try_send("y")  # the slot came back


@pytest.mark.timeout(60)
def test_port_send_interrupted_while_busy_ends_at_once(interrupter: Interrupter) -> None:
    with IOServer(name="test-interrupts") as io:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(T)
        port = io.connect_tcp(*listener.getsockname(), high_water=64 * 1024)
        peer, _ = listener.accept()
        listener.close()
        peer.settimeout(T)
        chunk = b"x" * (64 * 1024)
        for _ in range(5000):  # bounded: loopback buffers hold a few MB at most
            try:
                port.send(chunk, timeout=0.5)
            except TimeoutError:
                if port.info()["busy"]:  # stable: the kernel buffers are full too
                    break
        assert port.busy
        submitted = port._submitted
        drained = threading.Event()

        def drain() -> None:
            assert interrupter.parked.wait(T)
            while not drained.is_set():  # read until told to stop; the port drains
                try:
                    if not peer.recv(1 << 20):
                        return
                except OSError:
                    return

        interrupter.parked.clear()
        t, _ = in_thread(drain)
        _interrupted_once(interrupter, lambda: port.send(b"late"))
        assert port._submitted == submitted  # interrupted in the busy wait: not written
        wait_until(lambda: not port.busy, what="the port drained")
        assert port.send(b"after", timeout=T) is True
        drained.set()
        port.close()
        peer.close()
        t.join(T)


@pytest.mark.timeout(30)
def test_io_call_interrupted_still_runs_the_function_later(interrupter: Interrupter) -> None:
    """Documented, as for a TimeoutError: the interrupt ends the wait, not the call."""
    with IOServer(name="test-interrupts-call") as io:
        started, release, ran = threading.Event(), threading.Event(), threading.Event()

        def fn() -> str:
            started.set()
            release.wait(T)
            ran.set()
            return "done"

        def interrupt() -> None:
            assert started.wait(T)
            interrupter.kill()

        t, _ = in_thread(interrupt)
        with pytest.raises(Interrupt):
            io.call(fn)
        release.set()
        assert ran.wait(T)
        assert io.call(lambda: "next", timeout=T) == "next"
        t.join(T)


# -- stress: a stream with frequent interrupts, every message counted ----------------------

N = 20_000


def _report(what: str, sent: int, it: Interrupter, caught: int, got: list[int]) -> str:
    seen = set(got)
    lost = sorted(set(range(sent)) - seen)
    dup = len(got) - len(seen)
    return (
        f"{what}: sent {sent}, interrupts delivered {it.delivered} (+{it.extra} by the"
        f" watchdog), caught {caught}, received {len(got)}, lost {len(lost)}"
        f" {lost[:5]}, duplicated {dup}, in order {got == sorted(got)}"
    )


def _stream_to_main(
    it: Interrupter, ch: Channel[int], receive: Callable[[], int], what: str
) -> None:
    """A thread sends 0..N-1 one at a time, each once the main thread is parked;
    the main thread receives with ``receive`` under frequent interrupts."""
    stop = threading.Event()
    produced = [0]

    def produce() -> None:
        for i in range(N):
            while not it.parked.wait(0.5):  # bounded by the test's timeout
                if stop.is_set():
                    return
            it.parked.clear()
            ch.send(i)
            produced[0] = i + 1

    it.max_extra = 5
    it.parked.clear()
    it.arm(N)
    it.progress()
    it.watching = True
    t, _ = in_thread(produce)
    got: list[int] = []
    caught = 0
    deadline = time.monotonic() + 90
    try:
        while len(got) < N and time.monotonic() < deadline:
            try:
                got.append(receive())
                it.progress()
            except Interrupt:
                caught += 1
                it.progress()
                if it.extra >= it.max_extra:
                    break  # calls keep hanging: report what we have
            except TimeoutError:
                break
    finally:
        it.watching = False
        it.arm(0)
        stop.set()
        t.join(T)
    while True:  # what is still in the channel was not lost (it would be received next)
        try:
            got.append(ch.try_recv())
        except Exception:  # Empty
            break
    report = _report(what, produced[0], it, caught, got)
    assert got == list(range(N)), report
    assert it.extra == 0 and caught == it.delivered, report
    assert it.delivered > N // 10, report  # the interrupts were frequent
    print(report)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("capacity", [None, 64, 0])
def test_stress_recv_under_interrupts(interrupter: Interrupter, capacity: int | None) -> None:
    interrupter.probability = 0.25
    ch: Channel[int] = Channel(capacity)
    _stream_to_main(interrupter, ch, lambda: ch.recv(timeout=T), f"recv capacity={capacity}")


@pytest.mark.timeout(120)
def test_stress_select_under_interrupts(interrupter: Interrupter) -> None:
    interrupter.probability = 0.25
    ch: Channel[int] = Channel()
    idle: Channel[int] = Channel()
    _stream_to_main(interrupter, ch, lambda: select(idle, ch, timeout=T)[1], "select")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("capacity", [1, 0])
def test_stress_send_under_interrupts(interrupter: Interrupter, capacity: int) -> None:
    """The main thread sends 0..N-1 (retrying an interrupted send, which did not
    happen); a thread receives each once the main thread is parked."""
    it = interrupter
    it.probability = 0.25
    ch: Channel[int] = Channel(capacity)
    stop = threading.Event()

    def consume() -> list[int]:
        got: list[int] = []
        while True:
            while not it.parked.wait(0.5):
                if stop.is_set():
                    got.extend(ch)  # closed by now: whatever is left, then the end
                    return got
            it.parked.clear()
            try:
                got.append(ch.recv(timeout=T))
            except Exception:  # ChannelClosed at the end (or a TimeoutError: reported)
                return got

    it.max_extra = 5
    it.parked.clear()
    it.arm(N)
    it.progress()
    it.watching = True
    t, out = in_thread(consume)
    caught = 0
    i = 0
    deadline = time.monotonic() + 90
    try:
        while i < N and time.monotonic() < deadline:
            try:
                ch.send(i, timeout=T)
                i += 1
                it.progress()
            except Interrupt:
                caught += 1
                it.progress()
                if it.extra >= it.max_extra:
                    break  # calls keep hanging: report what we have
    finally:
        it.watching = False
        it.arm(0)
        ch.close()
        stop.set()
        it.parked.set()
        t.join(T)
    got = out[0] if out and isinstance(out[0], list) else []
    report = _report(f"send capacity={capacity}", i, it, caught, got)
    report += f"; stored by sends that raised: {max(0, len(got) - i)}"
    assert i == N and got == list(range(N)), report
    assert it.extra == 0 and caught == it.delivered, report
    assert it.delivered > N // 10, report
    print(report)

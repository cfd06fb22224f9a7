"""gevent greenlets on ioserver channels: the blocking API parks only the calling
greenlet (with or without monkey-patching), greenlets on several threads, timeouts
and kills that lose nothing, a hub never created for a plain thread."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from gevent._hub_local import get_hub_if_exists

from ioserver import Channel, IOServer, select
from ioserver.sched import current_task, yield_now
from ioserver.sched.gevent import GeventTask


@pytest.fixture(autouse=True)
def fresh_main_hub() -> Iterator[None]:
    """Each test's greenlets run on a main-thread hub that is destroyed afterwards,
    so later tests' blocking calls in the main thread are the thread's again."""
    yield
    hub = get_hub_if_exists()
    if hub is not None:
        hub.destroy(destroy_loop=True)


@pytest.mark.parametrize("capacity", [None, 1, 0])
def test_greenlet_to_greenlet_on_one_hub(capacity: int | None) -> None:
    """The receiver parks alone, so the sender (on the same hub) runs."""
    ch: Channel[int] = Channel(capacity)
    n = 200
    got: list[int] = []
    receiver = gevent.spawn(lambda: [got.append(ch.recv(timeout=5)) for _ in range(n)])
    sender = gevent.spawn(lambda: [ch.send(i, timeout=5) for i in range(n)])
    gevent.joinall([receiver, sender], raise_error=True, timeout=30)
    assert got == list(range(n))


def test_select_and_iteration_in_greenlets() -> None:
    a: Channel[str] = Channel()
    b: Channel[str] = Channel(0)

    def consume() -> list[Any]:
        out = [select(a, b, timeout=5) for _ in range(2)]
        return [(src is a, msg) for src, msg in out] + list(a)

    def produce() -> None:
        b.send("rendezvous", timeout=5)
        a.send("buffered")
        a.send("tail")
        a.close()

    c = gevent.spawn(consume)
    p = gevent.spawn(produce)
    gevent.joinall([c, p], raise_error=True, timeout=30)
    assert sorted(c.value[:2]) == [(False, "rendezvous"), (True, "buffered")]
    assert c.value[2:] == ["tail"]


def test_io_call_in_a_greenlet_parks_only_that_greenlet() -> None:
    """The function on the I/O thread waits for another greenlet of the same hub:
    had the call blocked the hub, that greenlet could not run before the wait
    gave up."""
    released = threading.Event()
    with IOServer() as io:
        caller = gevent.spawn(io.call, lambda: released.wait(20))
        setter = gevent.spawn(released.set)
        gevent.joinall([caller, setter], raise_error=True, timeout=30)
    assert caller.value is True


def test_greenlets_on_several_threads() -> None:
    """Two worker threads, each with its own hub and greenlets, exchange through
    channels with each other and with a plain thread."""
    ch: Channel[int] = Channel(2)
    back: Channel[int] = Channel()
    n = 300
    errors: list[BaseException] = []

    def hub_thread(fn: Any) -> threading.Thread:
        def run() -> None:
            try:
                gevent.joinall([gevent.spawn(fn), gevent.spawn(gevent.sleep, 0)], raise_error=True)
            except BaseException as exc:  # reported to the test
                errors.append(exc)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    t1 = hub_thread(lambda: [ch.send(i, timeout=10) for i in range(n)])
    t2 = hub_thread(lambda: [back.send(ch.recv(timeout=10)) for _ in range(n)])
    got = [back.recv(timeout=10) for _ in range(n)]
    t1.join(10)
    t2.join(10)
    assert not errors
    assert got == list(range(n))


def test_timeouts_racing_a_thread_sender_lose_nothing() -> None:
    """gevent.Timeout thrown into parked receivers while a thread sends: every
    message is received exactly once."""
    ch: Channel[int] = Channel()
    n = 300
    got: list[int] = []

    def consume() -> None:
        attempts = 0
        while len(got) < n and attempts < 200_000:
            attempts += 1
            try:
                with gevent.Timeout(0.0005):
                    got.append(ch.recv())
            except gevent.Timeout:
                pass

    def produce() -> None:
        for i in range(n):
            ch.send(i)

    t = threading.Thread(target=produce, daemon=True)
    c = gevent.spawn(consume)
    t.start()
    c.join(60)
    t.join(10)
    assert got == list(range(n))


def test_a_killed_sender_sent_nothing() -> None:
    ch: Channel[str] = Channel(1)
    ch.send("pre")
    sender = gevent.spawn(ch.send, "killed")
    gevent.sleep(0.01)
    assert ch.statistics().waiting_senders == 1
    sender.kill()
    assert ch.statistics().waiting_senders == 0
    assert ch.recv(timeout=0) == "pre"
    with pytest.raises(TimeoutError):
        ch.recv(timeout=0)


def test_a_plain_thread_never_gets_a_hub() -> None:
    ch: Channel[int] = Channel()
    out: list[Any] = []

    def run() -> None:
        try:
            ch.recv(timeout=0.01)
        except TimeoutError:
            pass
        out.append((type(current_task()).__name__, get_hub_if_exists()))

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    assert out == [("Task", None)]


def test_a_blocking_call_in_the_hub_itself_is_refused() -> None:
    ch: Channel[int] = Channel()
    seen: list[BaseException] = []

    def in_hub() -> None:
        try:
            ch.recv(timeout=1)
        except RuntimeError as exc:
            seen.append(exc)

    hub = gevent.get_hub()
    hub.loop.run_callback(in_hub)
    gevent.sleep(0.01)
    assert len(seen) == 1 and "hub" in str(seen[0])


def test_yield_now_lets_the_other_greenlets_run() -> None:
    order: list[str] = []

    def first() -> None:
        assert isinstance(current_task(), GeventTask)
        order.append("a")
        yield_now()
        order.append("c")

    gevent.joinall([gevent.spawn(first), gevent.spawn(order.append, "b")], timeout=10)
    assert order == ["a", "b", "c"]


MONKEY = """
import sys, time
if sys.argv[1] == "after":
    from gevent import monkey; monkey.patch_all()
    import ioserver
else:
    import ioserver
    from gevent import monkey; monkey.patch_all()
import gevent, threading
from ioserver import Channel, IOServer
from ioserver.sched._original import allocate_lock

ticks = []
def ticker():
    for _ in range(20):
        ticks.append(1)
        gevent.sleep(0.002)

with IOServer() as io:
    ch = Channel(1)
    got = []
    t = gevent.spawn(ticker)
    r = gevent.spawn(lambda: [got.append(ch.recv(timeout=10)) for _ in range(100)])
    s = gevent.spawn(lambda: [ch.send(i, timeout=10) for i in range(100)])
    gevent.joinall([t, r, s], raise_error=True, timeout=30)
    assert got == list(range(100)), got
    done = []
    c = gevent.spawn(lambda: done.append(io.call(lambda: 42)))
    t2 = gevent.spawn(ticker)
    gevent.joinall([c, t2], raise_error=True, timeout=30)
    assert done == [42]
    # a patched thread is a greenlet: it parks on the hub like any other
    th = threading.Thread(target=lambda: [ch.send(i, timeout=10) for i in range(3)])
    th.start()
    assert [ch.recv(timeout=10) for _ in range(3)] == [0, 1, 2]
    th.join()
    # the file workers are OS threads too: a greenlet reads a file through one
    import tempfile
    with tempfile.NamedTemporaryFile() as f:
        f.write(b"on disk")
        f.flush()
        port = io.open_file(f.name, "rb")
        data = gevent.spawn(lambda: port.recv(timeout=10).data)
        data.join(30)
        assert data.value == b"on disk", data.exception
        port.close()
lock_type = type(ioserver.channel.PyChannel()._lock)
print(len(ticks), lock_type is type(allocate_lock()))
"""


@pytest.mark.parametrize("order", ["before", "after"])
def test_monkey_patched(order: str) -> None:
    """ioserver imported before or after patch_all(): greenlets exchange through
    channels and io.call without blocking the hub (a ticker keeps running), the
    I/O thread and the file workers are OS threads, and the channel lock stays a
    native lock."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MONKEY), order],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["40", "True"], out.stdout

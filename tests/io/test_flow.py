"""Flow control end to end on TCP: active modes, read and write backpressure,
ownership transfer, and select over ports mixed with plain channels.

"Nothing arrives" is proved by states, never by sleeping: the driver's
``info()["pending_messages"]`` shows a message held back, and ``try_recv``
raises Empty after ``io.call`` round trips (FIFO: anything the loop meant to
deliver before them is in the inbox by then). Peers are plain blocking
sockets in daemon threads; every byte and message is counted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import SANITIZED, wait_until

from ioserver import Channel, ChannelClosed, Empty, select
from ioserver.messages import Closed, Data, Error, Exited, Passive, Tick
from ioserver.port import DEFAULT_INBOX_CAPACITY, Port, PortClosed
from ioserver.server import IOServer

T = 10.0


@pytest.fixture
def io() -> Iterator[IOServer]:
    server = IOServer(name="test-flow").start()
    try:
        yield server
    finally:
        server.stop(timeout=1.0)


def connect(io: IOServer, **options: Any) -> tuple[Port, socket.socket]:
    """A TCP port connected to a plain blocking peer socket."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(T)
    try:
        port = io.connect_tcp(*listener.getsockname(), **options)
        peer, _ = listener.accept()
    finally:
        listener.close()
    peer.settimeout(30)
    return port, peer


def assert_quiet(io: IOServer, port: Port) -> None:
    """Nothing is waiting in the inbox after the loop has run everything queued."""
    io.call(lambda: None)
    io.call(lambda: None)
    with pytest.raises(Empty):
        port.try_recv()


def lines(start: int, stop: int) -> list[bytes]:
    return [b"%d\n" % i for i in range(start, stop)]


def data(port: Port, items: list[bytes]) -> list[Data]:
    return [Data(port, x) for x in items]


def drain_port(port: Port) -> list[Any]:
    """Every message until the port's own inbox ends (ChannelClosed)."""
    out = []
    try:
        while True:
            out.append(port.recv(timeout=T))
    except ChannelClosed:
        return out


def pending(port: Port) -> int:
    return int(port.info()["pending_messages"])


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- active modes (lesson 3, docs/architecture.md) -------------------------------------------------


def test_active_once_delivers_one_message_per_setopts(io: IOServer) -> None:
    port, peer = connect(io, packet="line", active="once")
    peer.sendall(b"a\nb\nc\n")  # one read: three frames
    assert port.recv(timeout=T) == Data(port, b"a\n")
    wait_until(lambda: pending(port) == 2, what="b and c held back")
    assert_quiet(io, port)
    info = port.info()
    assert info["active"] == 0 and info["reading"] is False
    port.setopts(active="once")
    assert port.recv(timeout=T) == Data(port, b"b\n")
    assert_quiet(io, port)
    assert pending(port) == 1
    port.setopts(active="once")
    assert port.recv(timeout=T) == Data(port, b"c\n")
    assert_quiet(io, port)
    peer.sendall(b"d\n")
    assert_quiet(io, port)  # the port is not reading
    port.setopts(active="once")
    assert port.recv(timeout=T) == Data(port, b"d\n")
    peer.close()
    assert_quiet(io, port)  # Closed waits for the next activation too
    port.setopts(active="once")
    assert port.recv(timeout=T) == Closed(port)


def test_active_n_adds_to_the_counter_and_passive_comes_once_per_run_out(
    io: IOServer,
) -> None:
    """Erlang's {active, N}: N is added to the counter; each data message
    spends one; at zero exactly one Passive arrives; setopts(active=N) resumes."""
    port, peer = connect(io, packet="line", active=False)
    port.setopts(active=2)
    port.setopts(active=3)  # adds: 5
    wait_until(lambda: port.info()["active"] == 5, what="the counter at 5")
    peer.sendall(b"".join(lines(0, 12)))
    assert [port.recv(timeout=T) for _ in range(6)] == [*data(port, lines(0, 5)), Passive(port)]
    assert_quiet(io, port)
    assert port.info()["active"] == 0
    assert pending(port) == 7
    port.setopts(active=5)
    assert [port.recv(timeout=T) for _ in range(6)] == [*data(port, lines(5, 10)), Passive(port)]
    assert_quiet(io, port)
    port.setopts(active=4)  # only two are queued: the counter stays at 2
    assert [port.recv(timeout=T) for _ in range(2)] == data(port, lines(10, 12))
    assert_quiet(io, port)
    assert port.info()["active"] == 2
    peer.sendall(b"".join(lines(12, 15)))
    assert [port.recv(timeout=T) for _ in range(3)] == [*data(port, lines(12, 14)), Passive(port)]
    assert_quiet(io, port)
    assert pending(port) == 1
    port.setopts(active=True)
    assert port.recv(timeout=T) == Data(port, b"14\n")
    peer.close()
    assert port.recv(timeout=T) == Closed(port)


def test_active_n_at_open(io: IOServer) -> None:
    port, peer = connect(io, packet="line", active=2)
    peer.sendall(b"".join(lines(0, 3)))
    assert [port.recv(timeout=T) for _ in range(3)] == [*data(port, lines(0, 2)), Passive(port)]
    assert_quiet(io, port)
    assert pending(port) == 1
    port.setopts(active=1)
    assert [port.recv(timeout=T) for _ in range(2)] == [Data(port, b"2\n"), Passive(port)]
    assert_quiet(io, port)


def test_passive_port_read_returns_the_next_message(io: IOServer) -> None:
    port, peer = connect(io, packet="line", active=False)
    peer.sendall(b"a\nb\nc\n")
    assert_quiet(io, port)
    assert port.read(timeout=T) == Data(port, b"a\n")
    assert_quiet(io, port)
    assert port.read(timeout=T) == Data(port, b"b\n")
    assert port.read(timeout=T) == Data(port, b"c\n")
    assert_quiet(io, port)
    peer.sendall(b"d\n")
    assert port.read(timeout=T) == Data(port, b"d\n")
    peer.close()
    assert port.read(timeout=T) == Closed(port)
    with pytest.raises(ChannelClosed):
        port.recv(timeout=T)


@pytest.mark.parametrize("how", ["read", "setopts"])
def test_closed_reaches_a_passive_port_only_when_asked(io: IOServer, how: str) -> None:
    """Erlang semantics: the end of a connection is queued like data; a passive
    port learns of it when it reads or is re-activated.

    The port learns that the peer is gone without being asked to read: either
    it read the EOF ahead (one read is allowed) or our probe writes fail. Either
    way the port is closed while passive, and nothing is delivered until asked:
    then at most one Error, then exactly one Closed."""
    port, peer = connect(io, packet="line", active=False)
    peer.close()
    for _ in range(1000):
        if port.closed:
            break
        try:
            port.send(b"probe\n")
        except PortClosed:
            break
        io.call(lambda: None)
    assert port.closed
    assert_quiet(io, port)
    assert not port.inbox.closed
    if how == "read":
        msgs = [port.read(timeout=T)]
    else:
        port.setopts(active=True)
        msgs = []
    msgs += drain_port(port)
    assert msgs[-1].port is port and isinstance(msgs[-1], Closed)
    assert all(isinstance(m, Error) for m in msgs[:-1]) and len(msgs) <= 2, msgs


@pytest.mark.timeout(60)
@pytest.mark.parametrize("opener", ["connect", "accept"])
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_passive_port_stops_reading(loop: str, opener: str) -> None:
    """A passive port holds at most one read: the peer's writes back up into the
    kernel (it gets EAGAIN), the transport is not reading, and little was read."""
    with IOServer(loop=loop) as io:
        if opener == "connect":
            port, peer = connect(io, active=False)
        else:
            listener = io.listen_tcp("127.0.0.1", 0, active=False)
            peer = socket.create_connection(listener.address, timeout=T)
            accepted = listener.recv(timeout=T)
            port = accepted.conn  # type: ignore[union-attr]
        peer.setblocking(False)
        chunk = b"p" * 65536
        sent = 0
        while sent < 64 << 20:  # loopback buffers hold a few MiB; 64 MiB means "no pause"
            try:
                sent += peer.send(chunk)
            except BlockingIOError:
                io.call(lambda: None)
                if not io.call(lambda: port._driver.transport.is_reading()):
                    break
        assert io.call(lambda: port._driver.transport.is_reading()) is False
        assert port.info()["bytes_in"] <= 1 << 20
        assert sent < 64 << 20
        port.close()
        peer.close()


def test_closed_after_data_on_a_passive_port(io: IOServer) -> None:
    port, peer = connect(io, packet="line", active=False)
    peer.sendall(b"x\n")
    peer.close()
    assert port.read(timeout=T) == Data(port, b"x\n")
    assert_quiet(io, port)
    assert port.read(timeout=T) == Closed(port)
    assert list(port) == []


# -- read backpressure ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_slow_consumer_bounds_memory_and_loses_nothing(io: IOServer) -> None:
    """A peer writes 50 MB as fast as it can; the consumer is slow for its
    first 200 messages, then drains. Reading pauses (the inbox never grows past
    its capacity), RSS stays bounded, and every byte arrives once, in order."""
    total_chunks, chunk_size = 50, 1 << 20
    port, peer = connect(io)
    sent = hashlib.sha256()
    writer_error: list[BaseException] = []

    def write() -> None:
        rng = random.Random(42)
        try:
            for _ in range(total_chunks):
                chunk = rng.randbytes(chunk_size)
                sent.update(chunk)
                peer.sendall(chunk)
            peer.shutdown(socket.SHUT_WR)
        except BaseException as exc:
            writer_error.append(exc)

    base = rss_bytes()
    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    # Backpressure engages: the inbox fills and the port stops reading.
    wait_until(lambda: len(port) == DEFAULT_INBOX_CAPACITY, what="a full inbox")
    wait_until(lambda: port.info()["reading"] is False, what="reading paused")
    peak = rss_bytes()
    received = hashlib.sha256()
    count = messages = max_len = 0
    while True:
        max_len = max(max_len, len(port))
        msg = port.recv(timeout=T)
        if isinstance(msg, Closed):
            break
        assert isinstance(msg, Data), msg
        received.update(msg.data)
        count += len(msg.data)
        messages += 1
        if messages <= 200:
            time.sleep(0.001)
        if messages % 8 == 0:
            peak = max(peak, rss_bytes())
    writer.join(T)
    assert not writer_error, writer_error
    assert msg == Closed(port)
    assert count == total_chunks * chunk_size
    assert received.hexdigest() == sent.hexdigest()
    assert max_len <= DEFAULT_INBOX_CAPACITY
    growth = peak - base
    if not SANITIZED:  # AddressSanitizer keeps freed memory in quarantine: RSS says nothing
        assert growth < 40 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"
    assert list(port) == []


# -- write backpressure (lesson 6, docs/architecture.md) -------------------------------------------


def make_busy(port: Port, chunk_of: Any) -> int:
    """Send numbered chunks to a peer that does not read until ``send`` times
    out with the port still busy (a stable state: the kernel buffers are full).
    Returns the number of chunks sent."""
    sent = 0
    for _ in range(5000):  # bounded: loopback buffers hold a few MB at most
        try:
            port.send(chunk_of(sent), timeout=0.5)
        except TimeoutError:
            if port.info()["busy"]:  # info() runs after every queued write
                return sent
            continue
        sent += 1
    pytest.fail("the port never became busy")


def chunk_of(i: int) -> bytes:
    return i.to_bytes(4, "big") * (1 << 14)  # 64 KiB, numbered


@pytest.mark.timeout(60)
def test_send_blocks_while_busy_and_resumes_when_the_peer_reads(io: IOServer) -> None:
    port, peer = connect(io)
    sent = make_busy(port, chunk_of)
    assert sent > 0
    # Stable: still busy, without timing assumptions.
    assert port.send(chunk_of(sent), nowait=True) is False
    with pytest.raises(TimeoutError):
        port.send(chunk_of(sent), timeout=0.5)
    assert port.busy and port.info()["busy"]

    # A writer blocked with no timeout wakes once the peer reads.
    blocked_result: list[Any] = []
    blocked = threading.Thread(
        target=lambda: blocked_result.append(port.send(chunk_of(sent), timeout=30)), daemon=True
    )
    parked = len(port._writers)  # make_busy's timed-out sends left claimed entries
    blocked.start()
    wait_until(lambda: len(port._writers) > parked, what="a parked writer")
    received = bytearray()

    def read() -> None:
        while True:
            chunk = peer.recv(1 << 20)
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    blocked.join(T)
    assert blocked_result == [True]
    sent += 1
    for _ in range(10):
        assert port.send(chunk_of(sent), timeout=T) is True
        sent += 1
    port.close()
    reader.join(T)
    assert not reader.is_alive()
    assert len(received) == sent * len(chunk_of(0))
    assert bytes(received) == b"".join(chunk_of(i) for i in range(sent))


def test_concurrent_senders_lose_no_byte_of_the_count(io: IOServer) -> None:
    """Four threads send on one port at once, bytes (the native core's C path) and
    bytearrays (the checked path), with a high water mark low enough that they
    block now and then: the peer gets every byte of every chunk, and once the
    loop has written everything the port counts nothing unsent (a lost update of
    the submitted count would leave it negative or positive for good)."""
    port, peer = connect(io, high_water=64 * 1024)
    per_thread, size = 1500, 200
    expected = 4 * per_thread * size
    got = bytearray()

    def read() -> None:
        while len(got) < expected:
            chunk = peer.recv(1 << 16)
            if not chunk:
                return
            got.extend(chunk)

    def send(k: int) -> None:
        for i in range(per_thread):
            chunk = bytes([65 + k]) * size
            port.send(chunk if i % 3 else bytearray(chunk), timeout=T)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    senders = [threading.Thread(target=send, args=(k,), daemon=True) for k in range(4)]
    for t in senders:
        t.start()
    for t in senders:
        t.join(T)
    reader.join(T)
    assert not reader.is_alive() and not any(t.is_alive() for t in senders)
    assert len(got) == expected
    assert sorted(got.count(bytes([65 + k])) for k in range(4)) == [per_thread * size] * 4
    wait_until(lambda: port.info()["unsent_bytes"] == 0, what="every byte counted as written")
    port.close()
    peer.close()


def test_blocked_writer_wakes_with_port_closed_on_close(io: IOServer) -> None:
    port, peer = connect(io)
    sent = make_busy(port, chunk_of)
    outcome: list[Any] = []

    def send() -> None:
        try:
            outcome.append(port.send(chunk_of(sent), timeout=30))
        except BaseException as exc:
            outcome.append(exc)

    writer = threading.Thread(target=send, daemon=True)
    parked = len(port._writers)  # make_busy's timed-out sends left claimed entries
    writer.start()
    wait_until(lambda: len(port._writers) > parked, what="the writer parked")
    port.close()
    writer.join(T)
    assert not writer.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], PortClosed), outcome
    peer.close()


def test_timed_out_sends_leave_no_parked_writers_behind(io: IOServer) -> None:
    port, peer = connect(io)
    make_busy(port, chunk_of)
    before = len(port._writers)
    for _ in range(300):
        with pytest.raises(TimeoutError):
            port.send(chunk_of(0), timeout=0.001)
    assert port.busy
    assert len(port._writers) <= before + 1
    port.close()
    peer.close()


class _Interrupt(Exception):
    pass


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise _Interrupt


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="needs the main thread"
)
def test_interrupted_blocked_send_leaves_no_stale_wakeup(
    io: IOServer, caplog: pytest.LogCaptureFixture
) -> None:
    port, peer = connect(io)
    sent = make_busy(port, chunk_of)
    parked = len(port._writers)
    main = threading.get_ident()
    old = signal.signal(signal.SIGUSR1, _raise_interrupt)
    try:

        def interrupt() -> None:
            wait_until(lambda: len(port._writers) > parked, what="the send parked")
            signal.pthread_kill(main, signal.SIGUSR1)

        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(_Interrupt):
            port.send(chunk_of(sent))
    finally:
        signal.signal(signal.SIGUSR1, old)
    # Hold the loop so that the close (which wakes every parked writer, the
    # interrupted one included) and the next call from this thread run in one
    # batch: the stale wakeup and the call's own then both unpark this thread.
    gate, held = threading.Event(), threading.Event()
    io.call_soon(lambda: (held.set(), gate.wait(T)))
    assert held.wait(T)
    port.close()

    def open_gate() -> None:
        wait_until(lambda: io.stats()["pending"] >= 2, what="close and call queued")
        gate.set()

    threading.Thread(target=open_gate, daemon=True).start()
    with caplog.at_level(logging.ERROR, logger="ioserver"):
        assert io.call(lambda: "next call", timeout=T) == "next call"
        io.call(lambda: None)
    assert "release unlocked lock" not in caplog.text
    peer.close()


# -- ownership transfer (lesson 5, docs/architecture.md) -------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["paused", "racing"])
def test_transfer_moves_queued_messages_in_order(io: IOServer, mode: str) -> None:
    """The peer sends 1000 numbered lines; midway, another thread moves the port
    to a new inbox while the old owner waits (``paused``) or keeps receiving
    (``racing``: the move may land anywhere, even after the end). Every line
    arrives exactly once: the old owner's lines then the new inbox's, in order,
    then one Closed, last."""
    rounds = 1 if mode == "paused" else 5
    for r in range(rounds):
        port, peer = connect(io, packet="line")
        expected = lines(0, 1000)
        old = port.inbox
        new: Channel[Any] = Channel(16)
        got_old: list[Any] = []
        at = 100 + 150 * r
        reached = threading.Event()
        transferred = threading.Event()

        def consume(
            at: int = at,
            got_old: list[Any] = got_old,
            old: Any = old,
            reached: threading.Event = reached,
            transferred: threading.Event = transferred,
        ) -> None:
            for msg in old:  # ends when the transfer (or Closed) closes the own inbox
                got_old.append(msg)
                if len(got_old) == at:
                    reached.set()
                    if mode == "paused":
                        transferred.wait(T)

        def move(
            port: Port = port,
            new: Channel[Any] = new,
            reached: threading.Event = reached,
            transferred: threading.Event = transferred,
        ) -> None:
            reached.wait(T)
            port.transfer(new)
            transferred.set()

        consumer = threading.Thread(target=consume, daemon=True)
        mover = threading.Thread(target=move, daemon=True)
        consumer.start()
        mover.start()
        peer.sendall(b"".join(expected))
        peer.close()
        mover.join(T)
        consumer.join(T)
        assert transferred.is_set() and not consumer.is_alive()
        got_new: list[Any] = []
        if not (got_old and isinstance(got_old[-1], Closed)):
            while not (got_new and isinstance(got_new[-1], Closed)):
                got_new.append(new.recv(timeout=T))
        everything = got_old + got_new
        assert everything[-1] == Closed(port)
        assert everything[:-1] == data(port, expected), f"round {r}: lost or reordered"
        assert len(got_old) >= at
        if mode == "paused":
            assert len(got_old) == at
        assert port.inbox is new and not new.closed
        with pytest.raises(TimeoutError):
            new.recv(timeout=0)


def test_transfer_after_the_end_moves_everything_into_a_smaller_inbox(io: IOServer) -> None:
    """The port ended (its Closed is in the old inbox, behind 40 lines) before the
    transfer, and the new inbox holds only 16: every line and the Closed still move
    over, in order. (They used to stop at the new inbox's capacity for good: the
    rest waited for a room callback that a finished port never acts on.)"""
    port, peer = connect(io, packet="line")
    peer.sendall(b"".join(lines(0, 40)))
    peer.close()
    wait_until(lambda: len(port.inbox) == 41, what="40 lines and Closed in the old inbox")
    new: Channel[Any] = Channel(16)
    port.transfer(new)
    got = [new.recv(timeout=T) for _ in range(41)]
    assert got == [*data(port, lines(0, 40)), Closed(port)]
    assert port.inbox is new and len(new) == 0


def test_transfer_of_a_passive_port_keeps_it_passive(io: IOServer) -> None:
    port, peer = connect(io, packet="line", active=False)
    peer.sendall(b"a\nb\n")
    assert_quiet(io, port)
    new: Channel[Any] = Channel()
    port.transfer(new)
    io.call(lambda: None)
    assert len(new) == 0
    assert port.read(timeout=T) == Data(port, b"a\n")
    assert port.read(timeout=T) == Data(port, b"b\n")
    peer.close()


# -- select over everything -------------------------------------------------------------


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _select_all(sources: list[Any], deadline: float, on_tick: Any) -> dict[Any, list[Any]]:
    """One thread selects until every source ended; returns what each delivered."""
    got: dict[Any, list[Any]] = {s: [] for s in sources}
    live = list(sources)
    while live:
        assert time.monotonic() < deadline, f"still waiting on {live}"
        try:
            src, msg = select(*live, timeout=T)
        except ChannelClosed as exc:
            assert exc.channel in live
            live.remove(exc.channel)
            continue
        got[src].append(msg)
        if isinstance(msg, Tick) and on_tick is not None:
            on_tick(src, msg)
    return got


def _feeder(n: int) -> tuple[Channel[Any], threading.Thread]:
    ch: Channel[Any] = Channel(8)

    def feed() -> None:
        for i in range(n):
            ch.send(i, timeout=T)
        ch.close()

    return ch, threading.Thread(target=feed, daemon=True)


def _timer_source(io: IOServer, ticks: int) -> tuple[Any, threading.Thread | None, Any]:
    """An interval port (closed by the selector after ``ticks``), or, without the
    timer driver, a thread + Channel sending Tick-like messages."""
    if _have("ioserver.drivers.timer"):
        tick_port = io.interval(0.002)

        def on_tick(src: Any, msg: Tick) -> None:
            if src is tick_port and msg.count >= ticks and not tick_port.closed:
                tick_port.close()

        return tick_port, None, on_tick
    ch: Channel[Any] = Channel(4)

    def tick() -> None:
        for i in range(1, ticks + 1):
            ch.send(Tick(ch, i), timeout=T)
        ch.close()

    return ch, threading.Thread(target=tick, daemon=True), None


def _check_ticks(source: Any, msgs: list[Any], ticks: int) -> None:
    if isinstance(source, Port):
        assert msgs[-1] == Closed(source)
        msgs = msgs[:-1]
    counts = [m.count for m in msgs]
    assert all(isinstance(m, Tick) for m in msgs)
    assert counts == sorted(set(counts)) and counts[-1] >= ticks  # increasing, no repeats


@pytest.mark.timeout(60)
def test_select_over_channel_tcp_port_and_timer(io: IOServer) -> None:
    """One thread selects over a Channel fed by another thread, a TCP port and
    a timer: every message arrives exactly once, each source in order."""
    n = 500
    ch, feeder = _feeder(n)
    port, peer = connect(io, packet="line")
    ticker, tick_thread, on_tick = _timer_source(io, 30)
    writer = threading.Thread(
        target=lambda: (peer.sendall(b"".join(lines(0, n))), peer.close()), daemon=True
    )
    for t in (feeder, writer, tick_thread):
        if t is not None:
            t.start()
    got = _select_all([ch, port, ticker], time.monotonic() + 40, on_tick)
    assert got[ch] == list(range(n))
    assert got[port] == [*data(port, lines(0, n)), Closed(port)]
    _check_ticks(ticker, got[ticker], 30)


@pytest.mark.timeout(60)
def test_select_over_channel_tcp_port_timer_and_process(io: IOServer) -> None:
    """As above, plus a subprocess port: its lines, then Exited(0), then Closed."""
    if not _have("ioserver.drivers.process"):
        pytest.skip("ioserver/drivers/process.py does not exist yet: no subprocess ports")
    n = 300
    ch, feeder = _feeder(n)
    port, peer = connect(io, packet="line")
    ticker, tick_thread, on_tick = _timer_source(io, 20)
    proc = io.spawn(
        [sys.executable, "-c", f"import sys\nfor i in range({n}): sys.stdout.write(f'{{i}}\\n')"],
        packet="line",
    )
    writer = threading.Thread(
        target=lambda: (peer.sendall(b"".join(lines(0, n))), peer.close()), daemon=True
    )
    for t in (feeder, writer, tick_thread):
        if t is not None:
            t.start()
    got = _select_all([ch, port, ticker, proc], time.monotonic() + 50, on_tick)
    assert got[ch] == list(range(n))
    assert got[port] == [*data(port, lines(0, n)), Closed(port)]
    _check_ticks(ticker, got[ticker], 20)
    out = got[proc]
    assert out[-2:] == [Exited(proc, 0), Closed(proc)], out[-3:]
    assert out[:-2] == data(proc, lines(0, n))

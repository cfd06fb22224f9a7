"""The loop side of a port, where the native core has a compiled twin.

``Port._write_on_loop`` (and, for a raw stream port, the driver's ``write`` and
``_write``) is C in the native core (csrc/write.c), and a read that wakes parked
threads holds their wakeups until the end of the loop's batch (csrc/sched.c,
deferred unparks). These tests hold both cores to the Python reference: a
replaced method is the one that runs, every byte and every message arrives
once, and no thread is left parked when the server stops mid-batch.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from helpers import wait_until

from ioserver import IOServer
from ioserver.messages import Closed, Data
from ioserver.port import Port

T = 10.0


def pair(io: IOServer, **options: Any) -> tuple[socket.socket, Port]:
    """A plain peer socket and an ioserver TCP port connected to it."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        port = io.connect_tcp("127.0.0.1", listener.getsockname()[1], timeout=T, **options)
        listener.settimeout(T)
        peer, _ = listener.accept()
    finally:
        listener.close()
    peer.settimeout(T)
    return peer, port


def read_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, f"EOF after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


def test_a_replaced_stream_write_is_the_one_that_runs(
    io: IOServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compiled write path only stands in for StreamDriver._write while the
    class has the original: a replacement (a test's, a subclass's) is called."""
    from ioserver.drivers.stream import StreamDriver

    seen: list[bytes] = []
    original = StreamDriver._write

    def recording(self: StreamDriver, data: bytes) -> None:
        seen.append(bytes(data))
        original(self, data)

    monkeypatch.setattr(StreamDriver, "_write", recording)
    peer, port = pair(io)
    try:
        for i in range(20):
            port.send(b"w%02d;" % i)
        want = b"".join(b"w%02d;" % i for i in range(20))
        assert read_exactly(peer, len(want)) == want
        assert b"".join(seen) == want
    finally:
        port.close()
        peer.close()


def test_a_replaced_write_on_loop_is_the_one_that_runs(
    io: IOServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Port.send queues the class's _write_on_loop, whichever it is."""
    calls: list[int] = []
    original = Port._write_on_loop

    def counting(self: Port, data: Any, n: int) -> None:
        calls.append(n)
        original(self, data, n)

    monkeypatch.setattr(Port, "_write_on_loop", counting)
    peer, port = pair(io)
    try:
        port.send(b"abc")
        port.send(b"defg")
        assert read_exactly(peer, 7) == b"abcdefg"
        wait_until(lambda: len(calls) == 2, what="both writes through the replacement")
        assert calls == [3, 4]
    finally:
        port.close()
        peer.close()


@pytest.mark.parametrize("packet", [None, "line", 4], ids=["raw", "line", "len4"])
def test_writes_in_every_mode_arrive_once_in_order_with_the_accounting_settled(
    io: IOServer, packet: Any
) -> None:
    """Raw ports take the compiled path, framed ones the encoder's: the peer gets
    each write once, in order, and the port's counters say everything was written."""
    peer, port = pair(io, packet=packet)
    try:
        frames = [b"frame %04d\n" % i for i in range(500)]
        for frame in frames:
            port.send(frame)
        if packet == 4:
            want = b"".join(len(f).to_bytes(4, "big") + f for f in frames)
        else:
            want = b"".join(frames)
        assert read_exactly(peer, len(want)) == want
        wait_until(lambda: port.info()["unsent_bytes"] == 0, what="the writes counted as done")
        assert port.info()["bytes_out"] == len(want)
    finally:
        port.close()
        peer.close()


def test_every_thread_woken_by_one_batch_of_reads_gets_its_message(io: IOServer) -> None:
    """Forty threads, each parked on its own port; the peers write to all of them
    at once, twenty-five times: each thread gets each of its messages exactly
    once (the I/O thread wakes them at the end of its batch, none is forgotten)."""
    conns, rounds = 40, 25
    pairs = [pair(io, packet="line") for _ in range(conns)]
    got: list[list[bytes]] = [[] for _ in range(conns)]
    ready = threading.Barrier(conns + 1, timeout=T)

    def receiver(i: int) -> None:
        port = pairs[i][1]
        for _ in range(rounds):
            ready.wait()
            msg = port.recv(timeout=T)
            assert isinstance(msg, Data), msg
            got[i].append(msg.data)

    threads = [threading.Thread(target=receiver, args=(i,), daemon=True) for i in range(conns)]
    for t in threads:
        t.start()
    try:
        for r in range(rounds):
            ready.wait()
            for i, (peer, _) in enumerate(pairs):
                peer.sendall(b"%d:%d\n" % (i, r))
        for t in threads:
            t.join(T)
        assert not any(t.is_alive() for t in threads)
        for i in range(conns):
            assert got[i] == [b"%d:%d\n" % (i, r) for r in range(rounds)]
    finally:
        for peer, port in pairs:
            port.close()
            peer.close()


@pytest.mark.parametrize("attempt", range(10))
def test_a_thread_woken_as_the_server_stops_is_not_left_parked(attempt: int) -> None:
    """Data arrives for a parked receiver and the server stops at once: the
    receiver wakes with the data or with Closed, it is never left waiting for a
    wakeup that the stopped loop was holding."""
    io = IOServer(name="stop-mid-batch").start()
    try:
        peer, port = pair(io)
        out: list[Any] = []

        def receiver() -> None:
            try:
                while True:
                    msg = port.recv(timeout=T)
                    out.append(msg)
                    if isinstance(msg, Closed):
                        return
            except Exception as exc:  # the inbox closed after Closed: also an end
                out.append(exc)

        t = threading.Thread(target=receiver, daemon=True)
        t.start()
        time.sleep(0.01)  # most often the receiver is parked by now (either way must hold)
        sent = b"x" * (attempt + 1)
        peer.sendall(sent)
        io.stop()
        t.join(T)
        assert not t.is_alive(), "the receiver was left parked"
        data = b"".join(m.data for m in out if isinstance(m, Data))
        assert sent.startswith(data)  # what was read before the stop, nothing else
        assert isinstance(out[-1], (Closed, Exception)), out
        peer.close()
    finally:
        io.stop()

"""IOServer: lifecycle, calls into the loop, stop and crash semantics, embedded-mode hygiene.

Peers are plain blocking sockets on 127.0.0.1 in daemon threads. Tests wait
for states (a receiver is parked when its inbox reports a waiting receiver),
never for times.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import run_threads, wait_until

import ioserver.server
from ioserver import Channel, ChannelClosed
from ioserver.messages import Accepted, Closed, Data
from ioserver.port import Port, PortClosed
from ioserver.server import IOServer, ServerStopped


@pytest.fixture
def io() -> Iterator[IOServer]:
    server = IOServer(name="test-server").start()
    try:
        yield server
    finally:
        server.stop()


class PlainListener:
    """A blocking listening socket on 127.0.0.1 that accepts on demand."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.address = self.sock.getsockname()

    def accept(self) -> socket.socket:
        conn, _ = self.sock.accept()
        conn.settimeout(30)
        return conn

    def close(self) -> None:
        self.sock.close()


def connected_ports(io: IOServer, n: int) -> tuple[list[Port], list[socket.socket]]:
    """``n`` TCP ports connected to plain sockets (returned too, to keep them open)."""
    listener = PlainListener()
    ports, peers = [], []
    try:
        for _ in range(n):
            ports.append(io.connect_tcp(*listener.address))
            peers.append(listener.accept())
    finally:
        listener.close()
    return ports, peers


def receive_all(port: Port, out: list[Any]) -> None:
    """Receive until the inbox ends; record every message, then the ChannelClosed."""
    try:
        while True:
            out.append(port.recv(timeout=30))
    except ChannelClosed:
        out.append("ChannelClosed")
    except BaseException as exc:
        out.append(exc)


def start_receivers(ports: list[Port]) -> tuple[list[threading.Thread], list[list[Any]]]:
    """A daemon thread blocked in ``recv`` on each port (waits until all are parked)."""
    outs: list[list[Any]] = [[] for _ in ports]
    threads = [
        threading.Thread(target=receive_all, args=(p, out), daemon=True)
        for p, out in zip(ports, outs, strict=True)
    ]
    for t in threads:
        t.start()
    for p in ports:
        wait_until(lambda p=p: p.inbox.statistics().waiting_receivers == 1, what="a parked recv")
    return threads, outs


# -- lifecycle ----------------------------------------------------------------------------


def test_start_and_stop_are_idempotent() -> None:
    io = IOServer(name="idem")
    assert not io.running and io.stats()["state"] == "new"
    assert io.start() is io
    thread = io._thread
    assert io.start() is io and io._thread is thread  # no second thread
    assert io.running and io.stats()["state"] == "running"
    io.stop()
    io.stop()
    assert not io.running and io.stats()["state"] == "stopped"
    assert thread is not None and not thread.is_alive()


def test_stopped_server_cannot_restart() -> None:
    io = IOServer(name="restart").start()
    io.stop()
    with pytest.raises(ServerStopped):
        io.start()
    with pytest.raises(ServerStopped):
        io.call_soon(lambda: None)


def test_stop_before_start_then_start_raises() -> None:
    io = IOServer(name="never")
    io.stop()
    assert io.stats()["state"] == "stopped"
    with pytest.raises(ServerStopped):
        io.start()
    with pytest.raises(ServerStopped):
        io.call(lambda: None)


def test_context_manager_starts_and_stops() -> None:
    with IOServer(name="ctx") as io:
        assert io.running
        assert io.call(threading.get_ident) != threading.get_ident()
        thread = io._thread
    assert not io.running and io.stats()["state"] == "stopped"
    assert thread is not None and not thread.is_alive()


def test_context_manager_stops_on_exception() -> None:
    with pytest.raises(KeyError), IOServer(name="ctx-exc") as io:
        raise KeyError("x")
    assert io.stats()["state"] == "stopped"


def test_default_is_one_shared_running_server() -> None:
    first = ioserver.server.default()
    second = ioserver.server.default()
    assert first is second
    assert first.running
    assert first.call(lambda: 6 * 7) == 42


def test_invalid_loop_kind_fails_start() -> None:
    io = IOServer(loop="bogus")
    with pytest.raises(RuntimeError) as info:
        io.start()
    assert isinstance(info.value.__cause__, ValueError)
    assert "bogus" in str(info.value.__cause__)


# -- calls into the loop -----------------------------------------------------------------


def test_call_returns_result_on_the_io_thread(io: IOServer) -> None:
    assert io.call(lambda a, b: a + b, 2, 3) == 5
    assert io.call(threading.current_thread) is io._thread


def test_call_reraises_the_exception(io: IOServer) -> None:
    class Oops(Exception):
        pass

    def fail() -> None:
        raise Oops("from the loop")

    with pytest.raises(Oops, match="from the loop"):
        io.call(fail)
    assert io.call(lambda: "alive") == "alive"


def test_call_from_the_io_thread_raises_at_once(io: IOServer) -> None:
    """Lesson 8 (docs/architecture.md): a blocking call made on the I/O thread raises RuntimeError
    instead of deadlocking (a deadlock would show as the outer TimeoutError)."""
    with pytest.raises(RuntimeError, match="I/O thread"):
        io.call(lambda: io.call(lambda: 1), timeout=10)

    async def probe() -> int:
        return 1

    with pytest.raises(RuntimeError, match="I/O thread"):
        io.call(lambda: io.connect_tcp("127.0.0.1", 1), timeout=10)
    with pytest.raises(RuntimeError, match="I/O thread"):
        io.call(lambda: io._run_coroutine(probe), timeout=10)
    assert io.call(lambda: "alive") == "alive"


def test_call_timeout(io: IOServer) -> None:
    gate = threading.Event()
    try:
        with pytest.raises(TimeoutError):
            io.call(gate.wait, 30, timeout=0.05)
    finally:
        gate.set()
    assert io.call(lambda: "alive", timeout=10) == "alive"


def test_call_soon_runs_in_order(io: IOServer) -> None:
    seen: list[int] = []
    for i in range(1000):
        io.call_soon(seen.append, i)
    assert io.call(lambda: list(seen)) == list(range(1000))


def test_stats_keys_and_counters(io: IOServer) -> None:
    stats = io.stats()
    assert {
        "state",
        "loop",
        "requests",
        "batches",
        "pipe_writes",
        "empty_wakeups",
        "skipped_wakeups",
        "max_batch",
        "longest_batch_ms",
        "pending",
        "ports",
        "open_ports",
        "ports_opened",
    } <= set(stats)
    assert stats["state"] == "running"
    before = stats["requests"]
    for _ in range(10):
        io.call(lambda: None)
    assert io.stats()["requests"] >= before + 10
    listener = io.listen_tcp("127.0.0.1", 0)
    try:
        stats = io.stats()
        assert stats["ports"].get("tcp-listener") == 1
        assert stats["open_ports"] >= 1
        assert stats["ports_opened"] >= 1
    finally:
        listener.close()
    assert list(listener) == [Closed(listener)]
    assert io.call(lambda: io.stats()["ports"].get("tcp-listener", 0)) == 0


@pytest.mark.asyncio
async def test_acall_from_another_asyncio_loop(io: IOServer) -> None:
    """``acall`` awaits without blocking the caller's loop (a ticker keeps
    running while the I/O thread holds the call)."""
    gate = threading.Event()
    ticks = [0]

    async def ticker() -> None:
        while True:
            ticks[0] += 1
            await asyncio.sleep(0)

    def slow() -> int:
        gate.wait(10)
        return threading.get_ident()

    task = asyncio.create_task(ticker())
    try:
        pending = asyncio.ensure_future(io.acall(slow))
        while ticks[0] < 100:  # the loop is free while the call is outstanding
            await asyncio.sleep(0)
        assert not pending.done()
        gate.set()
        ident = await asyncio.wait_for(pending, 10)
        assert ident == io._ident != threading.get_ident()

        def fail() -> None:
            raise LookupError("async")

        with pytest.raises(LookupError, match="async"):
            await io.acall(fail)
    finally:
        gate.set()
        task.cancel()


# -- stop and crash ----------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_stop_wakes_receivers_blocked_on_ports() -> None:
    """Receivers blocked in 5 threads on 5 ports all wake: each gets one
    ``Closed("server stopped")``, then ChannelClosed; stop returns."""
    io = IOServer(name="stop-wakes").start()
    ports, peers = connected_ports(io, 5)
    threads, outs = start_receivers(ports)
    io.stop()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    for port, out in zip(ports, outs, strict=True):
        assert out == [Closed(port, "server stopped"), "ChannelClosed"]
        with pytest.raises(PortClosed):
            port.send(b"x")
    for peer in peers:  # the peers see the connection end
        assert peer.recv(10) == b""
        peer.close()


def raise_system_exit() -> None:
    raise SystemExit("injected: the loop thread dies")


@pytest.mark.timeout(30)
def test_dead_loop_thread_wakes_every_receiver() -> None:
    """The loop thread dies (SystemExit out of run_forever, from a raw loop callback:
    a request's exception is only logged): every blocked
    receiver wakes with Closed or ChannelClosed, ``failure`` is set, later
    calls raise ServerStopped, and stop() returns."""
    io = IOServer(name="crash").start()
    listener = PlainListener()
    ports = [io.connect_tcp(*listener.address) for _ in range(3)]
    shared_inbox: Channel[Any] = Channel()  # a shared inbox is not closed: Closed arrives
    shared = io.connect_tcp(*listener.address, inbox=shared_inbox)
    peers = [listener.accept() for _ in range(4)]
    listener.close()
    threads, outs = start_receivers(ports)
    io.call_soon(io.loop.call_soon, raise_system_exit)
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "a receiver is still blocked"
    for port, out in zip(ports, outs, strict=True):
        assert out[-1] == "ChannelClosed"
        closed = [m for m in out if isinstance(m, Closed)]
        assert closed in ([], [Closed(port, "server died")])
    assert shared_inbox.recv(timeout=10) == Closed(shared, "server died")
    assert isinstance(io.failure, SystemExit)
    assert io.stats()["state"] == "dead"
    with pytest.raises(ServerStopped):
        io.call(lambda: None)
    with pytest.raises(ServerStopped):
        io.call_soon(lambda: None)
    with pytest.raises((ServerStopped, PortClosed)):
        ports[0].send(b"x")
    with pytest.raises(ServerStopped):
        io.listen_tcp("127.0.0.1", 0)
    io.stop()  # returns at once
    for peer in peers:
        peer.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("chunks", [1, 64], ids=["one_send", "many_sends"])
def test_stop_flushes_pending_writes(chunks: int) -> None:
    """1 MB sent just before ``stop()``: the peer receives every byte, in order."""
    payload = bytes(range(256)) * 4096  # 1 MiB
    io = IOServer(name="flush").start()
    listener = PlainListener()
    port = io.connect_tcp(*listener.address)
    peer = listener.accept()
    listener.close()
    received = hashlib.sha256()
    count = [0]

    def read_all() -> None:
        while True:
            try:
                data = peer.recv(1 << 20)
            except ConnectionResetError:
                data = b""
            if not data:
                return
            count[0] += len(data)
            received.update(data)

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    size = len(payload) // chunks
    for i in range(chunks):
        port.send(payload[i * size : (i + 1) * size])
    io.stop()
    reader.join(20)
    assert not reader.is_alive()
    assert count[0] == len(payload)
    assert received.hexdigest() == hashlib.sha256(payload).hexdigest()
    peer.close()


# -- embedded-mode hygiene ---------------------------------------------------------------


@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_embedded_server_installs_no_signal_handlers(loop: str) -> None:
    """Lesson 11 (docs/architecture.md): starting, using and stopping a server leaves
    SIGINT, SIGTERM, SIGCHLD and the signal wakeup fd exactly as they were."""
    sigs = [signal.SIGINT, signal.SIGTERM, signal.SIGCHLD]
    before = [signal.getsignal(s) for s in sigs]
    old_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(old_fd)
    io = IOServer(loop=loop).start()
    try:
        listener = io.listen_tcp("127.0.0.1", 0)
        client = io.connect_tcp(*listener.address)
        assert isinstance(listener.recv(timeout=10), Accepted)
        assert [signal.getsignal(s) for s in sigs] == before
        fd = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(fd)
        assert fd == old_fd
        client.close()
        listener.close()
    finally:
        io.stop()
    assert [signal.getsignal(s) for s in sigs] == before


@pytest.mark.parametrize(
    ("loop", "expect"), [("asyncio", "asyncio"), ("uvloop", "uvloop"), ("auto", "uvloop")]
)
def test_tcp_echo_on_each_loop_kind(loop: str, expect: str) -> None:
    """The selector-loop fallback (``loop="asyncio"``) and uvloop both serve a
    TCP echo through listen/connect ports."""
    with IOServer(loop=loop) as io:
        assert io.stats()["loop"].startswith(expect)
        listener = io.listen_tcp("127.0.0.1", 0, packet="line")
        client = io.connect_tcp(*listener.address, packet="line")
        accepted = listener.recv(timeout=10)
        assert isinstance(accepted, Accepted)
        conn = accepted.conn
        lines = [b"%d\n" % i for i in range(100)]
        for line in lines:
            client.send(line)
        echoed = []
        for _ in lines:
            msg = conn.recv(timeout=10)
            assert isinstance(msg, Data)
            conn.send(msg.data)
            echoed.append(client.recv(timeout=10))
        assert echoed == [Data(client, line) for line in lines]
        client.close()
        assert list(client) == [Closed(client)]
        assert list(conn) == [Closed(conn)]
        listener.close()


def test_concurrent_calls_each_get_their_own_result(io: IOServer) -> None:
    """Many threads calling at once each get their own answer."""
    results = run_threads([lambda i=i: io.call(lambda: i * i) for i in range(8)])
    assert results == [i * i for i in range(8)]

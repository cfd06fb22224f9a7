"""The same port behaviour embedded and through the daemon, so the two cannot drift.

Every test in :class:`TestPortParity` runs twice, on an embedded
``ioserver.IOServer`` and on ``ioserver_client.connect(socket)`` to a real daemon
process (one conformance suite for every implementation), and asserts
the exact message sequence a port delivers. Peers are plain blocking sockets of
the test process; listeners made through the daemon are bound by the daemon,
on this machine, so the test connects to them directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import struct
import sys
import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from daemon_support import DaemonProcess, T, read_until_eof, recv_exactly, stop_and_check

import ioserver_client
from ioserver import Channel, ChannelClosed, aselect, select
from ioserver.framing import FrameError
from ioserver.messages import (
    Accepted,
    Closed,
    Data,
    Datagram,
    Error,
    Exited,
    Message,
    Passive,
    Tick,
)
from ioserver.port import Port, PortClosed
from ioserver.server import IOServer

QUIET = 0.3
"""How long a port must stay silent to count as "delivers nothing more". Only ever
used to show that something does NOT arrive: a slow machine can make such a check
pass when it should fail, never fail when it should pass."""

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def parity_daemon() -> Iterator[DaemonProcess]:
    """One daemon for the module (each test has its own session); spawn allows cat."""
    d = DaemonProcess(spawn_allow=["cat", sys.executable]).start()
    yield d
    stop_and_check(d)


@pytest.fixture(params=["embedded", "remote"])
def io(request: pytest.FixtureRequest, parity_daemon: DaemonProcess) -> Iterator[Any]:
    """An object with the IOServer API: embedded, or a client of the daemon."""
    if request.param == "embedded":
        server = IOServer(name="test-parity").start()
        try:
            yield server
        finally:
            server.stop()
    else:
        remote = ioserver_client.connect(parity_daemon.socket_path)
        try:
            yield remote
        finally:
            remote.close()


# -- helpers ------------------------------------------------------------------------------


def drain(port: Port) -> list[Message]:
    """Every message until the port's own inbox ends (ChannelClosed)."""
    out = []
    try:
        while True:
            out.append(port.recv(timeout=T))
    except ChannelClosed:
        return out


def assert_quiet(port: Port) -> None:
    """Nothing arrives on ``port`` for QUIET seconds."""
    with pytest.raises(TimeoutError):
        msg = port.recv(timeout=QUIET)
        pytest.fail(f"{port!r} delivered {msg!r}")


def recv_bytes(port: Port, n: int) -> bytes:
    """Exactly ``n`` bytes of Data from a raw-mode port (however the reads cut them)."""
    buf = bytearray()
    while len(buf) < n:
        msg = port.recv(timeout=T)
        assert isinstance(msg, Data) and msg.port is port, msg
        buf += msg.data
    assert len(buf) == n
    return bytes(buf)


def pair(io: Any, **options: Any) -> tuple[Port, Port, Port]:
    """(listener, connected port, accepted port): both ends ports of ``io``."""
    listener = io.listen_tcp("127.0.0.1", 0, **options)
    conn = io.connect_tcp(*listener.address, **options)
    accepted = listener.recv(timeout=T)
    assert isinstance(accepted, Accepted) and accepted.port is listener, accepted
    return listener, conn, accepted.conn


def peer_pair(io: Any, **options: Any) -> tuple[Port, socket.socket, Port]:
    """(listener, plain peer socket of the test, accepted port)."""
    listener = io.listen_tcp("127.0.0.1", 0, **options)
    peer = socket.create_connection(listener.address, timeout=T)
    peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    accepted = listener.recv(timeout=T)
    assert isinstance(accepted, Accepted) and accepted.port is listener, accepted
    return listener, peer, accepted.conn


MSGPACK_VALUES: list[Any] = [
    0,
    -1,
    2**40,
    "text",
    "",
    b"\x00bin",
    [1, [2, [3]]],
    {"k": [1, 2]},
    {1: None},
    3.5,
    True,
    None,
]


def frames_for(packet: Any, n: int) -> list[Any]:
    if packet == "line":
        return [b"line %d %s\n" % (i, b"x" * (i % 13)) for i in range(n)]
    if packet == "msgpack":
        return [[i, MSGPACK_VALUES[i % len(MSGPACK_VALUES)]] for i in range(n)]
    assert packet == 4
    return [bytes([i % 256]) * (i * 397 % 5000) for i in range(n)] + [b"", b"z" * 70_000]


def encode(packet: Any, frame: Any) -> bytes:
    """The peer's encoder (independent of ioserver.framing)."""
    if packet == "line":
        return bytes(frame)
    if packet == "msgpack":
        return bytes(msgpack.packb(frame, use_bin_type=True))
    return struct.pack(">I", len(frame)) + frame


def decode(packet: Any, data: bytes) -> list[Any]:
    """The peer's decoder."""
    if packet == "line":
        return data.splitlines(keepends=True)
    if packet == "msgpack":
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        unpacker.feed(data)
        return list(unpacker)
    frames, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        frames.append(data[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return frames


def recv_frames(port: Port, n: int) -> list[Any]:
    got = []
    for _ in range(n):
        msg = port.recv(timeout=T)
        assert isinstance(msg, Data) and msg.port is port, msg
        got.append(msg.data)
    return got


def dead_address() -> tuple[socket.socket, tuple[str, int]]:
    """A bound TCP socket that does not listen (keep it open) and its address."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()


# -- the suite ----------------------------------------------------------------------------


class TestPortParity:
    def test_tcp_echo_through_listen_and_accept(self, io: Any) -> None:
        """listen_tcp gives an address; connect_tcp to it yields Accepted carrying a
        Port with the channel interface; bytes go both ways; each close is one Closed."""
        listener, conn, accepted = pair(io)
        host, port_number = listener.address
        assert host == "127.0.0.1" and port_number > 0
        assert listener.kind == "tcp-listener"
        assert isinstance(conn, Port) and conn.kind == "tcp"
        assert isinstance(accepted, Port) and accepted.kind == "tcp"
        for method in ("recv", "try_recv", "arecv", "send", "close", "setopts", "read"):
            assert callable(getattr(accepted, method))
        conn.send(b"ping")
        assert recv_bytes(accepted, 4) == b"ping"
        accepted.send(b"pong")
        assert recv_bytes(conn, 4) == b"pong"
        # A plain socket of the test connects to the same listener.
        peer = socket.create_connection(listener.address, timeout=T)
        second = listener.recv(timeout=T)
        assert isinstance(second, Accepted) and second.port is listener
        assert second.conn.peer == peer.getsockname()
        peer.sendall(b"plain")
        assert recv_bytes(second.conn, 5) == b"plain"
        second.conn.send(b"back")
        assert recv_exactly(peer, 4) == b"back"
        conn.close()
        assert drain(conn) == [Closed(conn)]
        assert drain(accepted) == [Closed(accepted)]
        peer.close()
        assert drain(second.conn) == [Closed(second.conn)]
        listener.close()
        assert drain(listener) == [Closed(listener)]

    def test_shared_inbox_gets_accepts_and_data(self, io: Any) -> None:
        """With inbox=, the listener's Accepted and its connections' Data and Closed
        all arrive on one channel, each message carrying its port; the shared
        inbox stays open."""
        shared: Channel[Any] = Channel()
        listener = io.listen_tcp("127.0.0.1", 0, inbox=shared, packet="line")
        peers = [socket.create_connection(listener.address, timeout=T) for _ in range(3)]
        conns = []
        for _ in peers:
            msg = shared.recv(timeout=T)
            assert isinstance(msg, Accepted) and msg.port is listener, msg
            conns.append(msg.conn)
        for i, peer in enumerate(peers):
            peer.sendall(b"from %d\n" % i)
            peer.close()
        got = [shared.recv(timeout=T) for _ in range(2 * len(conns))]
        for conn in conns:
            mine = [m for m in got if m.port is conn]
            assert len(mine) == 2 and isinstance(mine[0], Data), mine
            assert mine[1] == Closed(conn)
        assert sorted(m.data for m in got if isinstance(m, Data)) == [
            b"from 0\n",
            b"from 1\n",
            b"from 2\n",
        ]
        assert not shared.closed
        listener.close()
        assert shared.recv(timeout=T) == Closed(listener)
        assert not shared.closed and len(shared) == 0

    def test_send_on_a_closed_port_raises_port_closed(self, io: Any) -> None:
        _, conn, accepted = pair(io)
        conn.close()
        with pytest.raises(PortClosed):
            conn.send(b"late")
        assert drain(conn) == [Closed(conn)]
        assert drain(accepted) == [Closed(accepted)]

    def test_recv_past_closed_names_the_port(self, io: Any) -> None:
        """Once Closed was received, recv/try_recv/arecv raise ChannelClosed naming the
        port the user holds (as select does), not its inbox."""
        _, conn, accepted = pair(io)
        conn.close()
        assert conn.recv(timeout=T) == Closed(conn)

        async def arecv() -> Any:
            return await conn.arecv(timeout=T)

        for receive in (lambda: conn.recv(timeout=T), conn.try_recv, lambda: asyncio.run(arecv())):
            with pytest.raises(ChannelClosed) as ended:
                receive()
            assert ended.value.channel is conn
            assert str(ended.value) == f"no more messages from {conn!r}: its inbox is closed"
        with pytest.raises(ChannelClosed) as selected:
            select(conn, timeout=T)
        assert selected.value.channel is conn
        assert drain(accepted) == [Closed(accepted)]

    def test_with_block_closes_the_port(self, io: Any) -> None:
        """``with port:`` closes it on the way out, embedded and remote alike."""
        listener, conn, accepted = pair(io)
        with conn, listener:
            conn.send(b"in the block")
            assert accepted.recv(timeout=T) == Data(accepted, b"in the block")
        with pytest.raises(PortClosed):
            conn.send(b"late")
        assert drain(conn) == [Closed(conn)]
        assert drain(accepted) == [Closed(accepted)]
        assert drain(listener)[-1] == Closed(listener)

    @pytest.mark.parametrize("packet", [None, "line", 4], ids=["raw", "line", "len4"])
    def test_send_refuses_what_the_mode_cannot_write_at_once(self, io: Any, packet: Any) -> None:
        """send("text"), send(42)... raise TypeError in the caller, naming the type and
        what the port takes; nothing is counted or written, the port stays open, and
        the bytes-like kinds go through (issue 10: embedded and remote alike)."""
        _, conn, accepted = pair(io, packet=packet)
        for bad in ["hello", 42, [1, 2], (b"x", ("127.0.0.1", 9)), None]:
            with pytest.raises(TypeError, match=type(bad).__name__) as refused:
                conn.send(bad)
            assert "bytes-like" in str(refused.value) and repr(conn) in str(refused.value)
        with pytest.raises(TypeError, match=r"encode a str first"):
            asyncio.run(conn.asend("text"))
        assert not conn.closed and conn.info()["unsent_bytes"] == 0
        frame = b"ok\n"
        for data in (frame, bytearray(frame), memoryview(frame)):
            conn.send(data, timeout=T)
        expected = [frame] * 3 if packet is not None else None
        if expected is None:
            assert recv_bytes(accepted, 9) == frame * 3
        else:
            assert recv_frames(accepted, 3) == expected
        conn.close()
        assert drain(conn) == [Closed(conn)]  # no Error: the refused sends never reached it
        assert drain(accepted) == [Closed(accepted)]

    def test_send_on_a_msgpack_port_refuses_what_msgpack_cannot_encode(self, io: Any) -> None:
        """packet="msgpack" takes any object msgpack encodes; a set raises TypeError at
        once, and the frames sent around it arrive intact."""
        _, conn, accepted = pair(io, packet="msgpack")
        conn.send({"before": 1})
        with pytest.raises(TypeError, match=r"packet='msgpack'.*not set"):
            conn.send({1, 2})
        conn.send([b"after", "text"])
        assert recv_frames(accepted, 2) == [{"before": 1}, [b"after", "text"]]
        assert not conn.closed
        conn.close()
        assert drain(conn) == [Closed(conn)]

    def test_send_on_udp_takes_data_or_a_data_addr_pair(self, io: Any) -> None:
        """A UDP port takes bytes-like data or (data, addr); a str, or a pair whose data
        is a str, raises TypeError at once and the port goes on."""
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(T)
        try:
            udp = io.open_udp(("127.0.0.1", 0))
            for bad in ["text", ("text", peer.getsockname()), (b"x",)]:
                with pytest.raises(TypeError, match=r"\(data, addr\) tuple"):
                    udp.send(bad)
            udp.send((bytearray(b"fine"), peer.getsockname()))
            assert peer.recvfrom(100) == (b"fine", udp.address)
            udp.close()
            assert drain(udp) == [Closed(udp)]
        finally:
            peer.close()

    @pytest.mark.parametrize("packet", ["line", 4, "msgpack"], ids=["line", "len4", "msgpack"])
    def test_packet_modes_end_to_end(self, io: Any, packet: Any) -> None:
        """200 frames port -> port and back, then port <-> plain peer, every frame
        counted and in order (msgpack: the decoded values, as the peer sent them)."""
        _, conn, accepted = pair(io, packet=packet)
        frames = frames_for(packet, 200)
        for frame in frames:
            conn.send(frame, timeout=T)
        assert recv_frames(accepted, len(frames)) == frames
        for frame in frames:
            accepted.send(frame, timeout=T)
        assert recv_frames(conn, len(frames)) == frames
        conn.close()
        assert drain(conn) == [Closed(conn)]
        assert drain(accepted) == [Closed(accepted)]

        _, peer, port = peer_pair(io, packet=packet)
        stream = b"".join(encode(packet, f) for f in frames)
        writer = threading.Thread(target=peer.sendall, args=(stream,), daemon=True)
        writer.start()
        assert recv_frames(port, len(frames)) == frames
        writer.join(T)
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.append(read_until_eof(peer)))
        reader.start()
        for frame in frames:
            port.send(frame, timeout=T)
        port.close()
        reader.join(T)
        assert not reader.is_alive()
        assert decode(packet, received[0]) == frames
        assert drain(port) == [Closed(port)]
        peer.close()

    def test_refused_connect_raises_connection_refused(self, io: Any) -> None:
        sock, address = dead_address()
        try:
            with pytest.raises(ConnectionRefusedError):
                io.connect_tcp(*address)
            with pytest.raises(ConnectionRefusedError):
                io.connect_tcp(*address, packet="line", active=False)
        finally:
            sock.close()
        _, conn, accepted = pair(io)  # still serving
        conn.send(b"ok")
        assert recv_bytes(accepted, 2) == b"ok"
        conn.close()

    def test_closed_exactly_once_and_last_after_all_data(self, io: Any) -> None:
        """The peer writes 2 MiB and closes at once: every byte arrives in order,
        then exactly one Closed, then the own inbox ends."""
        _, peer, conn = peer_pair(io)
        payload = hashlib.sha256(b"seed").digest() * (1 << 16)  # 2 MiB
        writer = threading.Thread(target=lambda: (peer.sendall(payload), peer.close()))
        writer.start()
        msgs = drain(conn)
        writer.join(T)
        assert msgs[-1] == Closed(conn)
        assert all(isinstance(m, Data) and m.port is conn for m in msgs[:-1]), [
            m for m in msgs if not isinstance(m, Data)
        ]
        assert b"".join(m.data for m in msgs[:-1]) == payload  # type: ignore[attr-defined]

    def test_closed_exactly_once_and_last_after_many_lines(self, io: Any) -> None:
        _, peer, conn = peer_pair(io, packet="line")
        lines = [b"%d\n" % i for i in range(10_000)]
        writer = threading.Thread(target=lambda: (peer.sendall(b"".join(lines)), peer.close()))
        writer.start()
        msgs = drain(conn)
        writer.join(T)
        assert msgs == [Data(conn, line) for line in lines] + [Closed(conn)]

    def test_port_close_delivers_one_closed_after_buffered_data(self, io: Any) -> None:
        """close() flushes our writes, keeps what the inbox holds, then exactly one
        Closed; closing twice is harmless."""
        _, peer, conn = peer_pair(io, packet="line")
        peer.sendall(b"a\nb\nc\n")
        deadline_msgs = [conn.recv(timeout=T) for _ in range(3)]
        assert deadline_msgs == [Data(conn, b"a\n"), Data(conn, b"b\n"), Data(conn, b"c\n")]
        peer.sendall(b"d\n")
        conn.send(b"bye\n")
        conn.close()
        conn.close()
        assert read_until_eof(peer) == b"bye\n"
        msgs = drain(conn)
        assert msgs[-1] == Closed(conn)
        assert msgs.count(Closed(conn)) == 1
        assert msgs[:-1] in ([], [Data(conn, b"d\n")])  # d raced the close
        assert conn.closed
        peer.close()

    def test_active_once_and_setopts(self, io: Any) -> None:
        """Erlang's modes: "once" gives one message then nothing; an int N gives N
        then Passive; True resumes; the peer's close then arrives as one Closed."""
        _, peer, conn = peer_pair(io, packet="line", active="once")
        peer.sendall(b"1\n2\n3\n4\n5\n6\n")
        assert conn.recv(timeout=T) == Data(conn, b"1\n")
        assert_quiet(conn)
        conn.setopts(active="once")
        assert conn.recv(timeout=T) == Data(conn, b"2\n")
        assert_quiet(conn)
        conn.setopts(active=2)
        got = [conn.recv(timeout=T) for _ in range(3)]
        assert got == [Data(conn, b"3\n"), Data(conn, b"4\n"), Passive(conn)]
        assert_quiet(conn)
        conn.setopts(active=True)
        assert [conn.recv(timeout=T) for _ in range(2)] == [
            Data(conn, b"5\n"),
            Data(conn, b"6\n"),
        ]
        peer.close()
        assert drain(conn) == [Closed(conn)]

    def test_active_false_and_read(self, io: Any) -> None:
        """Passive from the start: nothing arrives unasked; each read() is one message,
        the peer's close included."""
        _, peer, conn = peer_pair(io, packet="line", active=False)
        peer.sendall(b"a\nb\nc\n")
        assert_quiet(conn)
        assert conn.read(timeout=T) == Data(conn, b"a\n")
        assert_quiet(conn)
        assert conn.read(timeout=T) == Data(conn, b"b\n")
        assert conn.read(timeout=T) == Data(conn, b"c\n")
        peer.close()
        assert_quiet(conn)
        assert conn.read(timeout=T) == Closed(conn)
        assert drain(conn) == []

    def test_interval_ticks(self, io: Any) -> None:
        """Tick(port, count), count being the periods elapsed: increasing (a busy
        machine may skip some, coalesced); close() ends in one Closed after any ticks
        already delivered."""
        tick = io.interval(0.01)
        assert tick.kind == "interval"
        ticks = [tick.recv(timeout=T) for _ in range(5)]
        assert all(type(t) is Tick and t.port is tick for t in ticks), ticks
        counts = [t.count for t in ticks]
        assert counts[0] >= 1 and counts == sorted(set(counts)), counts
        tick.close()
        rest = drain(tick)
        assert rest[-1] == Closed(tick)
        later = [t.count for t in rest[:-1]]
        assert all(type(t) is Tick for t in rest[:-1]), rest
        assert later == sorted(set(later)) and all(c > counts[-1] for c in later), later

    def test_send_after_to_a_local_channel(self, io: Any) -> None:
        """The message arrives on a plain local Channel; cancel() is True only
        before it fired; timers fire in deadline order."""
        ch: Channel[Any] = Channel()
        fired = io.send_after(0.01, ch, {"wake": [1, 2]})
        assert ch.recv(timeout=T) == {"wake": [1, 2]}
        assert fired.cancel() is False
        pending = io.send_after(60, ch, "never")
        assert pending.cancel() is True
        assert pending.cancel() is False
        io.send_after(0.2, ch, "second")
        io.send_after(0.01, ch, "first")
        assert [ch.recv(timeout=T), ch.recv(timeout=T)] == ["first", "second"]
        assert len(ch) == 0

    def test_oversized_frame_is_error_then_closed(self, io: Any) -> None:
        """A 4-byte header announcing 70000 bytes with max_frame_bytes=1024: the frame
        before it, then Error(FrameError), then Closed("error")."""
        _, peer, conn = peer_pair(io, packet=4, max_frame_bytes=1024)
        peer.sendall(encode(4, b"ok") + struct.pack(">I", 70000) + b"x" * 100)
        msgs = drain(conn)
        assert msgs[0] == Data(conn, b"ok")
        assert isinstance(msgs[1], Error) and msgs[1].port is conn
        assert isinstance(msgs[1].error, FrameError), repr(msgs[1].error)
        assert "1024" in str(msgs[1].error) and "70000" in str(msgs[1].error)
        assert msgs[2:] == [Closed(conn, "error")]
        peer.close()

    def test_peer_reset_is_error_then_closed(self, io: Any) -> None:
        _, peer, conn = peer_pair(io)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        msgs = drain(conn)
        assert len(msgs) == 2, msgs
        assert isinstance(msgs[0], Error) and isinstance(msgs[0].error, ConnectionResetError)
        assert msgs[1] == Closed(conn, "error")

    def test_udp_datagrams(self, io: Any) -> None:
        """open_udp: Datagram(port, data, addr) in, send((data, addr)) out, and
        remote_addr as the default destination of send(data)."""
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(T)
        try:
            udp = io.open_udp(("127.0.0.1", 0))
            assert udp.kind == "udp" and udp.address[0] == "127.0.0.1"
            peer.sendto(b"hello", udp.address)
            assert udp.recv(timeout=T) == Datagram(udp, b"hello", peer.getsockname())
            udp.send((b"reply", peer.getsockname()))
            assert peer.recvfrom(100) == (b"reply", udp.address)
            udp.close()
            assert drain(udp) == [Closed(udp)]

            connected = io.open_udp(("127.0.0.1", 0), remote_addr=peer.getsockname())
            connected.send(b"default destination")
            assert peer.recvfrom(100) == (b"default destination", connected.address)
            connected.close()
            assert drain(connected) == [Closed(connected)]
        finally:
            peer.close()

    def test_spawn_cat(self, io: Any) -> None:
        """spawn: stdin <- send, stdout -> Data, close_stdin, Exited(0), Closed."""
        proc = io.spawn(["cat"])
        assert proc.kind == "process"
        proc.send(b"meow")
        assert recv_bytes(proc, 4) == b"meow"
        proc.close_stdin()
        assert drain(proc) == [Exited(proc, 0), Closed(proc)]


# -- select across both kinds -------------------------------------------------------------


def test_select_mixes_remote_port_local_channel_and_embedded_port(
    parity_daemon: DaemonProcess,
) -> None:
    """One select over a daemon port, a local Channel fed by a thread and an embedded
    port: every message of each arrives exactly once, in its source's order; each
    port's Closed comes last, then select raises ChannelClosed naming that source."""
    n = 300
    embedded = IOServer(name="test-select").start()
    remote = ioserver_client.connect(parity_daemon.socket_path)
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    try:
        remote_port = remote.connect_tcp(*listeners[0].getsockname(), packet="line")
        embedded_port = embedded.connect_tcp(*listeners[1].getsockname(), packet="line")
        peers = [listener.accept()[0] for listener in listeners]
        ch: Channel[Any] = Channel(capacity=8)

        def feed_channel() -> None:
            for i in range(n):
                ch.send(i, timeout=T)
            ch.close()

        def feed_peer(sock: socket.socket, tag: bytes) -> None:
            rng = random.Random(42)
            for i in range(n):
                sock.sendall(b"%s %d\n" % (tag, i))
                if rng.random() < 0.1:
                    threading.Event().wait(0.001)  # let the others interleave
            sock.close()

        threads = [
            threading.Thread(target=feed_channel, daemon=True),
            threading.Thread(target=feed_peer, args=(peers[0], b"remote"), daemon=True),
            threading.Thread(target=feed_peer, args=(peers[1], b"embedded"), daemon=True),
        ]
        for t in threads:
            t.start()
        got: dict[Any, list[Any]] = {remote_port: [], embedded_port: [], ch: []}
        ended: list[Any] = []
        sources: list[Any] = [remote_port, ch, embedded_port]
        while sources:
            try:
                source, msg = select(*sources, timeout=T)
            except ChannelClosed as exc:
                assert exc.channel in sources, exc.channel
                sources.remove(exc.channel)
                ended.append(exc.channel)
                continue
            got[source].append(msg)
        for t in threads:
            t.join(T)
        assert sorted(map(id, ended)) == sorted(map(id, [remote_port, ch, embedded_port]))
        assert got[ch] == list(range(n))
        for port, tag in ((remote_port, b"remote"), (embedded_port, b"embedded")):
            assert got[port] == [Data(port, b"%s %d\n" % (tag, i)) for i in range(n)] + [
                Closed(port)
            ]
    finally:
        for listener in listeners:
            listener.close()
        remote.close()
        embedded.stop()


@pytest.mark.asyncio
async def test_aselect_on_a_remote_port_from_a_coroutine(parity_daemon: DaemonProcess) -> None:
    """aselect over a daemon port and a local Channel, from an asyncio task."""
    remote = ioserver_client.connect(parity_daemon.socket_path)
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        port = remote.connect_tcp(*listener.getsockname(), packet="line")
        peer, _ = listener.accept()
        ch: Channel[Any] = Channel()
        peer.sendall(b"from the peer\n")
        source, msg = await aselect(port, ch, timeout=T)
        assert (source, msg) == (port, Data(port, b"from the peer\n"))
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, ch.try_send, "from the channel")
        source, msg = await aselect(port, ch, timeout=T)
        assert (source, msg) == (ch, "from the channel")
        peer.close()
        assert await port.arecv(timeout=T) == Closed(port)
    finally:
        listener.close()
        remote.close()


def test_remote_port_reprs_show_what_each_port_is_on(parity_daemon: DaemonProcess) -> None:
    """``<RemotePort id kind ...>``: the daemon's port id, then what the port is on,
    as far as the client knows it, and ``closed`` once closed."""
    with ioserver_client.connect(parity_daemon.socket_path) as remote:
        listener = remote.listen_tcp("127.0.0.1", 0)
        port = listener.address[1]
        assert repr(listener) == f"<RemotePort {listener.remote_id} tcp-listener 127.0.0.1:{port}>"
        conn = remote.connect_tcp("127.0.0.1", port)
        assert repr(conn) == f"<RemotePort {conn.remote_id} tcp -> 127.0.0.1:{port}>"
        accepted = listener.recv(timeout=T).conn
        assert repr(accepted).startswith(f"<RemotePort {accepted.remote_id} tcp -> 127.0.0.1:")
        ticker = remote.interval(0.5)
        assert repr(ticker) == f"<RemotePort {ticker.remote_id} interval every=0.5s>"
        conn.close()
        assert repr(conn).endswith(" closed>")

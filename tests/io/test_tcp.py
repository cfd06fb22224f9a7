"""TCP ports, through :class:`StreamPortTests`, the suite every stream family runs.

``StreamPortTests`` is run here for TCP and by test_unix.py for Unix sockets
(CPython test_selectors' one-suite-per-backend pattern): the subclass supplies
a ``family`` fixture that knows how to listen, connect and make plain-socket
peers. Peers are plain blocking sockets; tests wait for states (``info()``
counters, inbox lengths), never for times, and count every frame.
"""

from __future__ import annotations

import gc
import hashlib
import socket
import struct
import sys
import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from helpers import wait_until

from ioserver import Channel, ChannelClosed
from ioserver.framing import FrameError
from ioserver.messages import Accepted, Closed, Data, Error
from ioserver.port import Port, PortClosed
from ioserver.server import IOServer

T = 10.0  # seconds any single receive may take before the test fails

# -- families -------------------------------------------------------------------------


class TcpFamily:
    """How to listen and connect with TCP on 127.0.0.1."""

    name = "tcp"
    refused: type[OSError] | tuple[type[OSError], ...] = ConnectionRefusedError

    def listen(self, io: IOServer, **options: Any) -> Port:
        return io.listen_tcp("127.0.0.1", 0, **options)

    def connect(self, io: IOServer, address: Any, **options: Any) -> Port:
        return io.connect_tcp(*address, **options)

    def plain_listener(self) -> tuple[socket.socket, Any]:
        sock = socket.create_server(("127.0.0.1", 0))
        sock.settimeout(T)
        return sock, sock.getsockname()

    def plain_connect(self, address: Any) -> socket.socket:
        sock = socket.create_connection(address, timeout=T)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def dead_address(self) -> tuple[socket.socket, Any]:
        """A bound socket that does not listen (keep it open) and its address."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        return sock, sock.getsockname()


# -- packet modes, from the peer's side (independent of ioserver.framing) -------------


PACKETS = [None, "line", 1, 2, 4, "msgpack"]
PACKET_IDS = ["raw", "line", "len1", "len2", "len4", "msgpack"]


def sample_frames(packet: Any, n: int) -> list[Any]:
    """``n`` frames valid for ``packet``, varied in size, including edge cases."""
    if packet is None:
        return [b"chunk-%d;" % i for i in range(n)]
    if packet == "line":
        return [b"line %d %s\n" % (i, b"x" * (i % 7)) for i in range(n)]
    if packet == "msgpack":
        kinds: list[Any] = [
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
        ]
        return [[i, kinds[i % len(kinds)]] for i in range(n)]
    limit = 255 if packet == 1 else 3000
    return [bytes([i % 256]) * (i * 37 % limit) for i in range(n)]  # includes b""


def encode(packet: Any, frame: Any) -> bytes:
    if packet is None or packet == "line":
        return bytes(frame)
    if packet == "msgpack":
        return bytes(msgpack.packb(frame, use_bin_type=True))
    fmt = {1: ">B", 2: ">H", 4: ">I"}[packet]
    return struct.pack(fmt, len(frame)) + frame


def decode_all(packet: Any, data: bytes) -> list[Any]:
    """The peer's decoder for what a port sent."""
    if packet is None:
        return [data]
    if packet == "line":
        return data.splitlines(keepends=True)
    if packet == "msgpack":
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        unpacker.feed(data)
        return list(unpacker)
    size = {1: 1, 2: 2, 4: 4}[packet]
    fmt = {1: ">B", 2: ">H", 4: ">I"}[packet]
    frames, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from(fmt, data, pos)
        frames.append(data[pos + size : pos + size + length])
        pos += size + length
    return frames


def receive_frames(port: Port, packet: Any, expected: list[Any]) -> list[Any]:
    """Receive Data until ``expected`` is matched (raw: by byte count)."""
    got: list[Any] = []
    if packet is None:
        want = sum(len(f) for f in expected)
        buf = bytearray()
        while len(buf) < want:
            msg = port.recv(timeout=T)
            assert isinstance(msg, Data) and msg.port is port, msg
            buf += msg.data
        return [bytes(buf)] if expected else []
    while len(got) < len(expected):
        msg = port.recv(timeout=T)
        assert isinstance(msg, Data) and msg.port is port, msg
        got.append(msg.data)
    return got


def normalise(packet: Any, frames: list[Any]) -> list[Any]:
    return [b"".join(frames)] if packet is None and frames else frames


def read_until_eof(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            data = sock.recv(1 << 16)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def drain_port(port: Port) -> list[Any]:
    """Every message until the port's own inbox ends (ChannelClosed)."""
    out = []
    try:
        while True:
            out.append(port.recv(timeout=T))
    except ChannelClosed:
        return out


def wait_bytes_in(port: Port, n: int) -> None:
    wait_until(lambda: port.info()["bytes_in"] >= n, what=f"{n} bytes read by {port!r}")


# -- the suite ------------------------------------------------------------------------


class StreamPortTests:
    """Tests every stream family passes; a subclass provides the ``family`` fixture."""

    @pytest.fixture
    def io(self) -> Iterator[IOServer]:
        server = IOServer(name="test-stream").start()
        try:
            yield server
        finally:
            server.stop()

    def pair(self, io: IOServer, family: Any, **options: Any) -> tuple[Port, Port, Port]:
        """(listener, client port, accepted port), both ends ioserver ports."""
        listener = family.listen(io, **options)
        client = family.connect(io, listener.address, **options)
        accepted = listener.recv(timeout=T)
        assert isinstance(accepted, Accepted) and accepted.port is listener
        return listener, client, accepted.conn

    def peer_pair(
        self, io: IOServer, family: Any, **options: Any
    ) -> tuple[Port, socket.socket, Port]:
        """(listener, plain peer socket, accepted port)."""
        listener = family.listen(io, **options)
        peer = family.plain_connect(listener.address)
        accepted = listener.recv(timeout=T)
        assert isinstance(accepted, Accepted)
        return listener, peer, accepted.conn

    # -- echo and the channel interface ----------------------------------------------

    def test_echo_through_listen_and_accept(self, io: IOServer, family: Any) -> None:
        """Accepted carries a Port with the channel interface; bytes go both ways."""
        listener, client, conn = self.pair(io, family)
        assert isinstance(conn, Port) and conn.kind == family.name
        assert listener.kind == f"{family.name}-listener"
        for method in ("recv", "try_recv", "arecv", "send", "close", "setopts", "read"):
            assert callable(getattr(conn, method))
        client.send(b"ping")
        assert conn.recv(timeout=T) == Data(conn, b"ping")
        conn.send(b"pong")
        assert client.recv(timeout=T) == Data(client, b"pong")
        client.close()
        assert drain_port(client) == [Closed(client)]
        assert drain_port(conn) == [Closed(conn)]
        listener.close()
        assert drain_port(listener) == [Closed(listener)]

    def test_shared_inbox_gets_accepts_and_data(self, io: IOServer, family: Any) -> None:
        """With ``inbox=``, the listener's Accepted and its connections' Data all
        arrive on one channel, each message carrying its ``.port``."""
        shared: Channel[Any] = Channel()
        listener = family.listen(io, inbox=shared)
        peers = [family.plain_connect(listener.address) for _ in range(3)]
        conns = []
        for _ in peers:
            msg = shared.recv(timeout=T)
            assert isinstance(msg, Accepted) and msg.port is listener
            conns.append(msg.conn)
        for i, peer in enumerate(peers):
            peer.sendall(b"from %d" % i)
        got: dict[Port, bytes] = {c: b"" for c in conns}
        while any(len(v) < 6 for v in got.values()):
            msg = shared.recv(timeout=T)
            assert isinstance(msg, Data)
            got[msg.port] += msg.data
        assert sorted(got.values()) == [b"from 0", b"from 1", b"from 2"]
        for peer in peers:
            peer.close()
        closed = [shared.recv(timeout=T) for _ in conns]
        assert sorted(m.port.id for m in closed if isinstance(m, Closed)) == sorted(
            c.id for c in conns
        )
        assert not shared.closed  # a shared inbox stays open
        listener.close()

    @pytest.mark.parametrize("packet", PACKETS, ids=PACKET_IDS)
    def test_echo_between_two_ports_in_each_packet_mode(
        self, io: IOServer, family: Any, packet: Any
    ) -> None:
        _, client, conn = self.pair(io, family, packet=packet)
        frames = sample_frames(packet, 200)
        # Each direction is sent from a helper thread while this one receives: the
        # receiving port's inbox is bounded (64), and once it is full the loop stops
        # reading, so a sender that had to finish first could fill every buffer in
        # between and park for ever (how much those hold depends on how the writes
        # and reads happen to be cut).
        for sender, receiver in ((client, conn), (conn, client)):
            out = threading.Thread(target=lambda s=sender: [s.send(f) for f in frames], daemon=True)
            out.start()
            got = receive_frames(receiver, packet, frames)
            out.join(T)
            assert not out.is_alive()
            assert got == normalise(packet, frames)

    # -- packet modes against a plain peer ------------------------------------------

    @pytest.mark.parametrize("packet", PACKETS, ids=PACKET_IDS)
    def test_frames_split_across_reads(self, io: IOServer, family: Any, packet: Any) -> None:
        """The peer sends byte by byte, each byte its own read (we wait until
        the port has read it): frames are reassembled exactly."""
        _, peer, conn = self.peer_pair(io, family, packet=packet)
        frames = sample_frames(packet, 5 if packet in (None, 2, 4) else 8)
        if packet in (1, 2, 4):
            frames = [f[:7] for f in frames]  # keep the byte-by-byte stream short
        stream = b"".join(encode(packet, f) for f in frames)
        if packet is None:
            assert len(stream) < 64  # one Data per byte: all must fit the inbox
        for k in range(len(stream)):
            peer.sendall(stream[k : k + 1])
            wait_bytes_in(conn, k + 1)
        got = receive_frames(conn, packet, frames)
        assert got == normalise(packet, frames)
        if packet is None:
            assert conn.info()["messages_in"] == len(stream)  # one Data per read
        with pytest.raises(TimeoutError):
            conn.recv(timeout=0)  # nothing extra
        peer.close()

    @pytest.mark.parametrize("packet", PACKETS, ids=PACKET_IDS)
    def test_many_frames_in_one_read(self, io: IOServer, family: Any, packet: Any) -> None:
        """500 frames in one send (read in a few large reads) arrive as 500 Data,
        in order, although the inbox holds only 64."""
        _, peer, conn = self.peer_pair(io, family, packet=packet)
        frames = sample_frames(packet, 500)
        stream = b"".join(encode(packet, f) for f in frames)
        writer = threading.Thread(target=lambda: (peer.sendall(stream), peer.close()), daemon=True)
        writer.start()
        assert receive_frames(conn, packet, frames) == normalise(packet, frames)
        assert drain_port(conn) == [Closed(conn)]
        writer.join(T)
        assert not writer.is_alive()

    @pytest.mark.parametrize("packet", PACKETS, ids=PACKET_IDS)
    def test_port_sends_frames_the_peer_can_decode(
        self, io: IOServer, family: Any, packet: Any
    ) -> None:
        _, peer, conn = self.peer_pair(io, family, packet=packet)
        frames = sample_frames(packet, 300)
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.append(read_until_eof(peer)), daemon=True)
        reader.start()
        for frame in frames:
            conn.send(frame, timeout=T)
        conn.close()
        reader.join(T)
        assert not reader.is_alive()
        assert decode_all(packet, received[0]) == normalise(packet, frames)
        assert drain_port(conn) == [Closed(conn)]

    def test_final_unterminated_line_is_delivered_before_closed(
        self, io: IOServer, family: Any
    ) -> None:
        _, peer, conn = self.peer_pair(io, family, packet="line")
        peer.sendall(b"one\ntwo")
        peer.close()
        assert drain_port(conn) == [Data(conn, b"one\n"), Data(conn, b"two"), Closed(conn)]

    def test_stream_ending_inside_a_frame_is_an_error(self, io: IOServer, family: Any) -> None:
        _, peer, conn = self.peer_pair(io, family, packet=2)
        peer.sendall(encode(2, b"whole") + struct.pack(">H", 10) + b"half")
        peer.close()
        msgs = drain_port(conn)
        assert msgs[0] == Data(conn, b"whole")
        assert isinstance(msgs[1], Error) and isinstance(msgs[1].error, FrameError)
        assert msgs[2:] == [Closed(conn, "error")]

    # -- faults --------------------------------------------------------------------------

    def test_oversized_frame_is_error_then_closed_and_server_serves_on(
        self, io: IOServer, family: Any
    ) -> None:
        """Lesson 4 (docs/architecture.md): a 4-byte header announcing 70000 bytes
        with max_frame_bytes=1024 gives the frames before it, then Error(FrameError
        naming the limit), then Closed; the listener and other connections keep
        working."""
        listener = family.listen(io, packet=4, max_frame_bytes=1024)
        good_peer = family.plain_connect(listener.address)
        good = listener.recv(timeout=T).conn  # type: ignore[union-attr]
        bad_peer = family.plain_connect(listener.address)
        bad = listener.recv(timeout=T).conn  # type: ignore[union-attr]
        bad_peer.sendall(encode(4, b"ok") + struct.pack(">I", 70000) + b"x" * 100)
        msgs = drain_port(bad)
        assert msgs[0] == Data(bad, b"ok")
        assert isinstance(msgs[1], Error) and isinstance(msgs[1].error, FrameError)
        assert "1024" in str(msgs[1].error) and "70000" in str(msgs[1].error)
        assert msgs[2:] == [Closed(bad, "error")]
        assert read_until_eof(bad_peer) == b""  # the connection was dropped
        # The limit is inclusive; the others are unaffected.
        good_peer.sendall(encode(4, b"y" * 1024))
        assert good.recv(timeout=T) == Data(good, b"y" * 1024)
        good.send(b"reply")
        assert decode_all(4, good_peer.recv(100)) == [b"reply"]
        third_peer = family.plain_connect(listener.address)
        third = listener.recv(timeout=T)
        assert isinstance(third, Accepted)
        third_peer.sendall(encode(4, b"z"))
        assert third.conn.recv(timeout=T) == Data(third.conn, b"z")
        for s in (good_peer, bad_peer, third_peer):
            s.close()

    def test_connect_refused_raises(self, io: IOServer, family: Any) -> None:
        sock, address = family.dead_address()
        try:
            with pytest.raises(family.refused):
                family.connect(io, address)
            with pytest.raises(family.refused):
                family.connect(io, address, packet="line", active=False)
            assert io.call(lambda: "alive") == "alive"
        finally:
            sock.close()

    def test_failed_connect_leaves_no_port_behind(self, io: IOServer, family: Any) -> None:
        sock, address = family.dead_address()
        try:
            before = io.stats()["open_ports"]
            for _ in range(3):
                with pytest.raises(family.refused):
                    family.connect(io, address)
            assert io.call(lambda: len(io._drivers)) == before
            assert io.stats()["open_ports"] == before
        finally:
            sock.close()

    def test_closed_once_and_last_after_all_data(self, io: IOServer, family: Any) -> None:
        """The peer writes 2 MiB and closes at once: every byte arrives, in order,
        then exactly one Closed, then the own inbox ends."""
        _, peer, conn = self.peer_pair(io, family)
        payload = hashlib.sha256(b"seed").digest() * (1 << 16)  # 2 MiB
        writer = threading.Thread(target=lambda: (peer.sendall(payload), peer.close()), daemon=True)
        writer.start()
        msgs = drain_port(conn)
        writer.join(T)
        assert msgs[-1] == Closed(conn)
        assert all(isinstance(m, Data) for m in msgs[:-1])
        assert b"".join(m.data for m in msgs[:-1]) == payload

    def test_closed_once_and_last_after_many_lines(self, io: IOServer, family: Any) -> None:
        _, peer, conn = self.peer_pair(io, family, packet="line")
        lines = [b"%d\n" % i for i in range(10_000)]
        writer = threading.Thread(
            target=lambda: (peer.sendall(b"".join(lines)), peer.close()), daemon=True
        )
        writer.start()
        msgs = drain_port(conn)
        writer.join(T)
        assert msgs == [Data(conn, line) for line in lines] + [Closed(conn)]

    def test_writes_keep_their_order_across_a_full_socket(self, io: IOServer, family: Any) -> None:
        """Writes go straight to the socket while the transport holds nothing, and
        through the transport's buffer once the socket is full (drivers/stream.py
        ``_write``): a peer that reads nothing at first, then everything, gets every
        numbered chunk once, in order, with the buffer having been used."""
        _, peer, conn = self.peer_pair(io, family, high_water=1 << 26)
        chunks = [struct.pack(">I", i) * 1024 for i in range(2048)]  # 8 MiB in 4 KiB chunks
        for chunk in chunks:
            conn.send(chunk)
        wait_until(lambda: conn.info()["unsent_bytes"] == 0, what="every write handed to the loop")
        buffered = conn.info().get("transport_buffer", 0)
        conn.close()
        got = read_until_eof(peer)
        peer.close()
        assert buffered > 0  # the socket filled up: the transport's path was taken too
        assert len(got) == len(chunks) * 4096
        assert got == b"".join(chunks)

    def test_port_close_delivers_one_closed_after_buffered_data(
        self, io: IOServer, family: Any
    ) -> None:
        """``close()`` flushes our writes, keeps what the inbox already holds,
        adds exactly one Closed, and ends iteration of the own inbox."""
        _, peer, conn = self.peer_pair(io, family, packet="line")
        peer.sendall(b"a\nb\nc\n")
        wait_until(lambda: len(conn) == 3, what="three lines in the inbox")
        conn.send(b"bye\n")
        conn.close()
        conn.close()  # idempotent
        lines = [Data(conn, b"a\n"), Data(conn, b"b\n"), Data(conn, b"c\n")]
        assert list(conn) == [*lines, Closed(conn)]
        assert list(conn) == []
        assert conn.closed
        with pytest.raises(PortClosed):
            conn.send(b"late\n")
        assert read_until_eof(peer) == b"bye\n"
        peer.close()

    def test_exception_in_driver_callback_closes_only_that_port(
        self, io: IOServer, family: Any
    ) -> None:
        """Lesson 9 (docs/architecture.md): a driver callback that raises gives that
        port Error + Closed; the loop, the listener and the other ports go on."""
        listener = family.listen(io)
        peers, conns = [], []
        for _ in range(2):
            peers.append(family.plain_connect(listener.address))
            conns.append(listener.recv(timeout=T).conn)  # type: ignore[union-attr]
        victim, other = conns

        class Boom(Exception):
            pass

        # Drivers have __slots__, so the fault goes on the class, for the victim only.
        driver_class = type(victim._driver)
        original = driver_class.feed

        def feed(self: Any, data: bytes) -> None:
            if self is victim._driver:
                raise Boom(f"feed got {data!r}")
            original(self, data)

        io.call(setattr, driver_class, "feed", feed)
        try:
            peers[0].sendall(b"trigger")
            msgs = drain_port(victim)
        finally:
            io.call(setattr, driver_class, "feed", original)
        assert len(msgs) == 2, msgs
        assert isinstance(msgs[0], Error) and isinstance(msgs[0].error, Boom)
        assert msgs[1] == Closed(victim, "error")
        assert read_until_eof(peers[0]) == b""
        peers[1].sendall(b"still")
        assert other.recv(timeout=T) == Data(other, b"still")
        other.send(b"here")
        assert peers[1].recv(10) == b"here"
        late = family.plain_connect(listener.address)
        assert isinstance(listener.recv(timeout=T), Accepted)
        assert io.running and io.failure is None
        for s in (*peers, late):
            s.close()

    def test_listener_close_stops_accepting(self, io: IOServer, family: Any) -> None:
        """A closed listener delivers Closed, refuses new connections, and leaves
        connections it already accepted working."""
        listener, client, conn = self.pair(io, family)
        address = listener.address
        listener.close()
        assert drain_port(listener) == [Closed(listener)]
        with pytest.raises((ConnectionRefusedError, FileNotFoundError)):
            family.connect(io, address)
        client.send(b"after")
        assert conn.recv(timeout=T) == Data(conn, b"after")
        assert io.stats()["ports"].get(f"{family.name}-listener", 0) == 0

    def test_server_stop_closes_accepted_and_listener(self, io: IOServer, family: Any) -> None:
        listener, client, conn = self.pair(io, family)
        io.stop()
        for port in (listener, client, conn):
            assert drain_port(port) == [Closed(port, "server stopped")]


class TestTcp(StreamPortTests):
    @pytest.fixture
    def family(self) -> TcpFamily:
        return TcpFamily()

    def test_addresses(self, io: IOServer, family: TcpFamily) -> None:
        listener, client, conn = self.pair(io, family)
        host, port = listener.address
        assert host == "127.0.0.1" and port > 0
        assert client.peer == listener.address
        assert conn.address == listener.address
        assert conn.peer == client.address
        assert client.address[0] == "127.0.0.1"
        plain = family.plain_connect(listener.address)
        accepted = listener.recv(timeout=T)
        assert isinstance(accepted, Accepted)
        assert accepted.conn.peer == plain.getsockname()
        assert accepted.conn.info()["peer"] == plain.getsockname()
        plain.close()

    def test_peer_reset_gives_error_then_closed(self, io: IOServer, family: TcpFamily) -> None:
        """The peer sets SO_LINGER 0 and closes (an RST): Error(ConnectionResetError)
        then Closed("error")."""
        _, peer, conn = self.peer_pair(io, family)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        msgs = drain_port(conn)
        assert len(msgs) == 2, msgs
        assert isinstance(msgs[0], Error) and isinstance(msgs[0].error, ConnectionResetError)
        assert msgs[1] == Closed(conn, "error")

    def test_connect_to_plain_server(self, io: IOServer, family: TcpFamily) -> None:
        """connect_tcp blocks until connected: the port can write at once."""
        sock, address = family.plain_listener()
        try:
            port = io.connect_tcp(*address, packet="line")
            peer, _ = sock.accept()
            port.send(b"hello\n")
            assert peer.recv(10) == b"hello\n"
            peer.sendall(b"back\n")
            assert port.recv(timeout=T) == Data(port, b"back\n")
            peer.close()
            assert drain_port(port) == [Closed(port)]
        finally:
            sock.close()

    def test_bad_options_raise_in_the_caller(self, io: IOServer, family: TcpFamily) -> None:
        with pytest.raises(ValueError, match="packet"):
            io.listen_tcp("127.0.0.1", 0, packet="bogus")
        with pytest.raises(ValueError, match="active"):
            io.listen_tcp("127.0.0.1", 0, active="twice")
        with pytest.raises(TypeError, match="pakcet"):
            io.listen_tcp("127.0.0.1", 0, pakcet="line")
        assert io.stats()["open_ports"] == 0

    def test_rejected_inbox_raises_cleanly(self, io: IOServer, family: TcpFamily) -> None:
        """A rendezvous inbox is refused with ValueError and nothing else: no
        exception escapes the half-built Port's finaliser."""
        unraisable: list[Any] = []
        old_hook = sys.unraisablehook
        sys.unraisablehook = unraisable.append
        try:
            with pytest.raises(ValueError, match="rendezvous"):
                io.listen_tcp("127.0.0.1", 0, inbox=Channel(0))
            gc.collect()
        finally:
            sys.unraisablehook = old_hook
        assert [u.exc_value for u in unraisable] == []
        assert io.stats()["open_ports"] == 0

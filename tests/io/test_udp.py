"""UDP ports: datagrams whole and counted, connected sockets, per-datagram errors, Closed once.

Every test runs on uvloop (whose UDP transport cannot pause reading: the port
drops and counts past ``max_pending``) and on asyncio's selector loop (which
pauses: datagrams wait in the kernel). Tests wait for states or messages,
never for times; the sender keeps a bounded window of datagrams in flight.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

import pytest
from helpers import wait_until

from ioserver import Channel
from ioserver.messages import Closed, Datagram, Error
from ioserver.port import Port, PortClosed
from ioserver.server import IOServer

LOCAL = ("127.0.0.1", 0)
MARK = object()


def dead_address() -> tuple[str, int]:
    """A local UDP address nobody listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(LOCAL)
        return s.getsockname()  # type: ignore[no-any-return]


def recv_datagram(port: Port) -> Datagram:
    msg = port.recv(timeout=10)
    assert isinstance(msg, Datagram), msg
    return msg


def read_datagram(port: Port) -> Datagram:
    """Ask a passive port for one message; it must be a Datagram."""
    msg = port.read(timeout=10)
    assert isinstance(msg, Datagram), msg
    return msg


def recv_error(port: Port) -> Error:
    msg = port.recv(timeout=10)
    assert isinstance(msg, Error), msg
    return msg


def close_all(*ports: Port) -> None:
    for p in ports:
        p.close()
    for p in ports:
        rest = list(p)
        assert sum(isinstance(m, Closed) for m in rest) == 1
        assert isinstance(rest[-1], Closed)


def until_mark(io: IOServer, inbox: Channel[Any]) -> list[Any]:
    """Everything ``inbox`` receives before a marker the loop sends after a few turns."""
    for _ in range(5):
        io.call(lambda: None)
    io.call(inbox.try_send, MARK)
    got = []
    while (msg := inbox.recv(timeout=10)) is not MARK:
        got.append(msg)
    return got


def test_echo_500_datagrams_all_counted(io: IOServer) -> None:
    """Every one of 500 datagrams comes back from an echoing port, each exactly once."""
    a = io.open_udp(LOCAL)
    b = io.open_udp(LOCAL)
    assert a.kind == b.kind == "udp"
    assert a.address[0] == "127.0.0.1" and a.address[1] > 0

    others: list[Any] = []  # what the echoer saw besides datagrams

    def echo() -> None:
        for msg in b:
            if isinstance(msg, Datagram):
                b.send((msg.data, msg.addr))
            else:
                others.append(msg)

    echoer = threading.Thread(target=echo, daemon=True)
    echoer.start()
    n, window = 500, 16
    sent = 0
    echoed: list[int] = []
    missing = 0
    while len(echoed) + missing < n:
        while sent < n and sent - len(echoed) - missing < window:
            a.send((b"%d" % sent, b.address))
            sent += 1
        try:
            msg = recv_datagram(a)
        except TimeoutError:
            # Lost on the way: only acceptable if a port says it dropped it.
            missing = sent - len(echoed)
            break
        assert msg.addr == b.address
        echoed.append(int(msg.data))
    info_a, info_b = a.info(), b.info()
    dropped = info_a["dropped"] + info_b["dropped"]
    assert missing == dropped
    assert sorted(echoed) == sorted(set(echoed))  # no duplicates
    if not dropped:
        assert sorted(echoed) == list(range(n))
        assert info_b["messages_in"] == n and info_a["messages_in"] == n
    assert info_a["bytes_out"] == sum(len(b"%d" % i) for i in range(n))
    # Port.send counts a (data, addr) tuple as 2 bytes; submitted == processed all the same.
    assert info_a["unsent_bytes"] == 0 and not a.busy
    close_all(a)
    b.close()
    echoer.join(10)
    assert not echoer.is_alive()
    assert others == [Closed(b)]


def test_connected_udp_with_remote_addr(io: IOServer) -> None:
    """remote_addr connects: send(data) goes to the peer and its replies come back."""
    b = io.open_udp(LOCAL)
    c = io.open_udp(remote_addr=b.address)
    assert c.peer == b.address
    assert c.address[0] == "127.0.0.1"
    c.send(b"ping")
    msg = recv_datagram(b)
    assert msg.data == b"ping" and msg.addr == c.address
    b.send((b"pong", msg.addr))
    reply = recv_datagram(c)
    assert reply.data == b"pong" and reply.addr == b.address
    c.send((b"to the peer by name", b.address))  # the peer's own address is allowed
    assert recv_datagram(b).data == b"to the peer by name"
    c.send((b"elsewhere", dead_address()))
    assert isinstance(recv_error(c).error, ValueError)
    c.send(b"still open")
    assert recv_datagram(b).data == b"still open"
    close_all(b, c)


@pytest.mark.parametrize("size", [1500, 8192, 65507])
def test_large_datagram_arrives_whole(io: IOServer, size: int) -> None:
    """A datagram over 1 KB (up to the IPv4 maximum) is one Datagram, byte for byte."""
    a = io.open_udp(LOCAL)
    b = io.open_udp(LOCAL)
    payload = os.urandom(size)
    a.send((payload, b.address))
    msg = recv_datagram(b)
    assert msg.data == payload
    assert msg.addr == a.address
    close_all(a, b)


def test_bad_sends_are_errors_and_the_port_stays_open(io: IOServer) -> None:
    """Datagrams the loop rejects give one Error each (no Closed); the port keeps
    working. (What is not a datagram at all raises TypeError in ``send``.)

    On asyncio's loop the unchecked versions would close the socket (a
    non-OSError from sendto is fatal there).
    """
    a = io.open_udp(LOCAL)
    b = io.open_udp(LOCAL)
    a.send((b"x" * 70000, b.address))  # EMSGSIZE, from the kernel
    assert isinstance(recv_error(a).error, OSError)
    a.send(b"no address on an unconnected socket")
    assert isinstance(recv_error(a).error, ValueError)
    with pytest.raises(TypeError, match="str"):  # refused in the caller (Port.send)
        a.send(("text is not bytes", b.address))
    a.send((b"x", ("localhost", b.address[1])))  # names are not resolved on the I/O thread
    assert "numeric" in str(recv_error(a).error)
    a.send((b"x", ("127.0.0.1",)))
    assert isinstance(recv_error(a).error, TypeError)
    a.send((b"x", ("127.0.0.1", 70000)))
    assert isinstance(recv_error(a).error, ValueError)
    with pytest.raises(TypeError, match=r"\(data, addr\) tuple, not tuple"):
        a.send((b"x", b.address, "extra"))
    a.send((memoryview(b"still works"), b.address))
    assert recv_datagram(b).data == b"still works"
    info = a.info()
    assert info["errors"] == 5 and not info["closed"]
    close_all(a, b)


def test_connected_to_closed_port_gives_error_not_close(io: IOServer) -> None:
    """ICMP port unreachable on a connected socket is an Error; the port stays open."""
    d = io.open_udp(remote_addr=dead_address())
    error = None
    for _ in range(50):  # ICMP errors can be rate-limited: send until one comes back
        d.send(b"anyone?")
        try:
            msg = d.recv(timeout=0.2)
        except TimeoutError:
            continue
        assert isinstance(msg, Error), msg
        error = msg.error
        break
    assert isinstance(error, ConnectionRefusedError)
    assert not d.closed
    d.send(b"again")  # does not raise: the port is open
    d.close()
    rest = list(d)
    assert all(isinstance(m, Error | Closed) for m in rest)
    assert sum(isinstance(m, Closed) for m in rest) == 1 and isinstance(rest[-1], Closed)


def test_close_delivers_exactly_one_closed(io: IOServer) -> None:
    """close() ends in one Closed, the last message; nothing follows; send raises after."""
    inbox: Channel[Any] = Channel(256)
    a = io.open_udp(LOCAL, inbox=inbox)
    b = io.open_udp(LOCAL)
    for i in range(3):
        b.send((b"%d" % i, a.address))
    got = [inbox.recv(timeout=10) for _ in range(3)]
    assert [m.data for m in got] == [b"0", b"1", b"2"]
    a.close()
    a.close()  # idempotent
    assert a.closed
    with pytest.raises(PortClosed):
        a.send((b"x", b.address))
    b.send((b"after close", a.address))
    rest = until_mark(io, inbox)
    assert rest == [Closed(a)]
    assert until_mark(io, inbox) == []
    b.close()
    assert list(b) == [Closed(b)]


def test_passive_port_holds_or_drops_datagrams_boundedly(io: IOServer) -> None:
    """A passive port never holds more than max_pending: asyncio pauses reading (the
    kernel keeps them), uvloop drops the excess and counts it."""
    n, bound = 20, 8
    a = io.open_udp(LOCAL, active=False, max_pending=bound)
    can_pause = a.info()["can_pause"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(n):
            s.sendto(b"%d" % i, a.address)
            if not can_pause:
                # uvloop reads every datagram at once: wait until the port took this one.
                def accounted(i: int = i) -> bool:
                    info = a.info()
                    return bool(info["messages_in"] + info["dropped"] == i + 1)

                wait_until(accounted, what=f"datagram {i} received or dropped")
        info = a.info()
        expected = n if can_pause else bound
        assert info["pending_messages"] <= bound
        assert info["dropped"] == n - expected
        got = [read_datagram(a) for _ in range(expected)]
        assert [m.data for m in got] == [b"%d" % i for i in range(expected)]
        assert all(m.addr == ("127.0.0.1", s.getsockname()[1]) for m in got)
        info = a.info()
        assert info["pending_messages"] == 0
        assert info["messages_in"] == expected
    close_all(a)


def test_invalid_options_are_rejected(io: IOServer) -> None:
    """packet= other than None and a bad max_pending raise before anything opens."""
    opened = io.stats()["ports_opened"]
    for packet in ("line", 4, "msgpack"):
        with pytest.raises(ValueError, match="packet"):
            io.open_udp(LOCAL, packet=packet)
    with pytest.raises(ValueError, match="max_pending"):
        io.open_udp(LOCAL, max_pending=0)
    with pytest.raises(TypeError, match="remote_addr"):
        io.open_udp(LOCAL, remote=("127.0.0.1", 9))
    assert io.stats()["ports_opened"] == opened


def test_bind_failure_raises_and_leaves_nothing_open(io: IOServer) -> None:
    """Binding a taken address raises the OSError; no port is left registered."""
    a = io.open_udp(LOCAL)
    before = io.stats()["open_ports"]
    with pytest.raises(OSError):
        io.open_udp(a.address)
    assert io.stats()["open_ports"] == before
    close_all(a)


def test_ipv6_round_trip(io: IOServer) -> None:
    """On ::1, addresses are 4-tuples and a received one can be replied to as is."""
    try:
        a = io.open_udp(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    b = io.open_udp(("::1", 0))
    a.send((b"v6", b.address[:2]))
    msg = recv_datagram(b)
    assert msg.data == b"v6" and msg.addr[:2] == a.address[:2]
    b.send((b"back", msg.addr))
    assert recv_datagram(a).data == b"back"
    a.send((b"x", ("127.0.0.1", b.address[1])))  # an IPv4 address on an IPv6 socket
    assert isinstance(recv_error(a).error, ValueError)
    close_all(a, b)


def test_server_stop_closes_udp_ports() -> None:
    """Stopping the server delivers Closed("server stopped") and frees the sockets."""
    fds = len(os.listdir("/proc/self/fd"))
    with IOServer() as io:
        a = io.open_udp(LOCAL)
        b = io.open_udp(remote_addr=a.address)
    for p in (a, b):
        assert list(p) == [Closed(p, "server stopped")]
    assert len(os.listdir("/proc/self/fd")) == fds

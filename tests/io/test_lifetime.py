"""Ports dropped without ``close()`` are freed when collected, as unclosed files are.

A port whose messages nobody can receive any more (the port and its own inbox
unreachable) is closed at collection: its fd freed, its timer stopped, a
``ResourceWarning`` naming it. A port delivering into a shared inbox lives as
long as that inbox does.
"""

from __future__ import annotations

import gc
import os
import re
import socket
import time
import warnings
from typing import Any

import pytest
from helpers import wait_until

from ioserver import Channel, IOServer
from ioserver.drivers import timer
from ioserver.messages import Accepted, Closed, Data, Datagram, Tick
from ioserver.port import DEFAULT_INBOX_CAPACITY


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def collected(io: IOServer, open_ports: int, what: str) -> None:
    """Collect garbage until the server is back to ``open_ports`` (bounded)."""

    def back() -> bool:
        gc.collect()
        return bool(io.stats()["open_ports"] <= open_ports)

    wait_until(back, timeout=20, what=what)


def live_timers(io: IOServer) -> int:
    info = io.call(timer.loop_info, io, timeout=10)
    return int(info["size"] - info["cancelled"])


@pytest.mark.timeout(120)
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds in /proc")
def test_dropped_udp_ports_free_their_fds(io: IOServer) -> None:
    """2,000 UDP ports dropped unclosed: fds and open ports back to the baseline,
    one ResourceWarning each, naming the port."""
    gc.collect()
    base_ports = io.stats()["open_ports"]
    base_fds = open_fds()
    names = set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(2000):
            port = io.open_udp(("127.0.0.1", 0))
            names.add(repr(port))
        del port
        collected(io, base_ports, "every dropped UDP port closed")
        wait_until(lambda: open_fds() <= base_fds, timeout=20, what="fds back to the baseline")
    unclosed = {
        str(w.message)
        for w in caught
        if issubclass(w.category, ResourceWarning) and "unclosed <Port" in str(w.message)
    }
    assert unclosed == {f"unclosed {name}" for name in names}


@pytest.mark.timeout(120)
def test_dropped_interval_ports_stop_their_timers(io: IOServer) -> None:
    """500 ``interval(0.01)`` ports dropped: open ports and live timers back to the
    baseline (they no longer tick)."""
    gc.collect()
    base_ports = io.stats()["open_ports"]
    base_timers = live_timers(io)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        ports = [io.interval(0.01) for _ in range(500)]
        ports[0].recv(timeout=10)  # they tick
        # Each opening is a request to the loop, drained in batches of at most a
        # quantum: the first tick can come before the last port is registered.
        wait_until(lambda: io.stats()["open_ports"] == base_ports + 500, what="all 500 ports open")
        del ports
        collected(io, base_ports, "every dropped interval port closed")
    assert live_timers(io) == base_timers


@pytest.mark.timeout(60)
def test_a_port_whose_inbox_is_full_is_freed_too(io: IOServer) -> None:
    """Undelivered messages (a full inbox, a coalesced Tick held by the driver)
    carry the port: they must not keep it alive from the loop side."""
    gc.collect()
    base_ports = io.stats()["open_ports"]
    base_timers = live_timers(io)
    ports = [io.interval(0.001) for _ in range(3)]
    for port in ports:
        wait_until(lambda p=port: len(p) == DEFAULT_INBOX_CAPACITY, what="a full inbox")
        wait_until(lambda p=port: p.info()["pending_messages"] == 1, what="a held Tick")
    with pytest.warns(ResourceWarning, match=r"unclosed <Port \d+ interval every=0\.001s>"):
        del ports, port
        collected(io, base_ports, "the full interval ports closed")
    assert live_timers(io) == base_timers


@pytest.mark.timeout(60)
def test_the_warning_names_the_port(io: IOServer) -> None:
    port = io.open_udp(("127.0.0.1", 0))
    name = repr(port)
    with pytest.warns(ResourceWarning, match=re.escape(f"unclosed {name}")):
        del port
        gc.collect()


@pytest.mark.timeout(60)
def test_a_port_on_a_shared_inbox_lives_as_long_as_the_inbox(io: IOServer) -> None:
    """Dropped by the user, a port on a shared inbox still delivers into it: its
    messages reach whoever holds the inbox. Once the inbox goes too, it is freed."""
    gc.collect()
    base_ports = io.stats()["open_ports"]
    inbox: Channel[Any] = Channel(16)
    port = io.open_udp(("127.0.0.1", 0), inbox=inbox)
    address = port.address
    ticker = io.interval(0.01, inbox=inbox)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)  # no warning: not collected
        del port, ticker
        gc.collect()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.sendto(b"still delivered", address)
        got: list[Any] = []
        deadline = time.monotonic() + 10
        while not any(isinstance(m, Datagram) for m in got):
            assert time.monotonic() < deadline, f"no datagram among {got!r}"
            got.append(inbox.recv(timeout=10))
        datagram = next(m for m in got if isinstance(m, Datagram))
        assert datagram.data == b"still delivered"
        assert any(isinstance(m, Tick) for m in inbox_drain(inbox, got))
    finally:
        sender.close()
    assert io.stats()["open_ports"] == base_ports + 2
    del got, datagram
    with pytest.warns(ResourceWarning, match=r"unclosed <Port \d+ (udp|interval) [^>]+>"):
        del inbox
        collected(io, base_ports, "the ports of a dropped shared inbox closed")


def inbox_drain(inbox: Channel[Any], got: list[Any]) -> list[Any]:
    """``got`` plus one more message (a Tick comes every 10 ms)."""
    return [*got, inbox.recv(timeout=10)]


@pytest.mark.timeout(60)
def test_accepted_connections_live_until_received(io: IOServer) -> None:
    """Accepted connections the user has not received yet are reachable (through the
    listener): collecting garbage meanwhile must not close them."""
    listener = io.listen_tcp("127.0.0.1", 0)
    clients = [socket.create_connection(listener.address, timeout=10) for _ in range(3)]
    try:
        wait_until(lambda: len(listener) == 3, what="three Accepted")
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            gc.collect()
        for client in clients:
            client.sendall(b"hello")
        for _ in clients:
            msg = listener.recv(timeout=10)
            assert isinstance(msg, Accepted)
            assert msg.conn.recv(timeout=10) == Data(msg.conn, b"hello")
            msg.conn.close()
            assert msg.conn.recv(timeout=10) == Closed(msg.conn, None)
    finally:
        for client in clients:
            client.close()
        listener.close()

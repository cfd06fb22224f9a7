"""A port whose Closed waits for room in a full inbox still ends when stopped.

The peer's EOF queues Closed behind a full shared inbox; ``driver.stop()`` (what
the daemon's session does when its client goes away) or the server's stop must
still deliver Closed and unregister the port, or it stays open forever.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from helpers import wait_until

from ioserver import Channel, IOServer
from ioserver.messages import Closed


def _port_with_closed_waiting(io: IOServer) -> tuple[Any, Channel[Any], socket.socket]:
    """A TCP port on a full shared inbox (capacity 1) whose peer sent EOF: its
    Closed is queued in the driver, waiting for room."""
    srv = socket.create_server(("127.0.0.1", 0))
    inbox: Channel[Any] = Channel(1)
    inbox.send("filler")  # the inbox is full before the port delivers anything
    port = io.connect_tcp("127.0.0.1", srv.getsockname()[1], inbox=inbox)
    peer, _ = srv.accept()
    srv.close()
    peer.shutdown(socket.SHUT_WR)  # EOF: the driver queues Closed, no room for it

    def closed_waits() -> bool:
        info = port.info()
        return bool(info["pending_messages"] == 1 and port.closed)

    wait_until(closed_waits, what="Closed queued behind the full inbox")
    return port, inbox, peer


@pytest.mark.timeout(30)
def test_driver_stop_ends_a_port_whose_closed_waits_for_room(io: IOServer) -> None:
    baseline = io.stats()["open_ports"]
    port, inbox, peer = _port_with_closed_waiting(io)
    assert io.stats()["open_ports"] == baseline + 1
    io.call(port._driver.stop, "session closed")
    assert io.stats()["open_ports"] == baseline
    assert inbox.recv(timeout=5) == "filler"
    assert inbox.recv(timeout=5) == Closed(port, None)  # the peer's Closed, delivered
    with pytest.raises(TimeoutError):
        inbox.recv(timeout=0.05)  # exactly one Closed
    peer.close()


@pytest.mark.timeout(30)
def test_server_stop_delivers_a_closed_that_waited_for_room() -> None:
    io = IOServer(name="closed-waiting-stop").start()
    port, inbox, peer = _port_with_closed_waiting(io)
    io.stop()
    assert io.stats()["open_ports"] == 0
    assert inbox.recv(timeout=5) == "filler"
    assert inbox.recv(timeout=5) == Closed(port, None)
    peer.close()

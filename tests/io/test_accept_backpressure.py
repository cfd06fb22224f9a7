"""A listener whose inbox is full stops accepting; the kernel's backlog holds the rest.

Nobody takes ``Accepted``: the listener must not open a port for every client
(unbounded memory and fds); once the inbox has room again it resumes, and every
client arrives, none lost.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from typing import Any

import pytest

from ioserver import IOServer
from ioserver.drivers import stream
from ioserver.messages import Accepted, Data
from ioserver.port import DEFAULT_INBOX_CAPACITY

CLIENTS = 300
#: Connections a listener may accept past its full inbox (on their way to Accepted).
ACCEPT_BATCH = getattr(stream, "ACCEPT_BATCH", 16)


def connect_nowait(family: int, address: Any) -> socket.socket:
    """A client socket whose connect is under way (never blocks on a full backlog)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    err = sock.connect_ex(address)
    assert err in (0, errno.EINPROGRESS, errno.EAGAIN), os.strerror(err)
    return sock


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_a_full_inbox_stops_accepting_and_every_client_arrives_later(
    io: IOServer, kind: str, tmp_path: Any
) -> None:
    baseline = io.stats()["open_ports"]
    if kind == "tcp":
        listener = io.listen_tcp("127.0.0.1", 0, backlog=CLIENTS + 64)
        family, address = socket.AF_INET, listener.address
    else:
        address = str(tmp_path / "l.sock")
        listener = io.listen_unix(address, backlog=CLIENTS + 64)
        family = socket.AF_UNIX
    clients = []
    try:
        for _ in range(CLIENTS):
            clients.append(connect_nowait(family, address))
        # Nobody reads Accepted: the inbox fills, then the listener must stop.
        deadline = time.monotonic() + 20
        while len(listener) < DEFAULT_INBOX_CAPACITY and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(listener) == DEFAULT_INBOX_CAPACITY
        bound = DEFAULT_INBOX_CAPACITY + ACCEPT_BATCH + 1
        most = 0
        watch_until = time.monotonic() + 1.0  # an unbounded listener overshoots meanwhile
        while time.monotonic() < watch_until:
            most = max(most, io.stats()["open_ports"] - baseline - 1)
            time.sleep(0.01)
        assert most <= bound, f"{most} connection ports opened with nobody accepting"
        # Each client says who it is (its bytes wait in the kernel until accepted).
        for i, sock in enumerate(clients):
            deadline = time.monotonic() + 10
            while True:
                try:
                    sock.send(b"%d\n" % i)
                    break
                except (BlockingIOError, OSError) as exc:
                    # connect still in progress (not yet in the backlog): retry
                    if isinstance(exc, BlockingIOError) or exc.errno in (
                        errno.ENOTCONN,
                        errno.EAGAIN,
                    ):
                        assert time.monotonic() < deadline, f"client {i} never connected"
                        time.sleep(0.005)
                        continue
                    raise
        # Now take every Accepted: all CLIENTS arrive, each with its own greeting.
        seen: set[int] = set()
        conns = []
        for _ in range(CLIENTS):
            msg = listener.recv(timeout=20)
            assert isinstance(msg, Accepted)
            conns.append(msg.conn)
        for conn in conns:
            data = conn.recv(timeout=20)
            assert isinstance(data, Data)
            seen.add(int(data.data))
            conn.close()
        assert seen == set(range(CLIENTS))
        with pytest.raises(TimeoutError):
            listener.recv(timeout=0.05)  # no extra Accepted
        assert listener.info()["accepted"] == CLIENTS
    finally:
        for sock in clients:
            sock.close()
        listener.close()

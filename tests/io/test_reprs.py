"""Reprs a newcomer can read: public names and the state that matters (issue 10).

A channel shows as ``Channel`` on both cores, whatever its flavour, with its
capacity, what it buffers and whether it is closed; a port shows its id, kind,
what it is on (addresses, path, pid...) and whether it is closed.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from ioserver import Channel, IOServer
from ioserver.channel import PyChannel

pytestmark = pytest.mark.timeout(30)

T = 10.0  # generous: a loaded machine may be slow


@pytest.mark.parametrize("make", [Channel, PyChannel], ids=["current core", "pure"])
def test_a_channel_repr_names_channel_with_its_capacity_buffer_and_state(make: Any) -> None:
    unbounded, bounded, rendezvous = make(), make(1024), make(0)
    assert repr(unbounded) == "<Channel unbounded buffered=0>"
    for n in range(3):
        bounded.send(n)
    assert repr(bounded) == "<Channel capacity=1024 buffered=3>"
    assert repr(rendezvous) == "<Channel rendezvous>"
    unbounded.send("x")
    for ch in (unbounded, bounded, rendezvous):
        ch.close()
    assert repr(unbounded) == "<Channel unbounded buffered=1 closed>"
    assert repr(bounded) == "<Channel capacity=1024 buffered=3 closed>"
    assert repr(rendezvous) == "<Channel rendezvous closed>"


@pytest.mark.parametrize("make", [Channel, PyChannel], ids=["current core", "pure"])
def test_a_channels_type_has_a_public_name(make: Any) -> None:
    """No ``_Unbounded``: the flavour classes carry the public class's name."""
    for ch in (make(), make(1), make(0)):
        assert type(ch).__name__ in ("PyChannel", "NativeChannel"), type(ch)
        assert not type(ch).__qualname__.startswith("_")
        assert isinstance(ch, make)


def test_a_channel_subclass_shows_its_own_name() -> None:
    class Mailbox(Channel[Any]):
        __slots__ = ()

    assert (
        repr(Mailbox(2))
        == "<test_a_channel_subclass_shows_its_own_name.<locals>.Mailbox capacity=2 buffered=0>"
    )


def test_port_reprs_show_what_each_port_is_on(tmp_path: Path) -> None:
    with IOServer() as io:
        listener = io.listen_tcp("127.0.0.1", 0)
        host, port = listener.address
        assert repr(listener) == f"<Port {listener.id} tcp-listener 127.0.0.1:{port}>"
        conn = io.connect_tcp(host, port)
        accepted = listener.recv(timeout=T).conn
        local = f"127.0.0.1:{conn.address[1]}"
        assert repr(conn) == f"<Port {conn.id} tcp {local} -> 127.0.0.1:{port}>"
        assert repr(accepted) == f"<Port {accepted.id} tcp 127.0.0.1:{port} -> {local}>"
        conn.close()
        assert repr(conn) == f"<Port {conn.id} tcp {local} -> 127.0.0.1:{port} closed>"

        path = str(tmp_path / "s")
        unix_listener = io.listen_unix(path)
        unix_conn = io.connect_unix(path)
        assert repr(unix_listener) == f"<Port {unix_listener.id} unix-listener {path}>"
        assert repr(unix_conn) == f"<Port {unix_conn.id} unix -> {path}>"

        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        udp = io.open_udp(("127.0.0.1", 0), remote_addr=peer.getsockname())
        udp_local = f"127.0.0.1:{udp.address[1]}"
        assert repr(udp) == f"<Port {udp.id} udp {udp_local} -> 127.0.0.1:{peer.getsockname()[1]}>"
        peer.close()

        proc = io.spawn([sys.executable, "-c", "import sys; sys.stdin.read()"])
        assert repr(proc) == f"<Port {proc.id} process pid={proc.info()['pid']}>"
        ticker = io.interval(0.5)
        assert repr(ticker) == f"<Port {ticker.id} interval every=0.5s>"
        file = io.open_file(os.fspath(tmp_path / "f"), "wb")
        assert repr(file) == f"<Port {file.id} file {tmp_path / 'f'}>"
        for p in (listener, accepted, unix_listener, unix_conn, udp, proc, ticker, file):
            p.close()

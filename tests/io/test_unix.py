"""Unix-domain stream ports: the stream suite of test_tcp.py, plus what only Unix has.

Paths live in a short private directory under /tmp (``sun_path`` holds 108
bytes; pytest's ``tmp_path`` can be longer).
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from test_tcp import StreamPortTests, T, drain_port

from ioserver.messages import Accepted, Closed, Data
from ioserver.port import Port
from ioserver.server import IOServer


class UnixFamily:
    """How to listen and connect with Unix sockets under one temporary directory."""

    name = "unix"
    refused: type[OSError] | tuple[type[OSError], ...] = ConnectionRefusedError

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._names = itertools.count()

    def path(self) -> str:
        return os.path.join(self.directory, f"s{next(self._names)}")

    def listen(self, io: IOServer, **options: Any) -> Port:
        return io.listen_unix(self.path(), **options)

    def connect(self, io: IOServer, address: Any, **options: Any) -> Port:
        return io.connect_unix(address, **options)

    def plain_listener(self) -> tuple[socket.socket, Any]:
        path = self.path()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen()
        sock.settimeout(T)
        return sock, path

    def plain_connect(self, address: Any) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(T)
        sock.connect(address)
        return sock

    def dead_address(self) -> tuple[socket.socket, Any]:
        """A bound socket file nobody listens on: connecting is refused."""
        path = self.path()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        return sock, path


@pytest.fixture
def unix_dir() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="iosrv-")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class TestUnix(StreamPortTests):
    @pytest.fixture
    def family(self, unix_dir: str) -> UnixFamily:
        return UnixFamily(unix_dir)

    def test_listener_socket_file_and_addresses(self, io: IOServer, family: UnixFamily) -> None:
        """The listener creates a socket file at its path; ``address`` and
        ``peer`` name it on each side (a client socket has no name: "")."""
        path = family.path()
        listener = io.listen_unix(path)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert listener.address == path
        assert listener.info()["path"] == path
        client = io.connect_unix(path)
        accepted = listener.recv(timeout=T)
        assert isinstance(accepted, Accepted)
        conn = accepted.conn
        assert client.peer == path
        assert conn.address == path
        assert client.address in ("", None)
        client.send(b"x")
        assert conn.recv(timeout=T) == Data(conn, b"x")
        listener.close()
        assert drain_port(listener) == [Closed(listener)]

    def test_connect_to_plain_unix_server(self, io: IOServer, family: UnixFamily) -> None:
        sock, path = family.plain_listener()
        try:
            port = io.connect_unix(path, packet=2)
            peer, _ = sock.accept()
            port.send(b"hi")
            assert peer.recv(10) == b"\x00\x02hi"
            peer.sendall(b"\x00\x03abc")
            assert port.recv(timeout=T) == Data(port, b"abc")
            peer.close()
            assert drain_port(port) == [Closed(port)]
        finally:
            sock.close()

    def test_connect_to_missing_path_raises(self, io: IOServer, family: UnixFamily) -> None:
        with pytest.raises(FileNotFoundError):
            io.connect_unix(family.path())

    def test_listener_close_removes_the_socket_file(self, io: IOServer, family: UnixFamily) -> None:
        path = family.path()
        listener = io.listen_unix(path)
        assert os.path.exists(path)
        listener.close()
        assert drain_port(listener) == [Closed(listener)]
        assert not os.path.exists(path)

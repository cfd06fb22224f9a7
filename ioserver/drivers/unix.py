"""Unix-domain stream ports: ``connect`` and ``listen`` over the shared stream driver."""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Mapping
from typing import Any

from ..port import Port
from . import stream
from .base import DriverHost

__all__ = ["connect", "listen"]


def connect(server: DriverHost, path: str, options: Mapping[str, Any]) -> Port:
    """Client side of ``IOServer.connect_unix``."""

    def open_fn(factory: Any) -> Any:
        return server.loop.create_unix_connection(factory, os.fspath(path))

    return stream.connect(server, "unix", open_fn, options)


def listen(server: DriverHost, path: str, options: Mapping[str, Any]) -> Port:
    """Client side of ``IOServer.listen_unix``; the socket file is removed on close."""

    async def open_fn(backlog: int) -> list[socket.socket]:
        return [_unix_socket(os.fspath(path), backlog)]

    port = stream.listen(server, "unix", open_fn, options)
    path = os.fspath(path)
    port.info_extra["path"] = path
    st = os.stat(path)
    port._driver.on_close = lambda: _unlink_if_ours(path, (st.st_dev, st.st_ino))
    return port


def _unix_socket(path: str, backlog: int) -> socket.socket:
    """A listening Unix socket bound at ``path`` (non-blocking). A stale socket file
    there is replaced, as ``loop.create_unix_server`` does; anything else is an
    error (EADDRINUSE)."""
    if not path.startswith("\0"):
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.remove(path)
        except FileNotFoundError:
            pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(path)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise OSError(errno.EADDRINUSE, f"Address {path!r} is already in use") from None
            raise
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _unlink_if_ours(path: str, identity: tuple[int, int]) -> None:
    """Remove the socket file we bound, unless someone replaced it since."""
    try:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) == identity:
            os.unlink(path)
    except OSError:
        pass

"""TCP ports: ``connect`` and ``listen`` over the shared stream driver.

Names are resolved here, in the calling thread (which blocks until connected or
bound anyway; the daemon calls from its worker pool), never by the loop: the I/O
thread never waits on DNS, and uvloop's resolver would start libuv's threadpool,
after which a forked child crashes at exit (libuv joins threads it does not have).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from ..port import Port
from . import stream
from .base import DriverHost

__all__ = ["connect", "listen", "resolve"]


def resolve(host: str | None, port: int, *, passive: bool = False) -> list[Any]:
    """``getaddrinfo`` for a stream socket (a numeric host costs no lookup); raises
    socket.gaierror (an OSError) for a name that does not resolve."""
    flags = socket.AI_PASSIVE if passive else 0
    infos = socket.getaddrinfo(host or None, port, 0, socket.SOCK_STREAM, 0, flags)
    return list(dict.fromkeys(infos))  # the same address twice binds (or fails) twice


def connect(server: DriverHost, host: str, port: int, options: Mapping[str, Any]) -> Port:
    """Client side of ``IOServer.connect_tcp``: each address ``host`` resolves to, in
    order, until one connects; the first error if none does."""
    errors: list[OSError] = []
    for family, _, _, _, address in resolve(host, port):

        def open_fn(factory: Any, family: int = family, address: Any = address) -> Any:
            return server.loop.create_connection(factory, address[0], address[1], family=family)

        try:
            return stream.connect(server, "tcp", open_fn, options)
        except OSError as exc:
            errors.append(exc)
    raise errors[0]


def listen(server: DriverHost, host: str, port: int, options: Mapping[str, Any]) -> Port:
    """Client side of ``IOServer.listen_tcp``."""
    infos = resolve(host, port, passive=True)

    def open_fn(backlog: int) -> Any:
        return stream.tcp_sockets(infos, backlog)

    return stream.listen(server, "tcp", open_fn, options)

"""TCP ports: ``connect`` and ``listen`` over the shared stream driver."""

from __future__ import annotations

from typing import Any

from ..port import Port
from . import stream

__all__ = ["connect", "listen"]


def connect(server: Any, host: str, port: int, options: dict[str, Any]) -> Port:
    """Client side of ``IOServer.connect_tcp``."""

    def open_fn(factory: Any) -> Any:
        return server.loop.create_connection(factory, host, port)

    return stream.connect(server, "tcp", open_fn, options)


def listen(server: Any, host: str, port: int, options: dict[str, Any]) -> Port:
    """Client side of ``IOServer.listen_tcp``."""

    def open_fn(backlog: int) -> Any:
        return stream.tcp_sockets(server.loop, host, port, backlog)

    return stream.listen(server, "tcp", open_fn, options)

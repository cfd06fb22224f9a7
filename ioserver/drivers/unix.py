"""Unix-domain stream ports: ``connect`` and ``listen`` over the shared stream driver."""

from __future__ import annotations

import os
from typing import Any

from ..port import Port
from . import stream

__all__ = ["connect", "listen"]


def connect(server: Any, path: str, options: dict[str, Any]) -> Port:
    """Client side of ``IOServer.connect_unix``."""

    def open_fn(factory: Any) -> Any:
        return server.loop.create_unix_connection(factory, os.fspath(path))

    return stream.connect(server, "unix", open_fn, options)


def listen(server: Any, path: str, options: dict[str, Any]) -> Port:
    """Client side of ``IOServer.listen_unix``; the socket file is removed on close."""

    def open_fn(factory: Any, backlog: int) -> Any:
        return server.loop.create_unix_server(factory, os.fspath(path), backlog=backlog)

    port = stream.listen(server, "unix", open_fn, options)
    path = os.fspath(path)
    port.info_extra["path"] = path
    st = os.stat(path)
    port._driver.on_close = lambda: _unlink_if_ours(path, (st.st_dev, st.st_ino))
    return port


def _unlink_if_ours(path: str, identity: tuple[int, int]) -> None:
    """Remove the socket file we bound, unless someone replaced it since."""
    try:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) == identity:
            os.unlink(path)
    except OSError:
        pass

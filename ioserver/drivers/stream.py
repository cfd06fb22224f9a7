"""Stream sockets (TCP and Unix): connections and listeners, on the I/O thread.

A :class:`StreamDriver` is both the port's driver and the transport's asyncio
protocol (one object per connection). Reading pauses when the inbox is full or
the port is passive; the transport's write buffer limits are the port's water
marks, so ``pause_writing``/``resume_writing`` make the port busy and idle.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from ..messages import Accepted
from ..port import Port
from .base import Driver
from .options import PortOptions, take_options

__all__ = ["ListenerDriver", "StreamDriver", "connect", "listen"]

OpenFn = Callable[[Callable[[], asyncio.Protocol]], Coroutine[Any, Any, Any]]


class StreamDriver(Driver, asyncio.Protocol):
    """One connected stream socket."""

    __slots__ = ("kind",)

    def __init__(self, server: Any, port: Port, kind: str, **kwargs: Any) -> None:
        super().__init__(server, port, **kwargs)
        self.kind = kind

    # asyncio.Protocol callbacks (loop thread). Exceptions become Error + Closed.

    def _setup(self, transport: Any) -> None:
        port = self.port
        transport.set_write_buffer_limits(high=port.high_water, low=port.low_water)
        port.info_extra["address"] = _address(transport.get_extra_info("sockname"))
        port.info_extra["peer"] = _address(transport.get_extra_info("peername"))
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self._reading:
            transport.pause_reading()
            # uvloop starts reading after connection_made returns, undoing that
            # pause: pause again once it has.
            self.server.loop.call_soon(self._keep_paused)

    def _keep_paused(self) -> None:
        transport = self.transport
        if not self._reading and transport is not None and transport.is_reading():
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        try:
            self.feed(data)
        except Exception as exc:
            self.fail(exc)

    def eof_received(self) -> bool:
        try:
            self.feed_eof()
        except Exception as exc:
            self.fail(exc)
        return False  # close our side too; connection_lost follows

    # Driver hooks.

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def write_frames(self, frames: list[Any]) -> None:
        """Encode each frame, write them in one transport write (one syscall)."""
        if self._closed_queued:
            return
        try:
            encode = self.encoder.encode
            payload = b"".join([encode(frame) for frame in frames])
            self.bytes_out += len(payload)
            self._write(payload)
        except Exception as exc:
            self.fail(exc)

    def _pause_reading(self) -> None:
        if self.transport is not None and self.transport.is_reading():
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_reading():
            self.transport.resume_reading()

    def _close_transport(self) -> None:
        if self.transport is not None:
            self.transport.close()  # flushes buffered writes first

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _write_eof(self) -> None:
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()

    def flushing(self) -> bool:
        return self.transport is not None and self.transport.get_write_buffer_size() > 0

    def info(self) -> dict[str, Any]:
        info = super().info()
        if self.transport is not None:
            info["transport_buffer"] = self.transport.get_write_buffer_size()
        return info


class ListenerDriver(Driver):
    """A listening socket: each connection becomes a new Port, announced by ``Accepted``."""

    kind = "tcp-listener"

    def __init__(
        self, server: Any, port: Port, kind: str, conn_options: PortOptions, conn_inbox: Any
    ) -> None:
        super().__init__(server, port, active=True)
        self.kind = f"{kind}-listener"
        self.conn_kind = kind
        self.conn_options = conn_options
        self.conn_inbox = conn_inbox
        self.server_obj: asyncio.AbstractServer | None = None
        self.accepted = 0
        #: Called once when the listener closes (the Unix driver removes its file).
        self.on_close: Callable[[], object] | None = None

    def new_connection(self) -> StreamDriver:
        """The protocol factory for accepted connections (loop thread)."""
        opts = self.conn_options
        conn = Port(self.server, self.conn_kind, self.conn_inbox, high_water=opts.high_water)
        driver = _AcceptedDriver(self.server, conn, self.conn_kind, **opts.driver_kwargs())
        driver.listener = self  # set before connection_made, which reads it
        self.accepted += 1
        return driver

    def _close_transport(self) -> None:
        self._abort()
        self.finish()

    def _abort(self) -> None:
        if self.server_obj is not None:
            self.server_obj.close()
            self.server_obj = None
            if self.on_close is not None:
                self.on_close()

    def begin_stop(self) -> None:
        self._abort()  # stop accepting; connections are closed by their own drivers

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["accepted"] = self.accepted
        return info


class _AcceptedDriver(StreamDriver):
    """An accepted connection: announces itself to its listener once connected."""

    __slots__ = ("listener",)
    listener: ListenerDriver | None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        listener = self.listener
        if listener is not None and not listener._closed_queued:
            listener.deliver(Accepted(listener.port, self.port))
        else:
            self._abort()  # the listener closed meanwhile: nobody will own it


def _address(addr: Any) -> Any:
    if isinstance(addr, list | tuple):
        return tuple(addr)
    return addr


def connect(server: Any, kind: str, open_fn: OpenFn, options: dict[str, Any]) -> Port:
    """Client side: open a connection with ``open_fn(factory)`` on the loop; block until
    connected or raise its OSError."""
    opts, _ = take_options(dict(options))
    port = Port(server, kind, opts.inbox, high_water=opts.high_water)

    made: list[StreamDriver] = []

    def factory() -> StreamDriver:
        driver = StreamDriver(server, port, kind, **opts.driver_kwargs())
        made.append(driver)
        return driver

    async def open_connection() -> None:
        try:
            await asyncio.wait_for(open_fn(factory), opts.timeout)
        except BaseException:
            # uvloop makes the protocol before it connects: unregister it, so a
            # refused or timed-out connect leaves no port behind.
            for driver in made:
                driver._closed_queued = True
                port._on_closed()
                driver._after_closed()
            raise

    server._run_coroutine(open_connection)
    return port


def listen(
    server: Any,
    kind: str,
    open_fn: Callable[..., Coroutine[Any, Any, Any]],
    options: dict[str, Any],
) -> Port:
    """Client side: start a listener with ``open_fn(factory, backlog)``; block until bound."""
    opts, extra = take_options(dict(options), "conn_inbox", "backlog")
    port = Port(server, f"{kind}-listener", opts.inbox)
    conn_inbox = extra.get("conn_inbox", opts.inbox)
    backlog = extra.get("backlog", 128)

    async def open_listener() -> None:
        driver = ListenerDriver(server, port, kind, opts, conn_inbox)
        try:
            srv = await open_fn(driver.new_connection, backlog)
        except BaseException:
            driver._closed_queued = True
            port._on_closed()
            driver._after_closed()
            raise
        driver.server_obj = srv
        sockets = srv.sockets or ()
        if sockets:
            port.info_extra["address"] = _address(sockets[0].getsockname())

    server._run_coroutine(open_listener)
    return port

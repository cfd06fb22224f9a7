"""Stream sockets (TCP and Unix): connections and listeners, on the I/O thread.

A :class:`StreamDriver` is both the port's driver and the transport's asyncio
protocol (one object per connection). Reading pauses when the inbox is full or
the port is passive; the transport's write buffer limits are the port's water
marks, so ``pause_writing``/``resume_writing`` make the port busy and idle.

A :class:`ListenerDriver` owns its listening sockets and accepts with
``add_reader``, so that a full inbox (``Accepted`` not taken) stops accepting
as it stops reading a connection: the kernel's backlog holds the clients.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import weakref
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from .._core import native
from ..framing import RawEncoder
from ..messages import Accepted
from ..port import Port, ReadOnlyPort
from ..watchdog import loop_callback
from .base import Driver, DriverHost, native_input
from .options import PortOptions, take_options

__all__ = ["ACCEPT_BATCH", "ListenerDriver", "StreamDriver", "connect", "listen", "tcp_sockets"]

log = logging.getLogger("ioserver")
_os_write = os.write

#: Accepted connections on their way to ``Accepted`` at a time (per listener);
#: also the most a listener accepts past a full inbox.
ACCEPT_BATCH = 16
#: Seconds a listener waits after accept() failed for lack of resources (EMFILE...).
ACCEPT_RETRY_DELAY = 1.0

OpenFn = Callable[[Callable[[], asyncio.Protocol]], Coroutine[Any, Any, Any]]


class StreamDriver(Driver, asyncio.Protocol):
    """One connected stream socket."""

    __slots__ = ("_fd", "kind")

    def __init__(self, server: DriverHost, port: Port, kind: str, **kwargs: Any) -> None:
        super().__init__(server, port, **kwargs)
        self.kind = kind
        self._fd = -1

    # asyncio.Protocol callbacks (loop thread). Exceptions become Error + Closed.

    def _setup(self, transport: Any) -> None:
        port = self.port
        transport.set_write_buffer_limits(high=port.high_water, low=port.low_water)
        port.info_extra["address"] = _address(transport.get_extra_info("sockname"))
        port.info_extra["peer"] = _address(transport.get_extra_info("peername"))
        sock = transport.get_extra_info("socket")
        if sock is not None and transport.get_extra_info("sslcontext") is None:
            self._fd = sock.fileno()  # direct writes (see _write); never under TLS
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self._reading:
            transport.pause_reading()
            # uvloop starts reading after connection_made returns, undoing that
            # pause: pause again once it has.
            self.server.loop.call_soon(self._keep_paused)

    @loop_callback
    def _keep_paused(self) -> None:
        transport = self.transport
        if not self._reading and transport is not None and transport.is_reading():
            transport.pause_reading()

    @loop_callback
    def data_received(self, data: bytes) -> None:
        try:
            self.feed(data)
        except Exception as exc:
            self.fail(exc)

    @loop_callback
    def eof_received(self) -> bool:
        try:
            self.feed_eof()
        except Exception as exc:
            self.fail(exc)
        return False  # close our side too; connection_lost follows

    # Driver hooks.

    def _write(self, data: bytes) -> None:
        """Write ``data``: straight to the socket with ``os.write`` while the transport
        holds nothing unsent, else (and for what the socket did not take) through it.

        uvloop's ``transport.write`` makes its ``send`` with the GIL held; ``os.write``
        releases it, so the threads that feed this port run while the kernel copies.
        Order is kept: a direct write only happens when the transport's buffer is
        empty. A closing transport may have closed its fd (whose number can be
        reused at once), so it only ever gets ``transport.write``.
        """
        transport = self.transport
        if transport is None:
            return
        fd = self._fd
        if fd >= 0 and not transport.get_write_buffer_size() and not transport.is_closing():
            try:
                sent = _os_write(fd, data)
            except OSError:  # EAGAIN, or an error the transport meets and reports too
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)

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


# The native core: feed, and fail on an exception, in C (csrc/deliver.c), a watchdog
# section of its own as loop_callback makes one.
if native_input:
    StreamDriver.data_received = native_input["data_received"]  # type: ignore[method-assign]
if native is not None:
    # The loop side of Port.send in C (csrc/write.c): _write_on_loop, and for a raw
    # stream port the driver's write and _write above; the Python methods stay the
    # reference (and run for every other driver and mode).
    Port._py_write_on_loop = Port._write_on_loop  # type: ignore[attr-defined]
    Port._write_on_loop = native.setup_writer(  # type: ignore[method-assign]
        Port, Driver, StreamDriver, RawEncoder
    )["_write_on_loop"]


class ListenerDriver(Driver):
    """Listening sockets: each connection becomes a new Port, announced by ``Accepted``.

    The driver accepts itself (``add_reader`` + ``accept``; asyncio's and
    uvloop's servers cannot pause), so accepting obeys the port's flow control
    like reading does: while the inbox is full (nobody takes ``Accepted``)
    the listening socket is not watched and new clients wait in the kernel's
    backlog. Accepted sockets become transports through
    ``connect_accepted_socket``; at most ``ACCEPT_BATCH`` of them are on
    their way (accepted, ``Accepted`` not yet delivered) at a time, so a full
    inbox stops the listener within that many connections.
    """

    kind = "tcp-listener"

    def __init__(
        self,
        server: DriverHost,
        port: Port,
        kind: str,
        conn_options: PortOptions,
        conn_inbox: Any,
        socks: list[socket.socket],
    ) -> None:
        super().__init__(server, port, active=True)
        self.kind = f"{kind}-listener"
        self.conn_kind = kind
        # Not the PortOptions: they hold the shared inbox strongly.
        self._conn_high_water = conn_options.high_water
        self._conn_kwargs = conn_options.driver_kwargs()
        # Weak, as the port (drivers/base.py, "Lifetime"): a shared inbox keeps its
        # ports alive, and the loop must not keep it alive.
        self._conn_inbox = None if conn_inbox is None else weakref.ref(conn_inbox)
        self.socks = socks
        self.accepted = 0
        self._armed = False  # the listening sockets are watched
        self._in_flight = 0  # accepted, transport being made, Accepted not delivered yet
        self._retry: asyncio.TimerHandle | None = None  # backing off after EMFILE & co
        #: Called once when the listener closes (the Unix driver removes its file).
        self.on_close: Callable[[], object] | None = None

    def start(self) -> None:
        """Loop thread: start accepting."""
        self._arm()

    def new_connection(self) -> _AcceptedDriver:
        """The protocol factory for accepted connections (loop thread)."""
        inbox = None
        if self._conn_inbox is not None:
            inbox = self._conn_inbox()
            if inbox is None:
                raise ConnectionAbortedError("the inbox for accepted connections is gone")
        conn = Port(self.server, self.conn_kind, inbox, high_water=self._conn_high_water)
        driver = _AcceptedDriver(self.server, conn, self.conn_kind, **self._conn_kwargs)
        driver.listener = self  # set before connection_made, which reads it
        driver.unannounced = conn  # kept alive until Accepted carries it
        return driver

    # Accepting.

    def _arm(self) -> None:
        if self._armed or not self.socks or self._retry is not None:
            return
        if not self._reading or self._in_flight >= ACCEPT_BATCH:
            return
        loop = self.server.loop
        for sock in self.socks:
            loop.add_reader(sock.fileno(), self._on_acceptable, sock)
        self._armed = True

    def _disarm(self) -> None:
        if not self._armed:
            return
        self._armed = False
        loop = self.server.loop
        for sock in self.socks:
            loop.remove_reader(sock.fileno())

    @loop_callback
    def _on_acceptable(self, sock: socket.socket) -> None:
        """A listening socket is readable: accept while the port may take more."""
        loop = self.server.loop
        while self._reading and self._in_flight < ACCEPT_BATCH:
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS...: back off, as asyncio does
                log.warning("ioserver: %r cannot accept (%s); retrying in 1 s", self.port, exc)
                self._disarm()
                self._retry = loop.call_later(ACCEPT_RETRY_DELAY, self._after_backoff)
                return
            self._in_flight += 1
            self.accepted += 1
            loop.create_task(self._connect(conn))
        self._disarm()  # the inbox is full, or enough connections are on their way

    @loop_callback
    def _after_backoff(self) -> None:
        self._retry = None
        if not self._closed_queued:
            self._arm()

    async def _connect(self, conn: socket.socket) -> None:
        """Make an accepted socket a transport; its driver delivers ``Accepted``."""
        made: list[_AcceptedDriver] = []

        def factory() -> _AcceptedDriver:
            driver = self.new_connection()
            made.append(driver)
            return driver

        try:
            conn.setblocking(False)
            await self.server.loop.connect_accepted_socket(factory, conn)
        except Exception as exc:
            log.warning("ioserver: %r: an accepted connection failed: %r", self.port, exc)
            conn.close()
            for driver in made:  # never connected: leave nothing registered behind
                driver.discard(abort=False)
                driver.unannounced = None
        finally:
            self._in_flight -= 1
            if not self._closed_queued:
                self._arm()

    # Driver hooks.

    def _pause_reading(self) -> None:
        self._disarm()

    def _resume_reading(self) -> None:
        self._arm()

    def _close_transport(self) -> None:
        self._abort()
        self.finish()

    def _abort(self) -> None:
        self._disarm()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        socks, self.socks = self.socks, []
        for sock in socks:
            sock.close()
        if socks and self.on_close is not None:
            self.on_close()

    def begin_stop(self) -> None:
        self._abort()  # stop accepting; connections are closed by their own drivers

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["accepted"] = self.accepted
        info["accepting"] = self._armed
        info["in_flight"] = self._in_flight
        return info


class _AcceptedDriver(StreamDriver):
    """An accepted connection: announces itself to its listener once connected."""

    __slots__ = ("listener", "unannounced")
    listener: ListenerDriver | None
    #: The port until ``Accepted`` carries it to the listener's owner (nobody else
    #: holds it before that; the driver holds its port only weakly).
    unannounced: Port | None

    @loop_callback
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        listener = self.listener
        conn, self.unannounced = self.unannounced, None
        if listener is not None and not listener._closed_queued and conn is not None:
            listener.deliver(Accepted(listener.port, conn))
        else:
            self._abort()  # the listener closed meanwhile: nobody will own it


def _address(addr: Any) -> Any:
    if isinstance(addr, list | tuple):
        return tuple(addr)
    return addr


def connect(server: DriverHost, kind: str, open_fn: OpenFn, options: Mapping[str, Any]) -> Port:
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
                driver.discard(abort=False)
            raise

    server._run_coroutine(open_connection)
    return port


def listen(
    server: DriverHost,
    kind: str,
    open_fn: Callable[[int], Coroutine[Any, Any, list[socket.socket]]],
    options: Mapping[str, Any],
) -> Port:
    """Client side: bind with ``open_fn(backlog)`` on the loop (it returns the listening
    sockets), start accepting; block until bound or raise its OSError."""
    opts, extra = take_options(dict(options), "conn_inbox", "backlog")
    port = ReadOnlyPort(server, f"{kind}-listener", opts.inbox)
    conn_inbox = extra.get("conn_inbox", opts.inbox)
    backlog = extra.get("backlog", 128)

    async def open_listener() -> None:
        socks = await open_fn(backlog)
        try:
            driver = ListenerDriver(server, port, kind, opts, conn_inbox, socks)
            port.info_extra["address"] = _address(socks[0].getsockname())
            driver.start()
        except BaseException:
            for sock in socks:
                sock.close()
            raise

    server._run_coroutine(open_listener)
    return port


async def tcp_sockets(infos: list[Any], backlog: int) -> list[socket.socket]:
    """Listening TCP sockets for the resolved ``infos`` (every address, as
    ``loop.create_server`` binds): SO_REUSEADDR, IPv6 sockets v6-only, non-blocking.
    (A coroutine only to fit ``listen``'s ``open_fn``: nothing here waits.)"""
    socks: list[socket.socket] = []
    try:
        for family, type_, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, type_, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"error while attempting to bind on address {address!r}: {exc}"
                ) from None
            sock.listen(backlog)
            sock.setblocking(False)
        if not socks:
            raise OSError("no address to listen on")
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks

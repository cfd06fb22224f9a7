"""UDP ports: one datagram socket per port, each datagram a ``Datagram`` message.

Theory of operation
-------------------
``open_udp`` builds a Port and runs ``loop.create_datagram_endpoint`` on the
I/O thread with a :class:`UDPDriver` as the protocol, blocking the caller until
the socket is bound (and connected, given ``remote_addr``). Each datagram
received becomes ``Datagram(port, data, addr)``: no framing (``packet`` must be
None), one message per datagram, never merged or split.

Sending. ``port.send((data, addr))`` on an unconnected socket;
``port.send(data)`` on a connected one (``remote_addr=``), where ``(data,
addr)`` is accepted only if ``addr`` is the peer. Addresses must be numeric
(``("127.0.0.1", 9)``): the I/O thread never blocks on DNS, so resolve names
first. A bad datagram (not bytes, a bad or missing address, too big) gives a
non-fatal ``Error`` and is not sent; asyncio's transport would otherwise treat
a non-OSError from ``sendto`` as fatal and close the socket, which is why the
driver checks before handing the datagram over.

Errors are per datagram, not per port (Erlang's ``gen_udp``): an ICMP error
reported by the kernel (``error_received``, e.g. ConnectionRefusedError on a
connected socket whose peer has no listener) or a rejected send is delivered as
``Error(port, exc)`` and the port **stays open**: unlike other kinds, no
``Closed`` follows such an Error. Only a failure of the socket itself
(``connection_lost(exc)``) or of the driver ends the port with Error + Closed.
Errors, like everywhere, don't count against an ``active`` budget.

Flow control. UDP cannot push back on the sender; a full inbox (or a passive
port) stops *reading*. On asyncio's selector loop the transport has
``pause_reading``: datagrams then wait in the kernel's receive buffer, which
drops (uncounted) what does not fit, as for any UDP socket nobody reads.
uvloop's UDPTransport (0.23) has no ``pause_reading``, so the driver keeps
receiving and holds at most ``max_pending`` undelivered messages; datagrams
beyond that are dropped and counted (``dropped`` in ``port.info()``; errors
dropped so: ``dropped_errors``). Either way memory stays bounded; UDP may drop.

Write accounting. ``Port.send`` counts ``len(data)`` against the water marks,
which for a ``(data, addr)`` tuple is 2: submitted and processed counts stay
balanced, but the high-water mark then counts datagrams by 2 bytes each. The
transport's own buffer still marks the port busy (``pause_writing``).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from typing import Any

from ..messages import Error, make_datagram
from ..port import Port
from ..watchdog import loop_callback
from .base import Driver, DriverHost
from .options import take_options

__all__ = ["DEFAULT_MAX_PENDING", "UDPDriver", "open_udp"]

#: Undelivered messages a UDP port holds when its transport cannot pause
#: reading (uvloop); beyond it datagrams are dropped and counted. With the
#: default inbox (64) this bounds a port at 128 datagrams, 8 MiB at most.
DEFAULT_MAX_PENDING = 64

_BYTES = (bytes, bytearray, memoryview)
_IP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


class UDPDriver(Driver, asyncio.DatagramProtocol):
    """One UDP socket: the port's driver and the transport's datagram protocol."""

    kind = "udp"

    def __init__(self, server: DriverHost, port: Port, *, max_pending: int, **kwargs: Any) -> None:
        super().__init__(server, port, **kwargs)
        self.max_pending = max_pending
        #: Datagrams dropped because the port could not take them (uvloop only).
        self.dropped = 0
        #: Errors the kernel reported (``error_received``) or sends rejected.
        self.errors = 0
        #: Errors dropped because the pending bound was reached.
        self.dropped_errors = 0
        self._peer: Any = None  # the connected peer, None for an unconnected socket
        self._family = socket.AF_INET
        self._can_pause = False  # whether the transport has pause_reading (asyncio)
        self._last_addr: Any = None  # the last destination that passed _check_addr
        # A passive port does not read until asked (the base assumes reading).
        self._reading = self._active > 0

    # asyncio.DatagramProtocol callbacks (loop thread). Exceptions become Error + Closed.

    def _setup(self, transport: Any) -> None:
        port = self.port
        transport.set_write_buffer_limits(high=port.high_water, low=port.low_water)
        port.info_extra["address"] = _address(transport.get_extra_info("sockname"))
        peer = transport.get_extra_info("peername")
        if peer is not None:
            self._peer = _address(peer)
            port.info_extra["peer"] = self._peer
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._family = sock.family
        self._can_pause = callable(getattr(transport, "pause_reading", None))
        if not self._reading:
            self._pause_reading()

    @loop_callback
    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            if self._closed_queued:
                return
            if len(self._pending) >= self.max_pending:
                self.dropped += 1  # only when reading cannot pause (uvloop)
                return
            self.bytes_in += len(data)
            if addr is None:  # some transports omit it on a connected socket
                addr = self._peer
            self.deliver(make_datagram(self.port, data, _address(addr)))
        except Exception as exc:
            self.fail(exc)

    @loop_callback
    def error_received(self, exc: Exception) -> None:
        """A per-datagram error (ICMP, a failed send): a non-fatal Error."""
        try:
            self._report(exc)
        except Exception as failure:
            self.fail(failure)

    def _report(self, exc: BaseException) -> None:
        """Deliver ``exc`` as an Error without closing the port (bounded like datagrams)."""
        if self._closed_queued:
            return
        self.errors += 1
        if len(self._pending) >= self.max_pending:
            self.dropped_errors += 1
            return
        self.deliver(Error(self.port, exc))

    # Commands from the Port.

    def write(self, data: Any) -> None:
        """Send one datagram: ``data`` (connected) or ``(data, addr)``; a bad one is an Error."""
        if self._closed_queued or self.transport is None:
            return
        if isinstance(data, tuple):
            if len(data) != 2:
                self._report(TypeError(f"send((data, addr)) on {self.port!r}: got {data!r}"))
                return
            payload, addr = data
        else:
            payload, addr = data, None
        try:
            if not isinstance(payload, _BYTES):
                raise TypeError(
                    f"a datagram must be bytes-like, not {type(payload).__name__} ({self.port!r})"
                )
            if self._peer is not None:
                if addr is not None and _address(addr) != self._peer:
                    raise ValueError(
                        f"{self.port!r} is connected to {self._peer!r}; cannot send to {addr!r}"
                    )
                addr = None
            elif addr is None:
                raise ValueError(f"{self.port!r} is not connected: use send((data, addr))")
            else:
                self._check_addr(addr)
        except (TypeError, ValueError) as exc:
            self._report(exc)
            return
        self.bytes_out += payload.nbytes if isinstance(payload, memoryview) else len(payload)
        try:
            # OSErrors (EMSGSIZE, ...) come back through error_received.
            self.transport.sendto(payload, addr)
        except (TypeError, ValueError) as exc:
            self._report(exc)
        except Exception as exc:
            self.fail(exc)

    def _check_addr(self, addr: Any) -> None:
        """Raise TypeError/ValueError unless ``addr`` is a numeric address of our family.

        Passing asyncio's ``sendto`` a malformed address closes the transport,
        and a host name would make the kernel call resolve it on the I/O thread.
        """
        if addr == self._last_addr:
            return
        family = self._family
        if family not in _IP_FAMILIES:
            return  # not an IP socket: leave it to the transport
        sizes = (2,) if family == socket.AF_INET else (2, 4)
        if not isinstance(addr, tuple) or len(addr) not in sizes:
            raise TypeError(f"address must be a tuple (host, port), not {addr!r}")
        host, port_number = addr[0], addr[1]
        if not isinstance(host, str) or type(port_number) is not int:
            raise TypeError(f"address must be (str host, int port), not {addr!r}")
        if not 0 <= port_number <= 65535:
            raise ValueError(f"port number out of range in {addr!r}")
        if len(addr) == 4 and not all(type(v) is int and 0 <= v <= 0xFFFFFFFF for v in addr[2:]):
            raise ValueError(f"flowinfo and scope_id must be 32-bit ints in {addr!r}")
        if not (family == socket.AF_INET and host == "<broadcast>"):
            try:
                socket.getaddrinfo(
                    host,
                    port_number,
                    family,
                    socket.SOCK_DGRAM,
                    0,
                    socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            except (OSError, UnicodeError):
                kind = "IPv4" if family == socket.AF_INET else "IPv6"
                raise ValueError(
                    f"{host!r} is not a numeric {kind} address; resolve names before "
                    "sending (the I/O thread never waits on DNS)"
                ) from None
        self._last_addr = addr

    # Driver hooks.

    def _pause_reading(self) -> None:
        transport = self.transport
        if transport is not None and self._can_pause and transport.is_reading():
            transport.pause_reading()

    def _resume_reading(self) -> None:
        transport = self.transport
        if transport is not None and self._can_pause and not transport.is_reading():
            transport.resume_reading()

    def _close_transport(self) -> None:
        if self.transport is not None:
            self.transport.close()  # sends what the transport buffered first

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def flushing(self) -> bool:
        return self.transport is not None and self.transport.get_write_buffer_size() > 0

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["dropped"] = self.dropped
        info["errors"] = self.errors
        info["dropped_errors"] = self.dropped_errors
        info["max_pending"] = self.max_pending
        info["can_pause"] = self._can_pause
        if self.transport is not None:
            info["transport_buffer"] = self.transport.get_write_buffer_size()
        return info


def _address(addr: Any) -> Any:
    if isinstance(addr, list | tuple):
        return tuple(addr)
    return addr


def open_udp(server: DriverHost, local_addr: Any, options: Mapping[str, Any]) -> Port:
    """Client side of ``IOServer.open_udp``: bind (and connect), block until done.

    Options: the port options (``packet`` must be None), ``remote_addr``
    (connect: ``send(data)`` goes there, only its datagrams arrive),
    ``reuse_port``, ``allow_broadcast``, ``max_pending`` (see the module doc).
    With neither address, binds ``("0.0.0.0", 0)``. Raises the OSError of a
    failed bind or connect.
    """
    opts, extra = take_options(
        dict(options), "remote_addr", "reuse_port", "allow_broadcast", "max_pending"
    )
    if opts.packet not in (None, "raw"):
        raise ValueError(
            f"UDP datagrams are already framed: packet must be None, not {opts.packet!r}"
        )
    max_pending = extra.get("max_pending", DEFAULT_MAX_PENDING)
    if type(max_pending) is not int or max_pending < 1:
        raise ValueError(f"max_pending must be an int >= 1, not {max_pending!r}")
    remote_addr = extra.get("remote_addr")
    if local_addr is None and remote_addr is None:
        local_addr = ("0.0.0.0", 0)
    endpoint_kwargs: dict[str, Any] = {}
    if extra.get("reuse_port"):
        endpoint_kwargs["reuse_port"] = True
    if extra.get("allow_broadcast"):
        endpoint_kwargs["allow_broadcast"] = True
    port = Port(server, "udp", opts.inbox, high_water=opts.high_water)

    async def open_endpoint() -> None:
        driver = UDPDriver(server, port, max_pending=max_pending, **opts.driver_kwargs())
        try:
            sock = numeric_socket(local_addr, remote_addr, **endpoint_kwargs)
            if sock is not None:
                endpoint = server.loop.create_datagram_endpoint(lambda: driver, sock=sock)
            else:
                endpoint = server.loop.create_datagram_endpoint(
                    lambda: driver,
                    local_addr=local_addr,
                    remote_addr=remote_addr,
                    **endpoint_kwargs,
                )
            await asyncio.wait_for(endpoint, opts.timeout)
        except BaseException:
            # Never opened: no Closed to deliver, nothing left registered or warned about.
            driver._abort()
            port._on_closed()
            driver._after_closed()
            raise

    server._run_coroutine(open_endpoint)
    return port


def numeric_socket(
    local_addr: Any,
    remote_addr: Any,
    *,
    reuse_port: bool = False,
    allow_broadcast: bool = False,
) -> socket.socket | None:
    """A bound (and connected) non-blocking UDP socket when both addresses are
    numeric IP addresses, else None (the loop resolves names).

    Binding it here, rather than handing uvloop the addresses, keeps libuv's
    resolver threadpool unstarted: a process forked after that pool started
    crashes at exit (libuv joins threads the child does not have).
    """
    family = 0
    resolved: list[Any] = []
    for addr in (local_addr, remote_addr):
        if addr is None:
            resolved.append(None)
            continue
        if not isinstance(addr, tuple) or len(addr) not in (2, 4):
            return None
        try:
            infos = socket.getaddrinfo(
                addr[0],
                addr[1],
                family,
                socket.SOCK_DGRAM,
                0,
                socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
        except (OSError, UnicodeError, TypeError):
            return None  # a name (or something odd): the loop's own path decides
        family = infos[0][0]
        resolved.append(infos[0][4] if len(addr) == 2 else addr)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if allow_broadcast:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if resolved[0] is not None:
            sock.bind(resolved[0])
        if resolved[1] is not None:
            sock.connect(resolved[1])
    except BaseException:
        sock.close()
        raise
    return sock

"""RemoteIOServer: the IOServer API, with the I/O done by a daemon in another process.

Theory of operation
-------------------
The connection to the daemon is an asyncio protocol on this process's own I/O
thread (an embedded :class:`~ioserver.server.IOServer`, by default the
process-wide one). So a :class:`RemotePort` is a real Port: its inbox is a
local Channel, and ``recv``/``arecv``/iteration/``select`` work on it exactly
as on an embedded port, mixed freely with local channels and ports.

Its driver, :class:`RemoteDriver`, runs on that I/O thread like any driver,
but where a TCP driver talks to a socket it talks to the daemon: writes become
``send`` notifications (no reply per write; a failure comes back as an
``error`` event), ``close``/``setopts``/``read`` become requests. Events from
the daemon are decoded on the I/O thread and delivered through the driver
base, with its active modes and backpressure: when a port's local inbox is
full, the driver asks the daemon to stop that port (``setopts active false``)
and to resume it when there is room again, so memory stays bounded per port
without stalling the replies other callers wait for.

Blocking calls (``connect_tcp`` ...) send a request and park on a WakeupHandle;
the reply is handled on the I/O thread, which creates the RemotePort *before*
it decodes any later event, so no event of a new port can be lost. If the
daemon goes away, every pending call raises ConnectionError and every remote
port delivers ``Closed("server gone")`` (own inboxes then close: blocked
receivers wake).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import msgpack  # type: ignore[import-untyped]  # msgpack ships no stubs

from ioserver import protocol
from ioserver.channel import Channel, ChannelClosed, Full
from ioserver.config import default_socket_path
from ioserver.drivers.base import Driver
from ioserver.framing import FrameError
from ioserver.messages import Accepted, Closed
from ioserver.port import Port, PortClosed, describe, encode_for_send
from ioserver.sched import ThreadWakeup, WakeupHandle, green_task, run_blocking
from ioserver.server import IOServer, default

__all__ = ["RemoteIOServer", "RemotePort", "RemoteTimer", "connect"]

log = logging.getLogger("ioserver.client")

_PORT_OPTIONS = ("packet", "active", "high_water", "max_frame_bytes")

#: Exceptions of ours an ``error`` event names by type: re-raised as the same type,
#: as an embedded port delivers them (builtins and OSErrors come back by themselves).
_ERROR_TYPES: dict[str, type[BaseException]] = {"FrameError": FrameError, "PortClosed": PortClosed}


class RemotePort(Port):
    """A port whose resource lives in the daemon; the same interface as Port."""

    __slots__ = ("remote_id",)

    def __init__(self, io: IOServer, kind: str, inbox: Channel[Any] | None, remote_id: int) -> None:
        super().__init__(io, kind, inbox)
        #: The port's id in the daemon's session.
        self.remote_id = remote_id

    def __repr__(self) -> str:
        return (
            f"<RemotePort {self.remote_id} {self.kind}{describe(self.info_extra)}"
            f"{self._closed_text()}>"
        )

    def _check_send(self, data: Any) -> tuple[Callable[[Any, int], None], Any, int]:
        """As ``Port._check_send`` (the same TypeErrors); a msgpack object is
        encoded here only to check it (and count its bytes): it travels to the
        daemon as an object, which encodes it for the port."""
        if getattr(self._driver, "packet", None) == "msgpack":
            payload = encode_for_send(self, _packb, data)
            return self._write_on_loop, data, len(payload)
        return super()._check_send(data)


class RemoteDriver(Driver):
    """The loop-side half of a RemotePort: forwards commands to the daemon."""

    kind = "remote"

    def __init__(
        self,
        link: _Link,
        port: RemotePort,
        conn_inbox: Channel[Any] | None,
        packet: str | int | None = None,
    ) -> None:
        super().__init__(link.io, port, active=True)
        # The daemon frames; the mode is kept for RemotePort.send's argument check.
        self.packet = packet
        self.link = link
        self.kind = port.kind
        self.conn_inbox = conn_inbox  # for a listener: where accepted ports deliver

    def write(self, data: Any) -> None:
        if self._closed_queued:
            return
        self.bytes_out += len(data) if isinstance(data, bytes | bytearray) else 0
        port_id = self.port.remote_id  # type: ignore[attr-defined]
        if isinstance(data, tuple) and len(data) == 2 and self.kind == "udp":
            self.link.notify("send_to", [port_id, data[0], list(data[1])])
        else:
            self.link.notify("send", [port_id, data])

    def _pause_reading(self) -> None:
        self.link.request_nowait("setopts", [self.port.remote_id, {"active": False}])  # type: ignore[attr-defined]

    def _resume_reading(self) -> None:
        self.link.request_nowait("setopts", [self.port.remote_id, {"active": True}])  # type: ignore[attr-defined]

    def _close_transport(self) -> None:
        self.link.request_nowait("close", [self.port.remote_id])  # type: ignore[attr-defined]

    def _abort(self) -> None:
        if not self.link.lost:
            self.link.request_nowait("close", [self.port.remote_id])  # type: ignore[attr-defined]

    def _write_eof(self) -> None:
        self.link.request_nowait("close_stdin", [self.port.remote_id])  # type: ignore[attr-defined]

    def setopts(self, active: bool | int | str) -> None:
        self.link.request_nowait("setopts", [self.port.remote_id, {"active": active}])  # type: ignore[attr-defined]

    def read_one(self) -> None:
        self.link.request_nowait("read", [self.port.remote_id])  # type: ignore[attr-defined]

    def _after_closed(self) -> None:
        super()._after_closed()
        self.link.ports.pop(self.port.remote_id, None)  # type: ignore[attr-defined]


class RemoteTimer:
    """A daemon-side ``send_after`` timer; ``cancel()`` is exact, as the embedded one."""

    def __init__(self, remote: RemoteIOServer, timer_id: int) -> None:
        self._remote = remote
        self.timer_id = timer_id

    def cancel(self) -> bool:
        """True iff the timer was cancelled before it fired (asks the daemon)."""
        return bool(self._remote._call("cancel_timer", [self.timer_id]))


class _Link(asyncio.Protocol):
    """The connection to the daemon, on the local I/O thread."""

    def __init__(self, io: IOServer) -> None:
        self.io = io
        self.conn = protocol.Connection()
        self.transport: Any = None
        self.msgid = 0
        # msgid -> (handle or None, on_result run on the loop before waking the caller)
        self.pending: dict[int, tuple[Any, Callable[[Any], Any] | None]] = {}
        self.ports: dict[int, RemoteDriver] = {}
        self.timers: dict[int, Channel[Any]] = {}
        self.out = bytearray()
        self.flush_scheduled = False
        self.lost = False

    # loop thread ------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        conn.receive_data(data)
        while True:
            try:
                event = conn.next_event()
            except protocol.ProtocolError as exc:
                log.error("ioserver client: bad data from the daemon: %s", exc)
                if exc.fatal:
                    self.transport.close()
                    return
                continue
            if event is protocol.NEED_DATA or event is protocol.CLOSED:
                return
            if isinstance(event, protocol.Response):
                self._on_response(event)
            elif isinstance(event, protocol.Notification):
                self._on_event(event.method, event.params)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        gone = ConnectionError("the ioserver daemon closed the connection")
        for handle, _ in self.pending.values():
            if handle is not None and handle.claim():
                handle.payload = (False, gone)
                handle.unpark()
        self.pending.clear()
        for driver in list(self.ports.values()):
            driver.stop("server gone")
        self.ports.clear()

    def _on_response(self, response: protocol.Response) -> None:
        entry = self.pending.pop(response.msgid, None)
        if entry is None:
            return
        handle, on_result = entry
        if response.error is not None:
            outcome: tuple[bool, Any] = (False, protocol.wire_to_exception(response.error))
        else:
            try:
                value = on_result(response.result) if on_result else response.result
                outcome = (True, value)
            except Exception as exc:
                outcome = (False, exc)
        if handle is not None and handle.claim():
            handle.payload = outcome
            handle.unpark()

    def _on_event(self, name: str, params: Any) -> None:
        if name == "timer" and isinstance(params, list) and len(params) == 2:
            channel = self.timers.pop(params[0], None)
            if channel is not None:
                with contextlib.suppress(ChannelClosed):
                    try:
                        channel.try_send(params[1])
                    except Full:
                        channel._put_overflow(params[1])
            return
        if name == "accepted" and isinstance(params, list) and len(params) >= 2:
            listener = self.ports.get(params[0])
            if listener is None:
                return
            inbox = listener.conn_inbox
            conn = self._new_port(
                params[1], listener.port.kind.replace("-listener", ""), inbox, None, listener.packet
            )
            if len(params) > 2 and params[2] is not None:
                conn.info_extra["peer"] = _tuple(params[2])
            listener.deliver(Accepted(listener.port, conn))
            return
        if not isinstance(params, list) or not params:
            return
        driver = self.ports.get(params[0])
        if driver is None:
            return
        try:
            message = protocol.wire_to_event(
                name, params, lambda _id: driver.port, error_types=_ERROR_TYPES
            )
        except (ValueError, TypeError, KeyError):
            return  # an event this client doesn't know: ignore it, as notifications are
        if message is None:
            return
        if isinstance(message, Closed):
            driver.finish(message.reason)
        else:
            driver.deliver(message)

    def _new_port(
        self,
        port_id: int,
        kind: str,
        inbox: Channel[Any] | None,
        conn_inbox: Any,
        packet: str | int | None = None,
    ) -> RemotePort:
        port = RemotePort(self.io, kind, inbox, port_id)
        self.ports[port_id] = RemoteDriver(self, port, conn_inbox, packet)
        return port

    def _send(self, data: bytes) -> None:
        self.out += data
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.io.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None and not self.lost:
            self.transport.write(bytes(self.out))
        self.out.clear()

    def notify(self, method: str, params: list[Any]) -> None:
        self._send(self.conn.notification(method, params))

    def request_nowait(self, method: str, params: list[Any]) -> None:
        """Send a request whose reply nobody waits for (errors come back as events)."""
        self.msgid = (self.msgid + 1) & 0xFFFFFFFF
        self.pending[self.msgid] = (None, None)
        self._send(self.conn.request(self.msgid, method, params))

    def request(
        self, handle: Any, method: str, params: list[Any], on_result: Callable[[Any], Any] | None
    ) -> None:
        """Loop thread: send a request whose reply wakes ``handle``."""
        if self.lost:
            # Wake the caller with the error: raising here would only reach the
            # loop's log, and the caller would wait for a reply that never comes.
            if handle.claim():
                handle.payload = (
                    False,
                    ConnectionError("the ioserver daemon closed the connection"),
                )
                handle.unpark()
            return
        self.msgid = (self.msgid + 1) & 0xFFFFFFFF
        self.pending[self.msgid] = (handle, on_result)
        self._send(self.conn.request(self.msgid, method, params))


class RemoteIOServer:
    """The IOServer API over a connection to an ``ioserver serve`` daemon."""

    def __init__(self, link: _Link, io: IOServer, address: str) -> None:
        self._link = link
        self._io = io
        self.address = address

    def __repr__(self) -> str:
        return f"<RemoteIOServer {self.address}>"

    def __enter__(self) -> RemoteIOServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection: the daemon closes every port of this session."""
        with contextlib.suppress(Exception):
            self._io.call(self._close_on_loop)

    stop = close

    def _close_on_loop(self) -> None:
        if self._link.transport is not None:
            self._link._flush()
            self._link.transport.close()

    def _call(
        self,
        method: str,
        params: list[Any],
        on_result: Callable[[Any], Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        task = green_task()
        handle: WakeupHandle
        if task is None:
            handle = thread = ThreadWakeup()
            self._io.call_soon(self._link.request, handle, method, params, on_result)
            if not thread.park(timeout):
                raise TimeoutError(f"the daemon did not answer {method} in {timeout} s")
        else:  # a greenlet (or a using_task scheduler) parks alone
            box: list[WakeupHandle] = []

            def request(h: WakeupHandle) -> None:
                box.append(h)
                self._io.call_soon(self._link.request, h, method, params, on_result)

            if not task.block_after(request, timeout):
                raise TimeoutError(f"the daemon did not answer {method} in {timeout} s")
            handle = box[0]
        ok, value = handle.payload
        if ok:
            return value
        raise value

    def _open(
        self,
        method: str,
        params: list[Any],
        kind: str,
        options: dict[str, Any],
        extra: tuple[str, ...] = (),
    ) -> RemotePort:
        inbox = options.pop("inbox", None)
        conn_inbox = options.pop("conn_inbox", inbox)
        timeout = options.pop("timeout", None)
        unknown = set(options) - set(_PORT_OPTIONS) - set(extra)
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}")

        def on_result(result: Any) -> RemotePort:
            port_id = result[0] if isinstance(result, list) else result
            port = self._link._new_port(port_id, kind, inbox, conn_inbox, options.get("packet"))
            if isinstance(result, list) and len(result) > 1:
                detail = result[1]
                if kind == "process":
                    port.info_extra["pid"] = detail
                elif detail is not None:
                    port.info_extra["address"] = _tuple(detail)
            return port

        port: RemotePort = self._call(method, [*params, options], on_result, timeout)
        return port

    # the IOServer API -------------------------------------------------------------------

    def connect_tcp(self, host: str, port: int, **options: Any) -> RemotePort:
        """As ``IOServer.connect_tcp``; the connection is made by the daemon."""
        conn = self._open("connect_tcp", [host, port], "tcp", options)
        conn.info_extra["peer"] = (host, port)  # as asked (the daemon answers the id only)
        return conn

    def listen_tcp(self, host: str, port: int, **options: Any) -> RemotePort:
        """As ``IOServer.listen_tcp``; ``.address`` is the daemon's bound address."""
        return self._open("listen_tcp", [host, port], "tcp-listener", options, ("backlog",))

    def connect_unix(self, path: str, **options: Any) -> RemotePort:
        conn = self._open("connect_unix", [path], "unix", options)
        conn.info_extra["peer"] = path
        return conn

    def listen_unix(self, path: str, **options: Any) -> RemotePort:
        port = self._open("listen_unix", [path], "unix-listener", options, ("backlog",))
        port.info_extra["address"] = path
        return port

    def open_udp(self, local_addr: tuple[str, int] | None = None, **options: Any) -> RemotePort:
        host, port = local_addr or ("127.0.0.1", 0)
        remote = options.pop("remote_addr", None)
        if remote is not None:
            options["remote_addr"] = list(remote)
        return self._open("open_udp", [host, port], "udp", options, ("remote_addr",))

    def spawn(self, argv: list[str], **options: Any) -> RemotePort:
        if isinstance(argv, str):
            raise TypeError("argv must be a list of strings (no shell)")
        return self._open("spawn", [list(argv)], "process", options, ("cwd", "env", "stderr"))

    def interval(self, period: float, **options: Any) -> RemotePort:
        ticker = self._open("interval", [period], "interval", options)
        ticker.info_extra["period"] = period
        return ticker

    def open_file(self, path: str, mode: str = "rb", **options: Any) -> RemotePort:
        file = self._open("open_file", [path, mode], "file", options, ("chunk_size",))
        file.info_extra["path"] = path
        return file

    # awaitable openers (asyncio or trio): the blocking form in a helper thread, so the
    # caller's loop never waits; a cancelled open closes its port (ioserver.sched)

    async def aconnect_tcp(self, host: str, port: int, **options: Any) -> RemotePort:
        """``connect_tcp`` for coroutines and trio tasks."""
        return await run_blocking(lambda: self.connect_tcp(host, port, **options), _close)

    async def alisten_tcp(self, host: str, port: int, **options: Any) -> RemotePort:
        """``listen_tcp`` for coroutines and trio tasks."""
        return await run_blocking(lambda: self.listen_tcp(host, port, **options), _close)

    async def aconnect_unix(self, path: str, **options: Any) -> RemotePort:
        """``connect_unix`` for coroutines and trio tasks."""
        return await run_blocking(lambda: self.connect_unix(path, **options), _close)

    async def alisten_unix(self, path: str, **options: Any) -> RemotePort:
        """``listen_unix`` for coroutines and trio tasks."""
        return await run_blocking(lambda: self.listen_unix(path, **options), _close)

    async def aopen_udp(
        self, local_addr: tuple[str, int] | None = None, **options: Any
    ) -> RemotePort:
        """``open_udp`` for coroutines and trio tasks."""
        return await run_blocking(lambda: self.open_udp(local_addr, **options), _close)

    async def aspawn(self, argv: list[str], **options: Any) -> RemotePort:
        """``spawn`` for coroutines and trio tasks."""
        return await run_blocking(lambda: self.spawn(argv, **options), _close)

    async def aopen_file(self, path: str, mode: str = "rb", **options: Any) -> RemotePort:
        """``open_file`` for coroutines and trio tasks."""
        return await run_blocking(lambda: self.open_file(path, mode, **options), _close)

    def send_after(self, delay: float, channel: Any, message: Any) -> RemoteTimer:
        """Deliver ``message`` (msgpack-serializable) to the local ``channel`` after ``delay``."""
        target = channel.inbox if isinstance(channel, Port) else channel

        def on_result(timer_id: int) -> RemoteTimer:
            self._link.timers[timer_id] = target
            return RemoteTimer(self, timer_id)

        timer: RemoteTimer = self._call("send_after", [delay, message], on_result)
        return timer

    def watch(self, *args: Any, **kwargs: Any) -> Port:
        raise NotImplementedError(
            "watch is local-only: a daemon cannot watch this process's fds; "
            "use an embedded ioserver.server.IOServer for it"
        )

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError("functions cannot run in the daemon; use an embedded IOServer")

    call_soon = call

    def ping(self, timeout: float | None = 5.0) -> str:
        """Round trip to the daemon; returns "pong"."""
        return str(self._call("ping", [], timeout=timeout))

    def stats(self) -> dict[str, Any]:
        """The daemon's counters (sessions, ports, requests, pipe writes...)."""
        result: dict[str, Any] = self._call("stats", [])
        return result


def connect(
    address: str | None = None,
    token: str | None = None,
    *,
    io: IOServer | None = None,
    timeout: float | None = 5.0,
) -> RemoteIOServer:
    """Connect to a daemon at a Unix socket path or ``tcp://host:port``; with no
    address, at the daemon's default socket (``ioserver.config.default_socket_path()``,
    where ``ioserver serve`` listens by default).

    ``token`` is sent in ``hello`` (required over TCP). ``io`` is the local I/O
    thread that carries the connection (default: ``ioserver.server.default()``).
    Raises the OSError of the connect (FileNotFoundError, ConnectionRefusedError...).
    """
    if address is None:
        address = default_socket_path()
    io = io or default()
    link = _Link(io)

    async def open_link() -> None:
        loop = io.loop
        if address.startswith("tcp://"):
            host, _, port = address[len("tcp://") :].rpartition(":")
            await asyncio.wait_for(loop.create_connection(lambda: link, host, int(port)), timeout)
        else:
            await asyncio.wait_for(loop.create_unix_connection(lambda: link, address), timeout)

    io._run_coroutine(open_link)
    remote = RemoteIOServer(link, io, address)
    if token is not None or address.startswith("tcp://"):
        remote._call("hello", [protocol.PROTOCOL_VERSION, token], timeout=timeout)
    return remote


_packb = partial(msgpack.packb, use_bin_type=True)


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _close(port: RemotePort) -> None:
    """An awaitable open whose caller gave up: close the port nobody will own."""
    with contextlib.suppress(Exception):
        port.close()

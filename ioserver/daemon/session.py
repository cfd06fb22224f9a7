"""One client connection of the daemon: msgpack-rpc in, port events out, on the I/O thread.

Theory of operation
-------------------
A :class:`Session` is the asyncio protocol of one accepted client socket and
runs on the I/O thread only. Bytes in go through ``protocol.Connection``
(sans-I/O); each request is answered in order of completion (msgpack-rpc
allows out-of-order replies), each ``send`` notification becomes a write on
the target port, unknown notifications are ignored.

Ports opened for the session deliver into its :class:`SessionSink`, a Channel
whose ``try_send`` encodes the event as a notification and appends it to the
session's output buffer; the buffer goes out in one socket write per loop
iteration (``call_soon``), so events that arrive together are batched.

Flow control, both ways, with the mechanisms embedded ports already use:
  * daemon -> client: when the client reads slowly, the session socket's write
    buffer passes its high-water mark (``pause_writing``); from then on
    ``try_send`` raises Full, and each port's driver pauses reading and asks
    the sink to call back when there is room (``_notify_when_room``), which
    ``resume_writing`` does. Memory stays bounded by the write buffer limits.
  * client -> daemon: after a ``send`` into a port whose transport is busy, the
    session stops reading its socket until that port drains, so a client that
    writes faster than a peer reads is slowed by TCP itself.
  * replies: a client that sends requests and does not read the answers gets
    the same treatment once its output passes ``limits.pending_bytes``
    (``pause_writing``): the session stops handling its requests (those
    already read wait, decoded no further, in the Connection) and stops
    reading its socket, until the output drains (``resume_writing``). So what
    one session holds is bounded whatever its client sends: its write buffer,
    one read of input, and one message's decoding budget ([limits]
    max_message_bytes, max_elements, max_depth).

Port ids are small integers scoped to the session; a port id of another
session, or of a closed port, is "no such port". When the client goes away
every port and timer of the session is closed.

Opening a port blocks (connect, bind, spawn), and the I/O thread never blocks:
those requests run in the daemon's worker pool, which calls the embedded API
(``io.connect_tcp`` ...), then hops back to the loop to register the id and
reply. Events a port delivers before its id is announced are held until then
(at most HELD_LIMIT per port, then the port is pushed back); an accepted
connection is announced by its listener's ``accepted`` event, and its held
events follow that event.

Accepted connections count against ``ports_per_session`` like opened ports;
one over the limit is closed at once and the client gets an ``error`` event
(code 5) on the listener instead of ``accepted``; the listener stays open.

Over TCP a session must complete ``hello`` within ``limits.hello_timeout``
and, until it has, counts against ``limits.unauthenticated`` rather than
``sessions`` (the Daemon keeps both counts), and may send messages of at most
PRE_AUTH_MESSAGE_BYTES; authentication failures are logged (rate-limited).

Every request is counted by method and every error sent (a response or an
``error`` event) by code, in the daemon's cumulative counters (``counters.py``,
exported by ``metrics.py``); an error with code LIMIT is also logged, at info
level and rate-limited, as a limit hit. ``reload`` (the Unix socket only) asks
the daemon to re-read its configuration, as SIGHUP does (``reload.py``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol

from .. import __version__, protocol
from ..channel import Channel, ChannelClosed, Full
from ..config import Config, ConfigError
from ..messages import Accepted, Error, Message
from ..port import DEFAULT_HIGH_WATER, Port, PortClosed
from ..server import IOServer
from . import logs
from .counters import Counters

__all__ = ["DaemonServices", "Session", "SessionSink"]

log = logging.getLogger("ioserver.daemon")

#: Output gathered in one loop tick past this is written at once rather than at
#: the tick's end, so the transport can report pause_writing before the next read.
#: (The socket's own limits are limits.pending_bytes, set in connection_made.)
FLUSH_NOW = 1024 * 1024
#: Events a port may deliver before its id is announced (the reply to the call
#: that opened it); past it the port is pushed back like a full inbox. One read
#: is up to 256 KiB, so this holds at most ~1 MiB per opening port.
HELD_LIMIT = 4
#: The largest message a TCP client may send before its ``hello`` succeeds: a
#: hello is tiny, and ``limits.unauthenticated`` connections must not each
#: buffer ``max_message_bytes``.
PRE_AUTH_MESSAGE_BYTES = 64 * 1024


class DaemonServices(Protocol):
    """What a session needs from its daemon (``serve.Daemon`` provides it).

    A Protocol rather than an import of ``serve.Daemon``, so that this module
    does not depend on the module that creates its sessions (no import cycle).
    All of it is used on the I/O thread only.
    """

    @property
    def config(self) -> Config:
        """The daemon's configuration (limits, token, spawn allow-list)."""
        ...

    @property
    def io(self) -> IOServer:
        """The I/O server whose ports the sessions open."""
        ...

    @property
    def pool(self) -> Executor:
        """Where blocking opens (connect, bind, spawn) run, off the loop."""
        ...

    def next_session_id(self) -> int:
        """A new session id (unique for the daemon's life)."""
        ...

    def add_session(self, session: Session) -> str | None:
        """Admit a new session: None, or why not (a limit it would pass)."""
        ...

    def authenticate(self, session: Session) -> str | None:
        """``session`` passed hello: None, or why it may not become a session."""
        ...

    def remove_session(self, session: Session) -> None:
        """``session`` is closed: forget it."""
        ...

    def auth_failed(self, peer: Any, why: str) -> None:
        """Log a failed authentication (rate-limited)."""
        ...

    @property
    def counters(self) -> Counters:
        """The daemon's cumulative counters (requests by method, errors by code...)."""
        ...

    def limit_hit(self, session: Session, why: str) -> None:
        """Log that ``session`` hit a configured limit (rate-limited)."""
        ...

    def reload(self, reason: str) -> asyncio.Future[dict[str, Any]]:
        """Reload the configuration: what changed, or ConfigError (the old one stays)."""
        ...

    def stats_on_loop(self) -> dict[str, Any]:
        """The ``stats`` answer: the loop's counters, sessions and ports."""
        ...


class SessionSink(Channel[Any]):
    """The inbox of every port of one session: encodes events onto the session socket.

    Only ever used on the I/O thread by drivers (``try_send``,
    ``_notify_when_room``, ``_put_overflow``); it is never received from.
    """

    __slots__ = ("session",)

    def __init__(self, session: Session) -> None:
        super().__init__(None)
        # None once the session closed: the sink and its session must not keep each
        # other alive (a cycle waits for a full collection, with all its buffers).
        self.session: Session | None = session

    def try_send(self, value: Any) -> None:
        session = self.session
        if session is None or session.closed:
            raise ChannelClosed(self, value)
        if session.paused_writing:
            raise Full(value)
        port = getattr(value, "port", None)
        held = None
        if port is not None and port not in session.ids and isinstance(port, Port):
            # Its id is not announced yet (the open's reply is still to come):
            # hold a few events, then push back like a full inbox.
            held = session.held.setdefault(port, [])
            if len(held) >= HELD_LIMIT:
                session.held_full = True
                raise Full(value)
        if isinstance(value, Accepted):
            value = session.admit(value)
        if held is not None:
            held.append(value)
            return
        session.emit(value)

    send = try_send  # type: ignore[assignment]

    def _notify_when_room(self, callback: Callable[[], object]) -> bool:
        session = self.session
        if session is None or session.closed or not (session.paused_writing or session.held_full):
            return False
        session.room_callbacks.append(callback)  # resume_writing or _announce calls it
        return True

    def _put_overflow(self, value: Any) -> None:
        session = self.session
        if session is None or session.closed:
            raise ChannelClosed(self, value)
        session.emit(value)

    def _take_matching(self, predicate: Callable[[Any], bool]) -> list[Any]:
        return []

    def close(self) -> None:
        """A session's sink closes with the session, never because one port closed."""


class Session(asyncio.Protocol):
    """One client of the daemon (I/O thread only)."""

    def __init__(self, daemon: DaemonServices, kind: str) -> None:
        self.daemon = daemon
        self.io = daemon.io
        self.kind = kind  # "unix" or "tcp"
        limits = daemon.config.limits
        self.conn = protocol.Connection(
            max_message_bytes=limits.max_message_bytes,
            max_elements=limits.max_elements,
            max_depth=limits.max_depth,
        )
        self.transport: Any = None
        self.sink = SessionSink(self)
        self.closed = False
        # hello is optional over the Unix socket (stock clients won't send it;
        # the socket is 0600) and required first over TCP.
        self.authenticated = kind == "unix"
        self.ports: dict[int, Port] = {}
        self.ids: dict[Port, int] = {}
        self.timers: dict[int, Any] = {}
        self.next_id = 1
        self.out = bytearray()
        self.flush_scheduled = False
        self.paused_writing = False
        self.paused_reading = False  # a port is busy: its sends wait (_throttle)
        self.input_held = False  # the output is full: requests wait (_handle_input)
        self.reading_stopped = False  # the transport's reading is paused (either reason)
        self.eof_deferred = False  # EOF came while input was held: close once handled
        self.hello_timer: asyncio.TimerHandle | None = None
        self.peer: Any = None
        self.accepting = 0  # accepted connections admitted, not yet registered
        self.room_callbacks: list[Callable[[], object]] = []
        self.held: dict[Port, list[Any]] = {}
        self.held_full = False  # a port hit HELD_LIMIT before its id was announced
        self.batched: dict[Port, list[Any]] = {}  # sends of the current read, per port
        self.opening = 0  # open requests in the worker pool
        self.requests = 0
        self.events = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.id = daemon.next_session_id()
        # Past this the output is written at once, so that the transport reports
        # pause_writing before more requests are handled.
        self.flush_now = min(FLUSH_NOW, limits.pending_bytes)

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        # The events buffered for a slow client: limits.pending_bytes, as documented.
        limits = self.daemon.config.limits
        high = limits.pending_bytes
        transport.set_write_buffer_limits(high=high, low=high // 2)
        self.peer = transport.get_extra_info("peername")
        refused = self.daemon.add_session(self)
        if refused is not None:
            self.notify("error", [None, protocol.error_value(protocol.LIMIT, refused)])
            self._flush()
            transport.close()
            self.closed = True
            return
        log.debug(
            "ioserver: session %d opened (%s%s)",
            self.id,
            self.kind,
            _from(self.peer),
            extra=logs.fields("session_opened", session=self.id, kind=self.kind, peer=_peer(self)),
        )
        if not self.authenticated:
            self.conn.max_message_bytes = min(limits.max_message_bytes, PRE_AUTH_MESSAGE_BYTES)
            self.hello_timer = self.io.loop.call_later(limits.hello_timeout, self._hello_expired)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.bytes_in += len(data)
        self.conn.receive_data(data)
        self._handle_input()

    def _handle_input(self) -> None:
        """Handle the messages received, until they run out or the output is full."""
        conn = self.conn
        while not self.closed:
            if self.paused_writing:
                # The client does not read its answers: leave the rest of its
                # input undecoded, and stop reading it, until resume_writing.
                self.input_held = True
                self._update_reading()
                break
            try:
                event = conn.next_event()
            except protocol.ProtocolError as exc:
                if exc.fatal:
                    self._fatal(exc)
                    return
                if exc.msgid is not None and exc.type != protocol.RESPONSE:
                    self.reply_error(exc.msgid, exc.code, str(exc))
                else:  # nothing to answer (and never answer a response): an error event
                    self.notify("error", [None, exc.to_wire()])
                continue
            if event is protocol.NEED_DATA:
                break
            if event is protocol.CLOSED:
                if self.eof_deferred and self.transport is not None:
                    self._write_batched()
                    self._flush()
                    self.transport.close()
                break
            try:
                self._dispatch(event)
            except Exception as exc:  # a bug in a handler: answer, keep the session
                log.exception("ioserver: session %d: handling %r failed", self.id, event)
                if isinstance(event, protocol.Request):
                    self.reply_error(event.msgid, protocol.SERVER_ERROR, repr(exc))
        self._write_batched()

    def eof_received(self) -> bool:
        # Let the decoder see the end: a stream that ends inside a message gets its
        # final error event (then the transport closes, as returning False asks).
        # With requests still held, keep the transport half-open: they are
        # answered once the output drains, then _handle_input closes it.
        self.data_received(b"")
        self.eof_deferred = self.input_held and not self.closed
        if not self.eof_deferred:
            self._flush()  # now: once closing, the transport takes no more writes
        return self.eof_deferred

    def connection_lost(self, exc: Exception | None) -> None:
        self.close_all()
        self.transport = None  # the transport and its protocol must not keep each other

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        callbacks, self.room_callbacks = self.room_callbacks, []
        for callback in callbacks:
            callback()
        if self.input_held:
            self.io.loop.call_soon(self._release_input)

    def _release_input(self) -> None:
        """The output drained: handle the requests held meanwhile, then read again."""
        if self.closed or self.paused_writing or not self.input_held:
            return
        self.input_held = False
        self._handle_input()
        self._update_reading()

    def _update_reading(self) -> None:
        """Pause or resume reading the client: paused while a port is busy
        (paused_reading) or the output is full (input_held)."""
        stop = self.paused_reading or self.input_held
        transport = self.transport
        if stop == self.reading_stopped or transport is None or transport.is_closing():
            return
        self.reading_stopped = stop
        if stop:
            transport.pause_reading()
        else:
            transport.resume_reading()

    # -- output ------------------------------------------------------------------------

    def notify(self, name: str, params: list[Any]) -> None:
        """Queue a notification; the buffer is written once per loop iteration."""
        if name == "error" and len(params) > 1:
            self._error_sent(params[1])
        self.out += self.conn.notification(name, params)
        self._schedule_flush()

    def reply(self, msgid: int, result: Any) -> None:
        self.out += self.conn.response(msgid, None, result)
        self._schedule_flush()

    def reply_error(self, msgid: int, code: int, message: str, details: Any = None) -> None:
        error = protocol.error_value(code, message, details)
        self._error_sent(error)
        self.out += self.conn.response(msgid, error, None)
        self._schedule_flush()

    def _error_sent(self, error: Any) -> None:
        """An error (response or event) goes to the client: count it by code; a limit
        hit is also logged (the daemon rate-limits those lines)."""
        code = error[0] if isinstance(error, list) and error else None
        self.daemon.counters.error(code)
        if code == protocol.LIMIT:
            self.daemon.limit_hit(self, str(error[1]) if len(error) > 1 else "")

    def _schedule_flush(self) -> None:
        if len(self.out) >= self.flush_now:
            # Write a big batch now: the transport then calls pause_writing at once,
            # so the ports stop before the next read. (uvloop reads a socket up to 32
            # times per callback: deferred, a batch could reach 8 MiB per port.)
            self._flush()
            return
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.io.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.bytes_out += len(self.out)
            self.transport.write(bytes(self.out))
        self.out.clear()

    def emit(self, value: Any) -> None:
        """Encode one port event (or timer firing) as a notification."""
        if isinstance(value, protocol.TimerFired):
            self.timers.pop(value.port, None)
            self.notify("timer", [value.port, value.message])
            return
        port = value.port
        if port not in self.ids:
            self.held.setdefault(port, []).append(value)
            return
        accepted = isinstance(value, Accepted)
        if accepted:
            self.accepting -= 1
            self._register(value.conn)
        name, params = protocol.event_to_wire(value, self.ids.__getitem__)
        self.events += 1
        self.notify(name, params)
        if name == "closed":
            self._forget(port)
        if accepted:
            self._release_held(value.conn)  # its events so far follow 'accepted'

    def admit(self, accepted: Accepted) -> Message:
        """An accepted connection reaches the session: it counts against
        ``ports_per_session``; over it, close it at once and tell the client
        with an ``error`` event on the listener (which stays open)."""
        limit = self.daemon.config.limits.ports_per_session
        if self._port_count() < limit:
            self.accepting += 1
            return accepted
        conn = accepted.conn
        if conn._driver is not None:  # closed without a word: the client never knew it
            conn._driver.discard()
        self._drop_held(conn)
        peer = protocol.describe(getattr(conn, "peer", None))
        return Error(
            accepted.port,
            protocol.RpcError(
                protocol.LIMIT,
                f"too many ports: limit ports_per_session={limit}; "
                f"refused the connection from {peer}",
            ),
        )

    # -- ports --------------------------------------------------------------------------

    def _register(self, port: Port) -> int:
        port_id = self.next_id
        self.next_id += 1
        self.ports[port_id] = port
        self.ids[port] = port_id
        return port_id

    def _announce(self, port: Port) -> int:
        """Register ``port`` and release the events it delivered before it had an id."""
        port_id = self.ids.get(port) or self._register(port)
        self._release_held(port)
        return port_id

    def _release_held(self, port: Port) -> None:
        """``port`` has an id now: emit the events it delivered before, in order."""
        for value in self.held.pop(port, ()):
            self.emit(value)
        self._held_room()

    def _drop_held(self, port: Port) -> None:
        """``port`` is refused: forget the events it delivered before."""
        self.held.pop(port, None)
        self._held_room()

    def _held_room(self) -> None:
        if self.held_full and not any(len(h) >= HELD_LIMIT for h in self.held.values()):
            self.held_full = False
            if not self.paused_writing:
                self.resume_writing()  # the ports that were pushed back deliver again

    def _forget(self, port: Port) -> None:
        port_id = self.ids.pop(port, None)
        if port_id is not None:
            self.ports.pop(port_id, None)

    def port(self, port_id: Any) -> Port:
        """The session's port ``port_id``; a LookupError answered "no such port"."""
        port = self.ports.get(port_id) if isinstance(port_id, int) else None
        if port is None:
            raise NoSuchPort(port_id)
        return port

    def close_all(self) -> None:
        """The client is gone: close every port and timer of the session (loop thread)."""
        if self.closed and not self.ports and not self.timers:
            self.daemon.remove_session(self)
            return
        self.closed = True
        log.debug(
            "ioserver: session %d closed (%s%s; %d requests, %d ports open)",
            self.id,
            self.kind,
            _from(self.peer),
            self.requests,
            len(self.ports),
            extra=logs.fields(
                "session_closed",
                session=self.id,
                kind=self.kind,
                peer=_peer(self),
                requests=self.requests,
                events=self.events,
                bytes_in=self.bytes_in,
                bytes_out=self.bytes_out,
                ports_open=len(self.ports),
            ),
        )
        if self.hello_timer is not None:
            self.hello_timer.cancel()
            self.hello_timer = None
        held_conns = [v.conn for h in self.held.values() for v in h if isinstance(v, Accepted)]
        for port in list(self.ports.values()) + list(self.held) + held_conns:
            driver = port._driver
            port._closed = True
            if driver is not None:
                driver.stop("session closed")
        for timer in self.timers.values():
            timer.cancel()
        self.ports.clear()
        self.ids.clear()
        self.held.clear()
        self.batched.clear()
        self.timers.clear()
        self.room_callbacks.clear()
        self.sink.session = None  # every port is stopped: nothing delivers any more
        self.daemon.remove_session(self)

    def _fatal(self, exc: protocol.ProtocolError) -> None:
        """The stream can't be re-synced: say why, then close the connection."""
        self._write_batched()  # the sends before the garbage were valid
        log.info("ioserver: session %d: %s; closing it", self.id, exc)
        self.notify("error", [None, exc.to_wire()])
        self._flush()
        if self.transport is not None:
            self.transport.close()
        self.close_all()

    # -- dispatch ------------------------------------------------------------------------

    def _dispatch(self, event: Any) -> None:
        if isinstance(event, protocol.Notification):
            if not self.authenticated:
                return
            spec = protocol.NOTIFICATIONS.get(event.method)
            if spec is None:
                return  # unknown notifications are ignored, never answered
            params = event.params
            if event.method == "send" and len(params) == 2 and type(params[0]) is int:
                # The hot case, decided without the spec: bytes to a port of this
                # session (whose id is a uint32), or any value to a msgpack port (as
                # sent: a str stays str). Everything else is checked below.
                port = self.ports.get(params[0])
                if port is not None and (
                    type(params[1]) is bytes or getattr(port._driver, "packet", None) == "msgpack"
                ):
                    self._send(params[0], params[1])
                    return
            try:
                params = spec.check(params)
            except protocol.RpcError as exc:
                self.notify("error", [None, exc.to_wire()])
                return
            if event.method == "send":
                self._send(params[0], params[1])
            else:
                self._send(params[0], (params[1], _addr(params[2])))
            return
        if not isinstance(event, protocol.Request):
            return  # a client has no business sending responses; ignore
        self._write_batched()  # a request (close, setopts...) comes after earlier sends
        self.requests += 1
        msgid, method, params = event.msgid, event.method, event.params
        self.daemon.counters.request(method)
        if not self.authenticated and method != "hello":
            self.reply_error(
                msgid, protocol.NOT_ALLOWED, "authenticate first: call hello(version, token)"
            )
            if self.kind == "tcp" and self.transport is not None:
                self.daemon.auth_failed(self.peer, f"{method!r} before hello")
                self._flush()
                self.transport.close()
                self.close_all()
            return
        handler = getattr(self, "rpc_" + method, None) if method in protocol.METHODS else None
        if handler is None:
            self.reply_error(msgid, protocol.UNKNOWN_METHOD, f"unknown method {method!r}")
            return
        try:
            checked = protocol.check_params(method, params)
        except protocol.RpcError as exc:
            self.reply_error(msgid, exc.code, str(exc), exc.details)
            return
        try:
            handler(msgid, *checked)
        except NoSuchPort as exc:
            self.reply_error(msgid, protocol.NO_SUCH_PORT, f"no such port: {exc.args[0]!r}")
        except LimitExceeded as exc:
            self.reply_error(msgid, protocol.LIMIT, str(exc))
        except NotAllowed as exc:
            self.reply_error(msgid, protocol.NOT_ALLOWED, str(exc))
        except (TypeError, ValueError, protocol.ProtocolError) as exc:
            self.reply_error(msgid, protocol.INVALID_PARAMS, f"{method}: {exc}")
        except PortClosed as exc:
            self.reply_error(msgid, protocol.NO_SUCH_PORT, str(exc))

    def _send(self, port_id: Any, data: Any) -> None:
        """A ``send`` notification: write into the port; failures come back as events."""
        try:
            port = self.port(port_id)
        except NoSuchPort:
            self.notify(
                "error",
                [
                    port_id,
                    protocol.error_value(protocol.NO_SUCH_PORT, f"no such port: {port_id!r}"),
                ],
            )
            return
        if port._driver is None or port._closed:
            return
        # Batched: the sends of one read go out in one write per port
        # (_write_batched), not one write(2) per 64-byte notification.
        batch = self.batched.get(port)
        if batch is None:
            self.batched[port] = [data]
        else:
            batch.append(data)

    def _write_batched(self) -> None:
        """Write the sends gathered since the last call, one driver write per port."""
        if not self.batched:
            return
        batched, self.batched = self.batched, {}
        for port, frames in batched.items():
            driver = port._driver
            if driver is not None and not port._closed:
                driver.write_frames(frames)
                self._throttle(port)

    def _throttle(self, port: Port) -> None:
        if port._transport_busy and not self.paused_reading:
            # The peer reads slower than our client writes: stop reading the
            # client until this port drains (TCP backpressure end to end).
            self.paused_reading = True
            self._update_reading()
            if port._idle_callbacks is None:
                port._idle_callbacks = []
            port._idle_callbacks.append(self._resume_reading)

    def _resume_reading(self) -> None:
        if self.paused_reading and not self.closed:
            self.paused_reading = False
            self._update_reading()

    # -- methods (each: rpc_<name>(msgid, *params); see protocol.METHODS) ----------------

    def rpc_hello(self, msgid: int, version: int, token: Any = None) -> None:
        if version != protocol.PROTOCOL_VERSION:
            self.reply_error(
                msgid,
                protocol.PROTOCOL_VERSION_ERROR,
                f"protocol version {version} not supported; "
                f"this server speaks {protocol.PROTOCOL_VERSION}",
            )
            return
        expected = self.daemon.config.server.token
        if expected:
            given = token if isinstance(token, str) else ""
            if not hmac.compare_digest(given.encode(), expected.encode()):
                self.reply_error(msgid, protocol.NOT_ALLOWED, "wrong token")
                if self.kind == "tcp":
                    # The log tells a missing token from a wrong one; the client
                    # hears "wrong token" either way (the wire message is stable).
                    self.daemon.auth_failed(self.peer, "wrong token" if given else "no token")
                    self._flush()
                    self.transport.close()
                    self.close_all()
                return
        elif self.kind == "tcp" and not self.daemon.config.server.insecure:
            self.reply_error(msgid, protocol.NOT_ALLOWED, "no token configured")
            return
        if not self.authenticated:
            refused = self.daemon.authenticate(self)
            if refused is not None:  # a session more than [limits] sessions
                self.reply_error(msgid, protocol.LIMIT, refused)
                self._flush()
                self.transport.close()
                self.close_all()
                return
            if self.hello_timer is not None:
                self.hello_timer.cancel()
                self.hello_timer = None
            self.conn.max_message_bytes = self.daemon.config.limits.max_message_bytes
        self.authenticated = True
        self.reply(
            msgid,
            {
                "version": protocol.PROTOCOL_VERSION,
                "server": f"ioserver {__version__}",
                "session_id": self.id,
            },
        )

    def rpc_ping(self, msgid: int) -> None:
        self.reply(msgid, "pong")

    def rpc_get_api_info(self, msgid: int) -> None:
        self.reply(msgid, protocol.api_info())

    def rpc_stats(self, msgid: int) -> None:
        stats = self.daemon.stats_on_loop()
        # The asking session, so that a tool (ioserver stats/top) can leave itself out.
        stats["session_id"] = self.id
        self.reply(msgid, stats)

    def rpc_reload(self, msgid: int) -> None:
        """Reload the daemon's configuration (the owner only: the Unix socket)."""
        if self.kind != "unix":
            raise NotAllowed(
                "reload is for the daemon's owner: send it over the Unix socket "
                "(ioserver reload) or send the daemon SIGHUP"
            )

        def done(task: asyncio.Future[dict[str, Any]]) -> None:
            if task.cancelled():
                self.reply_error(msgid, protocol.SERVER_ERROR, "reload cancelled (stopping)")
            elif isinstance(exc := task.exception(), ConfigError):
                self.reply_error(
                    msgid,
                    protocol.SERVER_ERROR,
                    f"bad configuration: {exc} (reload refused: the running configuration stays)",
                    {"type": "ConfigError"},
                )
            elif exc is not None:
                self.reply_error(msgid, protocol.SERVER_ERROR, repr(exc))
            else:
                self.reply(msgid, task.result())

        self.daemon.reload(f"reload request from session {self.id}").add_done_callback(done)

    def rpc_close(self, msgid: int, port_id: Any) -> None:
        port = self.port(port_id)
        if port._driver is not None:
            port._closed = True
            port._driver.close()
        self.reply(msgid, None)

    def rpc_close_stdin(self, msgid: int, port_id: Any) -> None:
        port = self.port(port_id)
        if port._driver is not None:
            port._driver.write_eof()
        self.reply(msgid, None)

    def rpc_setopts(self, msgid: int, port_id: Any, opts: Any) -> None:
        port = self.port(port_id)
        if not isinstance(opts, dict) or set(opts) - {"active"}:
            raise ValueError(f"setopts takes {{'active': ...}}, not {opts!r}")
        if "active" in opts and port._driver is not None:
            from ..port import _check_active

            _check_active(opts["active"])
            port._driver.setopts(opts["active"])
        self.reply(msgid, None)

    def rpc_read(self, msgid: int, port_id: Any) -> None:
        port = self.port(port_id)
        if port._driver is not None:
            port._driver.read_one()
        self.reply(msgid, None)

    def rpc_send_after(self, msgid: int, delay: float, message: Any) -> None:
        self._check_port_limit()
        timer_id = self.next_id
        self.next_id += 1
        fired = protocol.TimerFired(timer_id, message)
        self.timers[timer_id] = self.io.send_after(delay, self.sink, fired)
        self.reply(msgid, timer_id)

    def rpc_cancel_timer(self, msgid: int, timer_id: Any) -> None:
        timer = self.timers.pop(timer_id, None) if isinstance(timer_id, int) else None
        self.reply(msgid, bool(timer is not None and timer.cancel()))

    def rpc_connect_tcp(self, msgid: int, host: Any, port: Any, opts: Any = None) -> None:
        self._open(msgid, lambda o: self.io.connect_tcp(host, port, **o), opts, (), None)

    def rpc_listen_tcp(self, msgid: int, host: Any, port: Any, opts: Any = None) -> None:
        self._open(
            msgid,
            lambda o: self.io.listen_tcp(host, port, **o),
            opts,
            ("backlog",),
            lambda p: [p.address[0], p.address[1]],
        )

    def rpc_connect_unix(self, msgid: int, path: Any, opts: Any = None) -> None:
        self._open(msgid, lambda o: self.io.connect_unix(path, **o), opts, (), None)

    def rpc_listen_unix(self, msgid: int, path: Any, opts: Any = None) -> None:
        self._open(msgid, lambda o: self.io.listen_unix(path, **o), opts, ("backlog",), None)

    def rpc_open_udp(self, msgid: int, host: Any, port: Any, opts: Any = None) -> None:
        self._open(
            msgid,
            lambda o: self.io.open_udp((host, port), **o),
            opts,
            ("remote_addr",),
            lambda p: [p.address[0], p.address[1]],
        )

    def rpc_spawn(self, msgid: int, argv: list[str], opts: Any = None) -> None:
        argv = [self._check_spawn_allowed(argv[0]), *argv[1:]]
        if opts and "stderr" in opts and opts["stderr"] is None:
            opts = {k: v for k, v in opts.items() if k != "stderr"}  # nil: kept apart
        self._open(
            msgid,
            lambda o: self.io.spawn(argv, **o),
            opts,
            ("cwd", "env", "env_add", "stderr"),
            lambda p: p.info_extra.get("pid"),
        )

    def rpc_interval(self, msgid: int, period: float, opts: Any = None) -> None:
        self._open(msgid, lambda o: self.io.interval(period, **o), opts, (), None)

    def rpc_open_file(self, msgid: int, path: Any, mode: Any = "rb", opts: Any = None) -> None:
        self._open(msgid, lambda o: self.io.open_file(path, mode, **o), opts, ("chunk_size",), None)

    # -- opening ports ---------------------------------------------------------------------

    def _hello_expired(self) -> None:
        """``limits.hello_timeout`` passed without a successful hello: close."""
        self.hello_timer = None
        if self.authenticated or self.closed:
            return
        timeout = self.daemon.config.limits.hello_timeout
        self.daemon.auth_failed(self.peer, f"no hello within hello_timeout={timeout:g} s")
        error = protocol.error_value(
            protocol.NOT_ALLOWED, f"no hello within {timeout:g} s: limit hello_timeout={timeout:g}"
        )
        self.notify("error", [None, error])
        self._flush()
        if self.transport is not None:
            self.transport.close()
        self.close_all()

    def _port_count(self) -> int:
        """Ports, timers, ports opening and accepted connections not yet announced."""
        return len(self.ports) + len(self.timers) + self.opening + self.accepting

    def _check_port_limit(self) -> None:
        limit = self.daemon.config.limits.ports_per_session
        if self._port_count() >= limit:
            raise LimitExceeded(f"too many ports: limit ports_per_session={limit}")

    def _check_spawn_allowed(self, program: str) -> str:
        """The absolute path to run for ``program``, if the config allows it."""
        spawn = self.daemon.config.spawn
        if not spawn.enabled:
            raise NotAllowed("spawn is disabled: the daemon's config has no [spawn] allow list")
        path = spawn.resolve(program)
        if path is None:
            raise NotAllowed(f"spawn of {program!r} is not allowed by the config's [spawn] allow")
        return path

    def _open(
        self,
        msgid: int,
        opener: Callable[[dict[str, Any]], Port],
        opts: Any,
        extra_keys: tuple[str, ...],
        describe: Callable[[Port], Any] | None,
    ) -> None:
        """Open a port in the worker pool (it blocks), then register and reply on the loop."""
        self._check_port_limit()
        options = _port_options(opts, extra_keys, self.daemon.config.limits)
        options["inbox"] = self.sink
        self.opening += 1
        loop = self.io.loop
        future = loop.run_in_executor(self.daemon.pool, opener, options)

        def opened(fut: asyncio.Future[Port]) -> None:
            self.opening -= 1
            exc = fut.exception()
            if exc is not None:
                if isinstance(exc, OSError):  # "<type>: <text>", as docs/protocol.md says
                    code, message, details = protocol.exception_to_wire(exc)
                    self.reply_error(msgid, code, message, details)
                elif isinstance(exc, TypeError | ValueError | OverflowError):
                    self.reply_error(msgid, protocol.INVALID_PARAMS, str(exc))
                else:
                    self.reply_error(msgid, protocol.SERVER_ERROR, repr(exc))
                return
            port = fut.result()
            if self.closed:
                if port._driver is not None:
                    port._driver.stop("session closed")
                return
            port_id = self.ids.get(port) or self._register(port)
            self.reply(msgid, port_id if describe is None else [port_id, describe(port)])
            self._announce(port)  # the events it delivered meanwhile follow the reply

        future.add_done_callback(opened)


class NoSuchPort(LookupError):
    """A request named a port id this session doesn't have (never had, or closed)."""


class LimitExceeded(Exception):
    """A request would pass one of the config's [limits]; the message names it."""


class NotAllowed(Exception):
    """The config forbids this request (spawn not allowed, auth missing)."""


_OPTION_KEYS = ("packet", "active", "high_water", "max_frame_bytes", "timeout")


def _port_options(opts: Any, extra_keys: tuple[str, ...], limits: Any) -> dict[str, Any]:
    """Validate an opts map from the wire into keyword arguments; LimitExceeded for a
    max_frame_bytes or high_water over [limits]."""
    if opts is None:
        opts = {}
    if not isinstance(opts, dict):
        raise ValueError(f"opts must be a map, not {type(opts).__name__}")
    unknown = set(opts) - set(_OPTION_KEYS) - set(extra_keys)
    if unknown:
        allowed = ", ".join(sorted({*_OPTION_KEYS, *extra_keys}))
        raise ValueError(f"unknown option(s) {sorted(map(str, unknown))}; allowed: {allowed}")
    options = dict(opts)
    # What one frame of a packet="msgpack" port may decode to: the session's own bounds.
    options["max_elements"] = limits.max_elements
    options["max_depth"] = limits.max_depth
    max_frame = limits.max_frame_bytes
    if int(options.setdefault("max_frame_bytes", max_frame)) > max_frame:
        raise LimitExceeded(
            f"max_frame_bytes={options['max_frame_bytes']} is over the limit "
            f"max_frame_bytes={max_frame}"
        )
    default_high = min(DEFAULT_HIGH_WATER, limits.pending_bytes)  # as embedded: 64 KiB
    if int(options.setdefault("high_water", default_high)) > limits.pending_bytes:
        raise LimitExceeded(
            f"high_water={options['high_water']} is over the limit "
            f"pending_bytes={limits.pending_bytes}"
        )
    # spawn: ``env`` is the child's whole environment (nil: the daemon's), as
    # documented; ``env_add`` is merged over that.
    env_add = options.pop("env_add", None)
    if env_add is not None:
        base = options.get("env")
        options["env"] = {**(os.environ if base is None else base), **env_add}
    if options.get("remote_addr") is not None:
        options["remote_addr"] = tuple(options["remote_addr"])
    return options


def _from(peer: Any) -> str:
    """`` from host:port`` for a TCP peer, "" otherwise (for the log)."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f" from {peer[0]}:{peer[1]}"
    return ""


def _peer(session: Session) -> str | None:
    """A TCP session's peer as "host:port" (a log field); None for the Unix socket."""
    peer = session.peer
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return None


def _addr(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value

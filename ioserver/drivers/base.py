"""The loop-thread side of every port: delivery, active modes, flow control, Closed once.

Every method here runs on the I/O thread only. A driver for one kind of I/O
(tcp, udp, process, ...) subclasses :class:`Driver` and implements a few hooks
(``_write``, ``_pause_reading``, ``_resume_reading``, ``_close_transport``,
``_abort``, ``_write_eof``); the bookkeeping lives here once (as CPython's
``_BaseSelectorImpl`` owns ``_fd_to_key`` for its thin variants).

Delivery. Messages wait in ``_pending`` until the port is active and its
inbox has room. ``inbox.try_send`` never blocks; when the inbox is full the
driver stops reading its transport and asks the inbox to call back when the
receiver has drained it to its low-water mark (``_notify_when_room``); the
callback only submits ``_on_room`` to the loop. So memory per port is bounded
by the inbox capacity plus one read, and a slow consumer slows the peer
through TCP itself.

Active modes (Erlang's ``inet:setopts``; lesson 3, docs/architecture.md): ``True`` delivers
everything (still bounded by the inbox), ``False`` nothing until ``read_one``,
``"once"`` one message, an int N is *added* to a counter that each delivered
data message decrements; reaching 0 sends ``Passive`` and stops reading.

Closed. ``Closed`` is queued exactly once, after everything else, and is the
last message the port ever delivers. When the peer ends the port, Closed
waits its turn like data (so a passive port learns of it on its next read);
when our side ends it (``close()``, server stop) undelivered input is
dropped and Closed goes out at once. After it, a port's own inbox is closed, so
``for msg in port`` ends.

Faults (lesson 9, docs/architecture.md): an exception in a driver callback becomes ``Error`` then
``Closed`` for that port only (``fail``); the loop goes on.

Lifetime. The loop side (the server's driver set, transports, loop callbacks,
the timer heap) reaches a driver, so the driver holds its Port only weakly
(``_port``), and reaches the inbox and the undelivered messages (which carry
``.port``), both kept on the Port, through it: nothing the loop holds keeps a
Port alive. An inbox keeps the ports delivering into it alive (its
``_anchor``: the Port whose own inbox it is, or the set of ports sharing it),
so a port lives exactly as long as someone can receive its messages. A Port
collected unclosed warns (``ResourceWarning``, as an unclosed file does) and
submits ``_port_collected``: the transport is aborted, a timer stopped, the
driver unregistered; no Closed, nobody could receive it.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .._core import native
from ..channel import NO_ONE, Channel, ChannelClosed, Full
from ..framing import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_ELEMENTS,
    DEFAULT_MAX_FRAME_BYTES,
    FrameError,
    PacketMode,
    make_decoder,
    make_encoder,
)
from ..messages import Closed, Error, Message, Passive, make_data
from ..port import _unanchor, anchor
from ..requests import RequestQueue, ServerStopped
from ..watchdog import Watchdog, loop_callback

if TYPE_CHECKING:
    from ..port import Port

__all__ = ["Driver", "DriverHost", "Inbox"]

R = TypeVar("R")


class Inbox(Protocol):
    """What the loop side uses of the channel a port delivers into: a send that never
    blocks, a callback when room comes back, and an append past the capacity for
    the final ``Closed`` (the "out of the loop" crossing of docs/architecture.md).

    A ``Channel`` is one; the daemon's ``SessionSink`` (daemon/session.py) is
    another, which encodes each message onto a session socket and is never
    received from (it subclasses Channel for the rest of Port's bookkeeping).
    """

    @property
    def capacity(self) -> int | None: ...

    def try_send(self, value: Any) -> None: ...

    def _notify_when_room(self, callback: Callable[[], object]) -> bool: ...

    def _put_overflow(self, value: Any) -> None: ...

    def close(self) -> None: ...


class DriverHost(Protocol):
    """What a driver needs from the server that runs it: the ``IOServer`` (server.py),
    named here as an interface because drivers stand above the server in the
    layering and may not import it.

    The members, and who uses them:

    - ``loop``: the event loop, on the I/O thread only (transports, ``call_soon``);
    - ``_requests``: the request queue into the loop (``submit`` from any thread:
      room callbacks, file jobs' results, timer requests; ``next_wakeup`` for the
      timer heap's armed deadline);
    - ``_register``/``_unregister``/``_drivers``: the set of live drivers, for
      stats and shutdown (every Driver registers in ``__init__``);
    - ``_run_coroutine``/``call``: the client side of an open (run the opening
      coroutine or function on the loop and wait for its port);
    - ``_stop_deadline``: when a stopping server gives up flushing (a process
      driver's kill budget);
    - ``_watchdog``: the I/O thread's watchdog (watchdog.py), or None: every
      driver callback the loop calls is a guarded section of it
      (``loop_callback``); read once, into each driver.

    Two lazy slots are attached to the server by the driver modules that own them,
    made on first use on the loop thread: ``_timer_heap`` (drivers/timer.py) and
    ``_file_pool`` (drivers/file.py). The server does not declare them, so they
    are read with ``getattr(server, name, None)`` and set with ``setattr``.

    Every member is read-only here (properties), so the server may keep plain
    attributes of these types or of subtypes.
    """

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def _requests(self) -> RequestQueue: ...

    @property
    def _drivers(self) -> set[Driver]: ...

    @property
    def _stop_deadline(self) -> float: ...

    @property
    def _watchdog(self) -> Watchdog | None: ...

    def _register(self, driver: Driver) -> None: ...

    def _unregister(self, driver: Driver) -> None: ...

    def _run_coroutine(
        self, make: Callable[..., Coroutine[Any, Any, R]], *args: Any, timeout: float | None = None
    ) -> R: ...

    def call(self, fn: Callable[..., R], *args: Any, timeout: float | None = None) -> R: ...


log = logging.getLogger("ioserver")

_INF = float("inf")
_RAW_ENCODER = make_encoder(None)
# Messages that don't count against an active=N budget.
_CONTROL = (Closed, Error, Passive)


def _active_budget(active: bool | int | str) -> float:
    if active is True:
        return _INF
    if active is False:
        return 0
    if active == "once":
        return 1
    return int(active)


class Driver:
    """Base of the loop-thread half of a port."""

    # Slots: ten thousand idle ports must fit in 4 KiB each (a __dict__ alone
    # was ~1 KiB). Subclasses without __slots__ simply get a __dict__.
    __slots__ = (
        "__weakref__",
        "_active",
        "_closed_queued",
        "_counted",
        "_finished",
        "_port",
        "_raw",
        "_reading",
        "_waiting_room",
        "_watchdog",
        "bytes_in",
        "bytes_out",
        "decoder",
        "encoder",
        "messages_in",
        "packet",
        "server",
        "transport",
    )

    kind = "port"

    def __init__(
        self,
        server: DriverHost,
        port: Port,
        *,
        packet: str | int | None = None,
        active: bool | int | str = True,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_elements: int = DEFAULT_MAX_ELEMENTS,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self.server = server
        # The server's watchdog (loop_callback; the native data_received reads it
        # here too), or None. getattr: a host made for a test may have none.
        self._watchdog: Watchdog | None = getattr(server, "_watchdog", None)
        # Weak: the loop side must not keep the Port alive (module docstring).
        self._port: weakref.ref[Port] = weakref.ref(port)
        self.packet = packet
        mode: PacketMode = packet  # type: ignore[assignment]  # validated by PortOptions
        self._raw = packet is None or packet == "raw"
        # Raw ports share one stateless encoder and need no decoder (feed()
        # delivers each read as is): 120 bytes fewer per idle port.
        self.decoder = (
            None
            if self._raw
            else make_decoder(
                mode,
                max_frame_bytes=max_frame_bytes,
                max_elements=max_elements,
                max_depth=max_depth,
            )
        )
        self.encoder = (
            _RAW_ENCODER if self._raw else make_encoder(mode, max_frame_bytes=max_frame_bytes)
        )
        # The remaining active budget: inf (True), 0 (passive) or a count.
        self._active: float = _active_budget(active)
        # Whether reaching 0 sends Passive (only the integer mode does).
        self._counted = isinstance(active, int) and not isinstance(active, bool)
        self._closed_queued = False  # Closed is in _pending (or delivered)
        self._finished = False  # Closed was delivered: nothing more, ever
        self._waiting_room = False  # a room callback is registered on the inbox
        # Our view of the transport's reading state: a passive port starts paused.
        self._reading = self._active > 0
        #: The asyncio transport of a transport-backed driver (None otherwise, or once lost).
        self.transport: Any = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.messages_in = 0
        port._driver = self
        server._register(self)

    @property
    def port(self) -> Port:
        """The port; None once it was garbage-collected (then ``_port_collected``
        is on its way; the callbacks that may run meanwhile check for it)."""
        return self._port()  # type: ignore[return-value]

    @property
    def inbox(self) -> Inbox:
        """The channel the port delivers into (kept by the Port, see above)."""
        return self._port()._inbox  # type: ignore[union-attr]

    @property
    def _pending(self) -> deque[Message]:
        """Undelivered messages, kept on the Port (they carry ``.port``); NO_ONE
        (shared, immutable) until the first one, and once the port is gone."""
        port = self._port()
        return NO_ONE if port is None else port._pending

    # -- hooks for subclasses ------------------------------------------------------

    def _write(self, data: bytes) -> None:
        raise NotImplementedError(f"{self.kind} ports cannot be written to")

    def _pause_reading(self) -> None:
        """Stop reading from the transport (default: nothing to pause)."""

    def _resume_reading(self) -> None:
        """Resume reading from the transport."""

    def _close_transport(self) -> None:
        """Begin an orderly close (flush writes); must lead to ``finish()``."""
        self.finish()

    def _abort(self) -> None:
        """Close the transport at once, dropping unsent data."""

    def _write_eof(self) -> None:
        raise NotImplementedError(f"{self.kind} ports have no write side to close")

    def begin_stop(self) -> None:
        """Server shutdown begins: stop taking new work (a listener stops accepting)."""

    def flushing(self) -> bool:
        """Whether written data is still on its way out (the stop waits for it)."""
        return False

    # asyncio protocol callbacks shared by the transport-backed drivers (stream, udp).
    # Each method the loop calls is a section of the watchdog (loop_callback).

    @loop_callback
    def connection_made(self, transport: Any) -> None:
        """The transport is up: keep it and set it up (``_setup``); a failure there is
        Error + Closed. (uvloop's transports have asyncio's interface, not its classes.)"""
        self.transport = transport
        try:
            self._setup(transport)
        except Exception as exc:
            self.fail(exc)

    def _setup(self, transport: Any) -> None:
        """Hook: configure a new transport (water marks, addresses...)."""

    @loop_callback
    def connection_lost(self, exc: Exception | None) -> None:
        """The transport is gone: a failure gives Error + Closed, an orderly end Closed."""
        if exc is not None:
            self.fail(exc)
        else:
            self.finish()
        self.transport = None

    @loop_callback
    def pause_writing(self) -> None:
        port = self._port()
        if port is not None:
            port._set_transport_busy(True)

    @loop_callback
    def resume_writing(self) -> None:
        port = self._port()
        if port is not None:
            port._set_transport_busy(False)

    def info(self) -> dict[str, Any]:
        """Per-port observability (lesson 12, docs/architecture.md)."""
        return {
            "active": self._active if self._active != _INF else True,
            "pending_messages": len(self._pending),
            "reading": self._reading,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "messages_in": self.messages_in,
        }

    # -- input: called by the subclass's transport callbacks ---------------------

    def feed(self, data: bytes) -> None:
        """Bytes arrived: frame them and deliver each frame as ``Data``. (Called by
        the drivers' loop callbacks, inside their watchdog section: not a loop
        entry point itself, nor is ``deliver``.)"""
        if self._finished:
            return
        self.bytes_in += len(data)
        if self._raw:
            port = self._port()
            if port is not None:
                self.deliver(make_data(port, data))
            return
        self._feed_frames(data)

    def _feed_frames(self, data: bytes) -> None:
        """``feed`` for a framing mode: decode, deliver every whole frame."""
        try:
            frames = self.decoder.feed(data)  # type: ignore[union-attr]  # not raw
        except FrameError as exc:
            self._fail_framing(exc)
            return
        self._deliver_frames(frames)

    def _deliver_frames(self, frames: list[Any]) -> None:
        port = self.port
        for frame in frames:
            self.deliver(make_data(port, frame))

    def _fail_framing(self, exc: FrameError) -> None:
        """Deliver the frames decoded before the bad one, then Error + Closed
        (lesson 4, docs/architecture.md)."""
        self._deliver_frames(exc.frames)
        self.fail(exc)

    def feed_eof(self) -> None:
        """The peer ended its output: deliver any final frame, then Closed."""
        if self._finished or self.decoder is None:
            return
        try:
            frames = self.decoder.eof()
        except FrameError as exc:
            self._fail_framing(exc)
            return
        self._deliver_frames(frames)

    def deliver(self, message: Message) -> None:
        """Queue ``message`` for the inbox and deliver what the mode and room allow."""
        if self._closed_queued:
            return  # nothing may follow Closed
        port = self._port()
        if port is None:
            return  # collected: nobody can receive it (_port_collected is coming)
        self.messages_in += 1
        pending = port._pending
        if not pending and self._active > 0 and not self._waiting_room:
            try:
                port._inbox.try_send(message)
            except Full:
                self._hold(message)
                self._wait_for_room()
                return
            except ChannelClosed:
                self._inbox_gone()
                return
            if not isinstance(message, _CONTROL):
                self._spend()
            return
        self._hold(message)
        self._flush()

    def _hold(self, message: Message, first: bool = False) -> None:
        """Keep ``message`` undelivered for now (at the head if ``first``)."""
        port = self._port()
        if port is None:
            return
        pending = port._pending
        if pending is NO_ONE:
            pending = port._pending = deque()
        if first:
            pending.appendleft(message)
        else:
            pending.append(message)

    def _spend(self) -> None:
        """One data message went out: count it against the active budget."""
        self._active -= 1
        if self._active <= 0:
            self._active = 0
            self._set_reading(False)
            if self._counted:
                self._hold(Passive(self.port), first=True)
                self._flush(force_head=True)

    def _flush(self, force_head: bool = False) -> None:
        """Deliver pending messages while active and the inbox has room."""
        port = self._port()
        if port is None:
            return
        pending = port._pending
        inbox = port._inbox
        while pending:
            message = pending[0]
            control = isinstance(message, _CONTROL)
            if not (force_head or self._active > 0 or isinstance(message, Passive)):
                break
            force_head = False
            try:
                inbox.try_send(message)
            except Full:
                self._wait_for_room()
                return
            except ChannelClosed:
                self._inbox_gone()
                return
            pending.popleft()
            if isinstance(message, Closed):
                self._after_closed()
                return
            if not control:
                self._spend()
        self._set_reading(self._active > 0 and not pending)

    def _wait_for_room(self) -> None:
        self._set_reading(False)
        if self._waiting_room:
            return
        self._waiting_room = True
        port = self._port()
        if port is None:
            return
        if not port._inbox._notify_when_room(self._room_callback):
            self._waiting_room = False
            self.server._requests.submit(self._on_room)

    def _room_callback(self) -> None:
        """Runs in the receiving thread (under the inbox's lock): just hop to the loop."""
        try:
            self.server._requests.submit(self._on_room)
        except ServerStopped:
            pass

    def _on_room(self) -> None:
        self._waiting_room = False
        if not self._finished:
            self._flush()

    def _set_reading(self, reading: bool) -> None:
        if reading == self._reading or self._finished:
            return
        self._reading = reading
        if reading:
            self._resume_reading()
        else:
            self._pause_reading()

    def _inbox_gone(self) -> None:
        """Someone closed the inbox we deliver into: nobody listens; close the port."""
        self._closed_queued = True
        self._abort()
        self._after_closed()

    # -- ending ----------------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        """The port failed: ``Error(exc)`` then ``Closed``; the transport is aborted."""
        if self._closed_queued:
            return
        log.debug("ioserver: %r failed: %r", self.port, exc)
        self.deliver(Error(self.port, exc))
        self._queue_closed("error", force=False)
        self._abort()

    def finish(self, reason: str | None = None) -> None:
        """The transport is gone: queue ``Closed`` after everything pending."""
        self._queue_closed(reason, force=False)

    def _queue_closed(self, reason: str | None, *, force: bool) -> None:
        """Queue Closed once; ``force``: our side ends the port, so Closed goes out
        now, even if the peer's Closed was already queued and waits for room (else
        nothing would ever end the port: its room callbacks may be gone)."""
        if self._finished:
            return
        port = self._port()
        if port is None:  # collected: nobody to tell; just end
            self._closed_queued = True
            self._after_closed()
            return
        if not self._closed_queued:
            self._closed_queued = True
            port._on_closed()
            if not force:
                self._hold(Closed(port, reason))
                self._flush()
                return
            port._pending.clear()
            self._hold(Closed(port, reason))
        elif not force:
            return
        else:
            # Closed is queued behind undelivered input: drop the input, keep Closed.
            closed = [m for m in port._pending if isinstance(m, Closed)]
            port._pending.clear()
            for message in closed:
                self._hold(message)
        # Our side ended the port: drop undelivered input, deliver Closed now.
        self._flush(force_head=True)
        if not self._finished:
            self._force_closed()

    def _force_closed(self) -> None:
        """The inbox is full but Closed must arrive: put it in past the capacity."""
        port = self._port()
        pending = NO_ONE if port is None else port._pending
        while pending:
            message = pending.popleft()
            if isinstance(message, Closed):
                try:
                    port._inbox._put_overflow(message)  # type: ignore[union-attr]
                except ChannelClosed:
                    pass
                break
        self._after_closed()

    def _after_closed(self) -> None:
        """The port ended (Closed delivered, or nobody left to deliver it to)."""
        if self._finished:
            return
        self._finished = True
        port = self._port()
        if port is not None:
            port._pending.clear()
            inbox = port._inbox
            if port._own_inbox:
                inbox.close()
            else:
                _unanchor(inbox, port)  # its messages no longer need it alive
        self.server._unregister(self)

    def discard(self, *, abort: bool = True) -> None:
        """End a port its owner never heard of (a failed open, a refused or
        collected connection): abort the transport (unless ``abort`` is False),
        mark the port closed, unregister; no Closed is delivered."""
        if self._finished:
            return
        self._closed_queued = True
        port = self._port()
        if port is not None:
            port._on_closed()
        if abort:
            try:
                self._abort()
            except Exception:
                log.exception("ioserver: aborting %r failed", port)
        self._after_closed()

    def _port_collected(self) -> None:
        """Loop thread: the Port was garbage-collected unclosed (``Port.__del__``):
        nobody can receive its messages. Free the resources (a timer stops, a
        child is killed); no Closed."""
        self.discard()

    def _forked(self) -> None:
        """In a forked child (``IOServer._forked``), not on any loop: the port was
        inherited and its I/O stays the parent's. Close the child's copy of the port:
        drop what its inbox buffered (the parent's), deliver ``Closed(port,
        "forked")``, close its own inbox. Never touches the transport, the loop or
        their fds, which the parent still uses."""
        port = self._port()
        if self._finished or port is None:
            return
        self._finished = True  # nothing here runs this driver again
        port._closed = True
        inbox = port._inbox
        if type(inbox).__module__ != Channel.__module__:
            return  # a special inbox (the daemon's sink writes to a shared socket)
        inbox._after_fork()
        inbox._take_matching(lambda m: getattr(m, "port", None) is port)
        try:
            inbox._put_overflow(Closed(port, "forked"))
        except ChannelClosed:
            pass
        if port._own_inbox:
            inbox.close()

    # -- commands from the Port (loop thread) -------------------------------------

    def write(self, data: Any) -> None:
        """Encode and write ``data``; a failure becomes Error + Closed."""
        if self._closed_queued:
            return
        try:
            payload = self.encoder.encode(data)
            self.bytes_out += len(payload)
            self._write(payload)
        except Exception as exc:
            self.fail(exc)

    def write_encoded(self, payload: bytes) -> None:
        """Write bytes the Port already encoded for this port's mode (``Port.send``
        encodes a msgpack object on the caller's thread, to refuse a bad one there)."""
        if self._closed_queued:
            return
        try:
            self.bytes_out += len(payload)
            self._write(payload)
        except Exception as exc:
            self.fail(exc)

    def write_frames(self, frames: list[Any]) -> None:
        """Write several frames in order (the daemon batches a client's sends).
        One write each here; stream drivers join them into one."""
        for frame in frames:
            self.write(frame)

    def close(self, reason: str | None = None) -> None:
        """Our side closes: flush writes, close the transport, deliver Closed now."""
        if self._closed_queued:
            return
        try:
            self._close_transport()
        except Exception:
            log.exception("ioserver: closing %r failed", self.port)
            self._abort()
        self._queue_closed(reason, force=True)

    def stop(self, reason: str = "server stopped") -> None:
        """Server shutdown: abort the transport, deliver Closed."""
        if self._finished:
            return
        try:
            self._abort()
        except Exception:
            log.exception("ioserver: aborting %r failed", self.port)
        self._queue_closed(reason, force=True)

    def setopts(self, active: bool | int | str) -> None:
        """Change the active mode (Erlang semantics: an int is added to the count)."""
        if isinstance(active, int) and not isinstance(active, bool):
            base = self._active if self._counted and self._active != _INF else 0
            self._active = max(0, base + active)
            self._counted = True
            if self._active == 0:
                self._set_reading(False)
                self._hold(Passive(self.port), first=True)
                self._flush(force_head=True)
                return
        else:
            self._active = _active_budget(active)
            self._counted = False
        self._flush()

    def read_one(self) -> None:
        """Passive mode: allow exactly one more message."""
        if self._active == _INF:
            return
        self._active += 1
        self._flush()

    def write_eof(self) -> None:
        try:
            self._write_eof()
        except Exception as exc:
            self.fail(exc)

    def transfer(self, inbox: Channel[Any]) -> None:
        """Switch to ``inbox``, forwarding this port's messages still queued in the old one."""
        port = self.port  # alive: the caller holds it
        old = port._inbox
        if inbox is old:
            return
        moved = old._take_matching(lambda m: getattr(m, "port", None) is port)
        if port._own_inbox:
            old.close()
        else:
            _unanchor(old, port)
        port._inbox = inbox
        port._own_inbox = False
        if self._finished:
            # The port has ended: its Closed went into the old inbox, and nothing
            # will follow it. What was still queued there moves over now, past the
            # capacity if need be (the memory was spent already; no room callback
            # would ever come for a finished driver).
            for message in moved:
                try:
                    inbox._put_overflow(message)
                except ChannelClosed:
                    break
            return
        for message in reversed(moved):
            self._hold(message, first=True)
        anchor(inbox, port)
        inbox._fed_by_loop = True
        self._waiting_room = False
        self._flush()


# The native core runs the input path (feed, deliver; stream.py's data_received) in C
# (csrc/deliver.c): the same decisions, made on the Driver's and the Port's slots,
# calling the methods above for everything but the common case. The Python ones stay
# the reference (and take over for a port that is not a Port).
native_input: dict[str, Any] = {}
if native is not None:
    from ..port import Port as _Port

    Driver._py_deliver = Driver.deliver  # type: ignore[attr-defined]
    native_input = native.setup_driver(
        Driver, _Port, NO_ONE, _CONTROL, make_data, Full, ChannelClosed, Watchdog
    )
    Driver.feed = native_input["feed"]  # type: ignore[method-assign]
    Driver.deliver = native_input["deliver"]  # type: ignore[method-assign]

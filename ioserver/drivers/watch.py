"""Watch ports: readiness interest in a caller's fd, delivered as Readable/Writable.

Theory of operation
-------------------
``watch(fileobj, readable=, writable=)`` registers the fd with the loop
(``add_reader``/``add_writer``) on the I/O thread; the driver never reads or
writes it. Each readiness event becomes ``Readable(port, fd)`` or
``Writable(port, fd)``, ``fd`` being the caller's number. A notification is a
hint, as with any readiness API: use non-blocking I/O on the fd.

Triggering (Erlang's ``enif_select``): the default active mode of a watch port
is ``"once"`` (unless the caller passes ``active=``). An *armed* interest
delivers one message and is then disarmed (removed from the loop) even though
the fd stays ready; ``port.setopts(active="once")`` re-arms it, as does
``port.read()``, which asks for one message and receives it. Interest in both
directions is one arm: it delivers one message of either kind, and when both
are ready the kind not delivered last goes first, so neither starves. With
``active=True`` it is level-triggered: one message per ready direction per loop
iteration while the fd stays ready, bounded by the inbox, since a full inbox
disarms the interest (the base's ``_pause_reading``) until the receiver drains
it (``_resume_reading`` re-arms). ``active=N`` gives N messages, then
``Passive``. Readiness callbacks only record what is ready; one ``_dispatch``
per loop iteration delivers it, which is where the alternation happens.

The fd: the driver polls its own ``os.dup`` of the caller's fd, not the fd
itself. Why: closing a polled fd under the loop is fatal or worse. uvloop
(libuv) aborts the process; asyncio's epoll loop spins at 100% CPU if the open
file lives on elsewhere (a dup, a fork) since the registration can no longer be
removed; and a reused fd number mixes our interest with the next owner's. With
a private dup none of this can happen: readiness is the same (one open file),
and closing the port removes the interest and closes the dup, never the
caller's fd. The cost: while the port is open, the caller's ``close()`` does
not release the open file (for a socket, no FIN) until the port notices. It
notices for objects with ``fileno()`` (sockets, files): at each event and each
re-arm it checks that ``fileno()`` still returns the fd, and if not (closed,
or garbage-collected) the port ends with ``Error(OSError(EBADF))`` then
``Closed`` and the dup is closed. For a plain int it cannot tell; close the port
before the fd (as asyncio and enif_select require). ``packet`` must be None;
watch ports cannot be written to.
"""

from __future__ import annotations

import errno
import os
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from ..messages import Message, Readable, Writable
from ..port import Port, ReadOnlyPort
from ..watchdog import loop_callback
from .base import Driver, DriverHost
from .options import take_options

__all__ = ["WatchDriver", "watch"]

# Interest and readiness bits.
_READ = 1
_WRITE = 2


class WatchDriver(Driver):
    """Readiness interest in one fd, armed and disarmed by the port's active mode."""

    kind = "watch"

    def __init__(
        self,
        server: DriverHost,
        port: Port,
        *,
        fd: int,
        dup_fd: int,
        owner: Callable[[], Any] | None,
        interest: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(server, port, **kwargs)
        self.fd = fd  # the caller's number, reported in messages
        self._dup = dup_fd  # ours, what the loop polls; -1 once closed
        self._owner = owner  # returns the caller's object (None if gone); None for an int
        self._interest = interest
        self._armed = False  # our callbacks are registered with the loop
        self._ready = 0  # bits seen ready since the last _dispatch
        self._dispatch_scheduled = False
        self._last = 0  # the kind delivered last, for alternation
        self.events = 0  # readiness callbacks seen
        # A passive port is not armed until asked (the base assumes reading).
        self._reading = self._active > 0

    def start(self) -> None:
        """Loop thread: arm if active; raises the loop's OSError (e.g. EPERM for a file)."""
        if self._reading:
            self._arm()

    # Arming.

    def _arm(self) -> None:
        if self._armed or self._dup < 0:
            return
        loop = self.server.loop
        if self._interest & _READ:
            loop.add_reader(self._dup, self._on_readable)
        if self._interest & _WRITE:
            try:
                loop.add_writer(self._dup, self._on_writable)
            except BaseException:
                if self._interest & _READ:
                    loop.remove_reader(self._dup)
                raise
        self._armed = True

    def _disarm(self) -> None:
        if not self._armed:
            return
        self._armed = False
        loop = self.server.loop
        if self._interest & _READ:
            loop.remove_reader(self._dup)
        if self._interest & _WRITE:
            loop.remove_writer(self._dup)

    def _release(self) -> None:
        """Remove the interest and close our dup (never the caller's fd). Idempotent."""
        if self._dup < 0:
            return
        try:
            self._disarm()
        finally:
            dup, self._dup = self._dup, -1
            os.close(dup)

    def _owner_closed(self) -> bool:
        """Whether the caller closed (or dropped) its object: it no longer has our fd."""
        if self._owner is None:
            return False
        obj = self._owner()
        if obj is None:
            return True
        try:
            return bool(obj.fileno() != self.fd)
        except Exception:  # io objects raise ValueError once closed
            return True

    @loop_callback
    def _fail_soon(self, exc: BaseException) -> None:
        """Loop callback: a failure deferred a turn (see ``_resume_reading``)."""
        self.fail(exc)

    @loop_callback
    def _fail_owner_closed(self) -> None:
        self.fail(
            OSError(
                errno.EBADF,
                f"fd {self.fd} was closed by its owner while watched by {self.port!r}; "
                "close the watch port first",
            )
        )

    # Loop callbacks: record readiness, deliver once per iteration.

    @loop_callback
    def _on_readable(self) -> None:
        self._note(_READ)

    @loop_callback
    def _on_writable(self) -> None:
        self._note(_WRITE)

    def _note(self, bit: int) -> None:
        self.events += 1
        self._ready |= bit
        if not self._dispatch_scheduled:
            self._dispatch_scheduled = True
            self.server.loop.call_soon(self._dispatch)

    @loop_callback
    def _dispatch(self) -> None:
        """Loop thread: deliver what was ready, the kind not delivered last first."""
        self._dispatch_scheduled = False
        ready, self._ready = self._ready, 0
        # Disarmed since the callback (a one-shot already went out, the inbox
        # filled, the port closed): drop it; if the fd is still ready, the
        # next arm reports it again (level-triggered).
        if not self._armed or self._closed_queued:
            return
        try:
            if self._owner_closed():
                self._fail_owner_closed()
                return
            first = _WRITE if self._last == _READ else _READ
            for bit in (first, first ^ (_READ | _WRITE)):
                if ready & bit and self._armed:
                    self._last = bit
                    message: Message = (
                        Readable(self.port, self.fd)
                        if bit == _READ
                        else Writable(self.port, self.fd)
                    )
                    self.deliver(message)
        except Exception as exc:
            self.fail(exc)

    # Driver hooks.

    def _pause_reading(self) -> None:
        try:
            self._disarm()
        except Exception as exc:
            self.server.loop.call_soon(self._fail_soon, exc)

    def _resume_reading(self) -> None:
        # Called from inside the base's bookkeeping: failures are deferred a turn.
        if self._owner_closed():
            self.server.loop.call_soon(self._fail_owner_closed)
            return
        try:
            self._arm()
        except Exception as exc:
            self.server.loop.call_soon(self._fail_soon, exc)

    def _close_transport(self) -> None:
        self._release()  # the base then delivers Closed at once

    def _abort(self) -> None:
        self._release()

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["fd"] = self.fd
        info["interest"] = ("r" if self._interest & _READ else "") + (
            "w" if self._interest & _WRITE else ""
        )
        info["armed"] = self._armed
        info["events"] = self.events
        return info


def _fileno(fileobj: Any) -> int:
    """The fd of an int or of an object with ``fileno()``."""
    if isinstance(fileobj, int) and not isinstance(fileobj, bool):
        fd = fileobj
    elif callable(getattr(fileobj, "fileno", None)):
        fd = fileobj.fileno()
        if not isinstance(fd, int):
            raise TypeError(f"{fileobj!r}.fileno() returned {fd!r}, not an int")
    else:
        raise TypeError(f"watch() needs an fd or an object with fileno(), not {fileobj!r}")
    if fd < 0:
        raise ValueError(f"invalid fd {fd} (is {fileobj!r} closed?)")
    return fd


def _owner_ref(fileobj: Any) -> Callable[[], Any] | None:
    """A way to reach the caller's object later: a weak reference when it allows one."""
    if isinstance(fileobj, int):
        return None
    try:
        return weakref.ref(fileobj)
    except TypeError:
        return lambda: fileobj


def watch(
    server: DriverHost, fileobj: Any, readable: bool, writable: bool, options: Mapping[str, Any]
) -> Port:
    """Client side of ``IOServer.watch``: a port delivering readiness of ``fileobj``.

    ``active`` defaults to ``"once"`` (see the module doc). Raises ValueError
    without an interest or with ``packet``, and the OSError of an fd the loop
    cannot poll (EBADF, or EPERM for a regular file).
    """
    options = dict(options)
    options.setdefault("active", "once")
    opts, _ = take_options(options)
    if opts.packet not in (None, "raw"):
        raise ValueError(f"watch ports deliver no data: packet must be None, not {opts.packet!r}")
    if not (readable or writable):
        raise ValueError("watch() needs readable=True and/or writable=True")
    fd = _fileno(fileobj)
    owner = _owner_ref(fileobj)
    interest = (_READ if readable else 0) | (_WRITE if writable else 0)
    port = ReadOnlyPort(server, "watch", opts.inbox, high_water=opts.high_water)
    port.info_extra["fd"] = fd
    dup_fd = os.dup(fd)  # non-inheritable; raises EBADF for a closed fd
    taken = False  # the loop-side function owns dup_fd once it runs

    def open_on_loop() -> None:
        nonlocal taken
        taken = True
        try:
            driver = WatchDriver(
                server,
                port,
                fd=fd,
                dup_fd=dup_fd,
                owner=owner,
                interest=interest,
                **opts.driver_kwargs(),
            )
        except BaseException:
            os.close(dup_fd)
            raise
        try:
            driver.start()
        except BaseException:
            # Never opened: no Closed to deliver, nothing left registered or warned about.
            driver._release()
            port._on_closed()
            driver._after_closed()
            raise

    try:
        server.call(open_on_loop)
    except BaseException:
        if not taken:
            os.close(dup_fd)
        raise
    return port

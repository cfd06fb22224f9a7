"""gevent greenlets as ioserver tasks: the blocking API parks only the calling greenlet.

Theory of operation
-------------------
A greenlet that makes a blocking call (``recv``, ``send`` that must wait,
``select``, ``IOServer.call``) parks on a :class:`GreenletWakeup`: a
``gevent.hub.Waiter`` of its thread's hub, whose ``get()`` switches to the hub
until a value is switched in. The waker that wins the handle's claim stores its
payload and unparks with ``hub.loop.run_callback`` (the hub's own thread) or
``hub.loop.run_callback_threadsafe`` (any other thread): the switch itself runs
later, in the hub, so ``unpark`` never switches, and a late switch into a
waiter whose ``get()`` has ended only stores the value (no stale switch into
a greenlet that waits elsewhere now). A destroyed hub (``loop`` None, or a
dead loop that raises ValueError) makes ``unpark`` return False, and the waker
keeps what it was handing over. While a greenlet is parked its hub keeps one
``async_`` watcher started, or a loop with nothing else to watch would end
(``LoopExit``) before a wakeup from another thread arrives.

A timeout is a hub timer whose callback takes the claim and switches False in.
``gevent.Timeout`` or ``Greenlet.kill()`` thrown into the parked greenlet ends
the block as an exception does for a thread (sched.py): take the claim
(nothing happened) or wait for the winning waker's unpark, whose payload the
caller then undoes (a message goes back to the head of its channel).

Which greenlets: those of a thread that already has a hub
(``gevent.get_hub()`` was called there, as every gevent blocking call does).
A plain thread never gets a hub from ioserver. The hub itself may not block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
from gevent._hub_local import get_hub_if_exists
from gevent.hub import Waiter
from greenlet import getcurrent

from ._handles import WakeupHandle
from ._original import get_ident, local
from ._original import sleep as _sleep

__all__ = ["GeventTask", "GreenletWakeup", "current_greenlet_task"]


class _Keepalive:
    """One started ``async_`` watcher per hub while any of its greenlets is parked."""

    __slots__ = ("parked", "watcher")

    def __init__(self, hub: Any) -> None:
        self.watcher = hub.loop.async_()
        self.parked = 0


def _noop() -> None:
    pass


class GreenletWakeup(WakeupHandle):
    """A handle for a parked greenlet, wakeable from any thread, loop or greenlet."""

    __slots__ = ("_hub", "_thread", "_unparked", "_waiter")

    def __init__(self, hub: Any) -> None:
        super().__init__()
        self._hub = hub
        self._thread = get_ident()
        self._waiter = Waiter(hub)
        self._unparked = False

    def unpark(self) -> bool:
        self._unparked = True
        try:
            loop = self._hub.loop
            if get_ident() == self._thread:
                loop.run_callback(self._waiter.switch, True)
            else:
                loop.run_callback_threadsafe(self._waiter.switch, True)
        except (AttributeError, ValueError):  # the hub or its loop is destroyed
            self._unparked = False
            return False
        return True

    def _expire(self) -> None:
        """The timeout (a hub timer's callback, in the hub): claim and resume False."""
        if self.claim():
            self._waiter.switch(False)

    def park(self, timeout: float | None = None) -> bool:
        """Switch to the hub until woken (True) or ``timeout`` passes (False).

        An exception thrown in (``gevent.Timeout``, ``GreenletExit``) propagates;
        the caller ends the block with :meth:`abort`."""
        if timeout is not None and timeout <= 0:
            if self.claim():
                return False
            timeout = None  # a waker won: its unpark follows
        hub = self._hub
        keep = _keepalive(hub)
        keep.parked += 1
        if keep.parked == 1:
            keep.watcher.start(_noop)
        timer = None
        try:
            if timeout is not None:
                timer = hub.loop.timer(timeout)
                timer.start(self._expire)
            return bool(self._waiter.get())
        finally:
            if timer is not None:
                timer.close()
            keep.parked -= 1
            if keep.parked == 0:
                keep.watcher.stop()

    def abort(self) -> bool:
        """End a block an exception interrupted: True if we took the claim (nothing
        happened); False if a waker had, and then its payload is stored on return
        (a waker never blocks between claim and unpark: the wait is short)."""
        if self.claim():
            return True
        while not self._unparked:
            _sleep(0)  # the waker is another thread: let it run
        return False


_hubs = local()  # .keep: {hub: _Keepalive} of this thread's hubs


def _keepalive(hub: Any) -> _Keepalive:
    keeps: dict[Any, _Keepalive] | None = getattr(_hubs, "keep", None)
    if keeps is None:
        keeps = _hubs.keep = {}
    keep = keeps.get(hub)
    if keep is None or keep.watcher.loop is not hub.loop:
        keep = keeps[hub] = _Keepalive(hub)
    return keep


class GeventTask:
    """The scheduling operations of a greenlet on ``hub`` (its thread's)."""

    __slots__ = ("_hub",)

    def __init__(self, hub: Any) -> None:
        self._hub = hub

    def yield_now(self) -> None:
        """``gevent.sleep(0)``: the other ready greenlets of this hub run once."""
        gevent.sleep(0)

    def block_after(
        self, f: Callable[[WakeupHandle], object], timeout: float | None = None
    ) -> bool:
        """Call ``f(handle)``, then park this greenlet until woken or the timeout
        (see :class:`~ioserver.sched.Task` for what a raise means)."""
        handle = GreenletWakeup(self._hub)
        f(handle)
        try:
            return handle.park(timeout)
        except BaseException:
            handle.abort()
            raise


def current_greenlet_task() -> GeventTask | None:
    """The task of the running greenlet if this thread has a hub (never made
    here), else None (a plain thread). Raises RuntimeError in the hub itself,
    which must never block."""
    hub = get_hub_if_exists()
    if hub is None:
        return None
    if getcurrent() is hub:
        raise RuntimeError(
            "a blocking ioserver call in the gevent hub (a hub callback) would block "
            "every greenlet: spawn a greenlet for it, or use try_recv/try_send"
        )
    return GeventTask(hub)

"""The I/O thread's watchdog: report a callback that has been running too long, while it runs.

The loop never waits on user code (docs/architecture.md), but code can still
hold it: a function given to ``IOServer.call``/``call_soon`` that sleeps or
computes, or a driver callback that does (a transport event, a timer, a
watch). asyncio's ``slow_callback_duration`` reports such a callback after it
returned; this reports it *while it is still stuck*, with the I/O thread's
current stack, so the offending line is in the log when it matters.

Theory of operation
-------------------
The loop runs guarded sections: ``guard(fn)`` wraps the request-queue drain
(every ``call``/``call_soon`` function runs there), :func:`loop_callback`
every driver callback the loop calls (drivers/), and the native core's
``data_received`` (csrc/deliver.c) marks its own. Entering stores the start
time in ``_since``, leaving clears it. Sections nest (a drain that delivers
into a port runs driver code): a section that finds ``_since`` set is inside
another and touches nothing, so the outer start stands and the stall is
counted once, when the outer section ends. Only the loop thread writes
``_since``, so that check is exact. A watchdog thread, started on the first section, looks
at the running section at its deadline (start + limit): if the same section is
still running, it logs one warning with the I/O thread's stack
(``sys._current_frames``), then looks every tenth of the limit until the
section ends. The section is then counted (``stalls``) and timed
(``longest_stall``) once: by the loop thread as it leaves (it reads one
attribute per section to know), or by the watchdog if it notices first (then
to a tenth of the limit).

Idle costs nothing: after a full period in which no section ran, the watchdog
parks on a lock with no timeout, and the next section to start releases it
(the loop thread only looks at a flag otherwise). Under load it wakes once per
``limit`` at most, not once per section, so a section costs one clock read,
two attribute writes and two reads on the loop thread (and a nested one
costs one read).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Callable
from time import monotonic
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from .sched._original import allocate_lock, get_ident, start_new_thread

__all__ = ["DEFAULT_SLOW_CALLBACK", "Watchdog", "loop_callback"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

log = logging.getLogger("ioserver")

#: Seconds a loop callback may run before the watchdog reports it (0.1 s).
DEFAULT_SLOW_CALLBACK = 0.1


class Watchdog:
    """Watches the guarded sections of one I/O thread (see the module doc)."""

    # Slots: the native core reads and writes _since, _parked and _stuck at
    # their offsets (csrc/deliver.c), as the Python sections do by name.
    __slots__ = (
        "_ident",
        "_name",
        "_parked",
        "_since",
        "_stall_lock",
        "_started",
        "_stopped",
        "_stuck",
        "_wake",
        "limit",
        "longest_stall",
        "reports",
        "stalls",
    )

    def __init__(self, limit: float, name: str = "ioserver") -> None:
        if not limit > 0:
            raise ValueError(f"slow_callback must be > 0 seconds, not {limit!r}")
        self.limit = limit
        self._name = name
        self._ident = 0  # the I/O thread (set by the first section)
        self._since = 0.0  # start of the running section; 0.0 between sections
        self._stuck = 0.0  # start of the section reported stuck, until it is counted
        self._stall_lock = allocate_lock()
        self._parked = True  # the watchdog waits on _wake without a timeout
        self._wake = allocate_lock()
        self._wake.acquire()  # released by the section that ends a park
        self._started = False
        self._stopped = False
        #: Sections that ran longer than ``limit``.
        self.stalls = 0
        #: The longest section so far (seconds).
        self.longest_stall = 0.0
        #: Warnings logged (one per stuck section).
        self.reports = 0

    def guard(self, fn: Callable[[], object]) -> Callable[[], None]:
        """``fn`` as a guarded section of the loop thread: one clock read and two
        attribute writes around it (the watchdog thread does the rest); inside
        another section, just ``fn`` (the outer one times both)."""
        now = monotonic

        def guarded() -> None:
            if self._since:  # nested: the outer section's start stands
                fn()
                return
            self._since = now()
            if self._parked:
                self._unpark()
            try:
                fn()
            finally:
                self._since = 0.0
                if self._stuck:  # the watchdog reported this section: time it exactly
                    self._end_stall(now())

        return guarded

    def _end_stall(self, end: float) -> None:
        """A reported section ended (the loop thread at its end, else the watchdog
        when it notices): count it once and time it."""
        with self._stall_lock:
            stuck, self._stuck = self._stuck, 0.0
            if stuck:
                self.stalls += 1
                self.longest_stall = max(self.longest_stall, end - stuck)

    def _unpark(self) -> None:
        """Loop thread, first section after an idle period: wake the watchdog."""
        self._parked = False
        if not self._started:
            self._started = True
            self._ident = get_ident()
            start_new_thread(self._run, ())
        with contextlib.suppress(RuntimeError):  # already released: it is awake
            self._wake.release()

    def stop(self) -> None:
        """End the watchdog thread (the server stopped)."""
        self._stopped = True
        with contextlib.suppress(RuntimeError):
            self._wake.release()

    def _run(self) -> None:
        """The watchdog thread: look at the running section at its deadline; while one
        is stuck, look every tenth of the limit to time it; park after an idle period."""
        nap = allocate_lock()
        nap.acquire()  # never released: acquire(timeout) is an interruptible sleep
        limit = self.limit
        while not self._stopped:
            self._wake.acquire()  # parked until a section starts
            idle = False
            while not self._stopped:
                since = self._since
                now = monotonic()
                stuck = self._stuck
                if stuck and since != stuck:  # it ended and the loop did not count it yet
                    self._end_stall(now)
                    stuck = 0.0
                if since and not stuck and now - since >= limit:
                    self._stuck = stuck = since
                    self._report(now - since)
                if not since and not stuck:
                    if idle:
                        break  # a whole period without a section running: park
                    idle = True
                else:
                    idle = False
                if stuck:
                    wait = limit / 10
                elif since:
                    wait = max(since + limit - now, 0.001)
                else:
                    wait = limit
                nap.acquire(True, wait)
            self._parked = True
            if self._since:  # a section started as we parked: look again
                with contextlib.suppress(RuntimeError):
                    self._wake.release()

    def _report(self, stuck: float) -> None:
        frame = sys._current_frames().get(self._ident)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(unknown)\n"
        self.reports += 1
        log.warning(
            "%s: the I/O thread has been stuck in one callback for %.0f ms "
            "(slow_callback %.0f ms); every port waits. Its stack:\n%s",
            self._name,
            stuck * 1000,
            self.limit * 1000,
            stack,
        )


class _Watched(Protocol):
    """What :func:`loop_callback` needs of the object: its server's watchdog."""

    @property
    def _watchdog(self) -> Watchdog | None: ...


_W = TypeVar("_W", bound=_Watched)


def loop_callback(
    method: Callable[Concatenate[_W, _P], _R],
) -> Callable[Concatenate[_W, _P], _R]:
    """Decorate a method the event loop calls (a protocol callback, a timer, a
    reader) as a guarded section of its object's ``_watchdog`` (None: no
    watchdog, one attribute read). Nested in another section it only calls
    ``method`` (see the module doc)."""
    now = monotonic

    def guarded(self: _W, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        wd: Any = self._watchdog
        if wd is None or wd._since:
            return method(self, *args, **kwargs)
        wd._since = now()
        if wd._parked:
            wd._unpark()
        try:
            return method(self, *args, **kwargs)
        finally:
            wd._since = 0.0
            if wd._stuck:
                wd._end_stall(now())

    guarded.__name__ = method.__name__
    guarded.__qualname__ = method.__qualname__
    guarded.__doc__ = method.__doc__
    guarded.__module__ = method.__module__
    return guarded

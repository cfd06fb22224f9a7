"""The I/O thread's watchdog: report a callback that has been running too long, while it runs.

The loop never waits on user code (docs/architecture.md), but user code can
still hold it: a function given to ``IOServer.call``/``call_soon`` that sleeps
or computes. asyncio's ``slow_callback_duration`` reports such a callback after
it returned; this reports it *while it is still stuck*, with the I/O thread's
current stack, so the offending line is in the log when it matters.

Theory of operation
-------------------
The loop runs guarded sections (``guard(fn)`` wraps the request-queue drain,
where every ``call``/``call_soon`` function runs): entering stores the start
time and bumps a generation; leaving clears the start time and records the
section's duration (``stalls``: sections longer than the limit;
``longest_stall``). A watchdog thread, started on the first section, checks the
current section at its deadline (start + limit): if the same section is still
running, it logs one warning with the I/O thread's stack
(``sys._current_frames``), and none again for that section.

Idle costs nothing: after a full period in which no section ran, the watchdog
parks on a lock with no timeout, and the next section to start releases it
(the loop thread only looks at a flag otherwise). Under load it wakes once per
``limit`` at most, not once per section, so a section costs two clock reads
and a few attribute writes.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Callable
from time import monotonic

from .sched._original import allocate_lock, get_ident, start_new_thread

__all__ = ["DEFAULT_SLOW_CALLBACK", "Watchdog"]

log = logging.getLogger("ioserver")

#: Seconds a loop callback may run before the watchdog reports it (0.1 s).
DEFAULT_SLOW_CALLBACK = 0.1


class Watchdog:
    """Watches the guarded sections of one I/O thread (see the module doc)."""

    def __init__(self, limit: float, name: str = "ioserver") -> None:
        if not limit > 0:
            raise ValueError(f"slow_callback must be > 0 seconds, not {limit!r}")
        self.limit = limit
        self._name = name
        self._ident = 0  # the I/O thread (set by the first section)
        self._since = 0.0  # start of the running section; 0.0 between sections
        self._gen = 0  # sections entered
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
        """``fn`` as a guarded section of the loop thread."""

        def guarded() -> None:
            start = self._enter()
            try:
                fn()
            finally:
                self._leave(start)

        return guarded

    def _enter(self) -> float:
        self._since = start = monotonic()
        self._gen += 1
        if self._parked:
            self._parked = False
            if not self._started:
                self._started = True
                self._ident = get_ident()
                start_new_thread(self._run, ())
            with contextlib.suppress(RuntimeError):  # already released: it is awake
                self._wake.release()
        return start

    def _leave(self, start: float) -> None:
        took = monotonic() - start
        self._since = 0.0
        if took > self.limit:
            self.stalls += 1
            if took > self.longest_stall:
                self.longest_stall = took

    def stop(self) -> None:
        """End the watchdog thread (the server stopped)."""
        self._stopped = True
        with contextlib.suppress(RuntimeError):
            self._wake.release()

    def _run(self) -> None:
        """The watchdog thread."""
        nap = allocate_lock()
        nap.acquire()  # never released: acquire(timeout) is an interruptible sleep
        reported = 0
        while not self._stopped:
            self._wake.acquire()  # parked until a section starts
            seen = -1
            while not self._stopped:
                since, gen = self._since, self._gen
                now = monotonic()
                if since and gen != reported and now - since >= self.limit:
                    self._report(now - since)
                    reported = gen
                if not since and gen == seen:
                    break  # a whole period without a section: park
                seen = gen
                wait = self.limit
                if since and gen != reported:
                    wait = max(since + self.limit - now, 0.001)
                nap.acquire(True, wait)
            self._parked = True
            if self._gen != seen:  # a section started as we parked: look again
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

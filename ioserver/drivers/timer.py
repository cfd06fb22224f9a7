"""Timers: ``send_after`` (a message on any channel after a delay) and ``interval`` ports.

Theory of operation
-------------------
Each server has one :class:`TimerHeap`, made lazily on the loop thread and
kept on the server (``server._timer_heap``). It holds every pending timer in
a binary heap ordered by ``(deadline, seq)`` (``seq`` counts additions, so
timers with the same deadline fire in submission order) and keeps exactly
**one** loop timer (``loop.call_later``) armed for the earliest deadline. The
invariant: ``server._requests.next_wakeup`` equals the deadline of that armed
loop timer, or +inf when none is armed. The loop timer is re-armed only when
the earliest deadline changes (Netty's ``prevDeadlineNanos``). Deadlines are
``time.monotonic()`` values; the loop timer is armed with ``call_later(deadline
- monotonic())`` so the loop's own clock (uvloop: milliseconds, truncated) never
needs converting. A loop timer that fires a little early (uvloop rounds to the
millisecond) finds nothing due and is simply re-armed: timers never fire
before their deadline.

Deadline-aware wakeups (lesson 1, docs/architecture.md). ``send_after`` submits its "add" request
with ``deadline=``: if the deadline is not earlier than the loop's armed
wakeup, ``RequestQueue.submit`` writes nothing to the pipe (``skipped_wakeups``
counts these). That is safe because the request is queued before the producer
reads ``next_wakeup``, and the loop drains the queue (``wake_at``) before it
runs the timers due at that armed deadline; a producer that raced a change of
``next_wakeup`` sees the change on its re-read and wakes the loop the ordinary
way. So the add is in the heap by the time its deadline can be due. The fire
path therefore is:

1. the armed loop timer fires: forget it, ``wake_at()`` (drains the queue, so
   skipped adds join the heap), set ``next_wakeup`` to +inf (nothing armed);
2. if requests are still queued (the drain hit its batch limit, another drain
   is pending, or a producer slipped in after the drain), the due timers run
   as a request *behind* them (FIFO), so an earlier deadline still queued is
   in the heap first and deadline order holds;
3. run every due timer (at most ``FIRE_BATCH`` per pass; the rest in a
   following request, so a burst of due timers cannot starve I/O), then arm
   the loop timer for the new earliest deadline and set ``next_wakeup``.

Moving ``next_wakeup`` later is only safe where no producer can have skipped
its wakeup against the old value unseen: inside a drain (any request handler:
the rest of the drain sees whatever was appended before the change) or at the
end of the fire path (producers saw +inf there, so they wrote the pipe). The
heap changes the armed deadline in no other place.

Cancellation is lazy: ``Timer.cancel()`` wins an atomic claim (a
``_thread`` lock's ``acquire(False)``, as in sched.py) shared with the firing
path, so exactly one of "cancelled" and "fired" happens, from any thread,
without blocking. The heap entry stays until it reaches the top or until more
than half of the heap is known to be cancelled, when the heap is compacted
(``cancel`` tells the loop with a request that carries the timer's deadline, so
a cancel costs no wakeup either).

Delivery never blocks the loop: ``try_send``; a full channel gets a backlog
(per channel, in deadline order; later timers for it queue behind) and a
``_notify_when_room`` callback, which only submits the retry to the loop. A
message for a closed channel is dropped (``dropped`` in ``loop_info``).

Interval ports (:func:`interval`) deliver ``Tick(port, count)`` through the
driver base, so inbox=, active= and Closed-once work as for every port. The
next deadline is the previous *deadline* plus the period (no drift). Two
deliberate differences from Erlang's timers, to bound memory and bursts:

* coalescing: while a Tick is still undelivered (the inbox is full or the
  port is passive) a new tick replaces it instead of queueing another, so the
  driver holds at most one Tick; its ``count`` keeps counting;
* skipping: if the loop is late by a period or more, the missed ticks are not
  delivered in a burst; the next tick carries the count of every period
  elapsed and the schedule continues on the original grid.

So ``count`` always equals the number of periods elapsed since the port
opened, and a jump in it says how many ticks were coalesced or skipped.
"""

from __future__ import annotations

import heapq
import logging
import math
from _thread import allocate_lock
from collections import deque
from collections.abc import Mapping
from time import monotonic
from typing import Any

from ..channel import Channel, ChannelClosed, Full
from ..messages import Tick, make_tick
from ..port import Port, ReadOnlyPort
from ..requests import RequestQueue, ServerStopped
from ..watchdog import Watchdog, loop_callback
from .base import Driver, DriverHost
from .options import take_options

__all__ = [
    "FIRE_BATCH",
    "IntervalDriver",
    "Timer",
    "TimerHeap",
    "heap_of",
    "interval",
    "loop_info",
    "send_after",
]

log = logging.getLogger("ioserver")

_INF = float("inf")
#: Most timers one pass of the fire path runs before it lets I/O callbacks run.
FIRE_BATCH = 1024
#: Heaps at most this big are never compacted (scanning them costs nothing).
_COMPACT_MIN = 64


class _Entry:
    """Something the heap runs at a deadline (loop-thread bookkeeping only)."""

    __slots__ = ("_counted", "_in_heap", "deadline")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self._in_heap = False  # an item of the heap refers to this entry
        self._counted = False  # counted in TimerHeap.cancelled

    def _is_cancelled(self) -> bool:
        raise NotImplementedError

    def _fire(self, heap: TimerHeap, now: float) -> bool:
        """Go off (fire path); False if it was cancelled instead."""
        raise NotImplementedError


class Timer(_Entry):
    """A pending ``send_after``: delivers ``message`` to its channel at ``deadline``.

    ``cancel()`` from any thread; ``cancelled`` and ``fired`` tell which of the
    two happened (at most one ever does). ``deadline`` is a ``time.monotonic()``
    value.
    """

    __slots__ = ("_cancelled", "_claim", "_fired", "_message", "_server", "_target")

    def __init__(
        self, server: DriverHost, deadline: float, target: Channel[Any] | Port, message: Any
    ) -> None:
        super().__init__(deadline)
        self._server = server
        self._target: Channel[Any] | Port | None = target
        self._message = message
        # Won by exactly one of cancel() and the firing path; never released.
        self._claim = allocate_lock()
        self._cancelled = False
        self._fired = False

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else "fired" if self._fired else "pending"
        return f"<Timer {state} deadline={self.deadline:.6f}>"

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel()`` stopped the timer before it fired."""
        return self._cancelled

    @property
    def fired(self) -> bool:
        """Whether the timer went off (its message is delivered, or waits for room
        in a full channel, or was dropped because the channel was closed)."""
        return self._fired

    def cancel(self) -> bool:
        """Stop the timer. True iff it had not fired yet (then its message never
        arrives); False if it fired or was cancelled before. Any thread; never blocks."""
        if not self._claim.acquire(False):
            return False
        self._cancelled = True
        self._target = self._message = None
        try:
            # Only bookkeeping (heap compaction): not needed before the deadline,
            # so it costs no wakeup either.
            self._server._requests.submit(
                _note_cancelled, self._server, self, deadline=self.deadline
            )
        except ServerStopped:
            pass
        return True

    def _is_cancelled(self) -> bool:
        # On the loop a claimed timer still in the heap was claimed by cancel().
        return self._claim.locked()

    def _fire(self, heap: TimerHeap, now: float) -> bool:
        if not self._claim.acquire(False):
            return False  # cancelled
        self._fired = True
        target, message = self._target, self._message
        self._target = self._message = None
        channel = target.inbox if isinstance(target, Port) else target
        if channel is not None:
            heap.deliver(channel, message)
        return True


class _IntervalEntry(_Entry):
    """The heap entry of an interval port (loop thread only)."""

    __slots__ = ("cancelled", "driver")

    def __init__(self, deadline: float, driver: IntervalDriver) -> None:
        super().__init__(deadline)
        self.driver = driver
        self.cancelled = False

    def _is_cancelled(self) -> bool:
        return self.cancelled

    def _fire(self, heap: TimerHeap, now: float) -> bool:
        if self.cancelled:
            return False
        self.driver._on_deadline(self, now)
        return True


class TimerHeap:
    """All timers of one server, with one armed loop timer (loop thread only)."""

    def __init__(self, server: DriverHost) -> None:
        self.server = server
        self.loop = server.loop
        self.requests: RequestQueue = server._requests
        #: The server's watchdog: the loop timer's callback is a section of it.
        self._watchdog: Watchdog | None = getattr(server, "_watchdog", None)
        # (deadline, seq, entry); seq breaks ties in addition order.
        self.heap: list[tuple[float, int, _Entry]] = []
        self._seq = 0
        #: Entries in the heap known (to the loop) to be cancelled.
        self.cancelled = 0
        self._handle: Any = None  # the armed loop TimerHandle
        self._armed = _INF  # its deadline
        # The fire path is running or queued and will arm at its end: nothing
        # else arms meanwhile (an intermediate next_wakeup could be moved later
        # outside a drain, see the module docstring).
        self._hold = False
        # Per-channel messages waiting for room, in deadline order.
        self._backlog: dict[Channel[Any], deque[Any]] = {}
        self.fired = 0
        self.dropped = 0
        self.compactions = 0
        self.loop_timer_fires = 0

    # -- the heap -------------------------------------------------------------------

    def push(self, entry: _Entry, deadline: float) -> None:
        """Add ``entry`` at ``deadline`` (inside a request or the fire path)."""
        entry.deadline = deadline
        entry._in_heap = True
        entry._counted = False
        self._seq += 1
        heapq.heappush(self.heap, (deadline, self._seq, entry))
        if deadline < self._armed and not self._hold:
            self._arm()

    def add(self, timer: Timer) -> None:
        """The request ``send_after`` submits."""
        if timer._is_cancelled():
            return
        self.push(timer, timer.deadline)

    def note_cancelled(self, entry: _Entry) -> None:
        """``entry`` was cancelled: count it; compact when most of the heap is cancelled."""
        if not entry._in_heap or entry._counted:
            return
        entry._counted = True
        self.cancelled += 1
        heap = self.heap
        if self.cancelled * 2 > len(heap) and len(heap) > _COMPACT_MIN:
            self.compact()
        elif heap[0][2] is entry and not self._hold:
            self._arm()  # the earliest went: arm for the next one

    def compact(self) -> None:
        """Drop every cancelled entry (O(n)); re-arm if the earliest changed."""
        kept = []
        for item in self.heap:
            entry = item[2]
            if entry._is_cancelled():
                entry._in_heap = False
            else:
                kept.append(item)
        heapq.heapify(kept)
        self.heap = kept
        self.cancelled = 0
        self.compactions += 1
        if not self._hold:
            self._arm()

    def _pop_cancelled_top(self) -> None:
        heap = self.heap
        while heap and heap[0][2]._is_cancelled():
            entry = heapq.heappop(heap)[2]
            entry._in_heap = False
            if entry._counted:
                self.cancelled -= 1

    def _arm(self) -> None:
        """Arm the loop timer for the earliest live deadline, if it changed.

        Only inside a request or at the end of the fire path (see the module
        docstring: that is what makes moving ``next_wakeup`` later safe).
        """
        self._pop_cancelled_top()
        deadline = self.heap[0][0] if self.heap else _INF
        if deadline == self._armed:
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if deadline != _INF:
            delay = max(0.0, deadline - monotonic())
            self._handle = self.loop.call_later(delay, self._on_loop_timer)
        self._armed = deadline
        self.requests.next_wakeup = deadline

    # -- the fire path --------------------------------------------------------------

    @loop_callback
    def _on_loop_timer(self) -> None:
        """Loop callback: the armed deadline came."""
        self._handle = None
        self._armed = _INF
        self.loop_timer_fires += 1
        self._hold = True  # the adds the drain below runs must not arm
        requests = self.requests
        requests.wake_at()  # first: skipped adds join the heap
        requests.next_wakeup = _INF  # nothing is armed now: producers write the pipe
        if requests.pending():
            self._queue_fire()
            return
        self._fire_due()

    def _queue_fire(self) -> None:
        """Run ``_fire_due`` as a request, behind everything queued now."""
        self._hold = True
        try:
            self.requests.submit(self._fire_due)
        except ServerStopped:
            self._hold = False

    def _fire_due(self) -> None:
        """Run the due timers (up to FIRE_BATCH), then re-arm."""
        self._hold = True
        heap = self.heap
        now = monotonic()
        n = 0
        while heap and heap[0][0] <= now:
            if n == FIRE_BATCH:
                self.fired += n
                self._queue_fire()
                return
            entry = heapq.heappop(heap)[2]
            entry._in_heap = False
            if entry._counted:
                self.cancelled -= 1
            try:
                if entry._fire(self, now):
                    n += 1
            except Exception:  # a bug in one timer must not stall the others
                log.exception("ioserver: timer %r failed", entry)
        self.fired += n
        self._hold = False
        self._arm()

    # -- delivery -------------------------------------------------------------------

    def deliver(self, channel: Channel[Any], message: Any) -> None:
        """Send without blocking; behind this channel's backlog if it has one."""
        backlog = self._backlog.get(channel)
        if backlog is not None:
            backlog.append(message)
            return
        try:
            channel.try_send(message)
        except Full:
            self._backlog[channel] = deque([message])
            self._wait_for_room(channel)
        except ChannelClosed:
            self.dropped += 1

    def _wait_for_room(self, channel: Channel[Any]) -> None:
        def on_room() -> None:  # in a receiving thread, under the channel's lock
            try:
                self.requests.submit(self._on_room, channel)
            except ServerStopped:
                pass

        if not channel._notify_when_room(on_room):
            try:
                self.requests.submit(self._on_room, channel)  # room already: retry soon
            except ServerStopped:
                pass

    def _on_room(self, channel: Channel[Any]) -> None:
        backlog = self._backlog.get(channel)
        if backlog is None:
            return
        while backlog:
            try:
                channel.try_send(backlog[0])
            except Full:
                self._wait_for_room(channel)
                return
            except ChannelClosed:
                self.dropped += len(backlog)
                break
            backlog.popleft()
        del self._backlog[channel]

    def info(self) -> dict[str, Any]:
        """Counters and sizes (loop thread)."""
        return {
            "size": len(self.heap),
            "cancelled": self.cancelled,
            "armed": self._armed,
            "next_wakeup": self.requests.next_wakeup,
            "fired": self.fired,
            "dropped": self.dropped,
            "compactions": self.compactions,
            "loop_timer_fires": self.loop_timer_fires,
            "backlog": sum(len(b) for b in self._backlog.values()),
        }


def heap_of(server: DriverHost) -> TimerHeap:
    """The server's timer heap, made on first use (loop thread only)."""
    heap: TimerHeap | None = getattr(server, "_timer_heap", None)
    if heap is None:
        heap = TimerHeap(server)
        # A lazy slot the server does not declare (DriverHost's docstring).
        setattr(server, "_timer_heap", heap)  # noqa: B010
    return heap


def loop_info(server: DriverHost) -> dict[str, Any]:
    """The timer heap's counters (loop thread: use ``io.call(loop_info, io)``)."""
    return heap_of(server).info()


def _add(server: DriverHost, timer: Timer) -> None:
    heap_of(server).add(timer)


def _note_cancelled(server: DriverHost, timer: Timer) -> None:
    # The add ran before this note (FIFO: cancel() needs the Timer send_after returns).
    heap: TimerHeap | None = getattr(server, "_timer_heap", None)
    if heap is not None:
        heap.note_cancelled(timer)


def _check_delay(delay: float, what: str) -> float:
    try:
        value = float(delay)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number, not {type(delay).__name__}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, not {delay!r}")
    return value


def send_after(
    server: DriverHost, delay: float, channel: Channel[Any] | Port, message: Any
) -> Timer:
    """Deliver ``message`` to ``channel`` (a Channel, or a Port: into its inbox at the
    time it fires) ``delay`` seconds from now; any thread. Returns the Timer.

    Raises TypeError for another kind of target, ValueError for a negative or
    non-finite delay or a rendezvous channel (the loop could not deliver into
    it without blocking), ServerStopped once the server stopped.
    """
    seconds = _check_delay(delay, "delay")
    if isinstance(channel, Channel):
        if channel.capacity == 0:
            raise ValueError("a timer cannot deliver into a rendezvous channel (capacity=0)")
    elif not isinstance(channel, Port):
        raise TypeError(f"channel must be a Channel or a Port, not {type(channel).__name__}")
    requests: RequestQueue = server._requests
    deadline = monotonic() + seconds
    timer = Timer(server, deadline, channel, message)
    requests.submit(_add, server, timer, deadline=deadline)
    return timer


# -- interval ports ------------------------------------------------------------------


class IntervalDriver(Driver):
    """An interval port: ``Tick(port, count)`` every ``period`` seconds."""

    kind = "interval"

    def __init__(
        self,
        server: DriverHost,
        port: Port,
        period: float,
        first_deadline: float,
        active: bool | int | str = True,
    ) -> None:
        super().__init__(server, port, active=active)
        self.period = period
        self.count = 0
        self.coalesced = 0
        self.skipped = 0
        self._heap = heap_of(server)
        self._entry: _IntervalEntry | None = _IntervalEntry(first_deadline, self)
        port.info_extra["period"] = period
        self._heap.push(self._entry, first_deadline)

    def _on_deadline(self, entry: _IntervalEntry, now: float) -> None:
        """A tick is due (fire path): count, deliver or coalesce, schedule the next."""
        period = self.period
        deadline = entry.deadline
        missed = int((now - deadline) // period) if now - deadline >= period else 0
        nxt = deadline + (missed + 1) * period
        while nxt <= now:  # float rounding
            missed += 1
            nxt += period
        self.skipped += missed
        self.count += missed + 1
        self._tick(make_tick(self.port, self.count))
        if not entry.cancelled:
            self._heap.push(entry, nxt)

    def _tick(self, tick: Tick) -> None:
        if self._closed_queued:
            return
        pending = self._pending
        if pending and isinstance(pending[-1], Tick):
            pending[-1] = tick  # coalesce: at most one undelivered Tick
            self.coalesced += 1
            return
        self.deliver(tick)

    def _stop_timer(self) -> None:
        entry = self._entry
        if entry is not None:
            self._entry = None
            entry.cancelled = True
            self._heap.note_cancelled(entry)

    # Driver hooks: closing stops the schedule; Closed goes out at once (base).

    def _close_transport(self) -> None:
        self._stop_timer()

    def _abort(self) -> None:
        self._stop_timer()

    def info(self) -> dict[str, Any]:
        info = super().info()
        info.update(
            period=self.period,
            count=self.count,
            coalesced=self.coalesced,
            skipped=self.skipped,
            next_deadline=None if self._entry is None else self._entry.deadline,
        )
        return info


def interval(server: DriverHost, period: float, options: Mapping[str, Any]) -> Port:
    """Client side of ``IOServer.interval``: a port of kind "interval" delivering
    ``Tick(port, count)`` every ``period`` seconds, the first one ``period``
    seconds from now. Takes the port options ``inbox`` and ``active``; ``packet``
    must be None. Never blocks (the port opens on the loop, before any command
    sent to it). Raises ServerStopped once the server stopped."""
    seconds = _check_delay(period, "period")
    if seconds == 0:
        raise ValueError("period must be > 0")
    opts, _ = take_options(dict(options))
    if opts.packet is not None:
        raise ValueError(
            f"interval ports deliver Tick messages: packet must be None, not {opts.packet!r}"
        )
    port = ReadOnlyPort(server, "interval", opts.inbox)
    port.info_extra["period"] = seconds  # known now: the repr need not wait for the loop
    first = monotonic() + seconds
    server._requests.submit(_open_interval, server, port, seconds, first, opts.active)
    return port


def _open_interval(
    server: DriverHost, port: Port, period: float, first: float, active: bool | int | str
) -> None:
    # A close() that came first is a request behind this one: it finds the driver.
    IntervalDriver(server, port, period, first, active)

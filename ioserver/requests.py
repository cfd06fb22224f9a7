"""The request queue and coalescing self-pipe: the only way into the loop thread.

Theory of operation
-------------------
Producers (any thread) append a request to ``_queue``, a deque, and make sure
the loop will look at it. The loop drains the queue in batches.

One token says "a drain is pending": ``_pending``, a ``_thread`` lock held
while a pipe byte is in flight or a drain is scheduled. A producer that wins
``_pending.acquire(False)`` writes one byte to the pipe; every other producer
knows a drain is coming and writes nothing. So under load many requests cost
one ``write`` (Netty's ``wakenUp`` flag, ZeroMQ's ypipe ``flush``).

The loop, woken by the pipe, drains the pipe and then the queue, in batches
of at most ``max_batch`` requests or ``quantum`` seconds (Netty 4.2's task
quantum; the clock is read every 64 requests, as Netty does, because reading
it costs more than a small request). If requests remain, it schedules another
drain with ``call_soon`` (keeping the token: producers still write nothing)
so I/O callbacks run in between: a flood of requests cannot starve I/O.
When the queue is empty it releases the token and then looks at the queue
once more. Why no wakeup is lost:
  [1] ``deque.append``/``popleft`` are atomic; the token is a lock, so
      ``acquire(False)`` is an atomic test-and-set;
  [2] a producer appends *before* it tries the token;
  [3] the loop releases the token *before* its last look at the queue.
A producer that failed the token at [2] saw it held, i.e. before [3], so the
loop's last look sees its request; a producer after [3] wins the token and
writes the pipe.

Requests submitted from the loop thread itself never touch the pipe: they take
the token and schedule the drain with ``call_soon``.

Timers (lesson 1, docs/architecture.md): a request with a ``deadline`` that is not earlier than the
loop's armed wakeup (``next_wakeup``) needs no pipe write at all: the loop
drains the queue when it wakes for that deadline (see ``wake_at``). The
producer re-reads ``next_wakeup`` after its append; if the loop moved it
meanwhile (it sets it to +inf, "nothing armed", before it drains), the
producer falls back to the ordinary wakeup.

Shutdown (lesson 7, docs/architecture.md): ``close()`` runs on the loop thread: it sets ``_done``,
then drains whatever is queued, rejecting each request. A producer checks
``_done`` before it appends and again after; if it sees ``_done`` only
after, it takes ``_lock`` (which ``close`` holds for its final drain) and looks
for its request: still queued means nobody will run it, so it removes it and
raises ServerStopped; gone means the final drain handled it. So each submit
falls completely before the shutdown (its request is run or rejected with a
callback) or completely after it (submit raises).

The native core
---------------
With the compiled core (``ioserver._native``, see ``_core``), ``RequestQueue`` is
:class:`NativeRequestQueue`: the same contract, with the queue, the token, the pipe,
the drain and the counters in C (ioserver/csrc/queue.c, whose header comment
gives its argument). There the GIL is the only mutex: "append, then take the
token if free", the drain's "release the token, then look once more", and
close's "mark done, take everything queued" are each one step that runs no
Python code, so no late producer has anything to withdraw. The pipe byte is
written with the GIL released (the woken loop thread then finds it free), and
a close during such a write leaves the fds to that writer to close. :class:`PyRequestQueue`
is this module's pure-Python queue, importable in both modes.

Fork (lesson 11, docs/architecture.md): the pipe is close-on-exec, and in a forked child every
copy of a queue is marked done (``os.register_at_fork``), its queued requests
(the parent's) dropped and the child's copies of the pipe fds closed: the loop
thread does not exist in the child, so a submit there raises ServerStopped
("... inherited through fork ...") at once, and a child never writes the
parent's pipe. (Closing the child's copies leaves the parent's pipe open.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any

from ._core import native
from .sched import WakeupHandle
from .sched._original import allocate_lock, get_ident

if TYPE_CHECKING:
    from ._native import RequestQueue as _RequestQueue
elif native is not None:
    _RequestQueue = native.RequestQueue

__all__ = ["PyRequestQueue", "Request", "RequestQueue", "ServerStopped"]

log = logging.getLogger("ioserver")

_get_ident = get_ident  # the OS thread's, even under gevent's patching

#: Most requests one drain runs before it lets I/O callbacks run. 1024 keeps
#: a batch of no-op requests near 0.2 ms here, while a burst of 200k requests
#: still needs only ~200 loop iterations.
DEFAULT_MAX_BATCH = 1024
#: Longest a drain runs before it yields to I/O (seconds), checked every 64 requests.
DEFAULT_QUANTUM = 0.002
#: Wakeups in a row that found nothing to do before the loop is said to spin
#: (Netty's selectorAutoRebuildThreshold is 512; we only log, once per streak).
SPIN_THRESHOLD = 512


class ServerStopped(RuntimeError):
    """Raised by every submission to an I/O server that has stopped (or was
    inherited through ``fork``); also what waiters get when their request is
    dropped at shutdown."""


#: A queued call: ``(fn, args, reject)``; ``reject(exc)`` runs if ``fn`` never will.
#: A plain tuple (an object per request cost ~0.2 us of a ~0.5 us submit); a late
#: producer finds its own by identity (see ``_withdraw``).
Request = tuple[
    Callable[..., object],
    tuple[Any, ...],
    "Callable[[BaseException], object] | WakeupHandle | None",
]


_INF = float("inf")


class PyRequestQueue:
    """The request queue of one loop, and the pipe that wakes it (pure Python)."""

    def __init__(
        self, *, max_batch: int = DEFAULT_MAX_BATCH, quantum: float = DEFAULT_QUANTUM
    ) -> None:
        if max_batch < 1 or not quantum >= 0:
            raise ValueError(
                f"RequestQueue: max_batch must be >= 1 (got {max_batch}) and quantum a number >= 0"
            )
        self._queue: deque[Request] = deque()
        # Held while a drain is pending (pipe byte in flight or call_soon'd).
        self._pending = allocate_lock()
        # Held by close() for its final drain; late producers wait on it
        # (only at shutdown, never on the hot path).
        self._lock = allocate_lock()
        self._done = False
        # What a submit after the end raises with (fork changes it).
        self._why = "the I/O server has stopped"
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Guards closing the pipe against a producer inside write() (see _write_pipe).
        self._fd_lock = allocate_lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        # The drain the loop schedules itself (call_soon): _drain, through the
        # watchdog's guard once attached with one.
        self._drain_soon: Callable[[], None] = self._drain
        self.max_batch = max_batch
        self.quantum = quantum
        #: The monotonic time the loop has a wakeup armed for (inf: none).
        #: Written by the loop thread only; read by producers without a lock.
        self.next_wakeup = _INF
        # Counters, written by the loop thread only (pipe_writes: by producers,
        # approximate under races, which is fine for a statistic).
        self.requests = 0
        self.batches = 0
        self.pipe_writes = 0
        self.empty_wakeups = 0
        self._empty_streak = 0  # empty wakeups in a row (loop thread only)
        self.skipped_wakeups = 0
        self.max_batch_seen = 0
        self.longest_batch = 0.0
        _LIVE.add(self)

    # -- producer side: any thread ------------------------------------------------

    def submit(
        self,
        fn: Callable[..., object],
        *args: Any,
        reject: Callable[[BaseException], object] | WakeupHandle | None = None,
        deadline: float | None = None,
    ) -> None:
        """Run ``fn(*args)`` on the loop thread, soon, in submission (FIFO) order.

        Safe from any thread, including the loop thread (which never touches
        the pipe). Raises ServerStopped if the server has stopped; a call that
        doesn't raise is guaranteed to run ``fn`` or, if the server stops
        first, ``reject(exc)`` (when given; a WakeupHandle as ``reject`` is woken with
        ``(False, exc)``). Exceptions from ``fn`` are logged
        and do not stop the loop.

        ``deadline`` (a ``time.monotonic()`` value) marks a request that is
        not needed before that time: it wakes the loop only if the loop would
        otherwise sleep past it.
        """
        if self._done:
            raise ServerStopped(self._why)
        request = (fn, args, reject)
        self._queue.append(request)
        if self._done:
            self._withdraw(request)
            return
        if deadline is not None:
            armed = self.next_wakeup
            if deadline >= armed and self.next_wakeup == armed:
                self.skipped_wakeups += 1
                return
        if self._pending.acquire(False):  # no drain pending: we must start one
            if _get_ident() == self._thread:
                self._loop.call_soon(self._drain_soon)  # type: ignore[union-attr]
            else:
                self._write_pipe()

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        """``submit(fn, *args)`` without options: what ``IOServer.call_soon`` is bound to."""
        self.submit(fn, *args)

    def _write_pipe(self) -> None:
        self.pipe_writes += 1
        # _fd_lock: close() must not close (and the kernel reuse) the fd number
        # while a producer is inside write() with the GIL released. Taken once
        # per wakeup, not per request; held only around a non-blocking write.
        with self._fd_lock:
            if self._wfd < 0:
                return  # closed: the server stopped
            try:
                os.write(self._wfd, b"\0")
            except BlockingIOError:
                pass  # the pipe is full, so the loop has bytes to read: it will wake

    def _withdraw(self, request: Request) -> None:
        """A submit saw ``_done`` after its append: undo it (raise), or learn it ran.

        Under ``_lock`` nobody consumes the queue any more (close() emptied it
        holding the lock), and late producers only append on the right, so an
        index found in an atomic snapshot stays valid for ``del``.
        """
        with self._lock:
            for i, item in enumerate(list(self._queue)):
                if item is request:
                    del self._queue[i]
                    raise ServerStopped(self._why)
        # Not there: the final drain took it, so it was run or rejected.

    # -- loop side ------------------------------------------------------------------

    def attach(
        self, loop: asyncio.AbstractEventLoop, guard: Callable[[Any], Any] | None = None
    ) -> None:
        """Loop thread: start listening to the pipe (each drain through ``guard``,
        the server's watchdog, if given: the pipe's and the ones the loop
        schedules itself, a continued batch or a loop-thread submit)."""
        self._loop = loop
        self._thread = _get_ident()
        if guard is not None:
            self._drain_soon = guard(self._drain)
        loop.add_reader(self._rfd, self._on_pipe if guard is None else guard(self._on_pipe))

    def _on_pipe(self) -> None:
        """Loop thread: the pipe is readable; drain it, then the queue."""
        # One read: producers write one byte per drain (the token), so 4096
        # bytes can only be there after a fork's stray writes; a second read
        # that fails with EAGAIN cost 1.7 us a wakeup here.
        try:
            os.read(self._rfd, 4096)
        except BlockingIOError:
            pass
        if self._queue:
            self._empty_streak = 0
        else:
            self._empty_wakeup()
        if self._pending.locked():
            self._drain()
        # else: a byte nobody holding the token wrote (stray); nothing to drain

    def _empty_wakeup(self) -> None:
        """Loop thread: the pipe woke us for nothing; log a streak once (lesson 9,
        docs/architecture.md)."""
        self.empty_wakeups += 1
        self._empty_streak += 1
        if self._empty_streak == SPIN_THRESHOLD:
            log.warning(
                "ioserver: the loop woke %d times in a row with nothing to do "
                "(something writes the wakeup pipe without submitting?)",
                SPIN_THRESHOLD,
            )

    def wake_at(self) -> None:
        """Loop thread: the armed wakeup (``next_wakeup``) fired; drain if needed.

        Sets ``next_wakeup`` to +inf ("nothing armed") first: a producer that
        compared against the old value sees the change on its re-read, and one
        that reads +inf takes the ordinary path and writes the pipe. (The timer
        driver arms the next wakeup afterwards.)
        """
        self.next_wakeup = _INF
        if self._pending.acquire(False):
            self._drain()

    def _drain(self) -> None:
        """Loop thread, token held: run queued requests in a bounded batch."""
        if self._done:
            return  # keep the token for good: nobody may write the pipe now
        queue = self._queue
        start = monotonic()
        n = 0
        max_batch = self.max_batch
        # The loop is the only consumer, so a non-empty queue can't be raced
        # empty: no IndexError at the end of every batch (0.5 us, paid while a
        # caller just woken by this batch waits for the GIL).
        while queue and n < max_batch:
            fn, args, _ = queue.popleft()
            n += 1
            try:
                fn(*args)
            except BaseException:
                # BaseException too: a SystemExit or KeyboardInterrupt raised by
                # a caller's function must not kill the loop thread (and with it
                # every port); the caller asked for fire-and-forget.
                log.exception("ioserver: request %r failed", fn)
            if not n & 63 and monotonic() - start > self.quantum:
                break
        self.requests += n
        self.batches += 1
        if n > self.max_batch_seen:
            self.max_batch_seen = n
        spent = monotonic() - start
        if spent > self.longest_batch:
            self.longest_batch = spent
        if self._done:
            return  # a request closed us; keep the token
        if queue:
            self._loop.call_soon(self._drain_soon)  # type: ignore[union-attr]
            return
        self._pending.release()
        if queue and self._pending.acquire(False):
            self._loop.call_soon(self._drain_soon)  # type: ignore[union-attr]

    def close(self, reason: BaseException | None = None) -> None:
        """Loop thread (or after the loop died): refuse new requests, reject queued ones."""
        exc = reason if reason is not None else ServerStopped("the I/O server has stopped")
        with self._lock:
            self._done = True
            queue = self._queue
            while True:
                try:
                    request = queue.popleft()
                except IndexError:
                    break
                reject = request[2]
                if reject is None:
                    continue
                if isinstance(reject, WakeupHandle):  # a blocked caller: wake it
                    if reject.claim():
                        reject.payload = (False, exc)
                        reject.unpark()
                    continue
                try:
                    reject(exc)
                except Exception:
                    log.exception("ioserver: reject callback %r failed", reject)
        if self._loop is not None and self._rfd >= 0 and not self._loop.is_closed():
            try:
                self._loop.remove_reader(self._rfd)
            except Exception:  # the loop may be half torn down after a crash
                pass
        with self._fd_lock:
            for fd in (self._rfd, self._wfd):
                if fd >= 0:  # -1: closed already (a forked child's copy)
                    os.close(fd)
            self._rfd = self._wfd = -1

    @property
    def done(self) -> bool:
        """Whether the queue refuses new requests."""
        return self._done

    def pending(self) -> int:
        """Requests queued now (a hint: exact only on the loop thread)."""
        return len(self._queue)

    def _forked(self) -> None:
        """In a forked child: the loop thread that drains this queue stayed in the
        parent. Refuse every submit, drop the parent's requests, close the child's
        copies of the pipe (the parent's stay open)."""
        self._done = True
        self._why = _FORKED_WHY
        # Another thread of the parent may have held these at the fork; it does
        # not exist here, so they would never be released.
        self._lock = allocate_lock()
        self._fd_lock = allocate_lock()
        self._queue.clear()
        for fd in (self._rfd, self._wfd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._rfd = self._wfd = -1


_FORKED_WHY = (
    "the I/O server was inherited through fork: its I/O thread runs in the "
    "parent process only; make a new IOServer in the child"
)


def _reject_all(requests: list[Request], exc: BaseException) -> None:
    """Tell each request's ``reject`` that it will never run (``close``, after the step).

    A WakeupHandle (a blocked caller) is woken with ``(False, exc)``; a callable
    is called with ``exc`` and its Exception logged. A BaseException from one
    (KeyboardInterrupt...) is raised once every other request was rejected, so
    no waiter is left parked for ever."""
    error: BaseException | None = None
    for _, _, reject in requests:
        if reject is None:
            continue
        try:
            if isinstance(reject, WakeupHandle):  # a blocked caller: wake it
                if reject.claim():
                    reject.payload = (False, exc)
                    reject.unpark()
            else:
                reject(exc)
        except Exception:
            log.exception("ioserver: reject callback %r failed", reject)
        except BaseException as base:
            if error is None:
                error = base
    if error is not None:
        raise error


if native is not None or TYPE_CHECKING:

    class NativeRequestQueue(_RequestQueue):
        """The request queue of one loop, and the pipe that wakes it (the native core).

        ``submit``, the drain, ``wake_at``, ``pending`` and the counters are the
        compiled ``_native.RequestQueue`` (same contract as :class:`PyRequestQueue`);
        this subclass adds the parts that are neither hot nor racy.
        """

        __slots__ = ()

        #: What a refused submit raises (looked up by the C core).
        _Stopped = ServerStopped

        def __init__(
            self, *, max_batch: int = DEFAULT_MAX_BATCH, quantum: float = DEFAULT_QUANTUM
        ) -> None:
            # The C core's __new__ took the arguments and made the pipe.
            _LIVE.add(self)

        def attach(
            self, loop: asyncio.AbstractEventLoop, guard: Callable[[Any], Any] | None = None
        ) -> None:
            """Loop thread: start listening to the pipe (through ``guard``, if given,
            as the drains the loop schedules itself)."""
            self._attach(loop, None if guard is None else guard(self._drain))
            loop.add_reader(self._rfd, self._on_pipe if guard is None else guard(self._on_pipe))

        def close(self, reason: BaseException | None = None) -> None:
            """Loop thread (or after the loop died): refuse new requests, reject queued ones."""
            exc = reason if reason is not None else ServerStopped("the I/O server has stopped")
            try:
                # One step in C: done, and every queued request is ours.
                _reject_all(self._take_all(), exc)
            finally:
                loop = self._loop
                if loop is not None and self._rfd >= 0 and not loop.is_closed():
                    try:
                        loop.remove_reader(self._rfd)
                    except Exception:  # the loop may be half torn down after a crash
                        pass
                self._close_fds()

        def _request_failed(self, fn: Callable[..., object], exc: BaseException) -> None:
            """Loop thread: a request raised ``exc`` (called by the C drain)."""
            log.error("ioserver: request %r failed", fn, exc_info=exc)

        def _spinning(self) -> None:
            """Loop thread: SPIN_THRESHOLD empty wakeups in a row (lesson 9,
            docs/architecture.md)."""
            log.warning(
                "ioserver: the loop woke %d times in a row with nothing to do "
                "(something writes the wakeup pipe without submitting?)",
                SPIN_THRESHOLD,
            )

        def _forked(self) -> None:
            """In a forked child: refuse every submit, drop the parent's requests
            (unrejected: their waiters are in the parent), close the child's
            copies of the pipe (the parent's stay open)."""
            self._take_all(_FORKED_WHY)
            self._close_fds(True)


#: The queue the server uses: the native one when the compiled core runs.
if TYPE_CHECKING:
    RequestQueue = PyRequestQueue
elif native is not None:
    RequestQueue = NativeRequestQueue
else:
    RequestQueue = PyRequestQueue

_LIVE: weakref.WeakSet[PyRequestQueue | NativeRequestQueue] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The child has the parent's fds but not its loop thread: refuse submits.
    for queue in list(_LIVE):
        queue._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)

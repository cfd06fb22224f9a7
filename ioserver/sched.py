"""Block and wake tasks, threads and asyncio tasks alike: the one primitive that parks.

Theory of operation
-------------------
After the Rust RFC that split green and native I/O (``shared/seeds/003``): a
blocking operation calls ``task.block_after(f)``. ``block_after`` makes a fresh
:class:`WakeupHandle`, hands it to ``f`` (which stores it somewhere a waker will
find it, e.g. a channel's queue of waiting receivers) and then blocks until some
party calls ``handle.wake()``. A handle belongs to exactly one blocking
invocation, so a late ``wake()`` can never wake a later, unrelated block: there
are no spurious wakeups.

Every handle has two steps, kept apart so a channel can hand a value over
before the sleeper runs again (crossbeam's ``Context::try_select``, then
``unpark``):

1. ``claim()``: an atomic test-and-set. Exactly one party wins it per handle:
   one waker, or the sleeper itself when its timeout expires or it is
   cancelled. Whoever wins decides how the block ended.
2. ``unpark()``: called once, only by a waker that won the claim, after it has
   stored its ``payload``. It makes the sleeper runnable.

``wake()`` is ``claim()`` then ``unpark()``: True for the first call, False for
every other one.

Why a timeout can never lose a wakeup: a sleeper whose wait times out races
the wakers for the claim. If it wins, no waker can ever touch the handle again,
and it returns False. If it loses, a waker has claimed and is about to unpark
(there is nothing that blocks between the two steps), so the sleeper waits for
that unpark and returns True with the waker's payload.

Threads park on a ``_thread`` lock created held (``acquire`` on a held lock
blocks until ``release``); an asyncio task parks on a future of its own loop.
``unpark`` from another thread reaches a coroutine through
``loop.call_soon_threadsafe``; from the loop's own thread it resolves the
future directly. So a thread can wake a coroutine, a coroutine a thread, and a
coroutine on one loop a coroutine on another.

The claim is a non-blocking ``acquire`` of a ``_thread`` lock: documented as
atomic, and free of any assumption about the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from _thread import allocate_lock
from collections.abc import Callable
from typing import Any

__all__ = [
    "AsyncTask",
    "AsyncWakeup",
    "Task",
    "ThreadTask",
    "ThreadWakeup",
    "WakeupHandle",
    "WokenThenCancelled",
    "current_task",
]

_get_ident = threading.get_ident


class WakeupHandle:
    """Wakes the one blocking invocation it was made for, at most once.

    ``payload`` is free for the waker that wins the claim: it is written before
    ``unpark`` and read by the sleeper after it resumes.
    """

    __slots__ = ("_claim", "payload")

    def __init__(self) -> None:
        # Held by whoever won the claim; never released. One lock per handle,
        # so acquire(False) is the atomic test-and-set.
        self._claim = allocate_lock()
        self.payload: Any = None

    def claim(self) -> bool:
        """Try to take the right to end this block; True for exactly one caller."""
        return self._claim.acquire(False)

    @property
    def claimed(self) -> bool:
        """Whether some party has claimed the handle (a hint: may change at once)."""
        return self._claim.locked()

    def unpark(self) -> None:
        """Make the sleeper runnable. Only the winner of :meth:`claim` calls this."""
        raise NotImplementedError

    def wake(self) -> bool:
        """Wake the blocked task; True if this call did, False if it was already ended.

        Safe from any thread, and from a coroutine on any loop.
        """
        if self._claim.acquire(False):
            self.unpark()
            return True
        return False


class ThreadWakeup(WakeupHandle):
    """A handle for a blocked native thread (made by the thread that will park on it).

    Each handle has its own park lock, created held. (Sharing one per thread
    saved 0.2 us a block but let a park interrupted by an exception leave a
    release pending for the thread's next block: not worth it.)
    """

    __slots__ = ("_park",)

    def __init__(self) -> None:
        super().__init__()
        # Created held: the sleeper blocks in acquire() until unpark releases it.
        self._park = allocate_lock()
        self._park.acquire()

    def unpark(self) -> None:
        self._park.release()

    def park(self, timeout: float | None = None) -> bool:
        """Block the calling thread until woken (True) or ``timeout`` passes (False)."""
        park = self._park
        if timeout is None:
            park.acquire()
            return True
        if timeout > 0 and park.acquire(True, timeout):
            return True
        if self._claim.acquire(False):
            return False  # timed out; nobody can wake this handle any more
        # A waker won the claim just now; its unpark follows without blocking.
        park.acquire()
        return True

    def abort(self) -> bool:
        """End a block that is over without a wakeup (the sleeper gives up: an
        exception, a re-check that found it ready). True if that worked; False if
        a waker had claimed the handle first; then its payload is set when this
        returns, and the caller must honour or undo it."""
        if self._claim.acquire(False):
            return True
        self._park.acquire()  # the waker's unpark follows its claim without blocking
        return False


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class AsyncWakeup(WakeupHandle):
    """A handle for a blocked asyncio task, wakeable from any thread."""

    __slots__ = ("_fut", "_loop", "_thread", "_unparked")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__()
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._fut: asyncio.Future[None] = self._loop.create_future()
        self._thread = _get_ident()
        # Set by unpark (after the waker stored its payload), read by a
        # cancelled sleeper that lost the claim: see _wait_unparked.
        self._unparked = False

    def unpark(self) -> None:
        self._unparked = True
        if _get_ident() == self._thread:
            _resolve(self._fut)
        else:
            # Called from another thread, possibly after that loop was closed
            # (its task is gone then, and there is nobody left to wake).
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(_resolve, self._fut)

    async def park(self, timeout: float | None = None) -> bool:
        """Wait until woken (True) or ``timeout`` passes (False).

        A cancellation that arrives before any waker claimed the handle takes
        the claim here (so no waker will act) and CancelledError propagates.
        One that arrives after a waker claimed it raises
        :class:`WokenThenCancelled`: the wakeup happened, its payload is set,
        and the caller decides whether to finish or undo what it meant.
        """
        timer = None
        if timeout is not None:
            if timeout <= 0:
                if self._claim.acquire(False):
                    return False
                # A waker won the claim: wait for its unpark, so that its
                # payload is stored before we return (as ThreadWakeup.park).
            else:
                timer = self._loop.call_later(timeout, _expire, self)
        try:
            await self._fut
        except asyncio.CancelledError:
            if self._claim.acquire(False) or self.payload is _TIMED_OUT:
                raise  # nobody woke us (a timeout that lost to the cancel is no wakeup)
            self._wait_unparked()
            raise WokenThenCancelled from None
        finally:
            if timer is not None:
                timer.cancel()
        return self.payload is not _TIMED_OUT

    def _wait_unparked(self) -> None:
        """A waker in another thread claimed the handle; wait until its unpark.

        The task was cancelled, so its future can no longer carry the unpark;
        the waker does nothing that blocks between claim and unpark (see the
        module doc), so this spin is short. A waker in this thread has already
        unparked: nothing here runs between its two steps.
        """
        while not self._unparked:
            time.sleep(0)  # let the waker's thread run


def _expire(handle: AsyncWakeup) -> None:
    """The timeout of an :class:`AsyncWakeup`: claims it and resolves it as timed out."""
    if handle._claim.acquire(False):
        handle.payload = _TIMED_OUT
        _resolve(handle._fut)


_TIMED_OUT = object()


class WokenThenCancelled(asyncio.CancelledError):
    """The task was cancelled after a waker had already claimed its handle.

    Raised by :meth:`AsyncWakeup.park`. The wakeup happened (the payload is
    set); the caller must either finish the operation the wakeup completed or
    undo it, then let the cancellation go on.
    """


class Task:
    """The scheduling operations of the current thread."""

    __slots__ = ()

    def yield_now(self) -> None:
        """Give up the rest of this thread's time slice."""
        time.sleep(0)

    def block_after(
        self, f: Callable[[WakeupHandle], object], timeout: float | None = None
    ) -> bool:
        """Call ``f(handle)``, then block until ``handle.wake()`` or the timeout.

        Returns True when woken (also when ``f`` itself woke the handle, which
        is how a callback cancels the block after a re-check), False on timeout.
        """
        handle = ThreadWakeup()
        f(handle)
        return handle.park(timeout)


ThreadTask = Task


class AsyncTask:
    """The scheduling operations of the current asyncio task (awaitable forms)."""

    __slots__ = ("_loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    async def yield_now(self) -> None:
        """Let the loop run other callbacks once before resuming."""
        await asyncio.sleep(0)

    async def block_after(
        self, f: Callable[[WakeupHandle], object], timeout: float | None = None
    ) -> bool:
        """Call ``f(handle)``, then wait until ``handle.wake()`` or the timeout.

        Returns True when woken, False on timeout. A cancellation raises
        CancelledError; if a waker had claimed the handle first, the wakeup
        still counts (the waker's side effects stand) and CancelledError is
        raised all the same.
        """
        handle = AsyncWakeup(self._loop)
        f(handle)
        try:
            return await handle.park(timeout)
        except WokenThenCancelled:
            raise asyncio.CancelledError from None


def current_task() -> Task | AsyncTask:
    """The task running this code: the asyncio task if there is one, else the thread."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return _THREAD_TASK
    return AsyncTask(loop)


_THREAD_TASK = Task()

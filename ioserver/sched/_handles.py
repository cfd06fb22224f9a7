"""Block and wake tasks, threads and asyncio tasks alike: the one primitive that parks.

Theory of operation
-------------------
After the Rust RFC that split green and native I/O: a
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

Interrupts (Ctrl-C)
-------------------
Python runs signal handlers in the main thread only, between bytecodes: after
a call into C returns, at a function's entry and at a loop's back edge; and
inside a blocking ``acquire``, which then gives up. So a ``KeyboardInterrupt``
(or any exception a handler raises) can surface in a parked main thread in
two states: before any waker claimed its handle, or after one claimed it,
stored its payload and released the park lock, which the interrupted
``acquire`` may or may not have consumed. The woken thread usually waits
for the GIL first, and a signal that arrives meanwhile is raised right after
the wait: the wide window. Three rules keep such a block undoable:

* ``unpark`` sets ``_unparked`` *after* it released the park lock, and
  :meth:`ThreadWakeup.abort` waits for that flag, never for the lock (whose
  release the interrupted sleeper may already have consumed);
* the undo of an interrupted block runs through :func:`shielded`: in the
  main thread it runs in a short-lived helper thread, where no signal handler
  runs, so a second Ctrl-C cannot cut it in half; the main thread waits for
  it and raises afterwards;
* a main-thread sender parks on a :class:`MainThreadWakeup`: a waker never
  moves its message for it (it is handed a slot or asked to come, as a
  coroutine is), so an interrupted send has stored nothing.

What this guarantees, and the windows a pure-Python core leaves, is in
docs/architecture.md ("Guarantees").

Native core
-----------
With ``ioserver._native`` in use (``ioserver.NATIVE``), ``WakeupHandle`` and
``ThreadWakeup`` are its C types (the pure-Python ones stay importable as
:class:`PyWakeupHandle` and :class:`PyThreadWakeup`): the claim is a flag set
under the GIL, and a thread parks on one lock of its own instead of one per
handle; every release is consumed before the parking call returns, and a park
that an exception ends has taken its own claim or the waker's release, so
``abort`` keeps the contract above. :class:`AsyncWakeup` and
:class:`MainThreadWakeup` subclass whichever base is in use. See
docs/architecture.md ("Native core").
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .._core import native
from ._original import allocate_lock, get_ident, start_new_thread
from ._original import sleep as _sleep

__all__ = [
    "AsyncTask",
    "AsyncTaskLike",
    "AsyncWakeup",
    "MainThreadWakeup",
    "PyThreadWakeup",
    "PyWakeupHandle",
    "Task",
    "TaskLike",
    "ThreadTask",
    "ThreadWakeup",
    "WakeupHandle",
    "WokenThenCancelled",
    "shielded",
    "thread_wakeup",
]

_get_ident = get_ident
# The thread where signal handlers run. A forked child runs them in the
# thread that forked, which is then its main thread.
_main_ident = (
    get_ident()
    if threading.current_thread() is threading.main_thread()
    else threading.main_thread().ident
)


def _forked() -> None:
    global _main_ident
    _main_ident = _get_ident()
    if native is not None:
        native._after_fork_child()  # parked entries of the parent's threads are dead


if native is not None:
    native._set_main_thread(_main_ident)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)
R = TypeVar("R")

#: How long :meth:`ThreadWakeup.abort` waits for a waker's unpark when the
#: sleeper's own claim may have been cut off by an exception (see there).
_ABORT_PATIENCE = 1.0


class PyWakeupHandle:
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
        return bool(self._claim.acquire(False))

    @property
    def claimed(self) -> bool:
        """Whether some party has claimed the handle (a hint: may change at once)."""
        return bool(self._claim.locked())

    def unpark(self) -> bool:
        """Make the sleeper runnable. Only the winner of :meth:`claim` calls this.

        The contract every handle keeps (the waker may hold a channel's lock,
        or be the I/O thread): ``unpark`` never blocks, never switches to
        another task and never raises. It returns True when the sleeper will
        run, False when its scheduler is gone (the asyncio loop closed, the
        trio run finished, the gevent hub destroyed). On False the waker keeps
        what it was handing over (a message goes to the next receiver or back
        into the buffer, a slot to the next sender): no message is lost.
        """
        raise NotImplementedError

    def wake(self) -> bool:
        """Wake the blocked task; True if this call did, False if it was already ended.

        Safe from any thread, and from a coroutine on any loop.
        """
        if self._claim.acquire(False):
            self.unpark()
            return True
        return False


class PyThreadWakeup(PyWakeupHandle):
    """A handle for a blocked native thread (made by the thread that will park on it).

    Each handle has its own park lock, created held. (Sharing one per thread
    saved 0.2 us a block but let a park interrupted by an exception leave a
    release pending for the thread's next block: not worth it.)
    """

    __slots__ = ("_park", "_self_claim", "_unparked")

    def __init__(self) -> None:
        super().__init__()
        # Created held: the sleeper blocks in acquire() until unpark releases it.
        self._park = allocate_lock()
        self._park.acquire()
        # Set by unpark once the park lock is released (so the payload is
        # stored): what abort() waits for. (_self_claim is set only by a timed
        # park about to take its own claim, and read only by abort().)
        self._unparked = False

    def unpark(self) -> bool:
        self._park.release()
        self._unparked = True
        return True

    def park(self, timeout: float | None = None) -> bool:
        """Block the calling thread until woken (True) or ``timeout`` passes (False).

        An exception raised while parked (a signal handler's) propagates; the
        caller then ends the block with :meth:`abort`, never with another park.
        """
        park = self._park
        if timeout is None:
            park.acquire()
            return True
        if timeout > 0 and park.acquire(True, timeout):
            return True
        self._self_claim = True  # for abort(), should an exception follow the claim
        if self._claim.acquire(False):
            return False  # timed out; nobody can wake this handle any more
        # A waker won the claim just now; its unpark follows without blocking.
        park.acquire()
        return True

    def abort(self) -> bool:
        """End a block that is over without a wakeup (the sleeper gives up: an
        exception, a re-check that found it ready). True if that worked; False if
        a waker had claimed the handle first; then its payload is set when this
        returns, and the caller must honour or undo it.

        Waits for the waker's ``_unparked``, not for the park lock: an
        interrupted park may already have consumed that lock's release, and
        waiting for it again would block for ever. A waker does nothing that
        blocks between claim and unpark, so the wait is short. One case is
        ambiguous: a timed park whose own claim succeeded just before a signal
        handler raised (the result was lost). Then no unpark ever comes, and
        after ``_ABORT_PATIENCE`` seconds the claim is taken to be our own.
        """
        if self._claim.acquire(False):
            return True
        deadline = None
        while not self._unparked:
            _sleep(0)  # let the waker's thread run
            if getattr(self, "_self_claim", False):
                now = time.monotonic()
                if deadline is None:
                    deadline = now + _ABORT_PATIENCE
                elif now > deadline:
                    return True
        return False


# The handles in use: the native ones (ioserver._native: the claim a flag
# under the GIL, one park lock per thread) or the pure-Python ones above.
if TYPE_CHECKING:
    WakeupHandle = PyWakeupHandle
    ThreadWakeup = PyThreadWakeup
elif native is not None:
    WakeupHandle = native.WakeupHandle
    ThreadWakeup = native.ThreadWakeup
else:
    WakeupHandle = PyWakeupHandle
    ThreadWakeup = PyThreadWakeup


class MainThreadWakeup(ThreadWakeup):
    """A :class:`ThreadWakeup` of a thread that signal handlers can interrupt (the
    main thread), parked as a *sender*.

    Wakers treat it as they treat a coroutine: they never store or take its
    message, they hand it a slot or ask it to come (see channel.py), so a
    send interrupted while parked has stored nothing and can simply raise.
    """

    __slots__ = ()


def thread_wakeup() -> ThreadWakeup:
    """A handle for a parking *sender* in this thread: a :class:`MainThreadWakeup`
    in the main thread (where signal handlers run), else a :class:`ThreadWakeup`."""
    return MainThreadWakeup() if _get_ident() == _main_ident else ThreadWakeup()


def shielded(undo: Callable[..., R], *args: Any) -> R:
    """Run ``undo(*args)`` to its end although signal handlers may raise meanwhile.

    For the undo of a block an exception interrupted. Signal handlers run in
    the main thread only; there, ``undo`` runs in a short-lived helper thread,
    where no handler can cut it in half, and this waits for it. An exception a
    handler raises during the wait is raised once ``undo`` has finished
    (instead of the one being handled, which becomes its context). Elsewhere
    (or if no thread can be started) ``undo`` runs here. Returns what ``undo``
    returns, or raises what it raised.
    """
    if _get_ident() != _main_ident:
        return undo(*args)
    box: list[tuple[bool, Any]] = []
    done = allocate_lock()
    done.acquire()

    def run() -> None:
        try:
            box.append((True, undo(*args)))
        except BaseException as exc:  # handed to the waiting main thread
            box.append((False, exc))
        done.release()

    try:
        start_new_thread(run, ())
    except RuntimeError:  # no thread to be had (interpreter shutdown): undo here
        return undo(*args)
    later: BaseException | None = None
    while not box:  # box is filled before done is released: no acquire is consumed twice
        try:
            done.acquire()
        except BaseException as exc:  # another signal: keep waiting, raise it after
            later = exc
    ok, value = box[0]
    if later is not None:
        raise later
    if ok:
        return value  # type: ignore[no-any-return]
    raise value


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

    def unpark(self) -> bool:
        """Resolve the future: directly on the loop's thread, else through
        ``call_soon_threadsafe``. False if the loop is closed: its task will never
        run again, so the waker keeps what it was handing over."""
        loop = self._loop
        if loop.is_closed():
            return False
        self._unparked = True
        if _get_ident() == self._thread:
            _resolve(self._fut)
            return True
        try:
            loop.call_soon_threadsafe(_resolve, self._fut)
        except RuntimeError:  # closed between the check and the call
            return False
        return True

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
                if self.claim():
                    return False
                # A waker won the claim: wait for its unpark, so that its
                # payload is stored before we return (as ThreadWakeup.park).
            else:
                timer = self._loop.call_later(timeout, _expire, self)
        try:
            await self._fut
        except asyncio.CancelledError:
            if self.claim() or self.payload is _TIMED_OUT:
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
            _sleep(0)  # let the waker's thread run


def _expire(handle: AsyncWakeup) -> None:
    """The timeout of an :class:`AsyncWakeup`: claims it and resolves it as timed out."""
    if handle.claim():
        handle.payload = _TIMED_OUT
        _resolve(handle._fut)


_TIMED_OUT = object()


class WokenThenCancelled(asyncio.CancelledError):
    """The task was cancelled after a waker had already claimed its handle.

    Raised by :meth:`AsyncWakeup.park`. The wakeup happened (the payload is
    set); the caller must either finish the operation the wakeup completed or
    undo it, then let the cancellation go on.
    """


class TaskLike(Protocol):
    """What a scheduler implements so blocking calls (``recv``, ``send``,
    ``select``, ``IOServer.call``) park its tasks: see :func:`using_task`."""

    def block_after(
        self, f: Callable[[WakeupHandle], object], timeout: float | None = None
    ) -> bool: ...

    def yield_now(self) -> None: ...


class AsyncTaskLike(Protocol):
    """What a scheduler implements so ``await`` calls (``arecv``, ``asend``,
    ``aselect``, ``IOServer.acall``) park its tasks."""

    async def block_after(
        self, f: Callable[[WakeupHandle], object], timeout: float | None = None
    ) -> bool: ...

    async def yield_now(self) -> None: ...


class Task:
    """The scheduling operations of the current native thread.

    The plug-in contract every task kind keeps (:class:`TaskLike`,
    :class:`AsyncTaskLike`), documented in docs/architecture.md ("Task kinds"):
    ``block_after(f, timeout)`` makes a fresh handle, calls ``f(handle)`` and
    blocks the *task* (never more: a greenlet parks alone, not its thread)
    until the handle's winner of the claim unparks it (True) or the timeout
    wins the claim (False). If it raises instead (the task was cancelled or
    killed), it has first ended the block: either it took the claim itself
    (nothing happened: ``handle.payload`` is still None) or a waker had won it,
    and then that waker's payload is stored when it raises, for the caller to
    honour or undo.
    """

    __slots__ = ()

    def yield_now(self) -> None:
        """Give up the rest of this thread's time slice."""
        _sleep(0)

    def block_after(
        self, f: Callable[[WakeupHandle], object], timeout: float | None = None
    ) -> bool:
        """Call ``f(handle)``, then block until ``handle.wake()`` or the timeout.

        Returns True when woken (also when ``f`` itself woke the handle, which
        is how a callback cancels the block after a re-check), False on timeout.
        """
        handle = ThreadWakeup()
        f(handle)
        try:
            return handle.park(timeout)
        except BaseException:  # interrupted: end the block before raising (see the class doc)
            shielded(handle.abort)
            raise


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
        still counts (the waker's side effects stand, its payload is set) and
        CancelledError is raised all the same.
        """
        handle = AsyncWakeup(self._loop)
        f(handle)
        try:
            return await handle.park(timeout)
        except WokenThenCancelled:
            raise asyncio.CancelledError from None


_THREAD_TASK = Task()

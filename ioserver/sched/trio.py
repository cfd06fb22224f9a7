"""trio tasks as ioserver tasks: ``arecv``/``asend``/``aselect``/``acall`` in a trio task.

Theory of operation
-------------------
A trio task parks in ``trio.lowlevel.wait_task_rescheduled(abort_fn)`` on a
:class:`TrioWakeup`. The waker that wins the handle's claim stores its payload
and unparks: from the run's own thread (a trio task, or an asyncio callback
under trio-asyncio) it calls ``trio.lowlevel.reschedule`` directly; from any
other thread it goes through the run's ``TrioToken.run_sync_soon``, which
refuses with ``RunFinishedError`` once the run is over: then ``unpark``
returns False and the waker keeps what it was handing over. A call that
``run_sync_soon`` accepted is guaranteed to run, and the callback never raises
(one that did would crash the run).

Cancellation follows trio's rules. trio asks ``abort_fn`` whether the park can
be abandoned: if the cancel wins the handle's claim, nothing happened
(``Abort.SUCCEEDED``, and ``Cancelled`` is raised with the handle's payload
still None); if a waker won it, the operation completes (``Abort.FAILED``: the
waker's reschedule arrives, the call returns its result) and ``Cancelled``
arrives at the task's next checkpoint. A timeout is a cancel scope around the
park, so it follows the same rule.

Checkpoints. trio's rule is that every async function of an API is a
checkpoint, even when it need not wait: a cancel pending before the call
raises ``Cancelled`` and the operation does not happen; after an operation
that completed at once the task yields with the cancel shielded (trio's memory
channels do the same: ``checkpoint_if_cancelled``, the operation,
``cancel_shielded_checkpoint``). :class:`TrioTask` says so with
``checkpoints = True`` and carries the two halves; channel.py's and
select.py's trio paths call them around a ready operation, and
:meth:`TrioTask.block_after` checks for a cancel before ``f`` acts (so a
cancelled ``acall`` submits nothing). A park is a full checkpoint; a park
that ends before it waits (``f`` found the operation ready, or a waker came
first) yields with the cancel shielded, so every call yields once.

Detection (sched.py): trio sets ``sniffio.thread_local.name`` to "trio" for the
whole of ``trio.run``; trio-asyncio switches it to "asyncio" around asyncio
callbacks, so each side of a trio-asyncio program gets its own kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import outcome
import trio

from .._core import native
from ._handles import WakeupHandle

__all__ = ["TrioTask", "TrioWakeup", "current_trio_task"]

_lowlevel = trio.lowlevel
_reschedule = _lowlevel.reschedule
_current_token = _lowlevel.current_trio_token
_current_task = _lowlevel.current_task
_checkpoint_if_cancelled = _lowlevel.checkpoint_if_cancelled
_cancel_shielded_checkpoint = _lowlevel.cancel_shielded_checkpoint
_SUCCEEDED = _lowlevel.Abort.SUCCEEDED
_FAILED = _lowlevel.Abort.FAILED
_Value = outcome.Value  # one per wakeup: an outcome is unwrapped once


class TrioWakeup(WakeupHandle):
    """A handle for a parked trio task, wakeable from any thread or loop."""

    __slots__ = ("_parked", "_task", "_token", "_unparked")

    def __init__(self) -> None:
        super().__init__()
        self._task = _current_task()
        self._token = _current_token()
        self._parked = False  # set by park just before it waits
        self._unparked = False

    def unpark(self) -> bool:
        self._unparked = True
        try:
            here = _current_token() is self._token
        except RuntimeError:  # not inside a trio run on this thread
            here = False
        if here:
            if self._parked:  # else: f() woke its own handle; park() will see _unparked
                _reschedule(self._task, _Value(True))
            return True
        try:
            self._token.run_sync_soon(self._resume)
        except trio.RunFinishedError:
            self._unparked = False
            return False
        return True

    def _resume(self) -> None:
        """The run's thread: reschedule the parked task (never raises: a raising
        ``run_sync_soon`` callback would crash the run)."""
        if self._parked:
            _reschedule(self._task, _Value(True))

    def _abort(self, raise_cancel: Any) -> Any:
        """trio cancels the park: it succeeds only if the cancel wins the claim."""
        if self.claim():
            self._parked = False
            return _SUCCEEDED
        return _FAILED  # a waker won: its unpark is on its way

    async def park(self, timeout: float | None = None) -> bool:
        """Wait until woken (True) or ``timeout`` passes (False); see the module doc
        for cancellation."""
        if self._unparked:  # woken before parking (by f itself, or a fast waker)
            await _cancel_shielded_checkpoint()  # still a schedule point (module doc)
            return True
        if timeout is None:
            self._parked = True
            await _lowlevel.wait_task_rescheduled(self._abort)
            return True
        if timeout <= 0 and self.claim():
            return False
        with trio.move_on_after(max(timeout, 0.0)):
            if self._unparked:
                await _cancel_shielded_checkpoint()
                return True
            self._parked = True
            await _lowlevel.wait_task_rescheduled(self._abort)
            return True
        return False  # the scope's deadline won the claim


class TrioTask:
    """The scheduling operations of the current trio task (awaitable forms)."""

    __slots__ = ()

    #: Every await is a trio checkpoint (module doc): channel.py and select.py
    #: call the two halves below around an operation that completes at once.
    checkpoints = True
    #: Raise ``Cancelled`` (after a schedule point) if a cancel is pending, else
    #: return at once: before an operation, so a cancelled one did not happen.
    checkpoint_if_cancelled = staticmethod(_checkpoint_if_cancelled)
    #: Yield to the scheduler with the cancel shielded: after an operation that
    #: happened, so a cancel arriving now cannot lose its result.
    cancel_shielded_checkpoint = staticmethod(_cancel_shielded_checkpoint)
    #: A fresh handle of the running trio task (channel.py's one-channel park).
    wakeup = TrioWakeup

    async def yield_now(self) -> None:
        """A trio checkpoint: other tasks run, a pending cancel is delivered."""
        await _lowlevel.checkpoint()

    async def block_after(
        self, f: Callable[[WakeupHandle], object], timeout: float | None = None
    ) -> bool:
        """Call ``f(handle)``, then wait until woken (True) or the timeout (False).

        Cancelled: ``trio.Cancelled`` only if the cancel won the claim (nothing
        happened: a cancel pending on entry raises before ``f`` runs); otherwise
        the wakeup stands and this returns True."""
        await _checkpoint_if_cancelled()
        handle = TrioWakeup()
        f(handle)
        return await handle.park(timeout)


_TASK = TrioTask()

if native is not None:
    # The native arecv/asend make the checkpoints in C around a ready operation.
    native._setup_trio(_TASK, _checkpoint_if_cancelled, _cancel_shielded_checkpoint)


def current_trio_task() -> TrioTask:
    """The task kind of the running trio task."""
    return _TASK

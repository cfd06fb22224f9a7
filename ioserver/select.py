"""select()/aselect(): wait on any mix of channels, ports and send operations; do exactly one.

Theory of operation
-------------------
An operation is a receive (any object with the selectable protocol below: a
Channel, a Port, a RemotePort) or a send, written ``(channel, value)``.

1. Poll. Starting at a random operation (fairness, as Go and crossbeam do),
   try each without blocking; the first that succeeds is the result. Ready
   sources cost no registration at all.
2. Register. Make one wakeup handle and park it on every operation, in the
   same random order. Each channel re-checks readiness under its lock while
   registering; if one became ready, stop registering, drop the entries made
   so far and go back to 1. This is the "register, then re-check" step that
   closes the race with a sender that looked for sleepers just before we
   registered.
3. Park. The party that wins the handle's claim (sched.py) either hands over
   the operation's result (a message for a receive, a reserved slot or a
   "come and hand it over" for a send) or says "retry". Every other party
   finds the handle claimed and moves on to its next waiter, so a select
   never swallows a wakeup meant for another receiver, and it consumes at
   most one message.
4. Unregister from every operation, then finish: return ``(source, message)``
   for a receive, ``(channel, None)`` for a send.

Interrupted (a signal handler raised while a thread select was parked, e.g.
Ctrl-C): nothing happened, as for a cancelled ``aselect``. The undo runs
through :func:`~ioserver.sched.shielded`: unregister everywhere, then give
back what a waker handed over (a message to the head of its channel, a slot,
a "come and hand it over"). A main-thread select parks on a
:class:`~ioserver.sched.MainThreadWakeup`, so no waker moves a message of
one of its sends.

A closed source is ready: its buffered messages come first, then
ChannelClosed with ``.channel`` set to the source as given.

The selectable protocol (private names; a Port implements it by forwarding to
its inbox, which is why select never needs to know what it has):

``_sel_try_recv() -> message | _NOTHING`` (raises ChannelClosed),
``_sel_try_send(value) -> bool``, ``_sel_register_recv(handle, index) -> bool``,
``_sel_register_send(handle, index, value) -> bool``,
``_sel_unregister(handle)``, ``_sel_unrecv(message)``,
``_sel_release_slot()``, ``_sel_claimed_send(value, mark) -> bool``,
``_sel_abandon(mark)``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from time import monotonic as _now
from typing import TYPE_CHECKING, Any, Protocol

from ._core import native
from .channel import _NOTHING, _RETRY, Channel, ChannelClosed, _install_select, _parked_send_done
from .sched import (
    AsyncTaskLike,
    AsyncWakeup,
    TaskLike,
    ThreadWakeup,
    WakeupHandle,
    WokenThenCancelled,
    foreign_async_task,
    green_task,
    shielded,
    thread_wakeup,
)

__all__ = ["Selectable", "aselect", "aselect_in", "py_select", "select", "select_in"]


class Selectable(Protocol):
    """What a receive source implements to take part in select (see the module doc)."""

    def _sel_try_recv(self) -> Any: ...
    def _sel_register_recv(self, handle: WakeupHandle, index: int) -> bool: ...
    def _sel_unregister(self, handle: WakeupHandle) -> None: ...
    def _sel_unrecv(self, value: Any) -> None: ...
    def _sel_release_slot(self) -> None: ...


_randrange = random.randrange


# One operation of a select: (is_send, source as given, send value or None).
_Op = tuple[bool, Any, Any]


def _prepare(ops: tuple[Any, ...]) -> list[_Op]:
    if not ops:
        raise ValueError("select needs at least one operation")
    prepared: list[_Op] = []
    for op in ops:
        if type(op) is tuple:
            if len(op) != 2:
                raise TypeError(f"a send operation is (channel, value), not {op!r}")
            source, value = op
            prepared.append((True, source, value))
        else:
            source = op
            prepared.append((False, op, None))
        if not isinstance(source, Channel) and not hasattr(source, "_sel_register_recv"):
            raise TypeError(f"{source!r} cannot be selected on (not a channel or port)")
    return prepared


def _poll(ops: list[_Op], start: int) -> tuple[Any, Any] | None:
    """Step 1: try every operation once without blocking, from ``start``."""
    n = len(ops)
    for k in range(n):
        is_send, src, value = ops[(start + k) % n]
        try:
            if is_send:
                if src._sel_try_send(value):
                    return src, None
            else:
                message = src._sel_try_recv()
                if message is not _NOTHING:
                    return src, message
        except ChannelClosed as exc:
            raise ChannelClosed(src, exc.value) from None
    return None


def _register(ops: list[_Op], start: int, handle: WakeupHandle) -> bool:
    """Step 2: park ``handle`` on every operation.

    True: park now (everything is registered, or a waker already claimed the
    handle and its handoff follows). False: an operation turned ready and we
    took our own claim, so nobody will wake the handle; poll again.
    """
    n = len(ops)
    for k in range(n):
        i = (start + k) % n
        is_send, src, value = ops[i]
        if is_send:
            parked = src._sel_register_send(handle, i, value)
        else:
            parked = src._sel_register_recv(handle, i)
        if not parked:
            # Ready now. Take our own claim so no waker acts on the entries we
            # made; if a waker got there first, its handoff stands.
            return not handle.claim()
    return True


def _unregister(ops: list[_Op], handle: WakeupHandle) -> None:
    for _, src, _ in ops:
        src._sel_unregister(handle)


def _finish(ops: list[_Op], payload: tuple[int, Any]) -> tuple[Any, Any] | None:
    """Step 4: the result a waker handed over, or None to go round again."""
    index, mark = payload
    is_send, src, value = ops[index]
    if mark is _RETRY:
        return None
    if is_send:
        return (src, None) if _parked_send_done(src, value, mark) else None
    src._sel_release_slot()
    return src, mark


def select(*ops: Any, timeout: float | None = None) -> tuple[Any, Any]:
    """Wait until one of ``ops`` can proceed, perform exactly that one, return it.

    ``ops`` are receive sources (a Channel, a Port...) and send operations
    ``(channel, value)``. Returns ``(source, message)`` for a receive and
    ``(channel, None)`` for a send. Among several ready operations the pick is
    random. ``timeout``: None blocks, 0 polls, > 0 waits at most that long;
    nothing in time raises TimeoutError and then nothing happened.

    A closed source counts as ready: its buffered messages first, then
    ChannelClosed with ``.channel`` set to it.
    """
    prepared = _prepare(ops)
    if timeout is None or timeout > 0:
        task = green_task()
        if task is not None:  # a greenlet, or a scheduler plugged in with using_task
            return select_in(task, prepared, timeout)
    deadline = None if timeout is None else _now() + timeout
    while True:
        start = _randrange(len(prepared))
        result = _poll(prepared, start)
        if result is not None:
            return result
        left = None if deadline is None else deadline - _now()
        if left is not None and left <= 0:
            raise TimeoutError("select timed out")
        handle = thread_wakeup()
        if not _register(prepared, start, handle):
            _unregister(prepared, handle)
            continue  # an operation turned ready while we registered: poll again
        woken = None
        try:
            woken = handle.park(left)
            _unregister(prepared, handle)
        except BaseException:  # interrupted: nothing happened, as for a cancelled aselect
            shielded(_undo_interrupted, prepared, handle, woken)
            raise
        if not woken:
            raise TimeoutError("select timed out")
        result = _finish(prepared, handle.payload)
        if result is not None:
            return result


#: The select written in Python (the whole algorithm, for either core).
py_select = select

if native is not None and not TYPE_CHECKING:
    # The native core polls native channels in C and hands everything else
    # (registration, parking, ports) to py_select.
    native._setup_select(py_select, ChannelClosed)
    select = native.select


async def aselect(*ops: Any, timeout: float | None = None) -> tuple[Any, Any]:
    """``select`` for coroutines; wakeable from any thread or loop.

    Cancelled, it did nothing: a message it was handed goes back to the head
    of its channel, and a send is only ever finished by the select itself.
    """
    prepared = _prepare(ops)
    task = foreign_async_task()
    if task is not None:  # a trio task, or a scheduler plugged in with using_task
        return await aselect_in(task, prepared, timeout)
    deadline = None if timeout is None else _now() + timeout
    while True:
        start = _randrange(len(prepared))
        result = _poll(prepared, start)
        if result is not None:
            return result
        left = None if deadline is None else deadline - _now()
        if left is not None and left <= 0:
            raise TimeoutError("aselect timed out")
        handle = AsyncWakeup()
        if not _register(prepared, start, handle):
            _unregister(prepared, handle)
            continue  # an operation turned ready while we registered: poll again
        try:
            woken = await handle.park(left)
        except WokenThenCancelled:
            _unregister(prepared, handle)
            _undo(prepared, handle.payload)
            raise asyncio.CancelledError from None
        except asyncio.CancelledError:
            _unregister(prepared, handle)
            raise
        _unregister(prepared, handle)
        if not woken:
            raise TimeoutError("aselect timed out")
        result = _finish(prepared, handle.payload)
        if result is not None:
            return result


def _undo_interrupted(ops: list[_Op], handle: ThreadWakeup, woken: bool | None) -> None:
    """A thread select was interrupted while parked (``woken`` None) or while
    unregistering after the park (``woken`` is what the park returned):
    unregister everywhere and give back whatever a waker handed over."""
    _unregister(ops, handle)  # idempotent
    if woken is False:
        return  # timed out: the handle's claim is ours, nobody handed anything over
    if woken or not handle.abort():
        _undo(ops, handle.payload)


def _undo(ops: list[_Op], payload: tuple[int, Any]) -> None:
    """A select was handed ``payload`` and then cancelled or interrupted: give it back."""
    index, mark = payload
    is_send, src, _ = ops[index]
    if is_send:
        src._sel_abandon(mark)
    elif mark is not _RETRY:
        src._sel_unrecv(mark)


# -- any task kind: select over Task.block_after ---------------------------------------
#
# The path of every task that is not a native thread or an asyncio task (a gevent
# greenlet, a trio task, a scheduler plugged in with using_task): the same four
# steps, with the park done by the task's ``block_after``. Its contract (sched.py,
# Task): if it raises, the payload is None when the task took its own claim
# (nothing happened), else the winning waker's, which we give back.


def _registrar(
    ops: list[_Op], start: int, box: list[WakeupHandle]
) -> Callable[[WakeupHandle], None]:
    """The ``f`` of ``block_after``: keep the handle in ``box`` and register it on
    every operation. If one turned ready meanwhile, we hold the claim: end the
    block at once with ``_RETRY`` (poll again)."""

    def register(handle: WakeupHandle) -> None:
        box.append(handle)
        if not _register(ops, start, handle):
            handle.payload = (start, _RETRY)
            handle.unpark()

    return register


def _outcome(
    ops: list[_Op], handle: WakeupHandle, woken: bool, what: str
) -> tuple[Any, Any] | None:
    _unregister(ops, handle)
    if not woken:
        raise TimeoutError(f"{what} timed out")
    return _finish(ops, handle.payload)


def _give_back(ops: list[_Op], handle: WakeupHandle | None) -> None:
    """``block_after`` raised: withdraw, and undo what a waker handed over."""
    if handle is not None:
        _unregister(ops, handle)
        if handle.payload is not None:
            _undo(ops, handle.payload)


def select_in(
    task: TaskLike, ops: list[_Op], timeout: float | None, what: str = "select"
) -> tuple[Any, Any]:
    """``select`` of prepared ``ops`` parking through ``task.block_after``."""
    deadline = None if timeout is None else _now() + timeout
    while True:
        start = _randrange(len(ops))
        result = _poll(ops, start)
        if result is not None:
            return result
        left = None if deadline is None else deadline - _now()
        if left is not None and left <= 0:
            raise TimeoutError(f"{what} timed out")
        box: list[WakeupHandle] = []
        try:
            woken = task.block_after(_registrar(ops, start, box), left)
        except BaseException:
            _give_back(ops, box[0] if box else None)
            raise
        result = _outcome(ops, box[0], woken, what)
        if result is not None:
            return result


async def aselect_in(
    task: AsyncTaskLike, ops: list[_Op], timeout: float | None, what: str = "aselect"
) -> tuple[Any, Any]:
    """``aselect`` of prepared ``ops`` parking through ``task.block_after``.

    A task kind whose every await is a checkpoint (trio: ``checkpoints``, see
    sched/trio.py) gets its cancel checked before anything happens and a
    shielded yield after an operation found ready; its ``block_after`` makes
    the park a checkpoint."""
    deadline = None if timeout is None else _now() + timeout
    checkpoints = getattr(task, "checkpoints", False)
    if checkpoints:
        await task.checkpoint_if_cancelled()  # type: ignore[attr-defined]
    while True:
        start = _randrange(len(ops))
        result = _poll(ops, start)
        if result is not None:
            if checkpoints:
                await task.cancel_shielded_checkpoint()  # type: ignore[attr-defined]
            return result
        left = None if deadline is None else deadline - _now()
        if left is not None and left <= 0:
            raise TimeoutError(f"{what} timed out")
        box: list[WakeupHandle] = []
        try:
            woken = await task.block_after(_registrar(ops, start, box), left)
        except BaseException:
            _give_back(ops, box[0] if box else None)
            raise
        result = _outcome(ops, box[0], woken, what)
        if result is not None:
            return result


_install_select(select_in, aselect_in)

"""Await a blocking call from any ``await`` task kind without blocking its loop.

The awaitable openers (``IOServer.aconnect_tcp`` and the rest, and the same on
``RemoteIOServer``) run their blocking form, which resolves names and parks
until the I/O thread (or the daemon) has opened the port, in a helper OS
thread, while the calling task (asyncio or trio, or a ``using_task``
scheduler) parks through its own ``block_after``: its loop keeps running.

The helper hands the outcome over as any waker does: it takes the handle's
claim, stores ``(ok, value)`` and unparks. If the caller gave up first (it was
cancelled and took the claim itself), or its scheduler is gone (``unpark``
returned False), or it was woken and then cancelled (asyncio), nobody will
own the result, so ``discard(result)`` runs (the opener closes the port it
made): a cancelled open leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ._current import current_async_task
from ._handles import WakeupHandle
from ._original import start_new_thread

__all__ = ["run_blocking"]

R = TypeVar("R")


async def run_blocking(fn: Callable[[], R], discard: Callable[[R], object] | None = None) -> R:
    """Run ``fn()`` in a helper OS thread; await its result (or its exception) in
    the current task. ``discard(result)`` disposes of a result nobody will take."""
    box: list[WakeupHandle] = []

    def run(handle: WakeupHandle) -> None:
        try:
            outcome: tuple[bool, Any] = (True, fn())
        except BaseException as exc:  # handed to the awaiting task
            outcome = (False, exc)
        if handle.claim():
            handle.payload = outcome
            if handle.unpark() is not False:
                return
        if outcome[0] and discard is not None:
            discard(outcome[1])  # the caller gave up, or its scheduler is gone

    def start(handle: WakeupHandle) -> None:
        box.append(handle)
        start_new_thread(run, (handle,))

    try:
        await current_async_task().block_after(start)
    except BaseException:
        # Cancelled. A helper that had already handed its result over (woken,
        # then cancelled) left it in the payload: nobody takes it now.
        payload = box[0].payload if box else None
        if payload is not None and payload[0] and discard is not None:
            discard(payload[1])
        raise
    ok, value = box[0].payload
    if ok:
        return value  # type: ignore[no-any-return]
    raise value
